"""check_vjp's transform rows: a right rule passes under each, and a rule wrong only
under one is caught there."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

import funcprop as fp
from funcprop.check import TRANSFORMS, GradientCheckError, check_vjp

ON_ONE_DEVICE = [t for t in TRANSFORMS if t != "shard_map"]


def _x(*shape, key=0):
    return jax.random.normal(jax.random.key(key), shape, jnp.float64)


def _rows(report, check):
    return [r for r in report.rows if r.check == check]


def test_a_right_rule_passes_under_every_transform():
    x, w, b = _x(6, 3), _x(4, 3, key=1), _x(4, key=2)
    report = check_vjp(fp.dense, x, w, b, transforms=ON_ONE_DEVICE)
    assert report.passed
    assert {r.check for r in report.rows} >= {"jit", "vmap", "remat", "scan", "second-order"}
    assert all(len(_rows(report, t)) == 4 for t in ("jit", "vmap", "remat", "scan"))  # out and 3 args
    assert any("symbolic-zeros skipped: fn has one output leaf" in n for n in report.notes)


def test_transforms_are_named_and_checked():
    with pytest.raises(ValueError, match=r"unknown transforms \['pmap'\]; choose from"):
        check_vjp(fp.tanh, _x(3), transforms=("pmap",))
    one = check_vjp(fp.tanh, _x(3), transforms="remat")
    assert [r.check for r in one.rows] == ["output", "vjp", "finite-diff", "remat", "remat"]


def test_vmap_catches_a_bwd_that_reads_a_closed_over_array():
    x0 = _x(5, 3)

    @jax.custom_vjp
    def tanh(x):
        return jnp.tanh(x)

    # right at x0 only: bwd reads the global x0, not its residual
    tanh.defvjp(lambda x: (jnp.tanh(x), None), lambda _, g: (g * (1 - jnp.tanh(x0) ** 2),))
    assert check_vjp(tanh, x0, reference=jnp.tanh, transforms=("jit", "remat")).passed
    report = check_vjp(tanh, x0, reference=jnp.tanh, transforms=("vmap", "scan"), raise_on_fail=False)
    assert {r.check for r in report.failures} == {"vmap", "scan"}
    assert all(r.leaf == "args[0]" for r in report.failures)


def _sincos(skip_when_unused: bool):
    @jax.custom_vjp
    def sincos(x):
        return jnp.sin(x), jnp.cos(x)

    def bwd(x, g):
        g_sin, g_cos = g
        full = g_sin * jnp.cos(x) - g_cos * jnp.sin(x)
        if skip_when_unused:  # "no gradient flows into sin": skips the cos term too
            full = jnp.where(jnp.all(g_sin == 0), jnp.zeros_like(x), full)
        return (full,)

    sincos.defvjp(lambda x: (sincos(x), x), bwd)
    return sincos


def _sincos_twin(x):
    return jnp.sin(x), jnp.cos(x)


def test_symbolic_zeros_catches_a_bwd_wrong_when_an_output_is_unused():
    x = _x(4, 2)
    assert check_vjp(_sincos(False), x, reference=_sincos_twin, transforms=("symbolic-zeros",)).passed
    wrong = _sincos(True)
    assert check_vjp(wrong, x, reference=_sincos_twin).passed  # every output used: right
    with pytest.raises(GradientCheckError, match=r"symbolic-zeros check failed for args\[0\]") as err:
        check_vjp(wrong, x, reference=_sincos_twin, transforms=("symbolic-zeros",))
    assert "fn with out 0 unused" in str(err.value)


def test_an_error_under_a_transform_is_a_failed_row_with_the_message():
    @jax.custom_vjp
    def host(x):
        return jnp.tanh(x)

    def bwd(x, g):  # reads x back to the host: fine under jit's pure_callback, not under vmap
        return (jax.pure_callback(lambda a, b: b * (1 - jnp.tanh(a) ** 2), x, x, g, vmap_method=None),)

    host.defvjp(lambda x: (jnp.tanh(x), x), bwd)
    report = check_vjp(host, _x(3, 2), reference=jnp.tanh, transforms=("vmap",), raise_on_fail=False)
    (row,) = report.failures
    assert (row.check, row.leaf, row.compared) == ("vmap", "(all)", "raised")
    assert any(n.startswith("vmap: fn raised") for n in report.notes)


def test_shard_map_is_skipped_on_one_device():
    report = check_vjp(fp.dense, _x(4, 3), _x(2, 3, key=1), _x(2, key=2), transforms=("shard_map",))
    assert report.passed and any("shard_map skipped: one device only" in n for n in report.notes)


SHARDED = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    import funcprop as fp
    from funcprop.check import check_vjp

    x, w, b = (jax.random.normal(jax.random.key(i), s, jnp.float64) for i, s in enumerate([(8, 3), (2, 3), (2,)]))
    def plain(x, w):
        return x @ w.T

    def user_rule(sum_over_devices):
        @jax.custom_vjp
        def linear(x, w):
            return x @ w.T
        def bwd(res, g):
            x, w = res
            w_bar = g.T @ x  # the local batch's share
            return g @ w, sum_over_devices(w_bar, w)
        linear.defvjp(lambda x, w: (linear(x, w), (x, w)), bwd)
        return linear

    def show(name, report):
        rows = [r for r in report.rows if r.check == "shard_map"]
        print(name, report.passed, [(r.leaf, r.passed) for r in rows], [n for n in report.notes if "shard_map" in n])

    def extra_axes(v, like):  # the mesh axes v varies over and its primal does not
        return tuple(jax.typeof(v).manual_axis_type.varying - jax.typeof(like).manual_axis_type.varying)

    show("funcprop.dense", check_vjp(fp.dense, x, w, b, transforms=("shard_map",), raise_on_fail=False))
    show("funcprop.layer_norm", check_vjp(fp.layer_norm, x, w[0], b[:1].repeat(3), transforms=("shard_map",), raise_on_fail=False))
    psum = user_rule(lambda v, w: jax.lax.psum(v, extra_axes(v, w)) if extra_axes(v, w) else v)
    show("psum", check_vjp(psum, x, w, reference=plain, transforms=("shard_map",), raise_on_fail=False))
    local = user_rule(lambda v, w: v)  # the local gradient: the varying/replicated trap
    show("local", check_vjp(local, x, w, reference=plain, transforms=("shard_map",), raise_on_fail=False))
    mean = user_rule(lambda v, w: jax.lax.pmean(v, extra_axes(v, w)) if extra_axes(v, w) else v)  # the shares' mean
    show("pmean", check_vjp(mean, x, w, reference=plain, transforms=("shard_map",), raise_on_fail=False))
    """
)


def test_shard_map_on_four_devices_passes_funcprop_rules_and_catches_a_local_gradient():
    out = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {line.split(" ", 1)[0]: line for line in out.stdout.splitlines()}
    assert lines["funcprop.dense"].startswith(
        "funcprop.dense True [('out', True), ('args[0]', True), ('args[1]', True)"
    )
    assert lines["funcprop.layer_norm"].startswith("funcprop.layer_norm True")
    assert lines["psum"].startswith("psum True")
    assert lines["local"].startswith("local False [('(all)', False)]")
    assert "the manual axis types do not match" in lines["local"]
    assert lines["pmean"].startswith("pmean False") and "('args[1]', False)" in lines["pmean"]
    assert "('args[0]', True)" in lines["pmean"]
