"""funcprop: backpropagation as explicit math in JAX.

Every primitive is a ``jax.custom_vjp`` whose backward is the hand-derived formula
(Ωᵀ δ, δ hᵀ, Σ δ, a'(f) ⊙ ḡ, p − y); ``jax.jit`` compiles it for CPU, GPU or TPU.
"""

from funcprop.xla_flags import apply_cpu_flags

apply_cpu_flags()  # before JAX's first compilation; see funcprop/xla_flags.py

from funcprop.rules import (  # noqa: E402
    avg_pool2d,
    conv2d,
    max_pool2d,
    check_labels,
    dense,
    dropout,
    embedding,
    gelu,
    layer_norm,
    leaky_relu,
    log_softmax,
    mse,
    relu,
    rms_norm,
    sigmoid,
    sigmoid_binary_cross_entropy,
    softmax,
    softmax_cross_entropy,
    softplus,
    tanh,
)

from funcprop import backprop, check, checkpoint, data, nn, train, xla_flags  # noqa: E402  (submodules)

__version__ = "0.1.0"

__all__ = [
    "avg_pool2d",
    "conv2d",
    "max_pool2d",
    "backprop",
    "check",
    "checkpoint",
    "data",
    "nn",
    "train",
    "xla_flags",
    "check_labels",
    "dense",
    "dropout",
    "embedding",
    "gelu",
    "layer_norm",
    "leaky_relu",
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
