"""Extreme inputs stay finite; the derivative at a kink is the documented one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcprop as fp
from funcprop.rules.table import RULES, rule_names

DTYPES = pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
EXTREME = [-1e4, -50.0, -1.0, 0.0, 1.0, 50.0, 1e4]


def _extreme_logits(dtype):
    """(7, 3): every row mixes ±1e4 with moderate values."""
    col = jnp.asarray(EXTREME, dtype)
    return jnp.stack([col, -col, jnp.roll(col, 2)], axis=1)


def _finite_value_and_grads(fn, *args):
    value, grads = jax.value_and_grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(len(args))))(*args)
    for leaf in (value, *grads):
        assert np.all(np.isfinite(np.asarray(leaf))), f"{fn.__name__}: non-finite {leaf}"
    return value, grads


@DTYPES
@pytest.mark.parametrize("rule", [fp.sigmoid, fp.softplus, fp.log_softmax], ids=lambda r: r.__name__)
def test_elementwise_extremes_are_finite(rule, dtype):
    _finite_value_and_grads(rule, _extreme_logits(dtype))


@DTYPES
def test_softmax_cross_entropy_extremes_are_finite(dtype):
    logits = _extreme_logits(dtype)
    ids = jnp.array([0, 1, 2, 0, 1, 2, 0])
    value, (g,) = _finite_value_and_grads(lambda z: fp.softmax_cross_entropy(z, ids), logits)
    z = np.asarray(logits, np.float64)  # reference: NumPy logsumexp in float64
    m = z.max(axis=1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    expected = np.mean(lse - z[np.arange(7), np.asarray(ids)])
    assert float(value) == pytest.approx(expected, rel=1e-6)
    probs = jax.nn.softmax(logits)
    _finite_value_and_grads(fp.softmax_cross_entropy, logits, probs)


@DTYPES
def test_sigmoid_binary_cross_entropy_extremes_are_finite(dtype):
    logits = _extreme_logits(dtype)
    targets = jnp.broadcast_to(jnp.asarray([0.0, 1.0, 0.5], dtype), logits.shape)
    value, _ = _finite_value_and_grads(fp.sigmoid_binary_cross_entropy, logits, targets)
    assert np.isfinite(float(value))


@DTYPES
def test_extreme_gradients_match_their_limits(dtype):
    z = jnp.asarray([-1e4, 1e4], dtype)
    assert np.allclose(jax.grad(lambda z: jnp.sum(fp.sigmoid(z)))(z), [0.0, 0.0])
    assert np.allclose(jax.grad(lambda z: jnp.sum(fp.softplus(z)))(z), [0.0, 1.0])


@DTYPES
def test_relu_kink_derivative_is_zero(dtype):
    """relu'(0) = 0, by convention; the twin agrees."""
    f = jnp.asarray([-1.0, 0.0, 1.0], dtype)
    grad = jax.grad(lambda f: jnp.sum(fp.relu(f)))(f)
    np.testing.assert_array_equal(grad, np.array([0.0, 0.0, 1.0], dtype))
    twin = fp.relu.vjp_rule.twin
    np.testing.assert_array_equal(jax.grad(lambda f: jnp.sum(twin(f)))(f), grad)


@DTYPES
@pytest.mark.parametrize("slope", [0.0, 0.01, 0.3])
def test_leaky_relu_kink_derivative_is_the_slope(dtype, slope):
    """leaky_relu'(0) = negative_slope (the left derivative), as for relu."""
    f = jnp.asarray([-1.0, 0.0, 1.0], dtype)
    grad = jax.grad(lambda f: jnp.sum(fp.leaky_relu(f, slope)))(f)
    np.testing.assert_allclose(grad, np.array([slope, slope, 1.0], dtype), rtol=0)


@pytest.mark.parametrize("case", RULES, ids=rule_names())
def test_nan_in_is_nan_out(case):
    """A NaN input gives a NaN output, in the rule and in its twin: never a finite value
    that training would go on with (relu once returned 0 for NaN)."""
    args = list(case.args(jax.random.key(0), jnp.float32))
    first = next(i for i, a in enumerate(args) if jnp.issubdtype(a.dtype, jnp.floating))
    args[first] = jnp.full_like(args[first], jnp.nan)
    for fn in (case.rule, case.twin):
        assert bool(jnp.any(jnp.isnan(fn(*args, **case.kwargs)))), f"{case.name}: NaN in, no NaN out"


