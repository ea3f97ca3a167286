"""Networks as pure functions over parameter pytrees.

A layer is a pair of pure functions, as in ``jax.example_libraries.stax``, named the way
optax names ``GradientTransformation(init, update)``::

    output_shape, params = layer.init(key, input_shape)   # input_shape: one example
    y = layer.apply(params, x)                             # x: (B, *input_shape)

Parameters are plain pytrees: a dense layer's are ``DenseParams(omega, beta)``, a
layer without parameters has ``()``, and ``serial`` nests its layers' params in a
tuple, so optax and ``jax.tree`` take them unchanged.

Each layer built here also carries, on its ``apply`` function, the hand-written pieces
that :mod:`funcprop.backprop` runs (``apply.rules``: fwd, bwd, and the plain twin), and
``serial`` carries its sub-layers (``apply.layers``). A user's own ``Layer(init,
apply)`` works everywhere except in the written-out backprop.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from funcprop.rules import activations
from funcprop.rules.linear import dense

Params = Any  # a pytree of arrays
Shape = tuple[int, ...]


class Layer(NamedTuple):
    """A layer: ``init(key, input_shape) -> (output_shape, params)``, ``apply(params, x)``."""

    init: Callable[[jax.Array, Shape], tuple[Shape, Params]]
    apply: Callable[[Params, jax.Array], jax.Array]


class DenseParams(NamedTuple):
    """Parameters of a dense layer, f = h Ωᵀ + β."""

    omega: jax.Array  # (n_out, n_in)
    beta: jax.Array  # (n_out,)


class LayerRules(NamedTuple):
    """The hand-written pieces of a leaf layer, as :mod:`funcprop.backprop` uses them.

    Attributes:
      fwd: ``fwd(params, x) -> (y, residuals)``, the rule's fwd.
      bwd: ``bwd(params, residuals, y_bar) -> (params_bar, x_bar)``, the rule's bwd.
      twin: ``twin(params, x) -> y``, the same layer built from plain twins.
    """

    fwd: Callable
    bwd: Callable
    twin: Callable


def _describe(name: str, apply, *, rules=None, layers=None):
    apply.layer_name = name
    apply.rules = rules
    apply.layers = layers
    return apply


def layer_name(layer: Layer) -> str:
    """A readable name for messages: ``Dense(7)``, ``Sigmoid``, ``serial[3]``."""
    return getattr(layer.apply, "layer_name", getattr(layer.apply, "__name__", "layer"))


# --- initialisers: init(key, (n_out, n_in), dtype) -> array ------------------------


def _fans(shape: Shape) -> tuple[int, int]:
    """(fan_in, fan_out) of ``(n_out, n_in)`` or of a kernel ``(*window, c_in, c_out)``."""
    if len(shape) == 2:
        return shape[1], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def he_normal(key, shape, dtype=jnp.float32):
    """Kaiming/He normal: N(0, 2 / fan_in); for relu-like activations."""
    return jax.random.normal(key, shape, dtype) * math.sqrt(2 / _fans(shape)[0])


def lecun_normal(key, shape, dtype=jnp.float32):
    """LeCun normal: N(0, 1 / fan_in)."""
    return jax.random.normal(key, shape, dtype) * math.sqrt(1 / _fans(shape)[0])


def glorot_normal(key, shape, dtype=jnp.float32):
    """Glorot/Xavier normal: N(0, 2 / (fan_in + fan_out)); for sigmoid and tanh."""
    fan_in, fan_out = _fans(shape)
    return jax.random.normal(key, shape, dtype) * math.sqrt(2 / (fan_in + fan_out))


def glorot_uniform(key, shape, dtype=jnp.float32):
    """Glorot/Xavier uniform: U(−a, a), a = √(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(shape)
    limit = math.sqrt(6 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def zeros(key, shape, dtype=jnp.float32):
    """All zeros (the default bias)."""
    del key
    return jnp.zeros(shape, dtype)


INITIALIZERS = {
    "he_normal": he_normal,
    "lecun_normal": lecun_normal,
    "glorot_normal": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "zeros": zeros,
}


def _initializer(fn: str, init):
    if callable(init):
        return init
    if init in INITIALIZERS:
        return INITIALIZERS[init]
    raise ValueError(f"{fn}: unknown initialiser {init!r}; use one of {sorted(INITIALIZERS)} or a function")


# --- Dense -----------------------------------------------------------------------


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


# --- elementwise layers ------------------------------------------------------------


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


# --- composition -------------------------------------------------------------------


def serial(*layers: Layer) -> Layer:
    """Compose layers in order; params are the tuple of the layers' params.

    A shape error in a layer is re-raised naming its position: ``serial layer 2
    (Dense(3)): ...``.
    """
    for i, layer in enumerate(layers):
        if not (isinstance(layer, tuple) and len(layer) == 2 and all(map(callable, layer))):
            raise TypeError(
                f"serial: argument {i} must be a Layer(init, apply), got {type(layer).__name__}; "
                f"call the constructor, e.g. Relu() rather than Relu"
            )
    layers = tuple(Layer(*layer) for layer in layers)
    name = f"serial[{len(layers)}]"

    def init(key, input_shape):
        keys = jax.random.split(key, len(layers)) if layers else []
        shape, params = tuple(input_shape), []
        for i, (layer, k) in enumerate(zip(layers, keys)):
            with _located(i, layer):
                shape, p = layer.init(k, shape)
            params.append(p)
        return shape, tuple(params)

    def apply(params, x):
        if not isinstance(params, (tuple, list)) or len(params) != len(layers):
            got = len(params) if isinstance(params, (tuple, list)) else type(params).__name__
            raise ValueError(f"{name}: params must be a tuple of {len(layers)} layer params, got {got}")
        for i, (layer, p) in enumerate(zip(layers, params)):
            with _located(i, layer):
                x = layer.apply(p, x)
        return x

    return Layer(init, _describe(name, apply, layers=layers))


class _located:
    """Re-raise a ValueError from layer i with its position in serial."""

    def __init__(self, i, layer):
        self.prefix = f"serial layer {i} ({layer_name(layer)}): "

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if kind is ValueError:
            raise ValueError(self.prefix + str(err)) from err
        return False


def mlp(
    sizes: Sequence[int],
    activation: str = "relu",
    *,
    w_init=None,
    b_init="zeros",
    dtype=jnp.float32,
) -> Layer:
    """A multilayer perceptron: Dense, activation, ..., Dense (the last gives logits).

    Args:
      sizes: layer widths including the input: ``[2, 4, 7, 3, 2]`` is the seed's
        network, Ω_0: (4, 2), ..., Ω_3: (2, 3).
      activation: a name from ``ACTIVATIONS``.
      w_init: the weight initialiser; by default He for relu, leaky_relu and gelu,
        Glorot normal otherwise.
      b_init: the bias initialiser (zeros).
    """
    sizes = list(sizes)
    if len(sizes) < 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
        raise ValueError(f"mlp: sizes must be at least two positive ints (input and output), got {sizes}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"mlp: unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)}")
    w_init = w_init or _DEFAULT_W_INIT.get(activation, "glorot_normal")
    layers = []
    for n_out in sizes[1:-1]:
        layers += [Dense(n_out, w_init=w_init, b_init=b_init, dtype=dtype), ACTIVATIONS[activation]()]
    layers.append(Dense(sizes[-1], w_init=w_init, b_init=b_init, dtype=dtype))
    model = serial(*layers)
    init = model.init

    def init_checked(key, input_shape):
        if tuple(input_shape) != (sizes[0],):
            raise ValueError(f"mlp: input_shape must be ({sizes[0]},) for sizes {sizes}, got {tuple(input_shape)}")
        return init(key, input_shape)

    return Layer(init_checked, model.apply)


def twin(model: Layer) -> Callable[[Params, jax.Array], jax.Array]:
    """The model's apply built from plain twins: differentiated by JAX's own autodiff.

    ``jax.grad`` through ``twin(model)`` is the reference for the hand-written rules.
    """
    layers = getattr(model.apply, "layers", None)
    if layers is not None:
        twins = [twin(layer) for layer in layers]

        def apply(params, x):
            for t, p in zip(twins, params):
                x = t(p, x)
            return x

        return apply
    rules = getattr(model.apply, "rules", None)
    if rules is None:
        raise TypeError(
            f"twin: layer {layer_name(model)} has no plain twin; build it with funcprop.nn "
            f"constructors (Dense, Relu, serial, ...)"
        )
    return rules.twin
