"""Model builders: mlp, cnn, their residual counterparts resmlp and resnet, and gpt."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from funcprop.nn._layer import Layer
from funcprop.nn.attention import MultiHeadAttention, PositionalEmbedding
from funcprop.nn.compose import FanInSum, FanOut, parallel, residual, serial
from funcprop.nn.conv import Conv2D, Flatten, MaxPool2D
from funcprop.nn.dense import ACTIVATIONS, DEFAULT_W_INIT, Dense, Gelu, Relu
from funcprop.nn.dropout import Dropout
from funcprop.nn.embedding import Embedding
from funcprop.nn.norm import LayerNorm
from funcprop.rules._core import positive_int


def _check_activation(fn: str, activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{fn}: unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)}")


def mlp(
    sizes: Sequence[int],
    activation: str = "relu",
    *,
    w_init=None,
    b_init="zeros",
    dtype=None,
    param_dtype=jnp.float32,
) -> Layer:
    """A multilayer perceptron: Dense, activation, ..., Dense (the last gives logits).

    Args:
      sizes: layer widths including the input: ``[2, 4, 7, 3, 2]`` is the notes'
        network, Ω_0: (4, 2), ..., Ω_3: (2, 3). ``init`` checks the input shape.
      activation: a name from ``ACTIVATIONS``.
      w_init: the weight initialiser; by default He for relu, leaky_relu and gelu,
        Glorot normal otherwise.
      b_init: the bias initialiser (zeros).
      dtype, param_dtype: the computation and parameter dtypes of every layer.

    Example:
      >>> from funcprop import nn
      >>> model = nn.mlp([2, 4, 7, 3, 2], "sigmoid")       # the notes' network
      >>> out_shape, params = model.init(jax.random.key(0), (2,))   # one example's shape
      >>> out_shape, [w.shape for w, b in params[::2]]    # Dense, activation, Dense, ...
      ((2,), [(4, 2), (7, 4), (3, 7), (2, 3)])
      >>> model.apply(params, jnp.ones((5, 2), jnp.float32)).shape
      (5, 2)
    """
    sizes = list(sizes)
    if len(sizes) < 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
        raise ValueError(f"mlp: sizes must be at least two positive ints (input and output), got {sizes}")
    _check_activation("mlp", activation)
    w_init = w_init or DEFAULT_W_INIT.get(activation, "glorot_normal")
    dense = dict(w_init=w_init, b_init=b_init, dtype=dtype, param_dtype=param_dtype)
    layers = []
    for n_out in sizes[1:-1]:
        layers += [Dense(n_out, **dense), ACTIVATIONS[activation](dtype=dtype)]
    layers.append(Dense(sizes[-1], **dense))
    model = serial(*layers)

    def init(key, input_shape):
        if tuple(input_shape) != (sizes[0],):
            raise ValueError(f"mlp: input_shape must be ({sizes[0]},) for sizes {sizes}, got {tuple(input_shape)}")
        return model.init(key, input_shape)

    return Layer(init, model.apply, model.node)


def resmlp(
    num_classes: int,
    width: int = 128,
    depth: int = 2,
    *,
    activation: str = "relu",
    dtype=None,
    param_dtype=jnp.float32,
) -> Layer:
    """A pre-norm residual MLP: Dense(width), then ``depth`` blocks
    ``x + Dense(width)(a(Dense(width)(LayerNorm(x))))``, then LayerNorm, a, and
    Dense(num_classes) for the logits.
    """
    positive_int("resmlp", "depth", depth)
    _check_activation("resmlp", activation)
    w_init = DEFAULT_W_INIT.get(activation, "glorot_normal")
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    act = ACTIVATIONS[activation]

    def block():
        return residual(
            serial(
                LayerNorm(**kw), Dense(width, w_init=w_init, **kw), act(dtype=dtype), Dense(width, w_init=w_init, **kw)
            )
        )

    return serial(
        Dense(width, w_init=w_init, **kw),
        *[block() for _ in range(depth)],
        LayerNorm(**kw),
        act(dtype=dtype),
        Dense(num_classes, w_init=w_init, **kw),
    )


def resnet(
    num_classes: int = 10,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    *,
    pool: int = 2,
    dropout: float = 0.2,
    dtype=None,
    param_dtype=jnp.float32,
) -> Layer:
    """A small ResNet-style CNN for NHWC images, the residual counterpart of :func:`cnn`.

    A stem Conv2D(channels[0], 3, SAME) + relu; for each further entry c of channels a
    block of two branches of different depth, joined by a sum:
    ``relu(conv3x3(relu(LayerNorm(conv3x3(x)))) + conv1x1(x))`` (LayerNorm over the
    channels, the 1×1 convolution projecting to c); then MaxPool2D(pool), Flatten,
    Dense(hidden) + relu, Dropout(dropout), Dense(num_classes). For 8×8 digits and the
    default channels: 8×8×32, 8×8×64, 4×4×64, 1024, 128, 10.

    On digits (20 epochs, 5 seeds, ``experiments/train_residual.py``) this design beat
    the same without dropout, and with an extra identity block, and :func:`cnn`.
    """
    kw = dict(dtype=dtype, param_dtype=param_dtype)

    def conv(c, k=3):
        return Conv2D(c, k, padding="SAME", **kw)

    def block(c):
        main = serial(conv(c), LayerNorm(**kw), Relu(dtype=dtype), conv(c))
        return serial(FanOut(2), parallel(main, conv(c, 1)), FanInSum(), Relu(dtype=dtype))

    channels = [positive_int("resnet", "channels", c) for c in channels]
    layers = [conv(channels[0]), Relu(dtype=dtype)] + [block(c) for c in channels[1:]]
    layers += [
        MaxPool2D(pool, dtype=dtype),
        Flatten(),
        Dense(hidden, w_init="he_normal", **kw),
        Relu(dtype=dtype),
        Dropout(dropout),
        Dense(num_classes, w_init="he_normal", **kw),
    ]
    return serial(*layers)


def cnn(
    num_classes: int = 10,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    *,
    kernel_size=3,
    pool: int = 2,
    dtype=None,
    param_dtype=jnp.float32,
) -> Layer:
    """A small CNN: [Conv2D(SAME) + relu] per entry of channels, MaxPool2D, Flatten,
    Dense(hidden) + relu, Dense(num_classes). For 8×8 digits: 8×8×32, 8×8×64, 4×4×64,
    1024, 128, 10."""
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    layers = []
    for c in channels:
        layers += [Conv2D(c, kernel_size, padding="SAME", **kw), Relu(dtype=dtype)]
    layers += [
        MaxPool2D(pool, dtype=dtype),
        Flatten(),
        Dense(hidden, w_init="he_normal", **kw),
        Relu(dtype=dtype),
        Dense(num_classes, w_init="he_normal", **kw),
    ]
    return serial(*layers)


def gpt(
    vocab_size: int = 256,
    context: int = 128,
    *,
    d_model: int = 128,
    num_heads: int = 4,
    num_layers: int = 2,
    mlp_ratio: int = 4,
    num_kv_heads: int | None = None,
    dtype=None,
    param_dtype=jnp.float32,
) -> Layer:
    """A GPT-style decoder: token ids ``(B, T)`` to hidden states ``(B, T, d_model)``.

    ``Embedding(V, d) → PositionalEmbedding(context, d) → num_layers × [x + attn(LN(x)),
    x + mlp(LN(x))] → LayerNorm``, pre-norm blocks of causal multi-head attention and a
    ``d → mlp_ratio·d → d`` GELU MLP, each with its residual. The head is a loss layer,
    ``nn.LinearCrossEntropy(vocab_size)``, trained with it (params then are the pair
    ``(model_params, head_params)``); ``nn.lm_head.logits`` gives its logits for
    sampling. T may be anything up to ``context``.
    """
    fn = "gpt"
    vocab_size, context = positive_int(fn, "vocab_size", vocab_size), positive_int(fn, "context", context)
    d_model, num_layers = positive_int(fn, "d_model", d_model), positive_int(fn, "num_layers", num_layers)
    num_heads, mlp_ratio = positive_int(fn, "num_heads", num_heads), positive_int(fn, "mlp_ratio", mlp_ratio)
    if d_model % num_heads:
        raise ValueError(f"{fn}: d_model {d_model} must be divisible by num_heads {num_heads}")
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    blocks = []
    for _ in range(num_layers):
        attend = MultiHeadAttention(num_heads, num_kv_heads=num_kv_heads, causal=True, **kw)
        blocks += [
            residual(serial(LayerNorm(**kw), attend)),
            residual(
                serial(LayerNorm(**kw), Dense(mlp_ratio * d_model, **kw), Gelu(dtype=dtype), Dense(d_model, **kw))
            ),
        ]
    return serial(
        Embedding(vocab_size, d_model, stddev=0.02, **kw),
        PositionalEmbedding(context, d_model, **kw),
        *blocks,
        LayerNorm(**kw),
    )


ARCHS = ("mlp", "seed", "cnn", "resmlp", "resnet")  # the names build() knows
IMAGE_ARCHS = ("cnn", "resnet")  # models of NHWC images


def build(arch: str, example_shape, num_classes: int, hidden, activation: str, dtype=None):
    """``(model, title)`` for an architecture of :data:`ARCHS` by name, as ``funcprop train``
    and ``funcprop shapes`` build it: ``hidden`` and ``activation`` are read by mlp and
    resmlp only; ``seed`` is the notes' 2-4-7-3-2 sigmoid network. ``dtype`` is every
    layer's computation dtype (None: float32, the parameters' dtype)."""
    if arch not in ARCHS:
        raise ValueError(f"build: arch must be one of {ARCHS}, got {arch!r}")
    kw = dict(dtype=dtype)
    if arch == "cnn":
        return cnn(num_classes, **kw), "cnn"
    if arch == "resnet":
        return resnet(num_classes, **kw), "resnet"
    if arch == "resmlp":
        return (
            resmlp(num_classes, width=hidden[0], depth=len(hidden), activation=activation, **kw),
            f"resmlp width {hidden[0]} x {len(hidden)} blocks {activation}",
        )
    if arch == "seed":
        sizes, activation = [example_shape[0], 4, 7, 3, num_classes], "sigmoid"
    else:
        sizes = [example_shape[0], *hidden, num_classes]
    return mlp(sizes, activation=activation, **kw), f"mlp {'-'.join(map(str, sizes))} {activation}"
