"""The mixed-precision policy of DESIGN §7 in the matmul, convolution, softmax and pool
rules: bfloat16 and float16 accumulate in float32, and the output and every cotangent
come back in their own dtype.

JAX does not catch a bwd that returns float32 for a bfloat16 input (``jax.grad`` then
returns float32), so the dtypes are asserted here, on the rule and on its twin."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import with_floats

import funcprop as fp
from funcprop.rules.table import RULES
from funcprop.verify import verification_markdown, verify_rules

LOW = pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
POLICY = ("dense", "conv2d", "softmax", "log_softmax", "avg_pool2d", "max_pool2d")
CASES = [case for case in RULES if case.name.split("/")[0] in POLICY]


def _pullback_dtypes(fn, args, kwargs):
    """(output dtype, cotangent dtypes) of fn's VJP, found abstractly (nothing compiles)."""
    f, floats = with_floats(fn, args, kwargs)

    def run(*floats):
        out, pullback = jax.vjp(f, *floats)
        return out, pullback(jnp.ones_like(out))

    out, cts = jax.eval_shape(run, *floats)
    return out.dtype, [ct.dtype for ct in cts]


@LOW
@pytest.mark.parametrize("path", ["rule", "twin"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_output_and_every_cotangent_keep_their_primal_dtype(case, path, dtype):
    args = case.args(jax.random.key(0), dtype)
    assert all(a.dtype == dtype for a in args)  # every argument of these rules is a float
    out, cts = _pullback_dtypes(case.rule if path == "rule" else case.twin, args, case.kwargs)
    assert out == dtype
    assert cts == [jnp.dtype(dtype)] * len(args)


# --- a long reduction: float32 accumulation is what keeps it to one rounding ----------


def _ulps(actual, exact, dtype):
    """|actual − exact| in units of the dtype's spacing at |exact|."""
    spacing = 2.0 ** (np.floor(np.log2(np.abs(exact))) - jnp.finfo(dtype).nmant)
    return np.abs(np.asarray(actual, np.float64) - exact) / spacing


def _f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


def _dense(rng, dtype):
    """4096 products of values in [0, 1) per output (sums near 1024), and a bias."""
    h, omega = (jnp.asarray(rng.uniform(0, 1, shape), dtype) for shape in [(8, 4096), (4, 4096)])
    beta = jnp.asarray(4 * rng.standard_normal(4), dtype)
    h64, omega64, beta64 = _f64(h, omega, beta)
    return fp.dense, (h, omega, beta), {}, h64 @ omega64.T + beta64


def _conv2d(rng, dtype):
    """A 3×3 kernel over 512 channels: 4608 products per output."""
    x, kernel = (jnp.asarray(rng.uniform(0, 1, shape), dtype) for shape in [(2, 4, 4, 512), (3, 3, 512, 3)])
    bias = jnp.asarray(4 * rng.standard_normal(3), dtype)
    x64, kernel64, bias64 = _f64(x, kernel, bias)
    patches = np.stack([x64[:, i : i + 2, j : j + 2] for i in range(3) for j in range(3)], axis=3)  # (2, 2, 2, 9, 512)
    exact = np.einsum("nyxkc,kco->nyxo", patches, kernel64.reshape(9, 512, 3)) + bias64
    return fp.conv2d, (x, kernel, bias), {}, exact


def _avg_pool2d(rng, dtype):
    """One 15×15 window: a sum of 225 values."""
    x = jnp.asarray(rng.uniform(0, 1, (2, 15, 15, 3)), dtype)
    return fp.avg_pool2d, (x,), {"window": 15}, _f64(x)[0].mean(axis=(1, 2), keepdims=True)


@LOW
@pytest.mark.parametrize("make", [_dense, _conv2d, _avg_pool2d], ids=["dense", "conv2d", "avg_pool2d"])
def test_a_long_reduction_is_one_rounding_of_the_exact_result(make, dtype):
    """Exact in float64 for the low-precision inputs, then rounded once: at most half a
    spacing off. A sum kept in the low dtype (the pool before the policy), or a product
    rounded before the bias is added, is off by 0.8 to 6 spacings on these inputs."""
    fn, args, kwargs, exact = make(np.random.default_rng(0), dtype)
    for f in (fn, fn.vjp_rule.twin):
        out = jax.jit(lambda *a, f=f: f(*a, **kwargs))(*args)
        assert out.dtype == dtype
        assert _ulps(out, exact, dtype).max() <= 0.51, f.__name__


def test_a_bfloat16_accumulator_would_be_far_off():
    """The dense inputs above summed with a running bfloat16 accumulator: once the sum
    reaches 2⁸ its spacing is 2, every product in [0, 1) rounds away and the sum stalls
    near 256 of about 1024: what the long-reduction test can tell from one rounding."""
    fn, (h, omega, beta), _, exact = _dense(np.random.default_rng(0), jnp.bfloat16)
    terms = jnp.moveaxis(h[:, None, :] * omega[None], -1, 0)  # (4096, 8, 4) products in bfloat16
    running = jax.lax.scan(lambda acc, t: (acc + t, None), jnp.zeros(exact.shape, jnp.bfloat16), terms)[0]
    assert _ulps(running + beta, exact, jnp.bfloat16).min() > 10


# --- verification covers bfloat16 ---------------------------------------------------


def test_verify_rules_has_a_passing_bfloat16_row_per_rule():
    cases = [c for c in RULES if c.name in ("dense", "softmax")]
    rows = verify_rules(cases=cases)
    assert [(r["rule"], r["dtype"]) for r in rows] == [
        (name, dtype) for name in ("dense", "softmax") for dtype in ("bfloat16", "float32", "float64")
    ]
    assert all(r["passed"] for r in rows)
    bf16 = [r for r in rows if r["dtype"] == "bfloat16"]
    assert all(r["vs_fd_max_rel_error"] is None and r["vs_twin_tol"] >= 2.0**-7 for r in bf16)
    table = verification_markdown(rows)
    assert "| dense | bfloat16 | " in table and "6 of 6 passed" in table
    assert "A bfloat16 row compares the rule in that dtype with its twin in float64" in table
