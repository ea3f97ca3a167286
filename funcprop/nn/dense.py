"""Dense and elementwise (activation) layers."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcprop.nn._layer import Layer
from funcprop.nn.factory import from_rule, layer_dtypes
from funcprop.nn.init import initializer
from funcprop.rules import activations
from funcprop.rules._core import positive_int
from funcprop.rules.linear import dense


class DenseParams(NamedTuple):
    """Parameters of a dense layer, f = h Ωᵀ + β."""

    omega: jax.Array  # (n_out, n_in)
    beta: jax.Array  # (n_out,)


def Dense(n_out: int, *, w_init="lecun_normal", b_init="zeros", dtype=None, param_dtype=jnp.float32) -> Layer:
    """Fully connected layer ``f = h Ωᵀ + β`` with Ω: ``(n_out, n_in)``, β: ``(n_out,)``.

    Applied to the last axis: an example ``(n_in,)`` gives ``(n_out,)``, a sequence
    ``(T, n_in)`` gives ``(T, n_out)`` (each position alike). Put ``Flatten()`` first to
    treat an image as one vector.

    Args:
      n_out: the number of output features.
      w_init, b_init: an initialiser name from ``INITIALIZERS`` or a function
        ``init(key, shape, dtype)``.
      dtype: the computation dtype; None computes in ``param_dtype`` (see
        :mod:`funcprop.nn.factory` for the policy).
      param_dtype: the parameters' dtype.
    """
    n_out = positive_int("Dense", "n_out", n_out)
    name = f"Dense({n_out})"
    w_init, b_init = initializer(name, w_init), initializer(name, b_init)
    dtype, param_dtype = layer_dtypes(name, dtype, param_dtype)

    def make_params(key, input_shape, param_dtype):
        if len(input_shape) < 1:
            raise ValueError(
                f"{name}: input_shape must end in the features (..., n_in), got {input_shape}; "
                f"give one example's shape, e.g. (64,)"
            )
        k_w, k_b = jax.random.split(key)
        n_in = input_shape[-1]
        return DenseParams(w_init(k_w, (n_out, n_in), param_dtype), b_init(k_b, (n_out,), param_dtype))

    return from_rule(name, dense.vjp_rule, make_params, dtype=dtype, param_dtype=param_dtype)


def elementwise(name: str, rule: Callable, *static, dtype=None) -> Layer:
    """A parameter-free layer applying ``rule(x, *static)``, e.g. an activation.

    ``rule`` must be a funcprop rule (it has ``rule.vjp_rule``); ``static`` holds its
    static arguments in the order of its signature (``negative_slope``, ``axis``),
    checked by the rule's validation when the layer first runs.
    """
    return from_rule(name, rule.vjp_rule, static=static, dtype=layer_dtypes(name, dtype, None)[0])


def Sigmoid(*, dtype=None) -> Layer:
    """σ(f), elementwise."""
    return elementwise("Sigmoid", activations.sigmoid, dtype=dtype)


def Tanh(*, dtype=None) -> Layer:
    """tanh(f), elementwise."""
    return elementwise("Tanh", activations.tanh, dtype=dtype)


def Relu(*, dtype=None) -> Layer:
    """max(f, 0), elementwise; relu'(0) = 0."""
    return elementwise("Relu", activations.relu, dtype=dtype)


def LeakyRelu(negative_slope: float = 0.01, *, dtype=None) -> Layer:
    """f if f > 0 else negative_slope·f, elementwise."""
    slope = activations.negative_slope_arg(negative_slope)
    return elementwise(f"LeakyRelu({slope:g})", activations.leaky_relu, slope, dtype=dtype)


def Softplus(*, dtype=None) -> Layer:
    """log(1 + eᶠ), elementwise."""
    return elementwise("Softplus", activations.softplus, dtype=dtype)


def Gelu(*, dtype=None) -> Layer:
    """GELU, tanh approximation, elementwise."""
    return elementwise("Gelu", activations.gelu, dtype=dtype)


ACTIVATIONS: dict[str, Callable[[], Layer]] = {
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": Relu,
    "leaky_relu": LeakyRelu,
    "softplus": Softplus,
    "gelu": Gelu,
}

# The initialiser suited to each activation: He for the relu family, Glorot otherwise.
DEFAULT_W_INIT = {"relu": "he_normal", "leaky_relu": "he_normal", "gelu": "he_normal"}
