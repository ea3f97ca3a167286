"""Scaled dot-product attention in O(N) memory, with the hand-derived backward.

Per batch and head, with q rows t, keys s, scale c (1/√D by default):

    S = c Q Kᵀ            (T, S)      masked entries set to −∞
    P = softmax_rows(S)   (T, S)
    O = P V               (T, Dv)

Autodiff keeps P, B·H·T·S numbers. Here the forward runs block by block with an
online softmax (a running max m, a running sum ℓ, and O rescaled as m grows), so only
q, k, v, O and the row log-sum-exp ``L = m + log ℓ`` are saved: O(T + S) per head.
L is kept as its two terms m and ℓ, so that ``exp(S − L) = exp(S − m) / ℓ`` loses no
digits where the scores are large (at |S| ~ 1e8 a float32 L is off by ±4, e⁴ in P).

Backward, with dO the cotangent of O. P is recomputed block by block as ``exp(S − L)``, then

    dV = Pᵀ dO,   dP = dO Vᵀ,   Δ = rowsum(dO ⊙ O),   dS = P ⊙ (dP − Δ),
    dQ = c dS K,  dK = c dSᵀ Q.

dS is the notes' softmax VJP ``z̄ = p ⊙ (ḡ − ⟨ḡ, p⟩)``, row by row, with ḡ = dP: the
inner product ⟨dP_t, P_t⟩ = Σ_s (dO_t · V_s) P_ts = dO_t · (Σ_s P_ts V_s) = dO_t · O_t,
which is Δ_t. So Δ comes from O and dO, T·Dv numbers, and P is never stored.

Masks, all combined by "and":

- ``mask``: boolean, broadcastable to (B, H, T, S); True means "may attend".
- ``causal=True``: query t sees keys s ≤ t + S − T. With T = S that is s ≤ t; with
  T < S the queries are the *last* T positions (bottom-right alignment, what decoding
  with a cache needs; FlashAttention ≥ 2.1 does the same, while ``jax.nn`` and PyTorch
  align top-left).
- A row with no key left (fully masked) has output 0 and gradient 0. (``jax.nn``'s
  xla path gives the mean of V there.)

Grouped queries: k and v may have fewer heads Hkv than q's H, with H a multiple of Hkv;
query head h reads key/value head h // (H / Hkv), and dK, dV sum over the group.

Blocks: the forward scans key blocks inside a scan over query blocks; the backward
scans query blocks inside a scan over key blocks, carrying dK and dV of the key block,
and adds each block's dQ. The trip counts are static (``lax.scan``), so grad of grad
works; a causal block entirely above the diagonal is skipped with ``lax.cond``.
Dtypes: scores, softmax statistics and accumulators are float32 at least; O and the
cotangents come back in the inputs' dtype.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from funcprop.rules._core import (
    accumulation_dtype,
    as_float_array,
    custom_rule,
    implements,
    positive_int,
    require_same_dtype,
    static_float,
    vary_like,
)

DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 256


def _valid(t, s, n_q: int, n_k: int, causal: bool, mask):
    """Which (query t, key s) pairs may attend: broadcastable boolean."""
    ok = s < n_k  # padded keys never
    if causal:
        ok = ok & (s <= t + (n_k - n_q))
    if mask is not None:
        ok = ok & mask
    return ok


def attention_twin(q, k, v, mask=None, causal=False, scale=None, block_q=None, block_k=None):
    """Plain twin of :func:`attention`: the naive formula with the T×S matrix P.

    ``P = softmax(c Q Kᵀ)`` over the unmasked keys, ``O = P V``; a fully masked row is 0.
    The block sizes are accepted and ignored.
    """
    del block_q, block_k
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    b, t, h, d = q.shape
    n_kv = k.shape[2]
    acc = accumulation_dtype(q.dtype)
    qg = q.reshape(b, t, n_kv, h // n_kv, d)  # (B, T, Hkv, G, D)
    s = jnp.einsum("bthgd,bshd->bhgts", qg, k, preferred_element_type=acc) * scale
    m = None if mask is None else jnp.broadcast_to(mask, (b, h, t, k.shape[1])).reshape(b, n_kv, h // n_kv, t, -1)
    valid = _valid(jnp.arange(t)[:, None], jnp.arange(k.shape[1]), t, k.shape[1], causal, m)
    shift = lax.stop_gradient(jnp.max(jnp.where(valid, s, -jnp.inf), axis=-1, keepdims=True))
    e = jnp.where(valid, jnp.exp(jnp.where(valid, s - jnp.where(shift == -jnp.inf, 0, shift), -jnp.inf)), 0)
    total = jnp.sum(e, axis=-1, keepdims=True)
    p = e / jnp.where(total == 0, 1, total)  # a NaN total stays NaN
    o = jnp.einsum("bhgts,bshd->bthgd", p, v.astype(acc), preferred_element_type=acc)
    return o.reshape(b, t, h, v.shape[-1]).astype(q.dtype)


class _Blocks:
    """The blocked layout of one call: q as (nq, B, Hkv, G, bq, D), k and v as
    (nk, B, Hkv, bk, ·), a mask sliced per block, and which blocks to skip."""

    def __init__(self, q, k, mask, causal, block_q, block_k):
        b, self.t, h, _ = q.shape
        self.s, self.n_kv = k.shape[1], k.shape[2]
        self.groups = h // self.n_kv
        self.bq, self.bk = min(block_q, self.t), min(block_k, self.s)
        self.nq, self.nk = -(-self.t // self.bq), -(-self.s // self.bk)
        self.causal = causal
        self.mask = None
        if mask is not None:  # (b|1, Hkv|1, G|1, Tp, Sp), padded with False
            mb, mh = mask.shape[0], mask.shape[1]
            m = jnp.broadcast_to(mask, (mb, mh, self.t, self.s))
            m = m.reshape(mb, self.n_kv if mh == h else 1, self.groups if mh == h else 1, self.t, self.s)
            pad = [(0, 0)] * 3 + [(0, self.nq * self.bq - self.t), (0, self.nk * self.bk - self.s)]
            self.mask = jnp.pad(m, pad)

    def queries(self, x):
        """(B, T, H, ·) -> (nq, B, Hkv, G, bq, ·), zero-padded."""
        b, _, _, d = x.shape
        x = jnp.pad(x, ((0, 0), (0, self.nq * self.bq - self.t), (0, 0), (0, 0)))
        x = x.reshape(b, self.nq, self.bq, self.n_kv, self.groups, d)
        return x.transpose(1, 0, 3, 4, 2, 5)

    def rows(self, x):
        """(B, H, T) row statistics -> (nq, B, Hkv, G, bq)."""
        b = x.shape[0]
        x = jnp.pad(x, ((0, 0), (0, 0), (0, self.nq * self.bq - self.t)))
        return x.reshape(b, self.n_kv, self.groups, self.nq, self.bq).transpose(3, 0, 1, 2, 4)

    def keys(self, x):
        """(B, S, Hkv, ·) -> (nk, B, Hkv, bk, ·), zero-padded."""
        b, _, _, d = x.shape
        x = jnp.pad(x, ((0, 0), (0, self.nk * self.bk - self.s), (0, 0), (0, 0)))
        return x.reshape(b, self.nk, self.bk, self.n_kv, d).transpose(1, 0, 3, 2, 4)

    def unqueries(self, x):
        """(nq, B, Hkv, G, bq, ·) -> (B, T, H, ·)."""
        _, b, _, _, _, d = x.shape
        x = x.transpose(1, 0, 4, 2, 3, 5).reshape(b, self.nq * self.bq, self.n_kv * self.groups, d)
        return x[:, : self.t]

    def unrows(self, x):
        """(nq, B, Hkv, G, bq) -> (B, H, T)."""
        b = x.shape[1]
        return x.transpose(1, 2, 3, 0, 4).reshape(b, self.n_kv * self.groups, -1)[:, :, : self.t]

    def unkeys(self, x):
        """(nk, B, Hkv, bk, ·) -> (B, S, Hkv, ·)."""
        _, b, _, _, d = x.shape
        return x.transpose(1, 0, 3, 2, 4).reshape(b, self.nk * self.bk, self.n_kv, d)[:, : self.s]

    def valid(self, i, j):
        """Block (i, j)'s mask, broadcastable to (B, Hkv, G, bq, bk)."""
        t = i * self.bq + jnp.arange(self.bq)[:, None]
        s = j * self.bk + jnp.arange(self.bk)
        m = None
        if self.mask is not None:
            m = lax.dynamic_slice_in_dim(self.mask, i * self.bq, self.bq, axis=3)
            m = lax.dynamic_slice_in_dim(m, j * self.bk, self.bk, axis=4)
        return _valid(t, s, self.t, self.s, self.causal, m)

    def needed(self, i, j):
        """False for a causal block wholly above the diagonal (every key too late)."""
        if not self.causal:
            return jnp.bool_(True)
        return j * self.bk <= i * self.bq + self.bq - 1 + (self.s - self.t)


