"""The dense (fully connected) layer and its hand-derived backward.

Column form of the notes: f = β + Ω h. Batch-first form, rows are examples:

    F = H Ωᵀ + β          H: (B, n_in)  Ω: (n_out, n_in)  β: (n_out,)  F: (B, n_out)

With Δ = ∂L/∂F:

    H̄ = Δ Ω               (the transpose of Ωᵀ; for one example ∂L/∂h = Ωᵀ δ)
    Ω̄ = Δᵀ H              (a sum of outer products δ hᵀ over the batch)
    β̄ = Σ_rows Δ

Dtypes (DESIGN §7): the products and the bias sum accumulate in float32 at least
(``preferred_element_type``; bfloat16 and float16 go through float32, float32 and
float64 stay as they are), the output comes back in h's dtype and each cotangent in
its own primal's dtype. The twin makes the same casts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcprop.rules._core import (
    accumulation_dtype,
    as_float_array,
    custom_rule,
    implements,
    numel,
    require_same_dtype,
)


def dense_twin(h, omega, beta):
    """Plain twin of :func:`dense`: ``h @ omega.T + beta``, accumulated in float32 at least."""
    acc = accumulation_dtype(h.dtype)
    return (jnp.matmul(h, omega.T, preferred_element_type=acc) + beta.astype(acc)).astype(h.dtype)


def _dense_fwd(h, omega, beta):
    return dense_twin(h, omega, beta), (h, omega)


def _dense_bwd(res, delta):
    """H̄ = Δ Ω,  Ω̄ = Δᵀ H,  β̄ = Σ Δ, summed over every leading batch axis."""
    h, omega = res
    rows = numel(h.shape[:-1])  # B = all leading axes; explicit, as reshape(-1, 0) cannot infer it
    delta_rows = delta.reshape(rows, delta.shape[-1])  # (B, n_out)
    h_rows = h.reshape(rows, h.shape[-1])  # (B, n_in)
    acc = accumulation_dtype(h.dtype)
    h_bar = jnp.matmul(delta, omega, preferred_element_type=acc)
    omega_bar = jnp.matmul(delta_rows.T, h_rows, preferred_element_type=acc)
    beta_bar = jnp.sum(delta_rows, axis=0, dtype=acc)
    # beta has omega's dtype: dense's prepare requires one dtype
    return h_bar.astype(h.dtype), omega_bar.astype(omega.dtype), beta_bar.astype(omega.dtype)


def dense_args(h, omega, beta):
    """dense's one place of validation: float arrays, h: (..., n_in), omega: (n_out, n_in),
    beta: (n_out,), one dtype. Returns ``(h, omega, beta)`` as arrays."""
    h = as_float_array("dense", "h", h)
    omega = as_float_array("dense", "omega", omega)
    beta = as_float_array("dense", "beta", beta)
    if h.ndim < 1:
        raise ValueError(
            f"dense: h must have at least one axis (..., n_in), got a scalar of shape "
            f"{h.shape}; pass features as h[..., None] or a vector"
        )
    if omega.ndim != 2:
        raise ValueError(f"dense: omega must be a matrix (n_out, n_in), got shape {omega.shape}")
    n_out, n_in = omega.shape
    if h.shape[-1] != n_in:
        raise ValueError(
            f"dense: omega has shape {omega.shape} but h has {h.shape[-1]} features "
            f"(h.shape = {h.shape}); omega must be (n_out, {h.shape[-1]})"
        )
    if beta.shape != (n_out,):
        raise ValueError(
            f"dense: beta has shape {beta.shape} but omega has shape {omega.shape}; beta must be ({n_out},)"
        )
    require_same_dtype("dense", h=h, omega=omega, beta=beta)
    return h, omega, beta


_DENSE = custom_rule(dense_twin, _dense_fwd, _dense_bwd, prepare=dense_args)


@implements(_DENSE)
def dense(h, omega, beta) -> jax.Array:
    """Affine map ``f = h Ωᵀ + β`` with the hand-derived backward.

    Backward, with Δ = ∂L/∂f: ``∂L/∂h = Δ Ω``, ``∂L/∂Ω = Δᵀ h`` (summed over all
    leading axes), ``∂L/∂β = Σ Δ``. Residuals kept: ``h`` and ``Ω`` (both already
    live; nothing new is stored). bfloat16 and float16 accumulate in float32 and
    return their own dtype.

    Args:
      h: ``(..., n_in)``, one example ``(n_in,)`` or any leading batch axes.
      omega: ``(n_out, n_in)``, the weight matrix Ω as in the notes' ``f = β + Ω h``.
      beta: ``(n_out,)``, the bias β.

    Returns:
      ``(..., n_out)``, the pre-activation f.

    Raises:
      ValueError: on a rank or a feature count that does not match.
      TypeError: on an integer input or on mixed float dtypes.

    Example:
      >>> import funcprop as fp
      >>> h = jnp.ones((8, 3))                          # a batch of 8 examples, n_in = 3
      >>> fp.dense(h, jnp.ones((4, 3)), jnp.zeros(4)).shape
      (8, 4)
      >>> # Ω̄ = Δᵀ h: with Δ all ones, each entry sums the 8 examples' h
      >>> print(jax.grad(lambda w: fp.dense(h, w, jnp.zeros(4)).sum())(jnp.ones((4, 3))))
      [[8. 8. 8.]
       [8. 8. 8.]
       [8. 8. 8.]
       [8. 8. 8.]]
    """
    return _DENSE.core(*dense_args(h, omega, beta))
