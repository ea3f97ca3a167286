"""Embedding lookup, a row of a table per integer id, and its hand-derived backward.

Forward, for ids of any shape ``(...)`` and a table T of shape ``(V, d)``:

    y[p] = T[ids[p]]                  if 0 <= ids[p] < V, else 0 (a zero row)

Backward, with ḡ = ∂L/∂y of shape ``(..., d)``:

    T̄[v] = Σ_{p : ids[p] = v} ḡ[p]    (repeated ids add up; rows never looked up get 0)

a scatter-add of the cotangent's rows into a ``(V, d)`` zero table: no one-hot
matrix is formed. The ids are held fixed (their cotangent is None).

Ids out of range: under ``jit`` an id cannot be checked, so an id outside ``[0, V)``
(negative ids included) gives a zero row in the forward and contributes nothing to T̄,
in the rule and in its twin alike. Both mask explicitly: a plain ``table[ids]`` would
clamp an id ≥ V to the last row and wrap −1 to it, while autodiff of that drops their
contributions (DESIGN §7). Nothing raises and nothing is NaN. Call
:func:`~funcprop.rules.losses.check_labels` (``check_labels(ids, V)``) outside ``jit``,
once on the data, to catch such ids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcprop.rules._core import accumulation_dtype, as_float_array, custom_rule, implements


def _in_range(ids, vocab: int):
    return (ids >= 0) & (ids < vocab)


def embedding_twin(ids, table):
    """Plain twin of :func:`embedding`: ``table[ids]``, with a zero row for ids outside
    ``[0, V)`` (looked up at row 0, then masked)."""
    valid = _in_range(ids, table.shape[0])
    rows = table[jnp.where(valid, ids, 0)]
    return jnp.where(valid[..., None], rows, 0)


def _embedding_fwd(ids, table):
    # The bwd needs only V: a (V, 0) array carries it (and the dtype) in zero bytes,
    # since a residual must be an array.
    return embedding_twin(ids, table), (ids, jnp.zeros((table.shape[0], 0), table.dtype))


def _embedding_bwd(res, y_bar):
    """T̄[v] = Σ_{p : ids[p] = v} ḡ[p], ids outside [0, V) dropped;  īds = None."""
    ids, vocab_like = res
    vocab, d = vocab_like.shape[0], y_bar.shape[-1]
    acc = accumulation_dtype(vocab_like.dtype)  # repeated ids add up in float32 at least
    targets = jnp.where(_in_range(ids, vocab), ids, vocab)  # an invalid id: out of bounds, dropped
    table_bar = jnp.zeros((vocab, d), acc).at[targets].add(y_bar.astype(acc), mode="drop")
    return None, table_bar.astype(vocab_like.dtype)


def _embedding_args(ids, table):
    """embedding's one place of validation: integer ids of any shape, a float (V, d)
    table. Returns ``(ids, table)``, ids narrower than 32 bits widened to int32."""
    fn = "embedding"
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(
            f"embedding: ids must be integer token ids, got dtype {ids.dtype} (shape "
            f"{ids.shape}); cast them with ids.astype(jnp.int32)"
        )
    table = as_float_array(fn, "table", table)
    if table.ndim != 2 or table.shape[0] == 0:
        raise ValueError(
            f"embedding: table must be a matrix (V, d) with V >= 1, one row per id, got "
            f"shape {table.shape}; pass a (V, d) table"
        )
    if ids.dtype.itemsize < 4:  # uint8 ids must not wrap around when compared with V
        ids = ids.astype(jnp.int32)
    return ids, table


_EMBEDDING = custom_rule(embedding_twin, _embedding_fwd, _embedding_bwd, prepare=_embedding_args)


@implements(_EMBEDDING)
def embedding(ids, table) -> jax.Array:
    """Look up one row of ``table`` per id: ``y[..., :] = table[ids[...], :]``.

    Backward: ``tablē = zeros(V, d)`` with each cotangent row ``ḡ[p]`` added into row
    ``ids[p]`` (a scatter-add; repeated ids add up, accumulated in float32 at least and
    returned in the table's dtype). No one-hot matrix is formed. Keeps the ids only.

    Args:
      ids: integer token ids of any shape ``(...)``, held fixed (no gradient). Ids
        outside ``[0, V)``, negative ones included, are not seen under jit (see the
        module docstring): they give a zero row and no gradient. Check them with
        :func:`check_labels` (``check_labels(ids, V)``).
      table: ``(V, d)``, floating point, one row per id.

    Returns:
      ``(..., d)``, of the table's dtype.

    Raises:
      TypeError: on ids that are not integers, or a table that is not floating point.
      ValueError: on a table that is not 2-D or has no rows.
    """
    return _EMBEDDING.core(*_EMBEDDING.prepare(ids, table))
