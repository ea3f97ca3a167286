"""Layer normalization and RMS normalization over the last axis, hand-derived backwards.

For one row x of d features (every leading axis is a batch axis):

    layer_norm:  μ = mean(x),  σ² = mean((x − μ)²),  r = 1/√(σ² + ε),
                 x̂ = (x − μ)·r,  y = γ ⊙ x̂ + β
    rms_norm:    r = 1/√(mean(x²) + ε),  x̂ = x·r,  y = γ ⊙ x̂

Backward, with ḡ = ∂L/∂y and g = γ ⊙ ḡ = ∂L/∂x̂. The row's Jacobian ∂x̂/∂x is
r·(I − 1/d − x̂ x̂ᵀ/d) for layer_norm and r·(I − x̂ x̂ᵀ/d) for rms_norm; it is symmetric,
so its VJP is the same product, O(d) and never formed:

    layer_norm:  x̄ = r·(g − mean(g) − x̂·mean(g ⊙ x̂))
    rms_norm:    x̄ = r·(g − x̂·mean(g ⊙ x̂))
    both:        γ̄ = Σ_rows ḡ ⊙ x̂,   β̄ = Σ_rows ḡ

Dtypes (DESIGN §7): the statistics and x̂ are computed in float32 at least
(:func:`~funcprop.rules._core.accumulation_dtype`: bfloat16 and float16 go through
float32, float64 stays), the output is cast back to x's dtype, and each cotangent
comes back in its own input's dtype. The twins make the same casts, so autodiff of a
twin returns the same dtypes.

Residuals: x, gamma and the per-row statistics (μ and r, shape ``(..., 1)``, in the
computation dtype); x̂ is recomputed in the backward rather than stored (it would be a
second array of x's size, in float32 for a bfloat16 x).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from funcprop.rules._core import (
    accumulation_dtype,
    as_float_array,
    custom_rule,
    implements,
    positive_float,
    require_same_dtype,
)


def _mean(v):
    return jnp.mean(v, axis=-1, keepdims=True)


def _batch_sum(v):
    """Σ over every leading (batch) axis: ``(..., d) -> (d,)``."""
    return jnp.sum(v, axis=tuple(range(v.ndim - 1)))


def _feature_args(fn: str, x, eps, **params):
    """Float x of rank >= 1, float parameters of shape (d,), one dtype, eps > 0."""
    x = as_float_array(fn, "x", x)
    params = {name: as_float_array(fn, name, p) for name, p in params.items()}
    if x.ndim < 1:
        raise ValueError(
            f"{fn}: x must have a feature axis (..., d), got a scalar of shape {x.shape}; "
            f"pass features as x[..., None] or a vector"
        )
    d = x.shape[-1]
    for name, p in params.items():
        if p.shape != (d,):
            raise ValueError(
                f"{fn}: {name} has shape {p.shape} but x has {d} features (x.shape = {x.shape}); {name} must be ({d},)"
            )
    require_same_dtype(fn, x=x, **params)
    return (x, *params.values(), positive_float(fn, "eps", eps))


# --- layer_norm --------------------------------------------------------------------


def _layer_norm(x, gamma, beta, eps):
    """(y, μ, r): the output and each row's statistics ``(..., 1)``, in float32 at least."""
    xc = x.astype(accumulation_dtype(x.dtype))
    mu = _mean(xc)
    r = lax.rsqrt(_mean(jnp.square(xc - mu)) + eps)
    y = gamma.astype(xc.dtype) * ((xc - mu) * r) + beta.astype(xc.dtype)
    return y.astype(x.dtype), mu, r


def layer_norm_twin(x, gamma, beta, eps=1e-5):
    """Plain twin of :func:`layer_norm`: ``γ ⊙ (x − μ)/√(σ² + ε) + β``, in float32 at least."""
    return _layer_norm(x, gamma, beta, eps)[0]


def _layer_norm_fwd(x, gamma, beta, eps):
    y, mu, r = _layer_norm(x, gamma, beta, eps)
    return y, (x, mu, r, gamma)


def _layer_norm_bwd(eps, res, y_bar):
    """x̄ = r·(g − mean(g) − x̂·mean(g ⊙ x̂)), g = γ ⊙ ḡ;  γ̄ = Σ ḡ ⊙ x̂;  β̄ = Σ ḡ."""
    del eps  # inside r already
    x, mu, r, gamma = res
    ct = r.dtype
    x_hat = (x.astype(ct) - mu) * r
    y_bar = y_bar.astype(ct)
    g = gamma.astype(ct) * y_bar
    x_bar = r * (g - _mean(g) - x_hat * _mean(g * x_hat))
    gamma_bar, beta_bar = _batch_sum(y_bar * x_hat), _batch_sum(y_bar)
    # beta has gamma's dtype: layer_norm's prepare requires one dtype
    return x_bar.astype(x.dtype), gamma_bar.astype(gamma.dtype), beta_bar.astype(gamma.dtype)


