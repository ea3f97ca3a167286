"""Convolution and pooling: ties, bad input, layers, and the written-out backprop of a CNN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcprop as fp
from funcprop import backprop, nn
from helpers import RTOL, assert_close

F64 = RTOL[np.dtype("float64")]
f32 = lambda *shape: jnp.ones(shape, jnp.float32)  # noqa: E731


def test_max_pool_tie_goes_to_the_first_maximum_in_row_major_order():
    # one 2×2 window, all equal: the top-left element takes the whole gradient
    x = jnp.zeros((1, 2, 2, 1), jnp.float64)
    grad = jax.grad(lambda x: jnp.sum(fp.max_pool2d(x, 2)))(x)
    np.testing.assert_array_equal(grad[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])
    # a tie between the two bottom elements: the left one (smaller column) wins
    x = jnp.asarray([[0.0, 1.0], [3.0, 3.0]]).reshape(1, 2, 2, 1)
    grad = jax.grad(lambda x: jnp.sum(fp.max_pool2d(x, 2)))(x)
    np.testing.assert_array_equal(grad[0, :, :, 0], [[0.0, 0.0], [1.0, 0.0]])


def test_overlapping_max_windows_add_up_and_uncovered_rows_get_zero():
    x = jnp.zeros((1, 4, 3, 1), jnp.float64).at[0, 1, 1, 0].set(5.0)
    grad = jax.grad(lambda x: jnp.sum(fp.max_pool2d(x, 2, stride=1)))(x)
    # the 5 is the maximum of all four 2×2 windows around it
    assert grad[0, 1, 1, 0] == 4.0 and float(jnp.sum(grad)) == 6.0  # 3×2 windows in all
    grad = jax.grad(lambda x: jnp.sum(fp.avg_pool2d(x, 2)))(jnp.ones((1, 5, 5, 1), jnp.float64))
    np.testing.assert_array_equal(grad[0, 4, :, 0], 0.0)  # row 4 is in no window
    np.testing.assert_array_equal(grad[0, :4, :4, 0], 0.25)


BAD_INPUTS = [
    ("conv/rank", lambda: fp.conv2d(f32(8, 8), f32(3, 3, 1, 2), f32(2)), ValueError,
     r"conv2d: x must be NHWC \(N, H, W, C_in\) or one example \(H, W, C_in\), got shape \(8, 8\)"),
    ("conv/channels", lambda: fp.conv2d(f32(2, 8, 8, 3), f32(3, 3, 1, 2), f32(2)), ValueError,
     r"conv2d: x has 3 channels \(shape \(2, 8, 8, 3\)\) but kernel has shape \(3, 3, 1, 2\)"),
    ("conv/kernel-rank", lambda: fp.conv2d(f32(2, 8, 8, 1), f32(3, 3, 2), f32(2)), ValueError,
     r"conv2d: kernel must be HWIO"),
    ("conv/bias", lambda: fp.conv2d(f32(2, 8, 8, 1), f32(3, 3, 1, 2), f32(3)), ValueError,
     r"conv2d: bias has shape \(3,\) but kernel has shape \(3, 3, 1, 2\); bias must be \(2,\)"),
    ("conv/too-big", lambda: fp.conv2d(f32(2, 4, 4, 1), f32(5, 3, 1, 2), f32(2)), ValueError,
     r"conv2d: the kernel \(5, 3\) is larger than the padded input \(4, 4\)"),
    ("conv/padding", lambda: fp.conv2d(f32(2, 4, 4, 1), f32(3, 3, 1, 2), f32(2), padding="FULL"), ValueError,
     r"conv2d: padding must be 'VALID', 'SAME' or \(\(top, bottom\), \(left, right\)\)"),
    ("conv/stride", lambda: fp.conv2d(f32(2, 4, 4, 1), f32(3, 3, 1, 2), f32(2), stride=0), ValueError,
     r"conv2d: stride must be a positive int or a pair of them, got 0"),
    ("conv/int", lambda: fp.conv2d(jnp.ones((1, 4, 4, 1), jnp.int32), f32(3, 3, 1, 2), f32(2)), TypeError,
     r"conv2d: x must be a floating-point array"),
    ("pool/too-big", lambda: fp.max_pool2d(f32(2, 3, 8, 1), (4, 2)), ValueError,
     r"max_pool2d: window \(4, 2\) is larger than the input's spatial shape \(3, 8\)"),
    ("pool/rank", lambda: fp.avg_pool2d(f32(8, 8), 2), ValueError, r"avg_pool2d: x must be NHWC"),
]


@pytest.mark.parametrize("call, exception, pattern", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_a_clear_error(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


def _small_cnn(dtype=jnp.float64):
    return nn.serial(
        nn.Conv2D(3, (3, 2), stride=(2, 1), padding="SAME", dtype=dtype), nn.Tanh(),
        nn.Conv2D(4, 3, padding=((1, 0), (0, 1)), dtype=dtype), nn.Relu(),
        nn.MaxPool2D(2), nn.AvgPool2D((1, 2), stride=1), nn.Flatten(), nn.Dense(5, dtype=dtype),
    )


def test_cnn_layers_infer_shapes():
    out_shape, params = _small_cnn().init(jax.random.key(0), (9, 8, 2))
    assert out_shape == (5,)
    assert params[0].kernel.shape == (3, 2, 2, 3) and params[2].kernel.shape == (3, 3, 3, 4)
    out_shape, _ = nn.cnn().init(jax.random.key(0), (8, 8, 1))
    assert out_shape == (10,)


def test_cnn_backprop_equals_autodiff_through_rules_and_twins():
    model = _small_cnn()
    _, params = model.init(jax.random.key(0), (9, 8, 2))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape, p.dtype), params)
    x = jax.random.normal(jax.random.key(2), (3, 9, 8, 2), jnp.float64)
    y = jnp.array([0, 4, 2])
    loss = fp.softmax_cross_entropy
    value, grads = jax.jit(backprop.value_and_grad(model, loss))(params, x, y)
    rules = jax.grad(lambda p: loss(model.apply(p, x), y))(params)
    twins = jax.grad(lambda p: loss.vjp_rule.twin(nn.twin(model)(p, x), y))(params)
    assert_close(value, loss(model.apply(params, x), y), F64, "loss")
    for ref_name, ref in [("rules", rules), ("twins", twins)]:
        for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref)):
            assert_close(got, want, F64, f"{ref_name} {jax.tree_util.keystr(path)}")


def test_conv_layer_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"serial layer 0 \(Conv2D\(4, 3x3, stride 1x1, VALID\)\): Conv2D.*input_shape must be one example \(H, W, C_in\)"):
        nn.serial(nn.Conv2D(4, 3), nn.Flatten()).init(jax.random.key(0), (64,))
    with pytest.raises(ValueError, match=r"serial layer 2 \(MaxPool2D\(3x3, stride 3x3\)\): .*max_pool2d: window \(3, 3\) is larger"):
        nn.serial(nn.Conv2D(4, 3), nn.Relu(), nn.MaxPool2D(3)).init(jax.random.key(0), (4, 4, 1))
