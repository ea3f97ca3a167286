"""check_vjp in bfloat16 and float16: a float32/float64 reference, a measured tolerance,
and the float32 Taylor remainder where float64 is off."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcprop.check import GradientCheckError, check_vjp, precision
from funcprop.rules.table import RULES


def _softsign(x):
    return x / (1 + jnp.abs(x))


def _softsign_rule(bwd):
    rule = jax.custom_vjp(_softsign)
    rule.defvjp(lambda x: (_softsign(x), x), bwd)
    return rule


def _right(x, g):
    return (g / (1 + jnp.abs(x)) ** 2,)


BUGS = {
    "bias 2%": lambda x, g: (1.02 * _right(x, g)[0],),
    "bias 5%": lambda x, g: (1.05 * _right(x, g)[0],),
    "one sign": lambda x, g: (_right(x, g)[0].at[0, 0].multiply(-1),),
    "missing factor": lambda x, g: (g / (1 + jnp.abs(x)),),  # (1 + |x|)⁻¹, not ⁻²
}
LOW = [jnp.bfloat16, jnp.float16]


def _x(dtype, shape=(64, 32)):
    return jax.random.normal(jax.random.key(0), shape, jnp.float32).astype(dtype)


@pytest.mark.parametrize("x64", [True, False], ids=["x64", "no-x64"])
@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "f16"])
def test_passes_a_right_rule_and_flags_a_bias_a_sign_and_a_factor(dtype, x64):
    with jax.enable_x64(x64):
        x = _x(dtype)
        report = check_vjp(_softsign_rule(_right), x, reference=_softsign)
        assert report.passed
        vjp = next(r for r in report.rows if r.check == "vjp")
        assert vjp.compared == f"{jnp.dtype(dtype).name} fn vs {'float64' if x64 else 'float32'} reference"
        assert float(jnp.finfo(dtype).eps) <= vjp.tol < 3e-2  # measured, tighter than the fixed bound
        for bwd in BUGS.values():
            with pytest.raises(GradientCheckError, match=r"vjp check failed for args\[0\]"):
                check_vjp(_softsign_rule(bwd), x, reference=_softsign)


def test_the_old_fixed_tolerance_would_pass_the_bias():
    """The issue's report: both sides in bf16 against 3e-2 let a 5% bias through."""
    x = _x(jnp.bfloat16)
    wrong = _softsign_rule(BUGS["bias 5%"])
    report = check_vjp(wrong, x, reference=_softsign, raise_on_fail=False)
    vjp = next(r for r in report.rows if r.check == "vjp")
    assert not vjp.passed and vjp.max_rel_error < 3e-2


def test_measured_tolerance_is_three_times_the_reference_own_rounding():
    x = _x(jnp.bfloat16)
    c = jax.random.normal(jax.random.key(1), x.shape, jnp.float32).astype(jnp.bfloat16)
    low = jax.vjp(_softsign, x)[1](c)[0]
    high = jax.vjp(_softsign, x.astype(jnp.float64))[1](c.astype(jnp.float64))[0]
    err = precision.max_scaled_error(low[None], high[None])
    assert precision.measured_tolerance(low[None], high[None], jnp.bfloat16) == max(3 * err, 2.0**-7)
    assert 1e-3 < err < 7e-3  # bf16 rounding of this gradient, the scale the factor 3 is set for


@pytest.mark.parametrize(
    "case",
    # one case per rule; max_pool2d's bf16 inputs hold ties, a kink that the
    # float64 finite differences (like any one-sided derivative) cannot resolve
    [c for i, c in enumerate(RULES) if c.rule not in {d.rule for d in RULES[:i]}],
    ids=lambda c: c.name,
)
def test_funcprop_rules_pass_in_bfloat16(case):
    args = case.args(jax.random.key(0), jnp.bfloat16)
    ties = any(np.unique(np.asarray(a, np.float32)).size < np.size(a) for a in args if a.dtype == jnp.bfloat16)
    fd = not (case.name.startswith("max_pool2d") and ties)
    report = check_vjp(case.rule, *args, kwargs=case.kwargs, finite_differences=fd)
    assert report.passed
    assert all("float64 reference" in r.compared for r in report.rows if r.check in ("output", "vjp"))


# --- the Taylor remainder, where float64 is off ---------------------------------------


def _quadratic(linear):
    """f(x) = L x + x²: r(ε) = ε² Σ c v² exactly; L sets where r meets rounding."""

    def f(x):
        return linear * x + x * x

    return f


@pytest.mark.parametrize(
    "linear, end", [(0.0, "small"), (1e4, "large")], ids=["resolved-to-small-eps", "rounding-at-large-eps"]
)
def test_taylor_passes_right_and_fails_wrong_at_both_ends_of_the_window(linear, end):
    f = _quadratic(linear)
    right = jax.custom_vjp(f)
    right.defvjp(lambda x: (f(x), x), lambda x, g: (g * (linear + 2 * x),))
    wrong = jax.custom_vjp(f)
    wrong.defvjp(lambda x: (f(x), x), lambda x, g: (1.02 * g * (linear + 2 * x),))
    x = jax.random.normal(jax.random.key(0), (4, 4), jnp.float32)
    with jax.enable_x64(False):
        report = check_vjp(right, x, reference=f, rtol=1.0)
        taylor = next(r for r in report.rows if r.check == "taylor")
        assert taylor.passed and abs(taylor.received - 2) < 0.2
        assert "finite-diff" not in {r.check for r in report.rows}
        # the smallest resolved ε: 2^-8 or below for L = 0, 2^-4 or above for L = 1e4
        r, noise = _remainders(right, x, linear)
        last = int(np.nonzero(r > precision.TAYLOR_RESOLVED * noise)[0].max())
        assert last >= 7 if end == "small" else last <= 3
        failed = check_vjp(wrong, x, reference=f, rtol=1.0, raise_on_fail=False)
        bad = next(r for r in failed.rows if r.check == "taylor")
        assert not bad.passed and abs(bad.received - 1) < 0.2


def _remainders(rule, x, linear):
    """r(ε) and the rounding level along trial 0's direction, as the checker forms them."""
    eps = np.asarray(precision.TAYLOR_EPS, np.float32)
    g = linear + 2 * x  # c = 1
    v = g / jnp.sqrt(jnp.mean(g**2)) * jnp.sqrt(jnp.mean(x**2))
    phi0 = jnp.sum(rule(x))
    r = np.array([abs(float(jnp.sum(rule(x + e * v)) - phi0 - e * jnp.sum(g * v))) for e in eps])
    noise = np.finfo(np.float32).eps * 2 * float(jnp.sqrt(jnp.sum(rule(x) ** 2)))
    return r, np.full_like(r, noise)


def test_taylor_row_on_a_linear_rule_says_it_stays_at_rounding():
    with jax.enable_x64(False):
        x = jax.random.normal(jax.random.key(0), (5, 3), jnp.float32)
        double = jax.custom_vjp(lambda x: 2 * x)
        double.defvjp(lambda x: (2 * x, None), lambda _, g: (2 * g,))
        report = check_vjp(double, x, reference=lambda x: 2 * x)
    assert report.passed
    assert any("stays at float32 rounding" in n for n in report.notes)
