"""Dense and elementwise (activation) layers."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from funcprop.nn._layer import Layer, LayerRules, _describe
from funcprop.nn.init import _initializer
from funcprop.rules import activations
from funcprop.rules.linear import dense


class DenseParams(NamedTuple):
    """Parameters of a dense layer, f = h Ωᵀ + β."""

    omega: jax.Array  # (n_out, n_in)
    beta: jax.Array  # (n_out,)


def Dense(n_out: int, *, w_init="lecun_normal", b_init="zeros", dtype=jnp.float32) -> Layer:
    """Fully connected layer ``f = h Ωᵀ + β`` with Ω: ``(n_out, n_in)``, β: ``(n_out,)``.

    Args:
      n_out: the number of output features.
      w_init, b_init: an initialiser name from ``INITIALIZERS`` or a function
        ``init(key, shape, dtype)``.
      dtype: the parameters' dtype.
    """
    if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1:
        raise ValueError(f"Dense: n_out must be a positive int, got {n_out!r}")
    name = f"Dense({n_out})"
    w_init, b_init = _initializer(name, w_init), _initializer(name, b_init)

    def init(key, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 1:
            raise ValueError(
                f"{name}: input_shape must be one example's features (n_in,), got "
                f"{input_shape}; put Flatten() before a Dense layer on images"
            )
        k_w, k_b = jax.random.split(key)
        n_in = input_shape[0]
        return (n_out,), DenseParams(w_init(k_w, (n_out, n_in), dtype), b_init(k_b, (n_out,), dtype))

    def check(params, x):
        n_in = params.omega.shape[1]
        if x.ndim < 1 or x.shape[-1] != n_in:
            raise ValueError(
                f"{name}: input has shape {tuple(x.shape)} but omega has shape "
                f"{tuple(params.omega.shape)}; the input must be (..., {n_in})"
            )

    def apply(params, x):
        check(params, x)
        return dense(x, params.omega, params.beta)

    rule = dense.vjp_rule

    def fwd(params, x):
        check(params, x)
        return rule.fwd(x, params.omega, params.beta)

    def bwd(params, res, delta):
        del params
        h_bar, omega_bar, beta_bar = rule.bwd(res, delta)
        return DenseParams(omega_bar, beta_bar), h_bar

    def twin(params, x):
        return rule.twin(x, params.omega, params.beta)

    return Layer(init, _describe(name, apply, rules=LayerRules(fwd, bwd, twin)))


def elementwise(name: str, rule: Callable, **static) -> Layer:
    """A parameter-free layer applying ``rule(x, **static)``, e.g. an activation.

    ``rule`` must be a funcprop rule (it has ``rule.vjp_rule``); ``static`` holds its
    static arguments in the order of its signature (``negative_slope``, ``axis``).
    """
    vjp_rule = rule.vjp_rule
    static_args = tuple(static.values())

    def init(key, input_shape):
        del key
        return tuple(input_shape), ()

    def apply(params, x):
        del params
        return rule(x, **static)

    def fwd(params, x):
        del params
        return vjp_rule.fwd(x, *static_args)

    def bwd(params, res, g):
        del params
        (x_bar,) = vjp_rule.bwd(*static_args, res, g)
        return (), x_bar

    def twin(params, x):
        del params
        return vjp_rule.twin(x, *static_args)

    return Layer(init, _describe(name, apply, rules=LayerRules(fwd, bwd, twin)))


def Sigmoid() -> Layer:
    """σ(f), elementwise."""
    return elementwise("Sigmoid", activations.sigmoid)


def Tanh() -> Layer:
    """tanh(f), elementwise."""
    return elementwise("Tanh", activations.tanh)


def Relu() -> Layer:
    """max(f, 0), elementwise; relu'(0) = 0."""
    return elementwise("Relu", activations.relu)


def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """f if f > 0 else negative_slope·f, elementwise."""
    activations.leaky_relu(jnp.zeros(()), negative_slope)  # validate the slope now
    return elementwise(f"LeakyRelu({negative_slope})", activations.leaky_relu, negative_slope=float(negative_slope))


def Softplus() -> Layer:
    """log(1 + eᶠ), elementwise."""
    return elementwise("Softplus", activations.softplus)


def Gelu() -> Layer:
    """GELU, tanh approximation, elementwise."""
    return elementwise("Gelu", activations.gelu)


ACTIVATIONS: dict[str, Callable[[], Layer]] = {
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": Relu,
    "leaky_relu": LeakyRelu,
    "softplus": Softplus,
    "gelu": Gelu,
}

# The initialiser suited to each activation: He for the relu family, Glorot otherwise.
_DEFAULT_W_INIT = {"relu": "he_normal", "leaky_relu": "he_normal", "gelu": "he_normal"}