def _scores(q_i, k_j, scale, acc):
    """c Q_i K_jᵀ: (B, Hkv, G, bq, D) x (B, Hkv, bk, D) -> (B, Hkv, G, bq, bk)."""
    return jnp.einsum("bhgqd,bhkd->bhgqk", q_i, k_j, preferred_element_type=acc) * scale


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7))  # one trace per shape, eager calls too
def _forward(q, k, v, mask, causal, scale, block_q, block_k):
    """(O, m, ℓ): the online softmax over key blocks, for each query block; the row
    log-sum-exp is L = m + log ℓ (m = −∞, ℓ = 0 in a fully masked row)."""
    acc = accumulation_dtype(q.dtype)
    blk = _Blocks(q, k, mask, causal, block_q, block_k)
    kb, vb = blk.keys(k), blk.keys(v)

    def query_block(_, xs):
        i, q_i = xs

        def key_block(carry, ys):
            j, k_j, v_j = ys

            def update(carry):
                m, ell, o = carry
                s = jnp.where(blk.valid(i, j), _scores(q_i, k_j, scale, acc), -jnp.inf)
                m_new = lax.stop_gradient(jnp.maximum(m, jnp.max(s, axis=-1)))  # a shift: it cancels
                shift = jnp.where(m_new == -jnp.inf, 0, m_new)  # a row masked so far: P = exp(−∞) = 0
                p = jnp.exp(s - shift[..., None])
                rescale = jnp.exp(m - shift)
                ell = ell * rescale + jnp.sum(p, axis=-1)
                pv = jnp.einsum("bhgqk,bhkd->bhgqd", p, v_j.astype(acc), preferred_element_type=acc)
                return m_new, ell, o * rescale[..., None] + pv

            return lax.cond(blk.needed(i, j), update, lambda c: c, carry), None

        rows = q_i.shape[:-1]
        init = (jnp.full(rows, -jnp.inf, acc), jnp.zeros(rows, acc), jnp.zeros((*rows, v.shape[-1]), acc))
        init = vary_like(init, q, k, v, mask)  # the carry's type under shard_map: the blocks
        (m, ell, o), _ = lax.scan(key_block, init, (jnp.arange(blk.nk), kb, vb))
        o = o / jnp.where(ell == 0, 1, ell)[..., None]
        return None, (o, m, ell)

    _, (o, m, ell) = lax.scan(query_block, None, (jnp.arange(blk.nq), blk.queries(q)))
    return blk.unqueries(o).astype(q.dtype), blk.unrows(m), blk.unrows(ell)


