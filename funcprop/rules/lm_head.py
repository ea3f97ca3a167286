"""The LM head: the mean cross-entropy of the logits h Ωᵀ, fused, chunked over rows.

For N rows h_i (h: ``(N, d)``), a vocabulary matrix Ω ``(V, d)`` and class ids y_i:

    z = h Ωᵀ                 (N, V), never held at once
    L = −(1/n) Σ_{i counted} log softmax(z_i)[y_i]

where row i counts iff ``0 <= y_i < V`` and ``y_i != ignore_index``, and n is the number
of counted rows (PyTorch's convention for ``ignore_index``: the mean is over the rest).

Backward. The seed formula of the fused softmax + cross-entropy gives, per counted row,
``∂L/∂z_i = (p_i − e_{y_i}) / n`` with ``p_i = softmax(z_i)``; a row not counted gets 0.
Call that δ ``(N, V)``. Then z = h Ωᵀ is the batched layer of DESIGN §2 (F = H Ωᵀ),
whose VJP is

    h̄ = δ Ω          (N, V)(V, d) -> (N, d)      the row form of Ωᵀ δ_i
    Ω̄ = δᵀ h         (V, N)(N, d) -> (V, d)      Σ_i δ_i h_iᵀ, outer products

Liger's fused linear cross-entropy (DESIGN §7): the loss is terminal, so the forward
runs over chunks of rows (a ``lax.scan``; N is padded with zero rows that are not
counted) and, per chunk c, forms z_c = h_c Ωᵀ, its log-softmax, the loss and δ_c, and
accumulates h̄_c = δ_c Ω and Ω̄ += δ_cᵀ h_c: three matmuls per chunk, autodiff's count.
The residuals are h̄ and Ω̄ themselves; the bwd scales them by the incoming cotangent ḡ.
Only one chunk's logits ``(rows, V)`` exist at a time, in the forward and the backward.
Grad of grad works: JAX differentiates the forward's scan.

Without differentiation the rule runs the chunked loss alone (one matmul per chunk),
not the twin, so evaluating the loss does not hold the logits either.

Ignored and out-of-range ids: under ``jit`` a label cannot be checked. An id equal to
``ignore_index`` or outside ``[0, V)`` contributes nothing to the loss and its row gets
zero gradient, and it is not counted in n. If no label counts, the loss is 0 and every
gradient is 0 (not NaN). Call :func:`~funcprop.rules.losses.check_labels` outside
``jit`` (on the ids other than ``ignore_index``) to catch ids out of range.

Dtypes (DESIGN §7): the logits, the softmax, the loss and h̄, Ω̄ are computed in
float32 at least (bfloat16 and float16 inputs accumulate their matmuls in float32;
float64 stays float64); the loss is a scalar of that dtype, each cotangent comes back
in its input's dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcprop.rules._core import (
    accumulation_dtype,
    as_float_array,
    custom_rule,
    implements,
    is_int,
    numel,
    positive_int,
    require_same_dtype,
    vary_like,
)
from funcprop.rules.softmax import log_softmax_twin

FN = "linear_cross_entropy"

# One chunk's logits hold at most about this many elements (16 MiB in float32): the
# chunk's buffers (logits, δ) stay small beside Ω̄, and the (rows, d)(d, V) matmuls stay
# large. Measured at N 4096, d 256, V 32768 on 2 CPU cores: 128 rows cost autodiff's CPU
# time (1.02×) in 88 MiB (autodiff: 1,060 MiB); 64 rows cost 1.16×, 256 and 512 were
# no faster.
CHUNK_ELEMENTS = 2**22
# But never fewer rows than this: a thinner (rows, d)(d, V) matmul runs far below the
# machine's rate. At V 131072 (N 4096, d 256), 32 rows a chunk took 23 s a gradient and
# 128 rows 11.7 s, in 328 MiB (autodiff: 4,228 MiB).
MIN_ROWS = 128
# And at least this many chunks where N allows: one chunk's logits are then at most a
# quarter of all N×V, at any size.
MIN_CHUNKS = 4


def default_chunk_size(n_rows: int, vocab: int) -> int:
    """Rows per chunk: ``CHUNK_ELEMENTS / V`` but at least ``MIN_ROWS``, at most
    ``N / MIN_CHUNKS``, at least 1, evened out over the chunks so that the padding is
    less than one row per chunk."""
    target = max(1, min(max(CHUNK_ELEMENTS // vocab, MIN_ROWS), -(-n_rows // MIN_CHUNKS)))
    n_chunks = -(-n_rows // target)
    return -(-n_rows // n_chunks)


def _counted(labels, vocab: int, ignore_index: int):
    """The rows whose label counts: in [0, V) and not ``ignore_index``."""
    valid = (labels >= 0) & (labels < vocab)
    if 0 <= ignore_index < vocab:  # outside [0, V) it is excluded already
        valid &= labels != ignore_index
    return valid


def _logits(h, omega):
    """h Ωᵀ ``(rows, V)``, accumulated in float32 at least."""
    return lax.dot_general(h, omega, (((1,), (1,)), ((), ())), preferred_element_type=accumulation_dtype(h.dtype))


def _row_losses(log_p, labels, valid):
    """−log p[i, y_i] for counted rows, 0 for the rest: ``(rows,)``; no one-hot."""
    picked = jnp.take_along_axis(log_p, jnp.where(valid, labels, 0)[:, None], axis=1)[:, 0]
    return jnp.where(valid, -picked, 0)


def _mean_scale(valid, dtype):
    """1/n, n the number of counted rows; 1 when none counts (the loss is then 0)."""
    return 1 / jnp.maximum(jnp.sum(valid), 1).astype(dtype)


def linear_cross_entropy_twin(h, omega, labels, ignore_index=-100, chunk_size=None):
    """Plain twin: logits = h Ωᵀ in full (float32 at least), log-softmax, the label's
    entry by ``take_along_axis``, the mean over counted rows (0 if none). ``chunk_size``
    is accepted and ignored."""
    del chunk_size
    h, labels = h.reshape(numel(h.shape[:-1]), h.shape[-1]), labels.reshape(-1)
    valid = _counted(labels, omega.shape[0], ignore_index)
    log_p = log_softmax_twin(_logits(h, omega))
    return jnp.sum(_row_losses(log_p, labels, valid)) * _mean_scale(valid, log_p.dtype)


def _chunked(h, labels, valid, rows: int):
    """h, labels, valid padded to a multiple of ``rows`` (padding not counted), as chunks."""
    n_chunks = -(-h.shape[0] // rows)
    pad = n_chunks * rows - h.shape[0]
    h = jnp.pad(h, ((0, pad), (0, 0))).reshape(n_chunks, rows, h.shape[1])
    return h, jnp.pad(labels, (0, pad)).reshape(n_chunks, rows), jnp.pad(valid, (0, pad)).reshape(n_chunks, rows)


def _loss(h, omega, labels, ignore_index, chunk_size):
    """The primal without differentiation: the loss alone, chunk by chunk."""
    valid = _counted(labels, omega.shape[0], ignore_index)

    def chunk(total, xs):
        h_c, labels_c, valid_c = xs
        return total + jnp.sum(_row_losses(log_softmax_twin(_logits(h_c, omega)), labels_c, valid_c)), None

    acc = accumulation_dtype(h.dtype)
    total, _ = lax.scan(chunk, vary_like(jnp.zeros((), acc), h, omega, labels), _chunked(h, labels, valid, chunk_size))
    return total * _mean_scale(valid, acc)


def _linear_cross_entropy_fwd(h, omega, labels, ignore_index, chunk_size):
    """The loss, and h̄ = δ Ω, Ω̄ = δᵀ h with δ = (p − y)/n, formed chunk by chunk."""
    n_rows, acc = h.shape[0], accumulation_dtype(h.dtype)
    valid = _counted(labels, omega.shape[0], ignore_index)

    def chunk(carry, xs):
        total, omega_bar = carry
        h_c, labels_c, valid_c = xs
        log_p = log_softmax_twin(_logits(h_c, omega))  # (rows, V)
        is_label = lax.broadcasted_iota(labels_c.dtype, log_p.shape, 1) == labels_c[:, None]
        delta = jnp.where(valid_c[:, None], jnp.exp(log_p) - is_label.astype(acc), 0)  # n (p − y)
        h_bar_c = lax.dot(delta, omega, preferred_element_type=acc)  # δ Ω: (rows, d)
        omega_bar += lax.dot_general(delta, h_c, (((0,), (0,)), ((), ())), preferred_element_type=acc)  # δᵀ h
        return (total + jnp.sum(_row_losses(log_p, labels_c, valid_c)), omega_bar), h_bar_c

    init = vary_like((jnp.zeros((), acc), jnp.zeros(omega.shape, acc)), h, omega, labels)  # shard_map's types
    (total, omega_bar), h_bar = lax.scan(chunk, init, _chunked(h, labels, valid, chunk_size))
    scale = _mean_scale(valid, acc)  # the 1/n of δ, applied once to the sums
    h_bar = h_bar.reshape(h_bar.shape[0] * h_bar.shape[1], h.shape[1])[:n_rows] * scale
    return total * scale, (h_bar, omega_bar * scale, jnp.zeros((0,), h.dtype))  # the last: the dtype, in 0 bytes


def _linear_cross_entropy_bwd(ignore_index, chunk_size, res, g):
    """h̄ = ḡ δ Ω,  Ω̄ = ḡ δᵀ h (computed in the forward);  the labels get None."""
    del ignore_index, chunk_size  # used in the forward
    h_bar, omega_bar, like = res
    g = g.astype(h_bar.dtype)
    return (g * h_bar).astype(like.dtype), (g * omega_bar).astype(like.dtype), None


def _linear_cross_entropy_args(h, omega, labels, ignore_index=-100, chunk_size=None):
    """The one place of validation: float h (..., d), omega (V, d) of h's dtype, int
    labels h.shape[:-1], static ints. Returns ``(h (N, d), omega, labels (N,),
    ignore_index, rows per chunk)``."""
    h, omega, labels = as_float_array(FN, "h", h), as_float_array(FN, "omega", omega), jnp.asarray(labels)
    if h.ndim < 1:
        raise ValueError(f"{FN}: h must have a feature axis (N, d) or (..., d), got a scalar; pass h of shape (N, d)")
    d = h.shape[-1]
    if omega.ndim != 2 or omega.shape[0] == 0 or omega.shape[1] != d:
        raise ValueError(
            f"{FN}: omega has shape {omega.shape} but h has {d} features (h.shape = {h.shape}); omega must "
            f"be (V, {d}) with V >= 1, one row per class"
        )
    require_same_dtype(FN, h=h, omega=omega)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"{FN}: labels must be integer class ids, got dtype {labels.dtype}; cast them with labels.astype(jnp.int32)"
        )
    if labels.shape != h.shape[:-1]:
        raise ValueError(
            f"{FN}: labels have shape {labels.shape} but h has shape {h.shape}; labels must be "
            f"{h.shape[:-1]} (one class id per row of h)"
        )
    n_rows = numel(h.shape[:-1])
    if n_rows == 0:
        raise ValueError(
            f"{FN}: needs at least one row to average over, got h of shape {h.shape}; skip empty batches before the loss"
        )
    if isinstance(ignore_index, np.integer):
        ignore_index = int(ignore_index)
    if not is_int(ignore_index):
        raise TypeError(f"{FN}: ignore_index must be a static Python int, got {ignore_index!r}; pass e.g. -100")
    if isinstance(chunk_size, np.integer):
        chunk_size = int(chunk_size)
    if chunk_size is None:
        chunk_size = default_chunk_size(n_rows, omega.shape[0])
    chunk_size = min(positive_int(FN, "chunk_size", chunk_size), n_rows)
    if labels.dtype.itemsize < 4 or jnp.issubdtype(labels.dtype, jnp.unsignedinteger):
        # narrow ids must not wrap when compared with V; uint32 ids ≥ 2³¹ wrap to < 0: not counted either way
        labels = labels.astype(jnp.int32 if labels.dtype.itemsize <= 4 else jnp.int64)
    return h.reshape(n_rows, d), omega, labels.reshape(n_rows), ignore_index, chunk_size


_LINEAR_CROSS_ENTROPY = custom_rule(
    linear_cross_entropy_twin,
    _linear_cross_entropy_fwd,
    _linear_cross_entropy_bwd,
    prepare=_linear_cross_entropy_args,
    nondiff_argnums=(3, 4),
    primal=_loss,  # undifferentiated, the chunked loss runs, not the twin's full logits
)


@implements(_LINEAR_CROSS_ENTROPY)
def linear_cross_entropy(h, omega, labels, *, ignore_index: int = -100, chunk_size: int | None = None) -> jax.Array:
    """Mean cross-entropy of the logits ``h Ωᵀ``, without holding the (N, V) logits.

    ``L = −(1/n) Σ_i log softmax(h_i Ωᵀ)[labels_i]`` over the n counted rows: a row
    counts iff its label is in ``[0, V)`` and is not ``ignore_index``. Backward, with
    ``δ = (softmax(h Ωᵀ) − onehot(labels)) / n`` (0 in rows not counted):
    ``h̄ = δ Ω`` and ``Ω̄ = δᵀ h``, computed chunk by chunk in the forward (Liger-style,
    three matmuls per chunk) and scaled by the cotangent in the backward. Keeps h̄ and
    Ω̄ (float32 at least), never the logits.

    Args:
      h: ``(N, d)`` hidden states, or ``(..., d)`` (N is the product of the leading
        axes), floating point.
      omega: ``(V, d)``, the output projection (one row per class), of h's dtype.
      labels: integer class ids of shape ``h.shape[:-1]``, held fixed. An id equal to
        ``ignore_index`` or outside ``[0, V)`` is not counted (under jit it cannot be
        checked: see the module docstring); if no id counts, the loss and every
        gradient are 0.
      ignore_index: a static int; labels equal to it contribute nothing (-100, as
        PyTorch).
      chunk_size: a static positive int, the rows of h per chunk (N is padded up to a
        multiple of it). By default :func:`default_chunk_size`: one chunk's logits
        hold at most about ``CHUNK_ELEMENTS`` (4M) elements, and there are at least
        ``MIN_CHUNKS`` (4) chunks where N allows. Only memory and speed depend on it.

    Returns:
      The scalar mean loss, in float32 at least (float64 for float64 inputs).

    Raises:
      ValueError: on a scalar h, omega not ``(V, d)`` with V ≥ 1, labels of the wrong
        shape, no rows, or a chunk_size that is not a positive int.
      TypeError: on non-float h or omega, mixed float dtypes, non-integer labels, or
        an ignore_index that is not an int.

    Example:
      >>> import funcprop as fp
      >>> h, omega = jnp.ones((6, 4)), jnp.zeros((10, 4))   # every class equally likely
      >>> labels = jnp.array([1, 2, 3, -100, -100, 9])         # two rows ignored
      >>> print(f"{fp.linear_cross_entropy(h, omega, labels):.4f}")  # log 10
      2.3026
    """
    return _LINEAR_CROSS_ENTROPY.core(*_LINEAR_CROSS_ENTROPY.prepare(h, omega, labels, ignore_index, chunk_size))
