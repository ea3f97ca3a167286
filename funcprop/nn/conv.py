"""Convolution, pooling and flatten layers over NHWC examples."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcprop.nn._layer import Layer, leaf
from funcprop.nn.factory import from_rule, layer_dtypes
from funcprop.nn.init import initializer
from funcprop.rules._core import positive_int
from funcprop.rules._spatial import padding_spec, pair
from funcprop.rules.conv import conv2d
from funcprop.rules.pool import avg_pool2d, max_pool2d


class ConvParams(NamedTuple):
    """Parameters of a 2-D convolution, NHWC input, HWIO kernel."""

    kernel: jax.Array  # (kh, kw, c_in, c_out)
    bias: jax.Array  # (c_out,)


def Conv2D(
    c_out: int,
    kernel_size,
    *,
    stride=1,
    padding="VALID",
    dilation=1,
    w_init="he_normal",
    b_init="zeros",
    dtype=None,
    param_dtype=jnp.float32,
) -> Layer:
    """2-D convolution layer over NHWC examples ``(H, W, C_in)``; see :func:`funcprop.conv2d`.

    Args:
      c_out: output channels.
      kernel_size: an int or ``(kh, kw)``.
      stride, padding, dilation: as in :func:`funcprop.conv2d` (padding ``"VALID"``,
        ``"SAME"``, an int, a pair of ints or explicit pairs).
      w_init, b_init: initialiser names or functions; fans count the receptive field.
      dtype, param_dtype: the computation and parameter dtypes, as for ``Dense``.
    """
    c_out = positive_int("Conv2D", "c_out", c_out)
    window = pair("Conv2D", "kernel_size", kernel_size)
    stride, dilation = pair("Conv2D", "stride", stride), pair("Conv2D", "dilation", dilation)
    padding = padding_spec("Conv2D", padding)
    dilated = "" if dilation == (1, 1) else f", dilation {dilation[0]}x{dilation[1]}"
    name = f"Conv2D({c_out}, {window[0]}x{window[1]}, stride {stride[0]}x{stride[1]}, {padding}{dilated})"
    w_init, b_init = initializer(name, w_init), initializer(name, b_init)
    dtype, param_dtype = layer_dtypes(name, dtype, param_dtype)

    def make_params(key, input_shape, param_dtype):
        if len(input_shape) != 3:
            raise ValueError(f"{name}: input_shape must be one example (H, W, C_in), got {input_shape}")
        k_w, k_b = jax.random.split(key)
        return ConvParams(
            w_init(k_w, (*window, input_shape[2], c_out), param_dtype), b_init(k_b, (c_out,), param_dtype)
        )

    return from_rule(
        name,
        conv2d.vjp_rule,
        make_params,
        static=(stride, padding, dilation),
        dtype=dtype,
        param_dtype=param_dtype,
        input_rank=4,
    )


def _pool_layer(kind: str, rule, window, stride, padding, *options, dtype=None) -> Layer:
    window = pair(kind, "window", window)
    stride = window if stride is None else pair(kind, "stride", stride)
    padding = padding_spec(kind, padding)
    padded = "" if padding == "VALID" else f", {padding}"
    name = f"{kind}({window[0]}x{window[1]}, stride {stride[0]}x{stride[1]}{padded})"
    return from_rule(
        name,
        rule.vjp_rule,
        static=(window, stride, padding, *options),
        dtype=layer_dtypes(name, dtype, None)[0],
        input_rank=4,
    )


def MaxPool2D(window, stride=None, padding="VALID", *, dtype=None) -> Layer:
    """Max pooling over NHWC examples; ties go to the first maximum. Arguments as in
    :func:`funcprop.max_pool2d`."""
    return _pool_layer("MaxPool2D", max_pool2d, window, stride, padding, dtype=dtype)


def AvgPool2D(window, stride=None, padding="VALID", count_include_pad=True, *, dtype=None) -> Layer:
    """Average pooling over NHWC examples. Arguments as in :func:`funcprop.avg_pool2d`."""
    if not isinstance(count_include_pad, bool):
        raise TypeError(f"AvgPool2D: count_include_pad must be True or False, got {count_include_pad!r}")
    return _pool_layer("AvgPool2D", avg_pool2d, window, stride, padding, count_include_pad, dtype=dtype)


def Flatten() -> Layer:
    """``(B, *shape) -> (B, prod(shape))``; the backward reshapes the cotangent back.

    The batch axis is required: a model with Flatten takes batches only (a single
    image ``(H, W, C)`` would be read as H examples; pass ``x[None]``).
    """

    def init(key, input_shape):
        del key
        return (math.prod(input_shape),), ()

    def apply(params, x, *, key=None):
        del params, key
        if jnp.ndim(x) < 2:
            raise ValueError(
                f"Flatten: input must be a batch (B, ...), got shape {jnp.shape(x)}; add a batch axis with x[None]"
            )
        return x.reshape(x.shape[0], -1)

    def fwd(params, x, key):
        return apply(params, x), x.shape

    def bwd(params, shape, g):
        del params
        return (), g.reshape(shape)

    def twin(params, x, key):
        return apply(params, x)

    return leaf("Flatten", init, apply, fwd, bwd, twin)
