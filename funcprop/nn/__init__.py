"""Networks as pure functions over parameter pytrees.

A layer is a pair of pure functions, as in ``jax.example_libraries.stax``, named the way
optax names ``GradientTransformation(init, update)``::

    output_shape, params = layer.init(key, input_shape)   # input_shape: one example
    y = layer.apply(params, x, key=None)                   # x: (B, *input_shape)

Parameters are plain pytrees: a dense layer's are ``DenseParams(omega, beta)``, a
layer without parameters has ``()``, and ``serial`` nests its layers' params in a
tuple, so optax and ``jax.tree`` take them unchanged.

Each layer built here carries its structure as data, ``layer.node`` (see
:mod:`funcprop.nn._layer`): a leaf's hand-written fwd, bwd and twin, or a
combinator's children. :mod:`funcprop.backprop`, :func:`twin` and ``funcprop shapes``
read it. A user's own ``Layer(init, apply)`` works everywhere except in the
written-out backprop and the twin, which refuse it by name.

Rooms: ``_layer`` (the types), ``factory`` (a layer from a rule, and the dtype
policy), ``dense``, ``conv``, ``norm``, ``embedding``, ``dropout``, ``attention`` (the leaves),
``lm_head`` (the loss layer), ``compose`` (the
combinators and the twin), ``models`` (mlp, cnn, resmlp, resnet, gpt), ``init``.
"""

from funcprop.nn._layer import (
    Layer,
    LayerRules,
    LossRules,
    Node,
    as_layer,
    is_layer,
    is_loss_layer,
    layer_name,
    split_params,
)
from funcprop.nn.attention import Attention, MultiHeadAttention, PositionalEmbedding, Positions
from funcprop.nn.compose import (
    FanInConcat,
    FanInSum,
    FanOut,
    Identity,
    leaves,
    parallel,
    residual,
    run,
    serial,
    twin,
)
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
from funcprop.nn.dropout import Dropout
from funcprop.nn.embedding import Embedding, EmbeddingParams
from funcprop.nn.factory import from_rule
from funcprop.nn.init import (
    INITIALIZERS,
    glorot_normal,
    glorot_uniform,
    he_normal,
    lecun_normal,
    zeros,
)
from funcprop.nn.lm_head import LinearCrossEntropy, LinearCrossEntropyParams
from funcprop.nn.models import cnn, gpt, mlp, resmlp, resnet
from funcprop.nn.norm import LayerNorm, LayerNormParams, RMSNorm, RMSNormParams

__all__ = [
    "ACTIVATIONS",
    "Attention",
    "LinearCrossEntropy",
    "LinearCrossEntropyParams",
    "LossRules",
    "MultiHeadAttention",
    "PositionalEmbedding",
    "Positions",
    "gpt",
    "is_loss_layer",
    "split_params",
    "INITIALIZERS",
    "AvgPool2D",
    "Conv2D",
    "ConvParams",
    "Dense",
    "DenseParams",
    "Dropout",
    "Embedding",
    "EmbeddingParams",
    "FanInConcat",
    "FanInSum",
    "FanOut",
    "Flatten",
    "Gelu",
    "Identity",
    "Layer",
    "LayerNorm",
    "LayerNormParams",
    "LayerRules",
    "LeakyRelu",
    "MaxPool2D",
    "Node",
    "RMSNorm",
    "RMSNormParams",
    "Relu",
    "Sigmoid",
    "Softplus",
    "Tanh",
    "as_layer",
    "is_layer",
    "cnn",
    "elementwise",
    "from_rule",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "layer_name",
    "leaves",
    "lecun_normal",
    "mlp",
    "parallel",
    "resmlp",
    "residual",
    "resnet",
    "run",
    "serial",
    "twin",
    "zeros",
]
