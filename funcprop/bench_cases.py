"""The networks the benchmark times: every model funcprop builds, with its PyTorch twin.

Each :class:`Case` is one network at one batch size. ``torch_layers`` describes the same
network for :mod:`funcprop.bench_torch` (PyTorch builds it from these specs). A
classifier's loss is ``softmax_cross_entropy`` on float inputs; the GPT's is its head,
the loss layer ``nn.LinearCrossEntropy(256)``, on int32 byte ids (params are then the
pair ``(model_params, head_params)``, :func:`case_params`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcprop import nn
from funcprop.rules.losses import softmax_cross_entropy


class Case(NamedTuple):
    name: str
    input_shape: tuple  # one example
    batch: int
    build: Callable[[], nn.Layer]
    num_classes: int
    torch_layers: tuple  # specs: ("dense", n_in, n_out), ("act", name), ("conv", c_in, c_out, k), ("pool", k),
    # ("flatten",), ("layernorm", d), ("dropout", rate), ("residual", specs), ("sum", (specs, specs)),
    # ("gpt", vocab, context, d_model, heads, layers, mlp_ratio)
    loss: Callable | nn.Layer = softmax_cross_entropy  # a loss rule, or a loss layer (params are then a pair)
    tokens: bool = False  # inputs are int32 ids in [0, num_classes) and targets the next id, (T,) per example
    flops_per_example: float | None = None  # one example's step, where torch_layers cannot give it


def _mlp_case(sizes, activation, batch, name=None):
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(("dense", n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(("act", activation))
    return Case(
        name or f"mlp {'-'.join(map(str, sizes))} @ {batch}",
        (sizes[0],),
        batch,
        lambda: nn.mlp(list(sizes), activation=activation),
        sizes[-1],
        tuple(layers),
    )


def cnn_case(hw: int, batch: int, name: str):
    """:func:`funcprop.nn.cnn` on hw×hw×1 images: conv32-conv64 (3×3 SAME), max-pool 2, 128, 10."""
    flat = (hw // 2) ** 2 * 64
    layers = (
        ("conv", 1, 32, 3),
        ("act", "relu"),
        ("conv", 32, 64, 3),
        ("act", "relu"),
        ("pool", 2),
        ("flatten",),
        ("dense", flat, 128),
        ("act", "relu"),
        ("dense", 128, 10),
    )
    return Case(f"{name} @ {batch}", (hw, hw, 1), batch, nn.cnn, 10, layers)


def resmlp_case(width: int, depth: int, batch: int):
    """:func:`funcprop.nn.resmlp` on digits' 64 features: ``funcprop train --arch resmlp``."""
    block = ("residual", (("layernorm", width), ("dense", width, width), ("act", "relu"), ("dense", width, width)))
    layers = (("dense", 64, width), *[block] * depth, ("layernorm", width), ("act", "relu"), ("dense", width, 10))
    return Case(
        f"resmlp {width}x{depth} @ {batch}", (64,), batch, lambda: nn.resmlp(10, width=width, depth=depth), 10, layers
    )


