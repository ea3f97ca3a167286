"""layer_norm and rms_norm beyond the table sweep: bad inputs, a NumPy float64
reference built from the row Jacobian, and bfloat16 with float32 statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, assert_close

import funcprop

F64 = RTOL[np.dtype("float64")]
SHAPES = pytest.mark.parametrize("shape", [(4, 6), (2, 3, 5), (7,)], ids=str)


def _normal(seed, shape, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _np_norm(x, gamma, beta, eps, center):
    """Naive reference, one row at a time: y, and the Jacobian ∂x̂/∂x of each row
    written from the definition (the matrix, d × d)."""
    rows = x.reshape(-1, x.shape[-1])
    d = rows.shape[1]
    ys, jacs = [], []
    for row in rows:
        c = row - row.mean() if center else row
        r = 1 / np.sqrt(np.mean(c * c) + eps)
        ys.append(gamma * c * r + beta)
        # ∂(c_i r)/∂x_j = r ∂c_i/∂x_j + c_i ∂r/∂x_j,  ∂r/∂x_j = −r³ c_j / d
        dc = np.eye(d) - (1 / d if center else 0)
        jacs.append(r * dc - np.outer(c, c) * r**3 / d)
    return np.array(ys).reshape(x.shape), np.array(jacs)


def _np_vjp(x, gamma, beta, eps, center, y_bar):
    """(x̄, γ̄, β̄) from the reference Jacobian: x̄ = Jᵀ (γ ⊙ ḡ), γ̄ = Σ ḡ ⊙ x̂, β̄ = Σ ḡ."""
    _, jacs = _np_norm(x, gamma, beta, eps, center)
    x_hat, _ = _np_norm(x, np.ones_like(gamma), np.zeros_like(gamma), eps, center)
    g_rows = y_bar.reshape(-1, x.shape[-1])
    x_bar = np.einsum("bij,bi->bj", jacs, g_rows * gamma).reshape(x.shape)
    return x_bar, (g_rows * x_hat.reshape(g_rows.shape)).sum(0), g_rows.sum(0)


@SHAPES
@pytest.mark.parametrize("eps", [1e-5, 0.3])
def test_layer_norm_matches_numpy(shape, eps):
    x, gamma, beta, y_bar = (_normal(i, s) for i, s in enumerate([shape, shape[-1:], shape[-1:], shape]))
    y, pullback = jax.vjp(lambda *a: funcprop.layer_norm(*a, eps=eps), x, gamma, beta)
    want_y, _ = _np_norm(x, gamma, beta, eps, center=True)
    assert_close(y, want_y, F64, "layer_norm output")
    for name, got, want in zip("x gamma beta".split(), pullback(y_bar), _np_vjp(x, gamma, beta, eps, True, y_bar)):
        assert_close(got, want, F64, f"layer_norm cotangent of {name}")


@SHAPES
@pytest.mark.parametrize("eps", [1e-6, 0.3])
def test_rms_norm_matches_numpy(shape, eps):
    x, gamma, y_bar = (_normal(i, s) for i, s in enumerate([shape, shape[-1:], shape]))
    y, pullback = jax.vjp(lambda *a: funcprop.rms_norm(*a, eps=eps), x, gamma)
    zeros = np.zeros_like(gamma)
    want_y, _ = _np_norm(x, gamma, zeros, eps, center=False)
    assert_close(y, want_y, F64, "rms_norm output")
    want = _np_vjp(x, gamma, zeros, eps, False, y_bar)[:2]
    for name, got, w in zip(["x", "gamma"], pullback(y_bar), want):
        assert_close(got, w, F64, f"rms_norm cotangent of {name}")


def test_defaults_are_the_documented_eps():
    x, gamma, beta = _normal(0, (3, 4)), _normal(1, (4,)), _normal(2, (4,))
    assert_close(funcprop.layer_norm(x, gamma, beta), _np_norm(x, gamma, beta, 1e-5, True)[0], F64)
    assert_close(funcprop.rms_norm(x, gamma), _np_norm(x, gamma, 0 * gamma, 1e-6, False)[0], F64)


# --- bfloat16: statistics in float32, everything returned in bfloat16 ---------------

RULES = {
    "layer_norm": (funcprop.layer_norm, 3),
    "rms_norm": (funcprop.rms_norm, 2),
}


@pytest.mark.parametrize("name", RULES)
def test_bfloat16_computes_in_float32(name):
    rule, n_args = RULES[name]
    shape = (4, 64)
    # rows far from zero mean: statistics accumulated in bfloat16 would be visibly off
    x = 30 + _normal(0, shape, np.float32)
    args16 = [jnp.asarray(x, jnp.bfloat16)] + [jnp.asarray(_normal(i, (64,)), jnp.bfloat16) for i in range(1, n_args)]
    y_bar16 = jnp.asarray(_normal(9, shape), jnp.bfloat16)

    y16, pullback16 = jax.vjp(rule, *args16)
    cts16 = pullback16(y_bar16)
    assert y16.dtype == jnp.bfloat16
    assert [c.dtype for c in cts16] == [jnp.bfloat16] * n_args  # JAX would not catch float32 here

    # the same bfloat16 values, computed in float32, then cast to bfloat16: equal
    args32 = [a.astype(jnp.float32) for a in args16]
    y32, pullback32 = jax.vjp(rule, *args32)
    cts32 = pullback32(y_bar16.astype(jnp.float32))
    np.testing.assert_array_equal(np.asarray(y16, np.float32), np.asarray(y32.astype(jnp.bfloat16), np.float32))
    for c16, c32 in zip(cts16, cts32):
        np.testing.assert_array_equal(np.asarray(c16, np.float32), np.asarray(c32.astype(jnp.bfloat16), np.float32))

    # the twin makes the same casts: autodiff of it returns bfloat16 too
    twin = rule.vjp_rule.twin
    _, twin_pullback = jax.vjp(twin, *args16)
    assert [c.dtype for c in twin_pullback(y_bar16)] == [jnp.bfloat16] * n_args
    np.testing.assert_array_equal(np.asarray(twin(*args16), np.float32), np.asarray(y16, np.float32))


def test_float64_stays_float64():
    x, gamma = _normal(0, (3, 4)), _normal(1, (4,))
    _, res = funcprop.rms_norm.vjp_rule.fwd(jnp.asarray(x), jnp.asarray(gamma), 1e-6)
    assert [r.dtype for r in res] == [jnp.float64] * 3
    assert res[1].shape == (3, 1)  # r per row, not x̂


# --- bad inputs ----------------------------------------------------------------------


def _f(*shape, dtype=jnp.float64):
    return jnp.ones(shape, dtype)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: funcprop.layer_norm(_f(3, 5), _f(4), _f(5)),
            ValueError,
            r"layer_norm: gamma has shape \(4,\) but x has 5 features .* gamma must be \(5,\)",
        ),
        (
            lambda: funcprop.layer_norm(_f(3, 5), _f(5), _f(5, 1)),
            ValueError,
            r"layer_norm: beta has shape \(5, 1\) but x has 5 features .* beta must be \(5,\)",
        ),
        (
            lambda: funcprop.rms_norm(_f(2, 3, 5), _f(3)),
            ValueError,
            r"rms_norm: gamma has shape \(3,\) but x has 5 features",
        ),
        (lambda: funcprop.layer_norm(_f(), _f(1), _f(1)), ValueError, r"layer_norm: x must have a feature axis"),
        (
            lambda: funcprop.layer_norm(_f(3, 5, dtype=jnp.int32), _f(5), _f(5)),
            TypeError,
            r"layer_norm: x must be a floating-point array, got dtype int32; cast",
        ),
        (
            lambda: funcprop.rms_norm(_f(3, 5), _f(5, dtype=jnp.int32)),
            TypeError,
            r"rms_norm: gamma must be a floating-point array, got dtype int32",
        ),
        (
            lambda: funcprop.layer_norm(_f(3, 5), _f(5, dtype=jnp.float32), _f(5)),
            TypeError,
            r"layer_norm: arguments must share one float dtype, but x is float64, gamma is float32",
        ),
        (
            lambda: funcprop.layer_norm(_f(3, 5), _f(5), _f(5), eps=0.0),
            ValueError,
            r"layer_norm: eps must be .*> 0, got 0.0",
        ),
        (lambda: funcprop.rms_norm(_f(3, 5), _f(5), eps=-1e-6), ValueError, r"rms_norm: eps must be .*> 0, got -1e-06"),
        (
            lambda: funcprop.rms_norm(_f(3, 5), _f(5), eps=jnp.float32(1e-6)),
            TypeError,
            r"rms_norm: eps must be a static Python float",
        ),
    ],
    ids=[
        "gamma-features",
        "beta-shape",
        "rms-gamma",
        "scalar-x",
        "int-x",
        "int-gamma",
        "mixed-dtypes",
        "eps=0",
        "eps<0",
        "eps-array",
    ],
)
def test_bad_inputs_raise(call, error, match):
    with pytest.raises(error, match=match):
        call()
