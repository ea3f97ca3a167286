"""The embedding layer: integer ids to rows of a learned table."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcprop.nn._layer import Layer
from funcprop.nn.factory import from_rule, layer_dtypes
from funcprop.rules._core import positive_float, positive_int
from funcprop.rules.embedding import embedding


class EmbeddingParams(NamedTuple):
    """The table of an embedding: one row of features per id."""

    table: jax.Array  # (num_embeddings, features)


def Embedding(num_embeddings: int, features: int, *, stddev: float = 1.0, dtype=None, param_dtype=jnp.float32) -> Layer:
    """Integer ids ``(B, ...)`` to rows ``(B, ..., features)`` of a learned table; see
    :func:`funcprop.embedding`. Ids outside ``[0, num_embeddings)`` give zero rows and
    no gradient. The table starts as N(0, stddev²)."""
    num_embeddings = positive_int("Embedding", "num_embeddings", num_embeddings)
    features = positive_int("Embedding", "features", features)
    stddev = positive_float("Embedding", "stddev", stddev)
    name = f"Embedding({num_embeddings}, {features})"
    dtype, param_dtype = layer_dtypes(name, dtype, param_dtype)

    def make_params(key, input_shape, param_dtype):
        return EmbeddingParams(stddev * jax.random.normal(key, (num_embeddings, features), param_dtype))

    return from_rule(name, embedding.vjp_rule, make_params, dtype=dtype, param_dtype=param_dtype, input_dtype=jnp.int32)