def resnet_case(hw: int, batch: int, name: str):
    """:func:`funcprop.nn.resnet` on hw×hw×1 images: a stem, one two-branch block, pool, 128, 10."""
    main = (("conv", 32, 64, 3), ("layernorm", 64), ("act", "relu"), ("conv", 64, 64, 3))
    layers = (
        ("conv", 1, 32, 3),
        ("act", "relu"),
        ("sum", (main, (("conv", 32, 64, 1),))),
        ("act", "relu"),
        ("pool", 2),
        ("flatten",),
        ("dense", (hw // 2) ** 2 * 64, 128),
        ("act", "relu"),
        ("dropout", 0.2),
        ("dense", 128, 10),
    )
    return Case(f"{name} @ {batch}", (hw, hw, 1), batch, nn.resnet, 10, layers)


def gpt_case(d_model: int, layers: int, context: int, batch: int, *, heads: int = 4, mlp_ratio: int = 4):
    """:func:`funcprop.nn.gpt` on bytes with its head ``nn.LinearCrossEntropy(256)``, as
    ``funcprop train --dataset text --arch gpt`` builds it (d 64, 2 layers, T 64, batch 32
    by default). Its PyTorch twin is the same GPT, head untied, on the same ids."""
    vocab, d = 256, d_model
    # 6 FLOPs per weight and token (the embeddings are gathers, not matmuls), and
    # 12·T·d per token and layer for the scores and their weighted sum, both directions
    weights = layers * (4 * d * d + 2 * mlp_ratio * d * d) + vocab * d
    per_token = 6.0 * weights + 12.0 * layers * context * d
    return Case(
        f"gpt d{d} x{layers}, T{context} @ {batch}",
        (context,),
        batch,
        lambda: nn.gpt(vocab, context, d_model=d, num_heads=heads, num_layers=layers, mlp_ratio=mlp_ratio),
        vocab,
        (("gpt", vocab, context, d, heads, layers, mlp_ratio),),
        loss=nn.LinearCrossEntropy(vocab),
        tokens=True,
        flops_per_example=per_token * context,
    )


CASES = (
    _mlp_case([2, 4, 7, 3, 2], "sigmoid", 64, name="seed 2-4-7-3-2 @ 64"),
    _mlp_case([64, 256, 256, 10], "relu", 128),
    _mlp_case([784, 1024, 1024, 10], "relu", 256),
    _mlp_case([1024, 4096, 4096, 1024], "relu", 512),
    cnn_case(8, 128, "digits cnn 8x8"),
    cnn_case(28, 64, "mnist cnn 28x28"),
    resmlp_case(256, 2, 128),
    resnet_case(8, 128, "digits resnet 8x8"),
    gpt_case(64, 2, 64, 32),  # the CLI's default LM
)
QUICK_CASES = (
    CASES[0],
    CASES[1],
    cnn_case(8, 16, "digits cnn 8x8"),
    resmlp_case(32, 1, 16),
    resnet_case(8, 16, "digits resnet 8x8"),
    gpt_case(32, 1, 16, 8),
)


def case_params(case: Case, model: nn.Layer, key):
    """The case's initial params: the model's, or with a loss layer the pair
    ``(model_params, head_params)``, the head built for the model's output shape (as
    :func:`funcprop.lm.init_params` does)."""
    if not nn.is_loss_layer(case.loss):
        return model.init(key, case.input_shape)[1]
    model_key, head_key = jax.random.split(key)
    out_shape, model_params = model.init(model_key, case.input_shape)
    return model_params, case.loss.init(head_key, out_shape)[1]


def case_data(case: Case, key, batches: int = 1):
    """``batches · batch`` standard-normal inputs and random class ids for the case; for
    a token case, random int32 ids ``(n, T)`` and the same sequences shifted by one."""
    kx, ky = jax.random.split(key)
    n = case.batch * batches
    if case.tokens:
        seq = jax.random.randint(kx, (n, case.input_shape[0] + 1), 0, case.num_classes, jnp.int32)
        return seq[:, :-1], seq[:, 1:]
    x = jax.random.normal(kx, (n, *case.input_shape), jnp.float32)
    return x, jax.random.randint(ky, (n,), 0, case.num_classes)


def _weight_uses(specs, positions: int) -> int:
    """Σ weights × the positions each is applied at (the convolutions before any pool)."""
    total = 0
    for spec in specs:
        if spec[0] == "dense":
            total += spec[1] * spec[2]
        elif spec[0] == "conv":
            total += spec[3] ** 2 * spec[1] * spec[2] * positions
        elif spec[0] == "residual":
            total += _weight_uses(spec[1], positions)
        elif spec[0] == "sum":
            total += sum(_weight_uses(branch, positions) for branch in spec[1])
    return total


def case_flops(case: Case) -> float:
    """Rough FLOPs of one step (6 per weight per example and output position)."""
    if case.flops_per_example is not None:
        return case.flops_per_example * case.batch
    positions = case.input_shape[0] * case.input_shape[1] if len(case.input_shape) == 3 else 1
    return 6.0 * _weight_uses(case.torch_layers, positions) * case.batch