def _layer_norm_args(x, gamma, beta, eps=1e-5):
    """layer_norm's one place of validation: float x (..., d), gamma and beta (d,) of x's
    dtype, eps a Python float > 0. Returns ``(x, gamma, beta, eps)``."""
    return _feature_args("layer_norm", x, eps, gamma=gamma, beta=beta)


_LAYER_NORM = custom_rule(
    layer_norm_twin, _layer_norm_fwd, _layer_norm_bwd, prepare=_layer_norm_args, nondiff_argnums=(3,)
)


@implements(_LAYER_NORM)
def layer_norm(x, gamma, beta, *, eps: float = 1e-5) -> jax.Array:
    """Layer normalization over the last axis: ``y = γ ⊙ (x − μ)/√(σ² + ε) + β``.

    μ and σ² are the mean and the (biased) variance of each row's d features. Backward,
    with g = γ ⊙ ḡ and x̂ = (x − μ)/√(σ² + ε): ``x̄ = (g − mean(g) − x̂·mean(g ⊙ x̂)) /
    √(σ² + ε)``, ``γ̄ = Σ ḡ ⊙ x̂`` and ``β̄ = Σ ḡ`` over every leading axis. Keeps x, γ
    and each row's μ and 1/√(σ² + ε); x̂ is recomputed.

    The statistics are computed in float32 at least (float64 stays float64); the
    output and each cotangent come back in their input's dtype.

    Args:
      x: ``(..., d)``, any leading axes, floating point.
      gamma: ``(d,)``, the scale γ, of x's dtype.
      beta: ``(d,)``, the shift β, of x's dtype.
      eps: a static Python float > 0 added to the variance.

    Returns:
      ``(..., d)``, of x's dtype.

    Raises:
      ValueError: on a scalar x, a gamma or beta that is not ``(d,)``, or eps ≤ 0.
      TypeError: on an integer input, mixed float dtypes or a non-float eps.
    """
    return _LAYER_NORM.core(*_LAYER_NORM.prepare(x, gamma, beta, eps))


# --- rms_norm ----------------------------------------------------------------------


def _rms_norm(x, gamma, eps):
    """(y, r): the output and each row's r ``(..., 1)``, in float32 at least."""
    xc = x.astype(accumulation_dtype(x.dtype))
    r = lax.rsqrt(_mean(jnp.square(xc)) + eps)
    return (gamma.astype(xc.dtype) * (xc * r)).astype(x.dtype), r


def rms_norm_twin(x, gamma, eps=1e-6):
    """Plain twin of :func:`rms_norm`: ``γ ⊙ x/√(mean(x²) + ε)``, in float32 at least."""
    return _rms_norm(x, gamma, eps)[0]


def _rms_norm_fwd(x, gamma, eps):
    y, r = _rms_norm(x, gamma, eps)
    return y, (x, r, gamma)


def _rms_norm_bwd(eps, res, y_bar):
    """x̄ = r·(g − x̂·mean(g ⊙ x̂)), g = γ ⊙ ḡ;  γ̄ = Σ ḡ ⊙ x̂."""
    del eps  # inside r already
    x, r, gamma = res
    ct = r.dtype
    x_hat = x.astype(ct) * r
    y_bar = y_bar.astype(ct)
    g = gamma.astype(ct) * y_bar
    x_bar = r * (g - x_hat * _mean(g * x_hat))
    return x_bar.astype(x.dtype), _batch_sum(y_bar * x_hat).astype(gamma.dtype)


def _rms_norm_args(x, gamma, eps=1e-6):
    """rms_norm's one place of validation: float x (..., d), gamma (d,) of x's dtype,
    eps a Python float > 0. Returns ``(x, gamma, eps)``."""
    return _feature_args("rms_norm", x, eps, gamma=gamma)


_RMS_NORM = custom_rule(rms_norm_twin, _rms_norm_fwd, _rms_norm_bwd, prepare=_rms_norm_args, nondiff_argnums=(2,))


@implements(_RMS_NORM)
def rms_norm(x, gamma, *, eps: float = 1e-6) -> jax.Array:
    """RMS normalization over the last axis: ``y = γ ⊙ x/√(mean(x²) + ε)``.

    No mean is subtracted and there is no shift. Backward, with g = γ ⊙ ḡ, r =
    1/√(mean(x²) + ε) and x̂ = x·r: ``x̄ = r·(g − x̂·mean(g ⊙ x̂))``, ``γ̄ = Σ ḡ ⊙ x̂``
    over every leading axis. Keeps x, γ and each row's r; x̂ is recomputed.

    The statistic is computed in float32 at least (float64 stays float64); the output
    and each cotangent come back in their input's dtype.

    Args:
      x: ``(..., d)``, any leading axes, floating point.
      gamma: ``(d,)``, the scale γ, of x's dtype.
      eps: a static Python float > 0 added to the mean square.

    Returns:
      ``(..., d)``, of x's dtype.

    Raises:
      ValueError: on a scalar x, a gamma that is not ``(d,)``, or eps ≤ 0.
      TypeError: on an integer input, mixed float dtypes or a non-float eps.
    """
    return _RMS_NORM.core(*_RMS_NORM.prepare(x, gamma, eps))