def _attention_fwd(q, k, v, mask, causal, scale, block_q, block_k):
    o, m, ell = _forward(q, k, v, mask, causal, scale, block_q, block_k)
    return o, (q, k, v, mask, o, m, ell)


def _attention_bwd(causal, scale, block_q, block_k, res, do):
    """dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP − Δ), dQ = c dS K, dK = c dSᵀ Q, block by
    block, with P = exp(S − L) = exp(S − m) / ℓ recomputed and Δ = rowsum(dO ⊙ O)."""
    return (*_backward(*res, do, causal, scale, block_q, block_k), None)


@functools.partial(jax.jit, static_argnums=(8, 9, 10, 11))
def _backward(q, k, v, mask, o, m, ell, do, causal, scale, block_q, block_k):
    """(dQ, dK, dV) of :func:`_attention_bwd`."""
    acc = accumulation_dtype(q.dtype)
    blk = _Blocks(q, k, mask, causal, block_q, block_k)
    delta = jnp.einsum("bthd,bthd->bht", do.astype(acc), o.astype(acc))  # Δ = rowsum(dO ⊙ O)
    m, ell = blk.rows(m), blk.rows(ell)  # padded rows get m = ℓ = 0
    m = jnp.where(m == -jnp.inf, 0, m)  # a fully masked row: every S is −∞, so P = 0
    rows = (m, jnp.where(ell == 0, 1, ell), blk.rows(delta))
    queries = (jnp.arange(blk.nq), blk.queries(q), blk.queries(do.astype(acc)), *rows)

    def key_block(dq, xs):
        j, k_j, v_j = xs

        def query_block(carry, ys):
            i, q_i, do_i, m_i, ell_i, delta_i = ys

            def grads(carry):
                dk, dv = carry
                s = jnp.where(blk.valid(i, j), _scores(q_i, k_j, scale, acc), -jnp.inf)
                p = jnp.exp(s - m_i[..., None]) / ell_i[..., None]  # (B, Hkv, G, bq, bk)
                dp = jnp.einsum("bhgqd,bhkd->bhgqk", do_i, v_j, preferred_element_type=acc)
                ds = p * (dp - delta_i[..., None])
                dq_i = scale * jnp.einsum("bhgqk,bhkd->bhgqd", ds, k_j, preferred_element_type=acc)
                dk = dk + scale * jnp.einsum("bhgqk,bhgqd->bhkd", ds, q_i, preferred_element_type=acc)
                dv = dv + jnp.einsum("bhgqk,bhgqd->bhkd", p, do_i, preferred_element_type=acc)
                return (dk, dv), dq_i

            def skip(carry):
                return carry, vary_like(jnp.zeros(q_i.shape, acc), q, k, v, mask, do)

            return lax.cond(blk.needed(i, j), grads, skip, carry)

        init = vary_like((jnp.zeros(k_j.shape, acc), jnp.zeros(v_j.shape, acc)), q, k, v, mask, do)
        (dk, dv), dq_j = lax.scan(query_block, init, queries)
        return dq + dq_j, (dk, dv)

    dq0 = vary_like(jnp.zeros((blk.nq, *queries[1].shape[1:]), acc), q, k, v, mask, do)
    dq, (dk, dv) = lax.scan(key_block, dq0, (jnp.arange(blk.nk), blk.keys(k), blk.keys(v)))
    return blk.unqueries(dq).astype(q.dtype), blk.unkeys(dk).astype(k.dtype), blk.unkeys(dv).astype(v.dtype)


