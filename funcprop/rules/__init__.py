"""The hand-derived rules: each a ``jax.custom_vjp`` with its backward written out."""

from funcprop.rules._core import VJPRule, custom_rule, implements
from funcprop.rules.activations import gelu, leaky_relu, relu, sigmoid, softplus, tanh
from funcprop.rules.attention import attention
from funcprop.rules.conv import conv2d
from funcprop.rules.dropout import dropout
from funcprop.rules.embedding import embedding
from funcprop.rules.linear import dense
from funcprop.rules.lm_head import linear_cross_entropy
from funcprop.rules.losses import (
    check_labels,
    mse,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy,
)
from funcprop.rules.norm import layer_norm, rms_norm
from funcprop.rules.pool import avg_pool2d, max_pool2d
from funcprop.rules.softmax import log_softmax, softmax

__all__ = [
    "VJPRule",
    "custom_rule",
    "implements",
    "attention",
    "avg_pool2d",
    "conv2d",
    "max_pool2d",
    "check_labels",
    "dense",
    "dropout",
    "embedding",
    "gelu",
    "layer_norm",
    "leaky_relu",
    "linear_cross_entropy",
    "log_softmax",
    "mse",
    "relu",
    "rms_norm",
    "sigmoid",
    "sigmoid_binary_cross_entropy",
    "softmax",
    "softmax_cross_entropy",
    "softplus",
    "tanh",
]
