"""Shuffling without a sort: a keyed Feistel bijection, filtered to ``[0, n)``.

``jax.random.permutation`` sorts random keys (two rounds of ``sort_key_val`` from a
couple of thousand examples on), and on XLA:CPU that sort can cost more than a small
model's training step (the figures are in ``docs/benchmarks.md``, measured by
``experiments/shuffle_cost.py``).
From :data:`SORT_BELOW` examples on, :func:`permutation` costs one elementwise pass
and a compaction instead:

- an unbalanced Feistel network on exactly ``bits = (n - 1).bit_length()`` bits is a
  bijection E of ``[0, 2^bits)`` for any round function: each round swaps the halves
  (``bits // 2`` and ``bits - bits // 2`` bits) and xors one with a 32-bit integer hash
  of the other and a round key drawn from ``key``; six rounds;
- the sequence E(0), E(1), …, E(2^bits − 1) holds every value below ``n`` exactly once
  (E is a bijection), so keeping the values below ``n``, in sequence order, is a
  permutation of ``[0, n)``. The domain is under ``2n``, so the cost is bounded: one
  pass over fewer than ``2n`` indices and a ``nonzero`` (a cumulative sum, no sort).

Below :data:`SORT_BELOW` examples the sort is cheap and a Feistel network
on so few bits draws orders visibly unevenly, so :func:`permutation` returns
``jax.random.permutation(key, n)`` there. Above it, the order is a pseudo-random
permutation, good for shuffling minibatches; it is not ``jax.random.permutation``'s
stream, and not meant for cryptography.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SORT_BELOW = 2048
_ROUNDS = 6


def _hash32(x: jax.Array) -> jax.Array:
    """A 32-bit integer mixer (xor-shift-multiply, two multiplies): uint32 -> uint32."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _encrypt(v: jax.Array, round_keys: jax.Array, bits: int) -> jax.Array:
    """The Feistel bijection of ``[0, 2^bits)``, uint32 -> uint32, elementwise.

    ``v = (left << r) | right`` with ``left`` of ``l`` bits and ``right`` of ``r`` bits;
    a round maps (left, right) to (right, left ^ F(right)) and so swaps the two widths.
    """
    l_bits, r_bits = bits // 2, bits - bits // 2
    left, right = v >> r_bits, v & jnp.uint32((1 << r_bits) - 1)
    for r in range(round_keys.shape[0]):
        mixed = _hash32(right ^ round_keys[r]) & jnp.uint32((1 << l_bits) - 1)
        left, right = right, left ^ mixed
        l_bits, r_bits = r_bits, l_bits
    return (left << r_bits) | right


def permutation(key: jax.Array, n: int) -> jax.Array:
    """A pseudo-random permutation of ``range(n)`` drawn from ``key``, without a sort.

    Args:
      key: a JAX PRNG key (typed ``jax.random.key`` or raw ``PRNGKey``).
      n: a static Python int, ``0 <= n < 2**31``.

    Returns:
      int32 ``(n,)`` holding every index in ``[0, n)`` once. Deterministic per key;
      works under ``jit`` and ``vmap`` over keys. Below :data:`SORT_BELOW` it is
      ``jax.random.permutation(key, n)``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 2**31:
        raise ValueError(
            f"shuffle.permutation: n must be a Python int in [0, 2**31), got {n!r}; "
            "pass the number of examples, e.g. int(x.shape[0])"
        )
    if n < SORT_BELOW:
        return jax.random.permutation(key, n).astype(jnp.int32)
    bits = (n - 1).bit_length()
    round_keys = jax.random.bits(key, (_ROUNDS,), jnp.uint32)
    v = _encrypt(jnp.arange(1 << bits, dtype=jnp.uint32), round_keys, bits)
    return v[jnp.nonzero(v < n, size=n)[0]].astype(jnp.int32)
