"""Normalization layers over the last axis: LayerNorm and RMSNorm."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcprop.nn._layer import Layer
from funcprop.nn.factory import from_rule, layer_dtypes
from funcprop.rules._core import positive_float
from funcprop.rules.norm import layer_norm, rms_norm


class LayerNormParams(NamedTuple):
    """Scale and shift of a layer normalization over d features."""

    gamma: jax.Array  # (d,), ones at init
    beta: jax.Array  # (d,), zeros at init


class RMSNormParams(NamedTuple):
    """Scale of an RMS normalization over d features."""

    gamma: jax.Array  # (d,), ones at init


def _features(name: str, input_shape) -> int:
    if len(input_shape) < 1:
        raise ValueError(f"{name}: input_shape must have a feature axis (..., d), got {input_shape}")
    return input_shape[-1]


def LayerNorm(*, eps: float = 1e-5, dtype=None, param_dtype=jnp.float32) -> Layer:
    """``γ ⊙ (x − μ) / √(σ² + ε) + β`` over the last axis; see :func:`funcprop.layer_norm`.

    Statistics are computed in float32 at least, whatever the computation dtype.
    """
    name = "LayerNorm"
    eps = positive_float(name, "eps", eps)
    dtype, param_dtype = layer_dtypes(name, dtype, param_dtype)

    def make_params(key, input_shape, param_dtype):
        d = _features(name, input_shape)
        return LayerNormParams(jnp.ones((d,), param_dtype), jnp.zeros((d,), param_dtype))

    return from_rule(name, layer_norm.vjp_rule, make_params, static=(eps,), dtype=dtype, param_dtype=param_dtype)


def RMSNorm(*, eps: float = 1e-6, dtype=None, param_dtype=jnp.float32) -> Layer:
    """``γ ⊙ x / √(mean(x²) + ε)`` over the last axis; see :func:`funcprop.rms_norm`."""
    name = "RMSNorm"
    eps = positive_float(name, "eps", eps)
    dtype, param_dtype = layer_dtypes(name, dtype, param_dtype)

    def make_params(key, input_shape, param_dtype):
        return RMSNormParams(jnp.ones((_features(name, input_shape),), param_dtype))

    return from_rule(name, rms_norm.vjp_rule, make_params, static=(eps,), dtype=dtype, param_dtype=param_dtype)
