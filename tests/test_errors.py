"""Bad input: each rule names itself, what it expected and what it got."""

import jax.numpy as jnp
import pytest

import funcprop as fp

f32 = lambda *shape: jnp.ones(shape, jnp.float32)  # noqa: E731

BAD_INPUTS = [
    # (id, call, exception, message pattern)
    (
        "dense/n_in",
        lambda: fp.dense(f32(5, 4), f32(7, 3), f32(7)),
        ValueError,
        r"dense: omega has shape \(7, 3\) but h has 4 features .*must be \(n_out, 4\)",
    ),
    (
        "dense/beta",
        lambda: fp.dense(f32(5, 3), f32(7, 3), f32(3)),
        ValueError,
        r"dense: beta has shape \(3,\) but omega has shape \(7, 3\); beta must be \(7,\)",
    ),
    (
        "dense/omega-rank",
        lambda: fp.dense(f32(5, 3), f32(3), f32(3)),
        ValueError,
        r"dense: omega must be a matrix \(n_out, n_in\), got shape \(3,\)",
    ),
    ("dense/scalar-h", lambda: fp.dense(f32(), f32(2, 1), f32(2)), ValueError, r"dense: h must have at least one axis"),
    (
        "dense/int-h",
        lambda: fp.dense(jnp.ones((5, 3), jnp.int32), f32(7, 3), f32(7)),
        TypeError,
        r"dense: h must be a floating-point array, got dtype int32",
    ),
    (
        "dense/mixed-dtype",
        lambda: fp.dense(jnp.ones((5, 3), jnp.float64), f32(7, 3), f32(7)),
        TypeError,
        r"dense: arguments must share one float dtype, but h is float64, omega is float32",
    ),
    ("relu/int", lambda: fp.relu(jnp.arange(3)), TypeError, r"relu: f must be a floating-point"),
    (
        "leaky_relu/negative-slope",
        lambda: fp.leaky_relu(f32(3), -0.1),
        ValueError,
        r"leaky_relu: negative_slope must be a finite number >= 0, got -0.1",
    ),
    (
        "leaky_relu/array-slope",
        lambda: fp.leaky_relu(f32(3), jnp.float32(0.1)),
        TypeError,
        r"leaky_relu: negative_slope must be a static Python float",
    ),
    (
        "softmax/axis",
        lambda: fp.softmax(f32(5, 4), axis=2),
        ValueError,
        r"softmax: axis 2 is out of range for an input of rank 2",
    ),
    (
        "log_softmax/scalar",
        lambda: fp.log_softmax(f32()),
        ValueError,
        r"log_softmax: z must have rank >= 1, got shape \(\)",
    ),
    (
        "sce/ids-shape",
        lambda: fp.softmax_cross_entropy(f32(5, 4), jnp.zeros((4,), jnp.int32)),
        ValueError,
        r"softmax_cross_entropy: integer labels have shape \(4,\) but logits have shape \(5, 4\)",
    ),
    (
        "sce/probs-shape",
        lambda: fp.softmax_cross_entropy(f32(5, 4), f32(5, 3)),
        ValueError,
        r"softmax_cross_entropy: probability labels have shape \(5, 3\) but logits have shape \(5, 4\)",
    ),
    (
        "sce/bool-labels",
        lambda: fp.softmax_cross_entropy(f32(2, 4), jnp.ones((2,), bool)),
        TypeError,
        r"softmax_cross_entropy: labels must be integer class ids or float probabilities, got dtype bool",
    ),
    (
        "sce/scalar-logits",
        lambda: fp.softmax_cross_entropy(f32(), jnp.int32(0)),
        ValueError,
        r"softmax_cross_entropy: logits must have a class axis",
    ),
    (
        "mse/broadcast",
        lambda: fp.mse(f32(5, 1), f32(5)),
        ValueError,
        r"mse: pred has shape \(5, 1\) but target has shape \(5,\)",
    ),
    (
        "bce/int-targets",
        lambda: fp.sigmoid_binary_cross_entropy(f32(5), jnp.ones(5, jnp.int32)),
        TypeError,
        r"sigmoid_binary_cross_entropy: targets must be a floating-point array",
    ),
    (
        "bce/shape",
        lambda: fp.sigmoid_binary_cross_entropy(f32(5, 2), f32(2, 5)),
        ValueError,
        r"sigmoid_binary_cross_entropy: logits has shape \(5, 2\) but targets has shape \(2, 5\)",
    ),
    ("softmax/bool-axis", lambda: fp.softmax(f32(5, 4), axis=True), TypeError, r"softmax: axis must be a Python int"),
    # empty axes: nothing to take a max over, or a mean over nothing (NaN)
    (
        "softmax/0-classes",
        lambda: fp.softmax(f32(3, 0)),
        ValueError,
        r"softmax: needs at least one class on axis 1, got shape \(3, 0\)",
    ),
    (
        "log_softmax/0-classes",
        lambda: fp.log_softmax(f32(0, 4), axis=0),
        ValueError,
        r"log_softmax: needs at least one class on axis 0, got shape \(0, 4\)",
    ),
    (
        "sce/0-classes",
        lambda: fp.softmax_cross_entropy(f32(3, 0), jnp.zeros((3,), jnp.int32)),
        ValueError,
        r"softmax_cross_entropy: needs at least one class on axis -1, got shape \(3, 0\)",
    ),
    (
        "sce/0-examples",
        lambda: fp.softmax_cross_entropy(f32(0, 4), jnp.zeros((0,), jnp.int32)),
        ValueError,
        r"softmax_cross_entropy: needs at least one example to average over, got shape \(0, 4\)",
    ),
    (
        "sce/0-examples-leading-axes",
        lambda: fp.softmax_cross_entropy(f32(2, 0, 4), f32(2, 0, 4)),
        ValueError,
        r"softmax_cross_entropy: needs at least one example",
    ),
    (
        "mse/empty",
        lambda: fp.mse(f32(0, 3), f32(0, 3)),
        ValueError,
        r"mse: needs at least one element to average over, got shape \(0, 3\); the mean over 0 elements is NaN",
    ),
    (
        "bce/empty",
        lambda: fp.sigmoid_binary_cross_entropy(f32(4, 0), f32(4, 0)),
        ValueError,
        r"sigmoid_binary_cross_entropy: needs at least one element",
    ),
]


@pytest.mark.parametrize("call, exception, pattern", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_a_clear_error(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()
