"""The embedding layer (integer ids to rows of a table) and the dropout layer."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcprop.nn._layer import Layer, leaf
from funcprop.nn.dense import positive_int
from funcprop.nn.factory import from_rule, layer_dtypes
from funcprop.rules.dropout import dropout, dropout_rate
from funcprop.rules.embedding import embedding


class EmbeddingParams(NamedTuple):
    """The table of an embedding: one row of features per id."""

    table: jax.Array  # (num_embeddings, features)


def Embedding(num_embeddings: int, features: int, *, stddev: float = 1.0, dtype=None,
              param_dtype=jnp.float32) -> Layer:
    """Integer ids ``(B, ...)`` to rows ``(B, ..., features)`` of a learned table; see
    :func:`funcprop.embedding`. Ids outside ``[0, num_embeddings)`` give zero rows and
    no gradient. The table starts as N(0, stddev²)."""
    num_embeddings = positive_int("Embedding", "num_embeddings", num_embeddings)
    features = positive_int("Embedding", "features", features)
    name = f"Embedding({num_embeddings}, {features})"
    dtype, param_dtype = layer_dtypes(name, dtype, param_dtype)

    def make_params(key, input_shape, param_dtype):
        return EmbeddingParams(stddev * jax.random.normal(key, (num_embeddings, features), param_dtype))

    return from_rule(name, embedding.vjp_rule, make_params, dtype=dtype, param_dtype=param_dtype,
                     input_dtype=jnp.int32)


def Dropout(rate: float) -> Layer:
    """Inverted dropout with probability ``rate``; see :func:`funcprop.dropout`.

    ``apply(params, x, key=k)`` drops; ``key=None`` (evaluation) is the identity.
    Training passes a fresh key every step.
    """
    rule = dropout.vjp_rule
    rate = dropout_rate(rate)
    name = f"Dropout({rate:g})"

    def init(key, input_shape):
        return tuple(input_shape), ()

    def apply(params, x, *, key=None):
        return x if key is None else dropout(x, rate, key=key)

    def fwd(params, x, key):
        if key is None:
            return x, None
        y, res = rule.fwd(*rule.prepare(x, key, rate))
        return y, res

    def bwd(params, res, y_bar):
        return (), y_bar if res is None else rule.bwd(rate, res, y_bar)[0]

    def twin(params, x, key):
        return x if key is None else rule.twin(*rule.prepare(x, key, rate))

    return leaf(name, init, apply, fwd, bwd, twin)
