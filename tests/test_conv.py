"""Convolution and pooling: ties, bad input, layers, and the written-out backprop of a CNN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, assert_close

import funcprop as fp
from funcprop import backprop, nn

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


def test_a_nan_is_the_maximum_of_its_window_in_the_rule_and_its_twin():
    """NaN in a window: the output is NaN and ḡ goes to the first NaN, in the rule and in
    the twin alike. (The twin was lax.reduce_window, whose autodiff sent ḡ to the 1.366
    of this window: XLA's select skips a NaN that comes first.)"""
    x = jnp.asarray([[jnp.nan, 0.1], [0.4, 1.366]], jnp.float64).reshape(1, 2, 2, 1)
    for fn in (fp.max_pool2d, fp.max_pool2d.vjp_rule.twin):
        out, grad = jax.value_and_grad(lambda x, fn=fn: jnp.sum(fn(x, 2)))(x)
        assert jnp.isnan(out), fn.__name__
        np.testing.assert_array_equal(grad[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]], err_msg=fn.__name__)


def test_overlapping_max_windows_add_up_and_uncovered_rows_get_zero():
    x = jnp.zeros((1, 4, 3, 1), jnp.float64).at[0, 1, 1, 0].set(5.0)
    grad = jax.grad(lambda x: jnp.sum(fp.max_pool2d(x, 2, stride=1)))(x)
    # the 5 is the maximum of all four 2×2 windows around it
    assert grad[0, 1, 1, 0] == 4.0 and float(jnp.sum(grad)) == 6.0  # 3×2 windows in all
    grad = jax.grad(lambda x: jnp.sum(fp.avg_pool2d(x, 2)))(jnp.ones((1, 5, 5, 1), jnp.float64))
    np.testing.assert_array_equal(grad[0, 4, :, 0], 0.0)  # row 4 is in no window
    np.testing.assert_array_equal(grad[0, :4, :4, 0], 0.25)


