"""Attention layers: the attention rule over projected heads, and learned positions.

``MultiHeadAttention`` is a graph of existing pieces, so the written-out backprop runs
through it with nothing new: x fans out to three dense projections (q, k, v), the
:func:`~funcprop.rules.attention.attention` rule joins them, and a fourth projection
maps the heads back to the model width::

    x ─ FanOut(3) ─┬─ Dense(q) ─┐
                   ├─ Dense(k) ─┼─ Attention ─ Dense(out)
                   └─ Dense(v) ─┘

In the backward the three projections' input cotangents add up at the fan-out,
``x̄ = x̄_q + x̄_k + x̄_v``, as at every branch.

Positions are learned: :func:`PositionalEmbedding` adds row t of a ``(max_len, d)``
table to position t (an embedding of the ids 0..T−1, whose backward sums the
cotangents over the batch into those rows).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcprop.nn._layer import Layer, leaf
from funcprop.nn.compose import FanInSum, FanOut, Identity, check_tuple_input, parallel, renamed, serial
from funcprop.nn.dense import DenseParams
from funcprop.nn.embedding import Embedding
from funcprop.nn.factory import from_rule, layer_dtypes
from funcprop.nn.init import initializer
from funcprop.rules._core import positive_int
from funcprop.rules.attention import DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q, attention
from funcprop.rules.linear import dense


def _heads(name: str, x, heads: int):
    """(B, T, heads·D) -> (B, T, heads, D), or a ValueError naming the layer."""
    if jnp.ndim(x) != 3 or x.shape[-1] % heads:
        raise ValueError(
            f"{name}: each of q, k, v must be (B, T, heads·D) with a width divisible by {heads} heads, "
            f"got shape {jnp.shape(x)}"
        )
    return x.reshape(*x.shape[:2], heads, x.shape[-1] // heads)


def _merge(y):
    """(B, T, H, D) -> (B, T, H·D)."""
    return y.reshape(*y.shape[:2], -1)


def Attention(
    num_heads: int,
    *,
    num_kv_heads: int | None = None,
    causal: bool = False,
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
) -> Layer:
    """The attention rule on a tuple ``(q, k, v)`` of ``(B, T, H·D)``, ``(B, S, Hkv·D)``,
    ``(B, S, Hkv·Dv)`` arrays; returns ``(B, T, H·Dv)``. No parameters.

    The heads are split off the last axis, :func:`funcprop.attention` runs (see it for
    ``causal``'s alignment and the blocks), and the heads are merged back.
    """
    num_heads = positive_int("Attention", "num_heads", num_heads)
    num_kv = num_heads if num_kv_heads is None else positive_int("Attention", "num_kv_heads", num_kv_heads)
    if num_heads % num_kv:
        raise ValueError(
            f"Attention: num_heads {num_heads} must be a multiple of num_kv_heads {num_kv} (grouped queries)"
        )
    name = f"Attention({num_heads}{f', kv={num_kv}' if num_kv != num_heads else ''}{', causal' if causal else ''})"
    rule = attention.vjp_rule

    def args(x):
        check_tuple_input(name, x, 3)
        q, k, v = x
        q, k, v = _heads(name, q, num_heads), _heads(name, k, num_kv), _heads(name, v, num_kv)
        return rule.prepare(q, k, v, None, causal, None, block_q, block_k)

    def init(key, input_shape):
        if len(input_shape) != 3 or any(len(s) != 2 for s in input_shape):
            raise ValueError(
                f"{name}: input_shape must be three shapes (T, width) for q, k, v (put FanOut(3) and "
                f"parallel projections before it), got {input_shape}"
            )
        (t, _), _, (_, dv) = input_shape
        args([jnp.zeros((1, *s), jnp.float32) for s in input_shape])  # the rule checks the shapes
        return (t, dv // num_kv * num_heads), ()

    def apply(params, x, *, key=None):
        return _merge(rule.core(*args(x)))

    def fwd(params, x, key):
        a = args(x)
        y, res = rule.fwd(*a)
        return _merge(y), (rule.static(a), res)

    def bwd(params, res, y_bar):
        static, res = res
        q_bar, k_bar, v_bar, _ = rule.bwd(*static, res, _heads(name, y_bar, num_heads))
        return (), (_merge(q_bar), _merge(k_bar), _merge(v_bar))

    def twin(params, x, key):
        return _merge(rule.twin(*args(x)))

    return leaf(name, init, apply, fwd, bwd, twin)


def _projection(name: str, width, *, dtype, param_dtype) -> Layer:
    """A dense layer whose output width is ``width(n_in)``: the projections of a block
    whose widths follow the model's, known only at init."""
    w_init, b_init = initializer(name, "lecun_normal"), initializer(name, "zeros")

    def make_params(key, input_shape, param_dtype):
        if len(input_shape) < 1:
            raise ValueError(f"{name}: input_shape must end in the features (..., d), got {input_shape}")
        n_in = input_shape[-1]
        k_w, k_b = jax.random.split(key)
        n_out = width(n_in)
        return DenseParams(w_init(k_w, (n_out, n_in), param_dtype), b_init(k_b, (n_out,), param_dtype))

    return from_rule(name, dense.vjp_rule, make_params, dtype=dtype, param_dtype=param_dtype)


def MultiHeadAttention(
    num_heads: int,
    *,
    head_dim: int | None = None,
    num_kv_heads: int | None = None,
    causal: bool = False,
    out_features: int | None = None,
    dtype=None,
    param_dtype=jnp.float32,
) -> Layer:
    """Multi-head attention ``(B, T, d) -> (B, T, d)``: dense projections to q, k, v, the
    attention rule, and a dense projection back (see the module docstring).

    Args:
      num_heads: H, the query heads.
      head_dim: D; by default ``d // num_heads`` (d must then be divisible by H).
      num_kv_heads: Hkv, the key/value heads (grouped queries); H by default.
      causal: position t attends to positions ``≤ t`` only.
      out_features: the output width; by default d, which needs ``head_dim=None`` (the
        last projection sees H·D = d features; with another head_dim, pass the width).
      dtype, param_dtype: as for :func:`funcprop.nn.Dense`.

    Params: ``((), (q, k, v), (), out)``, each projection a ``DenseParams``.
    """
    fn = "MultiHeadAttention"
    num_heads = positive_int(fn, "num_heads", num_heads)
    num_kv = num_heads if num_kv_heads is None else positive_int(fn, "num_kv_heads", num_kv_heads)
    if head_dim is not None:
        head_dim = positive_int(fn, "head_dim", head_dim)
    if out_features is not None:
        out_features = positive_int(fn, "out_features", out_features)
    elif head_dim is not None:
        raise ValueError(
            f"{fn}: with head_dim={head_dim}, pass out_features= (the model width d) too; the output "
            f"projection cannot infer d from the {num_heads}·{head_dim} features it sees"
        )
    dtype, param_dtype = layer_dtypes(fn, dtype, param_dtype)

    def dim(d: int) -> int:
        if head_dim is not None:
            return head_dim
        if d % num_heads:
            raise ValueError(
                f"{fn}: the model width {d} is not divisible by num_heads {num_heads}; pass head_dim= "
                f"and out_features=, or a width that {num_heads} divides"
            )
        return d // num_heads

    kinds = {"dtype": dtype, "param_dtype": param_dtype}
    layer = serial(
        FanOut(3),
        parallel(
            _projection("Dense(q)", lambda d: num_heads * dim(d), **kinds),
            _projection("Dense(k)", lambda d: num_kv * dim(d), **kinds),
            _projection("Dense(v)", lambda d: num_kv * dim(d), **kinds),
        ),
        Attention(num_heads, num_kv_heads=num_kv, causal=causal),
        _projection("Dense(out)", lambda n_in: out_features or n_in, **kinds),
    )
    kv = f", kv={num_kv}" if num_kv != num_heads else ""
    return renamed(layer, f"MultiHeadAttention({num_heads}{kv}{', causal' if causal else ''})")


def Positions(max_len: int) -> Layer:
    """The position ids ``0, …, T−1`` of a batch ``(B, T, ...)``, as int32 ``(B, T)``.

    Feeds an :func:`~funcprop.nn.Embedding` of positions. No parameters, and no
    gradient to x (the ids do not depend on its values). T must be ``<= max_len``:
    a later position would have no row in the table.
    """
    max_len = positive_int("Positions", "max_len", max_len)
    name = f"Positions({max_len})"

    def check(t: int) -> None:
        if t > max_len:
            raise ValueError(
                f"{name}: the sequence has {t} positions but the table has {max_len}; pass at most "
                f"{max_len} positions (the context length), or build the model with a longer one"
            )

    def init(key, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"{name}: input_shape must start with the positions (T, ...), got {input_shape}")
        check(input_shape[0])
        return (input_shape[0],), ()

    def apply(params, x, *, key=None):
        if jnp.ndim(x) < 2:
            raise ValueError(f"{name}: input must be a batch (B, T, ...), got shape {jnp.shape(x)}")
        check(x.shape[1])
        return jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape[:2])

    return leaf(
        name, init, apply, lambda p, x, k: (apply(p, x), None), lambda p, r, g: ((), None), lambda p, x, k: apply(p, x)
    )


def PositionalEmbedding(
    max_len: int, features: int, *, stddev: float = 0.02, dtype=None, param_dtype=jnp.float32
) -> Layer:
    """``x + P[t]`` at each position t of ``(B, T, features)``, P a learned
    ``(max_len, features)`` table: a fan-out into x and an embedding of its positions,
    summed. ``dtype``: the rows' computation dtype, which must be x's (the sum adds
    them). Params: ``((), ((), ((), EmbeddingParams)), ())``."""
    table = Embedding(max_len, features, stddev=stddev, dtype=dtype, param_dtype=param_dtype)
    layer = serial(FanOut(2), parallel(Identity(), serial(Positions(max_len), table)), FanInSum())
    return renamed(layer, f"PositionalEmbedding({max_len}, {features})")
