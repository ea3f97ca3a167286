"""Composition: serial, mlp, and the plain-twin version of a model."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from funcprop.nn._layer import Layer, Params, _describe, layer_name
from funcprop.nn.conv import Conv2D, Flatten, MaxPool2D
from funcprop.nn.dense import _DEFAULT_W_INIT, ACTIVATIONS, Dense, Relu


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
            with located(i, layer):
                shape, p = layer.init(k, shape)
            params.append(p)
        return shape, tuple(params)

    def apply(params, x):
        if not isinstance(params, (tuple, list)) or len(params) != len(layers):
            got = len(params) if isinstance(params, (tuple, list)) else type(params).__name__
            raise ValueError(f"{name}: params must be a tuple of {len(layers)} layer params, got {got}")
        for i, (layer, p) in enumerate(zip(layers, params)):
            with located(i, layer):
                x = layer.apply(p, x)
        return x

    return Layer(init, _describe(name, apply, layers=layers))


class located:
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


def cnn(
    num_classes: int = 10,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    *,
    kernel_size=3,
    pool: int = 2,
    dtype=jnp.float32,
) -> Layer:
    """A small CNN: [Conv2D(SAME) + relu] per entry of channels, MaxPool2D, Flatten,
    Dense(hidden) + relu, Dense(num_classes). For 8×8 digits: 8×8×32, 8×8×64, 4×4×64,
    1024, 128, 10."""
    layers = []
    for c in channels:
        layers += [Conv2D(c, kernel_size, padding="SAME", dtype=dtype), Relu()]
    layers += [MaxPool2D(pool), Flatten(), Dense(hidden, w_init="he_normal", dtype=dtype), Relu(),
               Dense(num_classes, w_init="he_normal", dtype=dtype)]
    return serial(*layers)
