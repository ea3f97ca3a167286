"""Every rule in the table against autodiff of its plain twin and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import FD_RTOL, RTOL, assert_close, float_argnums, random_like, vjp, with_floats

from funcprop.rules.table import RULES, rule_names

CASES = pytest.mark.parametrize("case", RULES, ids=rule_names())
DTYPES = pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
N_COTANGENTS = 3


def test_table_holds_every_public_rule():
    import funcprop

    in_table = {case.rule for case in RULES}
    public_rules = {
        getattr(funcprop, name) for name in funcprop.__all__ if hasattr(getattr(funcprop, name), "vjp_rule")
    }
    missing = {r.__name__ for r in public_rules - in_table}
    assert not missing, f"rules without a row in funcprop.rules.table: {missing}"


@CASES
@DTYPES
def test_vjp_matches_twin(case, dtype):
    args = case.args(jax.random.key(0), dtype)
    rtol = RTOL[np.dtype(dtype)]
    for i in range(N_COTANGENTS):
        out = case.twin(*args, **case.kwargs)
        ct = random_like(jax.random.key(100 + i), out)
        out_rule, cts_rule = vjp(case.rule, args, case.kwargs, ct)
        out_twin, cts_twin = vjp(case.twin, args, case.kwargs, ct)
        assert_close(out_rule, out_twin, rtol, f"{case.name} output")
        for pos, a, b in zip(float_argnums(args), cts_rule, cts_twin):
            assert_close(a, b, rtol, f"{case.name} cotangent of argument {pos}")


@CASES
def test_vjp_matches_central_differences(case):
    """Each element of each float argument's cotangent against (φ(x+h) − φ(x−h)) / 2h."""
    args = case.args(jax.random.key(1), jnp.float64)
    f, floats = with_floats(case.rule, args, case.kwargs)
    ct = random_like(jax.random.key(2), f(*floats))
    _, cts = vjp(case.rule, args, case.kwargs, ct)
    step = 1e-5

    for k, x in enumerate(floats):

        def phi(xk, k=k):
            moved = list(floats)
            moved[k] = xk
            return jnp.sum(ct * f(*moved))

        basis = jnp.eye(x.size, dtype=x.dtype).reshape((x.size, *x.shape))
        diff = jax.jit(jax.vmap(lambda e, x=x: (phi(x + step * e) - phi(x - step * e)) / (2 * step)))
        fd = diff(basis).reshape(x.shape)
        assert_close(cts[k], fd, FD_RTOL, f"{case.name} argument {k} vs finite differences")


@CASES
def test_jit_matches_eager(case):
    args = case.args(jax.random.key(3), jnp.float64)
    ct = random_like(jax.random.key(4), case.twin(*args, **case.kwargs))
    eager = vjp(case.rule, args, case.kwargs, ct)
    jitted = jax.jit(lambda a, c: vjp(case.rule, a, case.kwargs, c))(args, ct)
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
        assert_close(a, b, RTOL[np.dtype("float64")], f"{case.name} under jit")


@CASES
def test_vmap_matches_loop(case):
    keys = jax.random.split(jax.random.key(5), 3)
    per_example = [case.args(k, jnp.float64) for k in keys]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *per_example)
    cts = [random_like(jax.random.key(6 + i), case.twin(*a, **case.kwargs)) for i, a in enumerate(per_example)]
    batched = jax.vmap(lambda a, c: vjp(case.rule, a, case.kwargs, c))(stacked, jnp.stack(cts))
    for i, (a, c) in enumerate(zip(per_example, cts)):
        single = vjp(case.rule, a, case.kwargs, c)
        for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
            assert_close(got[i], want, RTOL[np.dtype("float64")], f"{case.name} vmap[{i}]")


@CASES
def test_grad_of_grad_matches_twin(case):
    """Reverse over reverse: the gradient of ⟨v, ∇φ⟩, φ = ⟨c, f(x)⟩."""
    args = case.args(jax.random.key(7), jnp.float64)
    ct = random_like(jax.random.key(8), case.twin(*args, **case.kwargs))

    def second_order(fn):
        f, floats = with_floats(fn, args, case.kwargs)
        vs = [random_like(jax.random.key(9 + i), x) for i, x in enumerate(floats)]
        grad_phi = jax.grad(lambda *xs: jnp.sum(ct * f(*xs)), argnums=tuple(range(len(floats))))

        def psi(*xs):
            return sum(jnp.sum(v * g) for v, g in zip(vs, grad_phi(*xs)))

        return jax.grad(psi, argnums=tuple(range(len(floats))))(*floats)

    for pos, a, b in zip(float_argnums(args), second_order(case.rule), second_order(case.twin)):
        assert_close(a, b, RTOL[np.dtype("float64")], f"{case.name} second order, argument {pos}")


HESSIAN_CASES = [c for c in RULES if c.name in ("dense", "gelu", "softmax_cross_entropy/ids", "layer_norm")]


@pytest.mark.parametrize("case", HESSIAN_CASES, ids=[c.name for c in HESSIAN_CASES])
def test_hessian_works_as_forward_over_the_hand_written_reverse(case):
    """jax.hessian is jacfwd(jacrev): forward mode through the bwd's plain jnp, not
    through the custom_vjp itself, so it works and matches the twin's."""
    args = case.args(jax.random.key(11), jnp.float64)
    f, floats = with_floats(lambda *a, **k: jnp.sum(case.rule(*a, **k)), args, case.kwargs)
    g, _ = with_floats(lambda *a, **k: jnp.sum(case.twin(*a, **k)), args, case.kwargs)
    argnums = tuple(range(len(floats)))
    hessians = jax.jit(lambda *x: (jax.hessian(f, argnums)(*x), jax.hessian(g, argnums)(*x)))(*floats)
    for a, b in zip(*map(jax.tree.leaves, hessians)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=case.name)


@CASES
def test_forward_mode_raises(case):
    """A documented limit of jax.custom_vjp: no jvp or jacfwd of a rule itself."""
    args = case.args(jax.random.key(10), jnp.float64)
    f, floats = with_floats(case.rule, args, case.kwargs)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(f, floats, tuple(jnp.ones_like(x) for x in floats))
