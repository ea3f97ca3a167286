"""The language-model head as a loss layer: ``LinearCrossEntropy(vocab_size)``.

A loss layer has parameters: ``apply(params, out, y)`` is the scalar loss, here the
fused :func:`~funcprop.rules.lm_head.linear_cross_entropy` of ``out Ωᵀ`` against the
next-token ids, so the ``(B·T, V)`` logits are never held at once. With a loss layer,
``backprop.value_and_grad``, ``train.train`` and ``check.check_model`` take params as
the pair ``(model_params, loss_params)`` and return gradients of that shape.

:func:`logits` gives the ``(..., V)`` logits themselves, for sampling from a model.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcprop.nn._layer import Layer, LossRules, Node
from funcprop.nn.factory import _entry, layer_dtypes
from funcprop.nn.init import initializer
from funcprop.rules._core import is_int, positive_int
from funcprop.rules.linear import dense
from funcprop.rules.lm_head import linear_cross_entropy


class LinearCrossEntropyParams(NamedTuple):
    """The head's output projection: one row of d weights per class."""

    omega: jax.Array  # (V, d)


def LinearCrossEntropy(
    vocab_size: int,
    *,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    w_init="lecun_normal",
    dtype=None,
    param_dtype=jnp.float32,
) -> Layer:
    """The mean cross-entropy of ``softmax(out Ωᵀ)`` against class ids, as a loss layer.

    ``init(key, input_shape)`` takes the model's output shape ``(..., d)`` and returns
    ``((), LinearCrossEntropyParams(omega))`` with Ω ``(vocab_size, d)``;
    ``apply(params, out, y)`` takes ``out (B, ..., d)`` and ids ``y (B, ...)``.

    Args:
      vocab_size: V, the number of classes (256 for bytes).
      ignore_index: ids equal to it count for nothing (the mean is over the rest).
      chunk_size: rows per chunk of the fused rule; by default about 4M logits a chunk (see the rule).
      w_init: the initialiser of Ω (a name from ``INITIALIZERS`` or a function).
      dtype, param_dtype: as for :func:`funcprop.nn.Dense`.
    """
    fn = "LinearCrossEntropy"
    vocab_size = positive_int(fn, "vocab_size", vocab_size)
    if not is_int(ignore_index):
        raise TypeError(f"{fn}: ignore_index must be an int, got {ignore_index!r}; pass e.g. -100")
    name = f"LinearCrossEntropy({vocab_size})"
    w_init = initializer(name, w_init)
    dtype, param_dtype = layer_dtypes(name, dtype, param_dtype)
    rule = linear_cross_entropy.vjp_rule

    def args(params, out, y):
        if not isinstance(params, LinearCrossEntropyParams):
            raise TypeError(
                f"{name}: params must be LinearCrossEntropyParams(omega), got {type(params).__name__}; pass "
                f"the params this head's init returned (with a loss layer, params are (model, head))"
            )
        out, (omega,) = _entry(name, tuple(params), out, dtype, None, True)
        if omega.shape[0] != vocab_size:
            raise ValueError(f"{name}: omega has shape {omega.shape}; it must be ({vocab_size}, d)")
        return rule.prepare(out, omega, y, ignore_index, chunk_size)

    def init(key, input_shape):
        if len(input_shape) < 1 or input_shape[-1] < 1:
            raise ValueError(f"{name}: input_shape must end in the features (..., d) with d >= 1, got {input_shape}")
        return (), LinearCrossEntropyParams(w_init(key, (vocab_size, input_shape[-1]), param_dtype))

    def apply(params, out, y, *, key=None):
        return rule.core(*args(params, out, y))

    def fwd(params, out, y):
        a = args(params, out, y)
        value, res = rule.fwd(*a)
        return value, (rule.static(a), res, jnp.shape(out), jnp.result_type(out))

    def bwd(params, res, g):
        static, res, out_shape, out_dtype = res
        h_bar, omega_bar, _ = rule.bwd(*static, res, g)
        return LinearCrossEntropyParams(omega_bar.astype(params.omega.dtype)), h_bar.reshape(out_shape).astype(
            out_dtype
        )

    def twin(params, out, y):
        return rule.twin(*args(params, out, y))

    return Layer(init, apply, Node(name, "loss", LossRules(fwd, bwd, twin, vocab_size, ignore_index)))


def logits(params: LinearCrossEntropyParams, out) -> jax.Array:
    """The head's logits ``out Ωᵀ``, ``(..., d) -> (..., V)``: for sampling, not training."""
    omega = params.omega.astype(jnp.result_type(out))
    return dense(out, omega, jnp.zeros(omega.shape[:1], omega.dtype))