@pytest.mark.parametrize(
    "dtype, big", [(jnp.float32, 1e20), (jnp.float64, 1e200), (jnp.float16, 6e4)], ids=["f32", "f64", "f16"]
)
def test_gelu_gradient_is_finite_where_f_cubed_overflows(dtype, big):
    """gelu'(f) → 1 as f → ∞ and → 0 as f → −∞; 0·∞ once made it NaN. Grad of grad too."""
    f = jnp.asarray([big, -big, 3.0], dtype)
    grad = jax.vmap(jax.grad(fp.gelu))(f)
    want = jax.vmap(jax.grad(fp.gelu.vjp_rule.twin))(jnp.asarray([0.0, 0.0, 3.0], jnp.float64))
    np.testing.assert_array_equal(np.asarray(grad[:2], np.float64), [1.0, 0.0])
    np.testing.assert_allclose(np.asarray(grad[2], np.float64), want[2], rtol=5e-3)
    assert np.all(np.isfinite(np.asarray(jax.vmap(jax.grad(jax.grad(fp.gelu)))(f), np.float64)))


EMPTY = [
    # (id, rule, args): an empty batch, 0 features or 0 outputs; the result is as empty
    ("dense/0-outputs", fp.dense, ((2, 3), (0, 3), (0,))),  # ∂L/∂Ω once raised ZeroDivisionError
    ("dense/0-features", fp.dense, ((2, 0), (4, 0), (4,))),
    ("dense/0-batch", fp.dense, ((0, 3), (4, 3), (4,))),
    ("softmax/0-batch", fp.softmax, ((0, 3),)),
    ("log_softmax/0-batch", fp.log_softmax, ((2, 0, 3),)),
    ("conv2d/0-batch", fp.conv2d, ((0, 5, 5, 2), (3, 3, 2, 4), (4,))),
    ("conv2d/0-channels-in", fp.conv2d, ((2, 5, 5, 0), (3, 3, 0, 4), (4,))),
    ("layer_norm/0-batch", fp.layer_norm, ((0, 4), (4,), (4,))),
    ("sigmoid/empty", fp.sigmoid, ((3, 0),)),
]


@pytest.mark.parametrize("rule, shapes", [c[1:] for c in EMPTY], ids=[c[0] for c in EMPTY])
def test_empty_axes_give_empty_results_like_the_twin(rule, shapes):
    args = [jnp.asarray(np.random.default_rng(0).standard_normal(s)) for s in shapes]
    argnums = tuple(range(len(args)))
    out = rule(*args)
    np.testing.assert_array_equal(out, rule.vjp_rule.twin(*args))
    grads = jax.grad(lambda *a: jnp.sum(rule(*a)), argnums)(*args)
    twin_grads = jax.grad(lambda *a: jnp.sum(rule.vjp_rule.twin(*a)), argnums)(*args)
    for a, g, t in zip(args, grads, twin_grads):
        assert g.shape == a.shape and g.dtype == a.dtype
        np.testing.assert_allclose(g, t, rtol=1e-12)


def test_tanh_gradient_keeps_its_digits_near_saturation_in_bfloat16():
    """tanh' read off the bfloat16 output t as (1 − t)(1 + t), to one rounding of the
    exact 1 − t²; 1 − t·t lost 2% (three bfloat16 spacings) to the rounding of t·t, and
    differed from autodiff of the twin by as much."""
    f = jnp.linspace(1.5, 3.0, 64, dtype=jnp.float32).astype(jnp.bfloat16)
    grad = np.asarray(jax.vmap(jax.grad(fp.tanh))(f), np.float64)
    exact = 1 - np.asarray(fp.tanh(f), np.float64) ** 2  # at the rounded output
    np.testing.assert_allclose(grad, exact, rtol=float(jnp.finfo(jnp.bfloat16).eps))
