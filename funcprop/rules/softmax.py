"""Softmax and log-softmax along one axis, with backwards that never form the Jacobian.

The softmax Jacobian is ``J = diag(p) − p pᵀ``, so its VJP is

    z̄ = Jᵀ ḡ = p ⊙ ḡ − p ⟨p, ḡ⟩ = p ⊙ (ḡ − ⟨ḡ, p⟩)

an O(C) computation instead of the O(C²) matrix. For log-softmax,
``∂ log p_i / ∂z_j = [i = j] − p_j``, so ``z̄ = ḡ − p Σ ḡ``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcprop.rules._core import (
    as_float_array,
    custom_rule,
    implements,
    normalize_axis,
    require_nonempty,
)


def _shifted(z, axis):
    """z − max(z) along axis; the shift cancels in softmax, so no gradient flows in it."""
    return z - jax.lax.stop_gradient(jnp.max(z, axis=axis, keepdims=True))


def _axis_args(fn: str):
    """The validation of a rule over one axis of z: a float z of rank >= 1 and an int axis."""

    def prepare(z, axis=-1):
        z = as_float_array(fn, "z", z)
        if z.ndim < 1:
            raise ValueError(f"{fn}: z must have rank >= 1, got shape {z.shape}")
        axis = normalize_axis(fn, axis, z.ndim)
        require_nonempty(fn, z, axis, "class")  # a softmax over 0 classes has no max to shift by
        return z, axis

    return prepare


def softmax_twin(z, axis=-1):
    """Plain twin of :func:`softmax`: ``exp(z − m) / Σ exp(z − m)``, m = max z."""
    e = jnp.exp(_shifted(z, axis))
    return e / jnp.sum(e, axis=axis, keepdims=True)


def _softmax_fwd(z, axis):
    p = softmax_twin(z, axis)
    return p, p


def _softmax_bwd(axis, p, g):
    """z̄ = p ⊙ (ḡ − ⟨ḡ, p⟩)."""
    return (p * (g - jnp.sum(g * p, axis=axis, keepdims=True)),)


_SOFTMAX = custom_rule(softmax_twin, _softmax_fwd, _softmax_bwd, prepare=_axis_args("softmax"), nondiff_argnums=(1,))


@implements(_SOFTMAX)
def softmax(z, axis: int = -1) -> jax.Array:
    """Softmax ``p = exp(z) / Σ exp(z)`` along ``axis``.

    Backward: ``z̄ = p ⊙ (ḡ − ⟨ḡ, p⟩)`` along the axis; the C×C Jacobian
    ``diag(p) − p pᵀ`` is never formed. Keeps p.

    Args:
      z: ``(..., C, ...)`` logits, rank ≥ 1, C ≥ 1 (other axes may be empty).
      axis: a static int, the class axis.

    Returns:
      p, the shape of z, summing to 1 along ``axis``.
    """
    return _SOFTMAX.core(*_SOFTMAX.prepare(z, axis))


def log_softmax_twin(z, axis=-1):
    """Plain twin of :func:`log_softmax`: ``(z − m) − log Σ exp(z − m)``."""
    s = _shifted(z, axis)
    return s - jnp.log(jnp.sum(jnp.exp(s), axis=axis, keepdims=True))


def _log_softmax_fwd(z, axis):
    out = log_softmax_twin(z, axis)
    return out, out


def _log_softmax_bwd(axis, log_p, g):
    """z̄ = ḡ − p Σ ḡ, with p = exp(log p)."""
    return (g - jnp.exp(log_p) * jnp.sum(g, axis=axis, keepdims=True),)


_LOG_SOFTMAX = custom_rule(
    log_softmax_twin, _log_softmax_fwd, _log_softmax_bwd, prepare=_axis_args("log_softmax"), nondiff_argnums=(1,)
)


@implements(_LOG_SOFTMAX)
def log_softmax(z, axis: int = -1) -> jax.Array:
    """Log-softmax ``log p = z − log Σ exp(z)`` along ``axis``; finite for z = ±1e4.

    Backward: ``z̄ = ḡ − p Σ ḡ`` (p = exp of the saved output). Keeps log p.

    Args:
      z: ``(..., C, ...)`` logits, rank ≥ 1, C ≥ 1 (other axes may be empty).
      axis: a static int, the class axis.
    """
    return _LOG_SOFTMAX.core(*_LOG_SOFTMAX.prepare(z, axis))