BAD_INPUTS = [
    (
        "conv/rank",
        lambda: fp.conv2d(f32(8, 8), f32(3, 3, 1, 2), f32(2)),
        ValueError,
        r"conv2d: x must be NHWC \(N, H, W, C_in\) or one example \(H, W, C_in\), got shape \(8, 8\)",
    ),
    (
        "conv/channels",
        lambda: fp.conv2d(f32(2, 8, 8, 3), f32(3, 3, 1, 2), f32(2)),
        ValueError,
        r"conv2d: x has 3 channels \(shape \(2, 8, 8, 3\)\) but kernel has shape \(3, 3, 1, 2\)",
    ),
    (
        "conv/kernel-rank",
        lambda: fp.conv2d(f32(2, 8, 8, 1), f32(3, 3, 2), f32(2)),
        ValueError,
        r"conv2d: kernel must be HWIO",
    ),
    (
        "conv/bias",
        lambda: fp.conv2d(f32(2, 8, 8, 1), f32(3, 3, 1, 2), f32(3)),
        ValueError,
        r"conv2d: bias has shape \(3,\) but kernel has shape \(3, 3, 1, 2\); bias must be \(2,\)",
    ),
    (
        "conv/too-big",
        lambda: fp.conv2d(f32(2, 4, 4, 1), f32(5, 3, 1, 2), f32(2)),
        ValueError,
        r"conv2d: the kernel \(5, 3\) is larger than the padded input \(4, 4\)",
    ),
    (
        "conv/padding",
        lambda: fp.conv2d(f32(2, 4, 4, 1), f32(3, 3, 1, 2), f32(2), padding="FULL"),
        ValueError,
        r"conv2d: padding must be 'VALID', 'SAME', an int, a pair of ints \(per axis\) or \(\(top, bottom\)",
    ),
    (
        "conv/negative-padding",
        lambda: fp.conv2d(f32(2, 4, 4, 1), f32(3, 3, 1, 2), f32(2), padding=-1),
        ValueError,
        r"conv2d: padding must be .* of ints >= 0, got -1",
    ),
    (
        "conv/dilation",
        lambda: fp.conv2d(f32(2, 4, 4, 1), f32(3, 3, 1, 2), f32(2), dilation=(1, 0)),
        ValueError,
        r"conv2d: dilation must be a positive int or a pair of them, got \(1, 0\)",
    ),
    (
        "conv/dilated-too-big",
        lambda: fp.conv2d(f32(2, 4, 4, 1), f32(3, 3, 1, 2), f32(2), dilation=2),
        ValueError,
        r"conv2d: the dilated kernel \(5, 5\) is larger than the padded input \(4, 4\)",
    ),
    ("Conv2D/padding", lambda: nn.Conv2D(4, 3, padding="FULL"), ValueError, r"Conv2D: padding must be 'VALID'"),
    (
        "pool/padding",
        lambda: fp.max_pool2d(f32(2, 6, 6, 1), 2, padding=2),
        ValueError,
        r"max_pool2d: padding \(\(2, 2\), \(2, 2\)\) must be smaller than the window \(2, 2\) on every side",
    ),
    (
        "pool/count",
        lambda: fp.avg_pool2d(f32(2, 6, 6, 1), 2, count_include_pad=1),
        TypeError,
        r"avg_pool2d: count_include_pad must be True or False, got 1",
    ),
    ("AvgPool2D/padding", lambda: nn.AvgPool2D(2, padding="FULL"), ValueError, r"AvgPool2D: padding must be"),
    (
        "conv/stride",
        lambda: fp.conv2d(f32(2, 4, 4, 1), f32(3, 3, 1, 2), f32(2), stride=0),
        ValueError,
        r"conv2d: stride must be a positive int or a pair of them, got 0",
    ),
    (
        "conv/int",
        lambda: fp.conv2d(jnp.ones((1, 4, 4, 1), jnp.int32), f32(3, 3, 1, 2), f32(2)),
        TypeError,
        r"conv2d: x must be a floating-point array",
    ),
    (
        "pool/too-big",
        lambda: fp.max_pool2d(f32(2, 3, 8, 1), (4, 2)),
        ValueError,
        r"max_pool2d: the window \(4, 2\) is larger than the padded input \(3, 8\)",
    ),
    ("pool/rank", lambda: fp.avg_pool2d(f32(8, 8), 2), ValueError, r"avg_pool2d: x must be NHWC"),
    # a kernel without taps: XLA's verifier failed inside jit ("expects window to have
    # positive value") instead of a message naming conv2d
    (
        "conv/no-taps",
        lambda: fp.conv2d(f32(2, 7, 5, 2), f32(0, 3, 2, 4), f32(4)),
        ValueError,
        r"conv2d: kernel must be HWIO \(kh, kw, C_in, C_out\) with kh, kw >= 1, got shape \(0, 3, 2, 4\)",
    ),
    (
        "pool/bool-window",
        lambda: fp.max_pool2d(f32(2, 4, 4, 1), True),
        ValueError,
        r"max_pool2d: window must be a positive int or a pair of them, got True",
    ),
]


