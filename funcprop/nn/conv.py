"""Convolution, pooling and flatten layers over NHWC examples."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcprop.nn._layer import Layer, LayerRules, _describe
from funcprop.nn.init import _initializer
from funcprop.rules.conv import _pair, conv2d, resolve_padding
from funcprop.rules.pool import avg_pool2d, max_pool2d


class ConvParams(NamedTuple):
    """Parameters of a 2-D convolution, NHWC input, HWIO kernel."""

    kernel: jax.Array  # (kh, kw, c_in, c_out)
    bias: jax.Array  # (c_out,)


def Conv2D(c_out: int, kernel_size, *, stride=1, padding="VALID", w_init="he_normal", b_init="zeros",
           dtype=jnp.float32) -> Layer:
    """2-D convolution layer over NHWC examples ``(H, W, C_in)``; see :func:`funcprop.conv2d`.

    Args:
      c_out: output channels.
      kernel_size: an int or ``(kh, kw)``.
      stride, padding: as in :func:`funcprop.conv2d` (``"VALID"``, ``"SAME"`` or pairs).
      w_init, b_init: initialiser names or functions; fans count the receptive field.
    """
    if isinstance(c_out, bool) or not isinstance(c_out, int) or c_out < 1:
        raise ValueError(f"Conv2D: c_out must be a positive int, got {c_out!r}")
    window = _pair("Conv2D", "kernel_size", kernel_size)
    stride = _pair("Conv2D", "stride", stride)
    name = f"Conv2D({c_out}, {window[0]}x{window[1]}, stride {stride[0]}x{stride[1]}, {padding})"
    w_init, b_init = _initializer(name, w_init), _initializer(name, b_init)
    rule = conv2d.vjp_rule

    def pads(x_shape):
        return resolve_padding(name, padding, x_shape[-3:-1], window, stride)

    def init(key, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"{name}: input_shape must be one example (H, W, C_in), got {input_shape}")
        out_shape = jax.eval_shape(
            lambda x, k, b: conv2d(x, k, b, stride, padding),
            jax.ShapeDtypeStruct(input_shape, dtype),
            jax.ShapeDtypeStruct((*window, input_shape[2], c_out), dtype),
            jax.ShapeDtypeStruct((c_out,), dtype),
        ).shape
        k_w, k_b = jax.random.split(key)
        return out_shape, ConvParams(w_init(k_w, (*window, input_shape[2], c_out), dtype), b_init(k_b, (c_out,), dtype))

    def apply(params, x):
        return conv2d(x, params.kernel, params.bias, stride, padding)

    def fwd(params, x):
        jax.eval_shape(apply, params, x)  # the shape checks of conv2d, at trace time
        return rule.fwd(x, params.kernel, params.bias, stride, pads(x.shape))

    def bwd(params, res, delta):
        del params
        x_bar, k_bar, b_bar = rule.bwd(stride, pads(res[0].shape), res, delta)
        return ConvParams(k_bar, b_bar), x_bar

    def twin(params, x):
        return rule.twin(x, params.kernel, params.bias, stride, padding)

    return Layer(init, _describe(name, apply, rules=LayerRules(fwd, bwd, twin)))


def _pool_layer(kind: str, rule, window, stride) -> Layer:
    window = _pair(kind, "window", window)
    stride = window if stride is None else _pair(kind, "stride", stride)
    name = f"{kind}({window[0]}x{window[1]}, stride {stride[0]}x{stride[1]})"
    vjp_rule = rule.vjp_rule

    def init(key, input_shape):
        del key
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"{name}: input_shape must be one example (H, W, C), got {input_shape}")
        return jax.eval_shape(lambda x: rule(x, window, stride), jax.ShapeDtypeStruct(input_shape, jnp.float32)).shape, ()

    def apply(params, x):
        del params
        return rule(x, window, stride)

    def fwd(params, x):
        jax.eval_shape(apply, params, x)
        return vjp_rule.fwd(x, window, stride)

    def bwd(params, res, g):
        del params
        (x_bar,) = vjp_rule.bwd(window, stride, res, g)
        return (), x_bar

    def twin(params, x):
        del params
        return vjp_rule.twin(x, window, stride)

    return Layer(init, _describe(name, apply, rules=LayerRules(fwd, bwd, twin)))


def MaxPool2D(window, stride=None) -> Layer:
    """Max pooling (VALID) over NHWC examples; ties go to the first maximum."""
    return _pool_layer("MaxPool2D", max_pool2d, window, stride)


def AvgPool2D(window, stride=None) -> Layer:
    """Average pooling (VALID) over NHWC examples."""
    return _pool_layer("AvgPool2D", avg_pool2d, window, stride)


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