def _attention_args(q, k, v, mask=None, causal=False, scale=None, block_q=DEFAULT_BLOCK_Q, block_k=DEFAULT_BLOCK_K):
    """attention's one place of validation. Returns ``(q, k, v, mask, causal, scale,
    block_q, block_k)`` with scale resolved and mask a rank-4 boolean array or None."""
    fn = "attention"
    q, k, v = (as_float_array(fn, name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(
                f"{fn}: {name} must be (B, T, H, D) (batch, positions, heads, head dim), got shape "
                f"{x.shape}; add a batch axis with {name}[None] or split heads with reshape(B, T, H, D)"
            )
    require_same_dtype(fn, q=q, k=k, v=v)
    (b, t, h, d), (bk_, s, h_kv, dk) = q.shape, k.shape
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"{fn}: k has shape {k.shape} but v has {v.shape}; they must share (B, S, Hkv)")
    if bk_ != b or dk != d:
        raise ValueError(
            f"{fn}: q has shape {q.shape} but k has {k.shape}; they must share the batch B and the head dim D"
        )
    if h_kv == 0 or h % h_kv:
        raise ValueError(
            f"{fn}: q has {h} heads but k and v have {h_kv}; the query heads must be a multiple of the "
            f"key/value heads (grouped queries)"
        )
    if 0 in (b, t, s, d, h):
        raise ValueError(f"{fn}: empty axes in q {q.shape} or k {k.shape}; every axis needs at least one entry")
    if not isinstance(causal, bool):
        raise TypeError(f"{fn}: causal must be a bool, got {causal!r}")
    scale = 1 / math.sqrt(d) if scale is None else static_float(fn, "scale", scale, example=0.125)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{fn}: scale must be finite and > 0, got {scale}; leave it None for 1/sqrt(D)")
    block_q, block_k = positive_int(fn, "block_q", block_q), positive_int(fn, "block_k", block_k)
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(f"{fn}: mask must be boolean (True = may attend), got dtype {mask.dtype}")
        full = (b, h, t, s)
        if mask.ndim > 4 or any(m not in (1, f) for m, f in zip(mask.shape[::-1], full[::-1])):
            raise ValueError(
                f"{fn}: mask of shape {mask.shape} does not broadcast to (B, H, T, S) = {full}; give it "
                f"(B or 1, H or 1, T, S)"
            )
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        if mask.shape[2:] != (t, s):
            mask = jnp.broadcast_to(mask, mask.shape[:2] + (t, s))
    return q, k, v, mask, causal, scale, block_q, block_k


_ATTENTION = custom_rule(
    attention_twin,
    _attention_fwd,
    _attention_bwd,
    prepare=_attention_args,
    nondiff_argnums=(4, 5, 6, 7),
    primal=lambda *args: _forward(*args)[0],  # blocked also when not differentiated
)


@implements(_ATTENTION)
def attention(
    q,
    k,
    v,
    *,
    causal: bool = False,
    mask=None,
    scale=None,
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
) -> jax.Array:
    """Scaled dot-product attention ``O = softmax(c Q Kᵀ + mask) V``, in O(T + S) memory.

    The layout of ``jax.nn.dot_product_attention``. The forward is an online softmax over
    key blocks; it saves q, k, v, O and the row log-sum-exp L (as m and ℓ), never P. Backward (see
    the module docstring): ``dV = Pᵀ dO``, ``dP = dO Vᵀ``, ``dS = P ⊙ (dP − Δ)`` with
    ``Δ = rowsum(dO ⊙ O)`` (the softmax VJP), ``dQ = c dS K``, ``dK = c dSᵀ Q``, with P
    recomputed block by block as ``exp(S − L)``.

    Args:
      q: ``(B, T, H, D)`` queries.
      k: ``(B, S, Hkv, D)`` keys; Hkv divides H (grouped queries; Hkv = H is plain
        multi-head attention).
      v: ``(B, S, Hkv, Dv)`` values.
      causal: query t sees keys ``s ≤ t + S − T`` (bottom-right aligned when T ≠ S).
      mask: boolean, broadcastable to ``(B, H, T, S)``; True = may attend.
      scale: the factor c on the scores; None for ``1/√D``.
      block_q, block_k: query and key rows per block (static; the last block is
        padded). Memory grows with ``block_q · block_k``, time falls with fewer blocks.

    Returns:
      ``(B, T, H, Dv)`` in q's dtype. A row with every key masked is 0 (and passes no
      gradient).

    Example:
      >>> import funcprop as fp
      >>> q = k = v = jax.random.normal(jax.random.key(0), (2, 16, 4, 8))   # (B, T, H, D)
      >>> o = fp.attention(q, k, v, causal=True)
      >>> o.shape
      (2, 16, 4, 8)
      >>> bool(jnp.allclose(o, jax.nn.dot_product_attention(q, k, v, is_causal=True), atol=1e-5))
      True
    """
    return _ATTENTION.core(*_ATTENTION.prepare(q, k, v, mask, causal, scale, block_q, block_k))
