"""Class ids out of range under jit, and the check that catches them outside it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcprop as fp


def test_out_of_range_ids_contribute_zero_under_jit():
    logits = jax.random.normal(jax.random.key(0), (4, 3), jnp.float64)
    ids = jnp.array([0, 2, 3, -1])  # the last two are outside [0, 3)
    loss, grad = jax.jit(jax.value_and_grad(fp.softmax_cross_entropy))(logits, ids)
    log_p = jax.nn.log_softmax(logits)
    expected = -(log_p[0, 0] + log_p[1, 2]) / 4  # still divided by all 4 rows
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    np.testing.assert_array_equal(grad[2:], 0.0)
    assert np.all(np.isfinite(grad))


def test_check_labels_accepts_valid_ids():
    out = fp.check_labels(jnp.array([0, 1, 2]), 3)
    np.testing.assert_array_equal(out, [0, 1, 2])


@pytest.mark.parametrize("ids, match", [([0, 3], r"labels\[1\] = 3"), ([[0, -1]], r"labels\[0, 1\] = -1")])
def test_check_labels_names_the_first_bad_id(ids, match):
    with pytest.raises(ValueError, match=rf"check_labels: 1 of \d labels are outside \[0, 3\).*{match}"):
        fp.check_labels(np.array(ids), 3)


def test_check_labels_rejects_float_labels():
    with pytest.raises(TypeError, match="check_labels: labels must be integer"):
        fp.check_labels(np.array([0.0, 1.0]), 3)


def test_unnormalised_targets_follow_the_general_formula():
    """(p Σy − y)/B: equal to p − y on the simplex, and right off it."""
    logits = jax.random.normal(jax.random.key(1), (3, 4), jnp.float64)
    y = jax.random.uniform(jax.random.key(2), (3, 4), jnp.float64)  # rows do not sum to 1
    grad = jax.grad(fp.softmax_cross_entropy)(logits, y)
    p = jax.nn.softmax(logits)
    np.testing.assert_allclose(grad, (p * y.sum(-1, keepdims=True) - y) / 3, rtol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int8, jnp.int16])
def test_narrow_integer_labels_do_not_wrap(dtype):
    logits = jax.random.normal(jax.random.key(3), (2, 300), jnp.float64)
    ids = jnp.array([5, 100], dtype)
    expected = fp.softmax_cross_entropy(logits, ids.astype(jnp.int32))
    np.testing.assert_allclose(fp.softmax_cross_entropy(logits, ids), expected, rtol=1e-12)
    grad = jax.grad(fp.softmax_cross_entropy)(logits, ids)
    assert int(jnp.sum(grad < 0)) == 2  # exactly one negative entry per row: p − y at the label


def test_masked_minus_inf_logit_gives_a_finite_loss():
    logits = jnp.array([[0.0, 1.0, -jnp.inf]], jnp.float64)
    loss, grad = jax.value_and_grad(fp.softmax_cross_entropy)(logits, jnp.array([1]))
    np.testing.assert_allclose(loss, jnp.log1p(jnp.exp(-1.0)), rtol=1e-12)
    assert np.all(np.isfinite(grad)) and grad[0, 2] == 0


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "mse", "sigmoid_binary_cross_entropy"])
@pytest.mark.parametrize("low", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_a_half_precision_loss_accumulates_in_float32(name, low):
    """40,000 examples: the float16 sum of the old rule overflowed to inf. The value is a
    float32 scalar equal to the float32 loss of the same inputs; cotangents keep the inputs'
    dtype and equal the float32 ones rounded to that dtype, to within one step of it."""
    rng = np.random.default_rng(0)
    z = jnp.asarray(3 * rng.standard_normal((40000, 10)), low)
    y = (
        jnp.asarray(rng.integers(0, 10, 40000))
        if name == "softmax_cross_entropy"
        else jnp.asarray(rng.uniform(size=(40000, 10)), low)
    )
    rule = getattr(fp, name)
    value, (z_bar, *rest) = jax.value_and_grad(rule, argnums=(0,) if name == "softmax_cross_entropy" else (0, 1))(z, y)
    wide = (z.astype(jnp.float32), y if name == "softmax_cross_entropy" else y.astype(jnp.float32))
    ref_value, ref_bar = jax.value_and_grad(rule)(*wide)
    assert value.dtype == jnp.float32 and np.isfinite(value)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    assert z_bar.dtype == low and all(r.dtype == low for r in rest)
    rounded = ref_bar.astype(low)
    near = (z_bar == rounded) | (z_bar == jnp.nextafter(rounded, jnp.inf)) | (z_bar == jnp.nextafter(rounded, -jnp.inf))
    assert bool(jnp.all(near)), f"{name}: {int(jnp.sum(~near))} cotangents off by more than one step"


def _rule_and_twin_grads(fn, *args):
    """∂/∂ every argument of the rule and of its twin (jax.grad of the plain forward)."""
    argnums = tuple(range(len(args)))
    return jax.grad(fn, argnums)(*args), jax.grad(fn.vjp_rule.twin, argnums)(*args)


def test_negative_probability_labels_follow_one_formula_in_rule_and_twin():
    """−Σ y log p for any y: the forward once dropped y < 0 while the backward used it
    (rule and twin disagreed by 0.2 in ∂L/∂z). Both now give (p Σy − y)/B and −log p/B."""
    logits = jnp.asarray([[0.1, 0.5, -0.3], [1.0, -2.0, 0.0]], jnp.float64)
    y = jnp.asarray([[0.3, -0.2, 0.9], [-1.0, 0.5, 0.0]], jnp.float64)  # negative and zero targets
    (z_bar, y_bar), (z_twin, y_twin) = _rule_and_twin_grads(fp.softmax_cross_entropy, logits, y)
    log_p = jax.nn.log_softmax(logits)
    np.testing.assert_allclose(fp.softmax_cross_entropy(logits, y), -jnp.sum(y * log_p) / 2, rtol=1e-12)
    np.testing.assert_allclose(z_bar, (jnp.exp(log_p) * y.sum(-1, keepdims=True) - y) / 2, rtol=1e-12)
    np.testing.assert_allclose(z_twin, z_bar, rtol=1e-12)
    # a zero target still has ∂L/∂y = −log p / B (the twin's where once made it 0)
    np.testing.assert_allclose(y_bar, -log_p / 2, rtol=1e-12)
    np.testing.assert_allclose(y_twin, y_bar, rtol=1e-12)


def test_a_minus_inf_logit_with_zero_target_adds_nothing_in_rule_and_twin():
    """0 · log 0 = 0 in the loss and in ∂L/∂y; the logit gets no gradient."""
    logits = jnp.asarray([[0.1, -jnp.inf, -0.3]], jnp.float64)
    y = jnp.asarray([[0.3, 0.0, 0.7]], jnp.float64)
    value = fp.softmax_cross_entropy(logits, y)
    (z_bar, y_bar), (z_twin, y_twin) = _rule_and_twin_grads(fp.softmax_cross_entropy, logits, y)
    assert np.isfinite(value) and value == fp.softmax_cross_entropy.vjp_rule.twin(logits, y)
    for got, want in ((z_bar, z_twin), (y_bar, y_twin)):
        assert np.all(np.isfinite(got)), got
        np.testing.assert_allclose(got, want, rtol=1e-12)
    assert z_bar[0, 1] == 0 and y_bar[0, 1] == 0


@pytest.mark.parametrize("name", ["mse", "sigmoid_binary_cross_entropy"])
def test_targets_outside_0_1_follow_one_formula_in_rule_and_twin(name):
    """Nothing is clipped: mse and the binary cross-entropy (linear in y) agree with
    their twins for any target."""
    rule = getattr(fp, name)
    z = jnp.asarray([[0.5, -1.0], [2.0, 0.0]], jnp.float64)
    y = jnp.asarray([[-0.5, 1.5], [3.0, -2.0]], jnp.float64)
    assert rule(z, y) == rule.vjp_rule.twin(z, y)
    for got, want in zip(*_rule_and_twin_grads(rule, z, y)):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_check_labels_takes_a_numpy_int_count():
    np.testing.assert_array_equal(fp.check_labels(np.array([0, 2]), np.int64(3)), [0, 2])
