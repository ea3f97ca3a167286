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

from funcprop.nn._layer import Layer, LayerRules, layer_name
from funcprop.nn.compose import cnn, mlp, serial, twin
from funcprop.nn.conv import AvgPool2D, Conv2D, ConvParams, Flatten, MaxPool2D
from funcprop.nn.dense import (
    ACTIVATIONS,
    Dense,
    DenseParams,
    Gelu,
    LeakyRelu,
    Relu,
    Sigmoid,
    Softplus,
    Tanh,
    elementwise,
)
from funcprop.nn.init import (
    INITIALIZERS,
    glorot_normal,
    glorot_uniform,
    he_normal,
    lecun_normal,
    zeros,
)

__all__ = [
    "ACTIVATIONS",
    "INITIALIZERS",
    "AvgPool2D",
    "Conv2D",
    "ConvParams",
    "Dense",
    "DenseParams",
    "Flatten",
    "Gelu",
    "Layer",
    "LayerRules",
    "LeakyRelu",
    "MaxPool2D",
    "Relu",
    "Sigmoid",
    "Softplus",
    "Tanh",
    "cnn",
    "elementwise",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "layer_name",
    "lecun_normal",
    "mlp",
    "serial",
    "twin",
    "zeros",
]
