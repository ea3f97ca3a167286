"""Softmax and log-softmax along one axis, with backwards that never form the Jacobian.

The softmax Jacobian is ``J = diag(p) − p pᵀ``, so its VJP is

    z̄ = Jᵀ ḡ = p ⊙ ḡ − p ⟨p, ḡ⟩ = p ⊙ (ḡ − ⟨ḡ, p⟩)

an O(C) computation instead of the O(C²) matrix. For log-softmax,
``∂ log p_i / ∂z_j = [i = j] − p_j``, so ``z̄ = ḡ − p Σ ḡ``.

Dtypes (DESIGN §7): the exponentials, the sums and the backward are computed in
float32 at least (bfloat16 and float16 go through float32, float32 and float64 stay);
the output and z̄ come back in z's dtype. The residual is the output in z's dtype. The
twins make the same casts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcprop.rules._core import (
    accumulation_dtype,
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


def _wide(*arrays):
    """The arrays in z's accumulation dtype: float32 at least (DESIGN §7)."""
    acc = accumulation_dtype(arrays[0].dtype)
    return [a.astype(acc) for a in arrays]


def softmax_twin(z, axis=-1):
    """Plain twin of :func:`softmax`: ``exp(z − m) / Σ exp(z − m)``, m = max z, in
    float32 at least."""
    (wide,) = _wide(z)
    e = jnp.exp(_shifted(wide, axis))
    return (e / jnp.sum(e, axis=axis, keepdims=True)).astype(z.dtype)


def _softmax_fwd(z, axis):
    p = softmax_twin(z, axis)
    return p, p


def _softmax_bwd(axis, p, g):
    """z̄ = p ⊙ (ḡ − ⟨ḡ, p⟩)."""
    wp, wg = _wide(p, g)
    return ((wp * (wg - jnp.sum(wg * wp, axis=axis, keepdims=True))).astype(p.dtype),)


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
    """Plain twin of :func:`log_softmax`: ``(z − m) − log Σ exp(z − m)``, in float32 at least."""
    s = _shifted(*_wide(z), axis)
    return (s - jnp.log(jnp.sum(jnp.exp(s), axis=axis, keepdims=True))).astype(z.dtype)


def _log_softmax_fwd(z, axis):
    out = log_softmax_twin(z, axis)
    return out, out


def _log_softmax_bwd(axis, log_p, g):
    """z̄ = ḡ − p Σ ḡ, with p = exp(log p)."""
    wl, wg = _wide(log_p, g)
    return ((wg - jnp.exp(wl) * jnp.sum(wg, axis=axis, keepdims=True)).astype(log_p.dtype),)


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