@pytest.mark.parametrize("call, exception, pattern", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_a_clear_error(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


def _small_cnn(dtype=jnp.float64):
    return nn.serial(
        nn.Conv2D(3, (3, 2), stride=(2, 1), padding="SAME", param_dtype=dtype),
        nn.Tanh(),
        nn.Conv2D(4, 3, padding=((1, 0), (0, 1)), param_dtype=dtype),
        nn.Relu(),
        nn.MaxPool2D(2),
        nn.AvgPool2D((1, 2), stride=1),
        nn.Flatten(),
        nn.Dense(5, param_dtype=dtype),
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
    with pytest.raises(
        ValueError,
        match=r"serial layer 0 \(Conv2D\(4, 3x3, stride 1x1, VALID\)\): Conv2D.*input_shape must be one example \(H, W, C_in\)",
    ):
        nn.serial(nn.Conv2D(4, 3), nn.Flatten()).init(jax.random.key(0), (64,))
    with pytest.raises(
        ValueError,
        match=r"serial layer 2 \(MaxPool2D\(3x3, stride 3x3\)\): .*max_pool2d: the window \(3, 3\) is larger",
    ):
        nn.serial(nn.Conv2D(4, 3), nn.Relu(), nn.MaxPool2D(3)).init(jax.random.key(0), (4, 4, 1))


# --- the padding and dilation forms, against references written here ---------------------


def test_conv_padding_forms_equal_their_explicit_pairs():
    x, k, b = (
        jax.random.normal(jax.random.key(i), s, jnp.float64) for i, s in enumerate([(2, 6, 5, 2), (3, 3, 2, 4), (4,)])
    )
    assert_close(fp.conv2d(x, k, b, padding=1), fp.conv2d(x, k, b, padding=((1, 1), (1, 1))), F64, "int")
    assert_close(fp.conv2d(x, k, b, padding=(2, 1)), fp.conv2d(x, k, b, padding=((2, 2), (1, 1))), F64, "pair")


def test_dilated_conv_equals_a_conv_with_zeros_between_the_taps():
    x, k, b = (
        jax.random.normal(jax.random.key(i), s, jnp.float64) for i, s in enumerate([(2, 9, 8, 2), (3, 2, 2, 3), (3,)])
    )
    spread = jnp.zeros((5, 3, 2, 3), jnp.float64).at[::2, ::2].set(k)  # dilation (2, 2)
    assert_close(
        fp.conv2d(x, k, b, dilation=2, stride=2, padding="SAME"),
        fp.conv2d(x, spread, b, stride=2, padding="SAME"),
        F64,
        "forward",
    )
    g_dil = jax.grad(lambda x, k: jnp.sum(fp.conv2d(x, k, b, dilation=2) ** 2), argnums=(0, 1))(x, k)
    g_spread = jax.grad(lambda x, s: jnp.sum(fp.conv2d(x, s, b) ** 2), argnums=(0, 1))(x, spread)
    assert_close(g_dil[0], g_spread[0], F64, "x̄")
    assert_close(g_dil[1], g_spread[1][::2, ::2], F64, "K̄ at the taps")


def test_pool_padding_matches_lax_own_padding_and_counts():
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3), jnp.float64)
    dims, strides = (1, 3, 3, 1), (1, 2, 2, 1)
    want = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, "SAME")  # lax's own SAME
    assert_close(fp.max_pool2d(x, 3, 2, padding="SAME"), want, F64, "max SAME")
    sums = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, "SAME")
    counts = jax.lax.reduce_window(jnp.ones_like(x), 0.0, jax.lax.add, dims, strides, "SAME")
    assert_close(fp.avg_pool2d(x, 3, 2, padding="SAME"), sums / 9, F64, "avg, pad counted")
    assert_close(
        fp.avg_pool2d(x, 3, 2, padding="SAME", count_include_pad=False), sums / counts, F64, "avg, pad not counted"
    )
    # the backward of the exclude-pad mean: each input gets Σ over its windows of ḡ / count
    g = jax.grad(lambda x: jnp.sum(fp.avg_pool2d(x, 3, 2, padding="SAME", count_include_pad=False)))(x)
    want_g = jax.grad(lambda x: jnp.sum(jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, "SAME") / counts))(x)
    assert_close(g, want_g, F64, "avg backward")


def test_pool_layers_take_padding():
    model = nn.serial(nn.MaxPool2D(3, 2, padding="SAME"), nn.AvgPool2D(2, 1, padding=1, count_include_pad=False))
    shape, _ = model.init(jax.random.key(0), (7, 7, 2))
    assert shape == (5, 5, 2)
    x = jax.random.normal(jax.random.key(1), (3, 7, 7, 2), jnp.float64)
    y = jax.random.normal(jax.random.key(2), (3, 5, 5, 2), jnp.float64)
    value, _ = backprop.value_and_grad(model, fp.mse)(((), ()), x, y)
    assert_close(value, fp.mse(model.apply(((), ()), x), y), F64, "loss")
    got = jax.grad(lambda x: fp.mse(model.apply(((), ()), x), y))(x)
    want = jax.grad(lambda x: fp.mse.vjp_rule.twin(nn.twin(model)(((), ()), x), y))(x)
    assert_close(got, want, F64, "x̄ through padded pools")
