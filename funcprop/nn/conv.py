"""Convolution, pooling and flatten layers over NHWC examples."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcprop.nn._layer import Layer, LayerRules, _describe
from funcprop.nn.init import _initializer
from funcprop.rules._spatial import pair, padding_spec
from funcprop.rules.conv import conv2d, conv2d_args
from funcprop.rules.pool import avg_pool2d, max_pool2d, pool_args


class ConvParams(NamedTuple):
    """Parameters of a 2-D convolution, NHWC input, HWIO kernel."""

    kernel: jax.Array  # (kh, kw, c_in, c_out)
    bias: jax.Array  # (c_out,)


def Conv2D(c_out: int, kernel_size, *, stride=1, padding="VALID", dilation=1, w_init="he_normal",
           b_init="zeros", dtype=jnp.float32) -> Layer:
    """2-D convolution layer over NHWC examples ``(H, W, C_in)``; see :func:`funcprop.conv2d`.

    Args:
      c_out: output channels.
      kernel_size: an int or ``(kh, kw)``.
      stride, padding, dilation: as in :func:`funcprop.conv2d` (padding ``"VALID"``,
        ``"SAME"``, an int, a pair of ints or explicit pairs).
      w_init, b_init: initialiser names or functions; fans count the receptive field.
    """
    if isinstance(c_out, bool) or not isinstance(c_out, int) or c_out < 1:
        raise ValueError(f"Conv2D: c_out must be a positive int, got {c_out!r}")
    window = pair("Conv2D", "kernel_size", kernel_size)
    stride, dilation = pair("Conv2D", "stride", stride), pair("Conv2D", "dilation", dilation)
    padding = padding_spec("Conv2D", padding)
    dilated = "" if dilation == (1, 1) else f", dilation {dilation[0]}x{dilation[1]}"
    name = f"Conv2D({c_out}, {window[0]}x{window[1]}, stride {stride[0]}x{stride[1]}, {padding}{dilated})"
    w_init, b_init = _initializer(name, w_init), _initializer(name, b_init)
    rule = conv2d.vjp_rule

    def init(key, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"{name}: input_shape must be one example (H, W, C_in), got {input_shape}")
        k_w, k_b = jax.random.split(key)
        params = ConvParams(w_init(k_w, (*window, input_shape[2], c_out), dtype), b_init(k_b, (c_out,), dtype))
        return jax.eval_shape(apply, params, jax.ShapeDtypeStruct(input_shape, dtype)).shape, params

    def apply(params, x):
        return conv2d(x, params.kernel, params.bias, stride, padding, dilation)

    def fwd(params, x):
        args = conv2d_args(x, params.kernel, params.bias, stride, padding, dilation)
        y, res = rule.fwd(*args)
        return y, (args[4], res)  # the explicit pads, for the bwd

    def bwd(params, res, delta):
        del params
        pads, res = res
        x_bar, k_bar, b_bar = rule.bwd(stride, pads, dilation, res, delta)
        return ConvParams(k_bar, b_bar), x_bar

    def twin(params, x):
        return rule.twin(x, params.kernel, params.bias, stride, padding, dilation)

    return Layer(init, _describe(name, apply, rules=LayerRules(fwd, bwd, twin)))


def _pool_layer(kind: str, rule, window, stride, padding, *options) -> Layer:
    window = pair(kind, "window", window)
    stride = window if stride is None else pair(kind, "stride", stride)
    padding = padding_spec(kind, padding)
    padded = "" if padding == "VALID" else f", {padding}"
    name = f"{kind}({window[0]}x{window[1]}, stride {stride[0]}x{stride[1]}{padded})"
    vjp_rule = rule.vjp_rule

    def init(key, input_shape):
        del key
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"{name}: input_shape must be one example (H, W, C), got {input_shape}")
        return jax.eval_shape(lambda x: apply((), x), jax.ShapeDtypeStruct(input_shape, jnp.float32)).shape, ()

    def apply(params, x):
        del params
        return rule(x, window, stride, padding, *options)

    def fwd(params, x):
        del params
        x, _, _, pads = pool_args(rule.__name__, x, window, stride, padding)
        y, res = vjp_rule.fwd(x, window, stride, pads, *options)
        return y, (pads, res)

    def bwd(params, res, g):
        del params
        pads, res = res
        (x_bar,) = vjp_rule.bwd(window, stride, pads, *options, res, g)
        return (), x_bar

    def twin(params, x):
        del params
        return vjp_rule.twin(x, window, stride, padding, *options)

    return Layer(init, _describe(name, apply, rules=LayerRules(fwd, bwd, twin)))


def MaxPool2D(window, stride=None, padding="VALID") -> Layer:
    """Max pooling over NHWC examples; ties go to the first maximum. Arguments as in
    :func:`funcprop.max_pool2d`."""
    return _pool_layer("MaxPool2D", max_pool2d, window, stride, padding)


def AvgPool2D(window, stride=None, padding="VALID", count_include_pad=True) -> Layer:
    """Average pooling over NHWC examples. Arguments as in :func:`funcprop.avg_pool2d`."""
    if not isinstance(count_include_pad, bool):
        raise TypeError(f"AvgPool2D: count_include_pad must be True or False, got {count_include_pad!r}")
    return _pool_layer("AvgPool2D", avg_pool2d, window, stride, padding, count_include_pad)


def Flatten() -> Layer:
    """``(B, *shape) -> (B, prod(shape))``; the backward reshapes the cotangent back.

    The batch axis is required: a model with Flatten takes batches only (a single
    image ``(H, W, C)`` would be read as H examples; pass ``x[None]``).
    """

    def init(key, input_shape):
        del key
        return (math.prod(input_shape),), ()

    def apply(params, x):
        del params
        return x.reshape(x.shape[0], -1)

    def fwd(params, x):
        return apply(params, x), x.shape

    def bwd(params, shape, g):
        del params
        return (), g.reshape(shape)

    return Layer(init, _describe("Flatten", apply, rules=LayerRules(fwd, bwd, apply)))
