"""Inverted dropout and its hand-derived backward, the mask regenerated from the key.

Forward, with m a Bernoulli(1 − rate) mask drawn from ``key`` (one draw per element):

    y = m ⊙ x / (1 − rate)            kept elements scaled, so E[y] = x

Backward, with the same mask:

    x̄ = m ⊙ ḡ / (1 − rate)            (the Jacobian is the diagonal m / (1 − rate))

The fwd keeps only the key, not the mask: the bwd draws the same mask again from it,
as ``jax.random`` is a pure function of the key. The key is a primal argument of the
``custom_vjp`` with cotangent None (a key cannot be one of its nondiff arguments).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from funcprop.rules._core import as_float_array, custom_rule, implements, static_float


def _masked(v, key, rate: float):
    """m ⊙ v / (1 − rate), m drawn from key; v itself for rate = 0.

    The uniforms behind m are float32 whatever v's dtype (and whether x64 is on), so one
    key gives one mask for every dtype, and the bwd's mask equals the fwd's.
    """
    if rate == 0:
        return v
    keep = jax.random.bernoulli(key, jnp.float32(1 - rate), v.shape)
    return jnp.where(keep, v / (1 - rate), 0)


def dropout_twin(x, key, rate):
    """Plain twin of :func:`dropout`: ``where(m, x / (1 − rate), 0)``."""
    return _masked(x, key, rate)


def _dropout_fwd(x, key, rate):
    return dropout_twin(x, key, rate), key


def _dropout_bwd(rate, key, y_bar):
    """x̄ = m ⊙ ḡ / (1 − rate), m drawn again from the saved key; the key's cotangent is None."""
    return _masked(y_bar, key, rate), None


def _as_key(key):
    """A single typed PRNG key from a typed key or a raw uint32 one, or a TypeError."""
    fix = "pass key=jax.random.key(seed), or a raw jax.random.PRNGKey(seed)"
    if key is None:
        raise TypeError(f"dropout: a key is required, got key=None; {fix} (a fresh one each step)")
    try:
        key = jnp.asarray(key)
    except TypeError:
        raise TypeError(f"dropout: key must be a PRNG key, got a {type(key).__name__}; {fix}") from None
    if key.dtype == jnp.uint32:
        try:
            key = jax.random.wrap_key_data(key)
        except (TypeError, ValueError):
            raise TypeError(
                f"dropout: key is a uint32 array of shape {key.shape}, which is not a raw "
                f"key of the default PRNG implementation; {fix}"
            ) from None
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        raise TypeError(f"dropout: key must be a PRNG key, got an array of dtype {key.dtype}; {fix}")
    if key.shape != ():
        raise TypeError(
            f"dropout: key must be a single key, got {key.shape} keys; split it "
            f"(jax.random.split) and pass one, or jax.vmap over examples with a key each"
        )
    return key


def _dropout_args(x, key, rate):
    """dropout's one place of validation: a float x, one key, a static rate in [0, 1).
    Takes and returns the core's order ``(x, key, rate)``, the key typed (a raw uint32
    key is wrapped)."""
    return as_float_array("dropout", "x", x), _as_key(key), dropout_rate(rate)


def dropout_rate(rate) -> float:
    """The rate as a float, or an error: a static Python number in [0, 1)."""
    rate = static_float("dropout", "rate", rate, example=0.1)
    if not (0 <= rate < 1 and math.isfinite(rate)):
        raise ValueError(
            f"dropout: rate must be in [0, 1) (the probability of dropping an element), "
            f"got {rate}; use 0 to keep every element"
        )
    return rate


_DROPOUT = custom_rule(dropout_twin, _dropout_fwd, _dropout_bwd, prepare=_dropout_args, nondiff_argnums=(2,))


@implements(_DROPOUT)
def dropout(x, rate: float, *, key=None) -> jax.Array:
    """Inverted dropout: keep each element with probability 1 − rate, scaled by 1/(1 − rate).

    ``y = m ⊙ x / (1 − rate)`` with m a Bernoulli(1 − rate) mask drawn from ``key``, so
    ``E[y] = x``; ``rate = 0`` returns x. Backward: ``x̄ = m ⊙ ḡ / (1 − rate)``. Keeps
    only the key: the mask is regenerated from it in the backward, not stored.

    The same key gives the same mask; pass a fresh key each step. Under ``jax.vmap``
    an unbatched key gives every example the same per-example mask, as a loop would;
    batch the keys (one per example) for independent masks.

    Args:
      x: any shape, floating point.
      rate: a static Python float in [0, 1), the probability of dropping an element.
      key: a PRNG key, typed (``jax.random.key``) or raw uint32
        (``jax.random.PRNGKey``); required.

    Returns:
      The shape and dtype of x.

    Raises:
      ValueError: on a rate outside [0, 1).
      TypeError: on a missing key or one that is not a single PRNG key, an integer x,
        or a rate that is not a Python float.
    """
    return _DROPOUT.core(*_DROPOUT.prepare(x, key, rate))
