"""Elementwise activations h = a(f) and their hand-derived backwards.

An activation's Jacobian is diagonal, so its VJP is a Hadamard product:
``f̄ = a'(f) ⊙ h̄``. Each fwd keeps the residual that is cheapest to hold. Where a'(f)
can be read off the output (sigmoid, tanh, relu, leaky_relu, softplus) the output is
kept: it is the next dense layer's input, which that layer keeps anyway, so under
``jit`` the activation adds no memory. GELU needs its input.

Kinks: ``relu'(0) = 0`` and ``leaky_relu'(0) = negative_slope`` (the left
derivative), the convention of ``jax.nn.relu``; the twins agree with it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from funcprop.rules._core import as_float_array, custom_rule, float_input, implements, static_float

# --- sigmoid ---------------------------------------------------------------------


def sigmoid_twin(f):
    """Plain twin of :func:`sigmoid`: ``1 / (1 + exp(-f))`` (``lax.logistic``)."""
    return jax.lax.logistic(f)


def _sigmoid_fwd(f):
    s = sigmoid_twin(f)
    return s, s


def _sigmoid_bwd(s, g):
    """σ'(f) = σ(f)(1 − σ(f)), read off the output s."""
    return (g * s * (1 - s),)


_SIGMOID = custom_rule(sigmoid_twin, _sigmoid_fwd, _sigmoid_bwd, prepare=float_input("sigmoid"))


@implements(_SIGMOID)
def sigmoid(f) -> jax.Array:
    """Logistic sigmoid σ(f) = 1 / (1 + e^(−f)), elementwise, any shape.

    Backward: ``f̄ = ḡ ⊙ σ(f) ⊙ (1 − σ(f))``, from the saved output. Finite for any
    finite f (σ(±1e4) is 1 or 0 and its derivative 0).
    """
    return _SIGMOID.core(*_SIGMOID.prepare(f))


# --- tanh ------------------------------------------------------------------------


def tanh_twin(f):
    """Plain twin of :func:`tanh`."""
    return jnp.tanh(f)


def _tanh_fwd(f):
    t = tanh_twin(f)
    return t, t


def _tanh_bwd(t, g):
    """tanh'(f) = 1 − tanh(f)² = (1 − t)(1 + t), read off the output t.

    The factored form: 1 − t is exact near |t| = 1, where the rounding of t·t costs
    1 − t·t its digits (2% in bfloat16 at t ≈ 0.97); it is also autodiff's form."""
    return (g * ((1 - t) * (1 + t)),)


_TANH = custom_rule(tanh_twin, _tanh_fwd, _tanh_bwd, prepare=float_input("tanh"))


@implements(_TANH)
def tanh(f) -> jax.Array:
    """Hyperbolic tangent, elementwise, any shape.

    Backward: ``f̄ = ḡ ⊙ (1 − tanh(f)²)``, from the saved output.
    """
    return _TANH.core(*_TANH.prepare(f))


# --- relu ------------------------------------------------------------------------


def relu_twin(f):
    """Plain twin of :func:`relu`: ``where(f > 0, f, 0)``, and NaN stays NaN (as in
    ``jax.nn.relu``: a NaN must not turn into a finite 0 and train on silently)."""
    return jnp.where((f > 0) | jnp.isnan(f), f, 0)


def _relu_fwd(f):
    out = relu_twin(f)
    return out, out


def _relu_bwd(out, g):
    """relu'(f) = [f > 0] = [relu(f) > 0]; relu'(0) = 0; NaN passes ḡ on, as the twin."""
    return (jnp.where((out > 0) | jnp.isnan(out), g, 0),)


_RELU = custom_rule(relu_twin, _relu_fwd, _relu_bwd, prepare=float_input("relu"))


@implements(_RELU)
def relu(f) -> jax.Array:
    """Rectified linear unit max(f, 0), elementwise, any shape.

    Backward: ``f̄ = ḡ ⊙ [f > 0]``, the mask read off the saved output. At the kink
    the derivative is taken as 0: ``relu'(0) = 0``.

    Example:
      >>> import funcprop as fp
      >>> print(jax.grad(lambda f: fp.relu(f).sum())(jnp.array([-1.0, 0.0, 2.0])))
      [0. 0. 1.]
    """
    return _RELU.core(*_RELU.prepare(f))


# --- leaky_relu ------------------------------------------------------------------


def leaky_relu_twin(f, negative_slope=0.01):
    """Plain twin of :func:`leaky_relu`: ``where(f > 0, f, negative_slope * f)``."""
    return jnp.where(f > 0, f, negative_slope * f)


def _leaky_relu_fwd(f, negative_slope):
    out = leaky_relu_twin(f, negative_slope)
    return out, out


def _leaky_relu_bwd(negative_slope, out, g):
    """a'(f) = 1 if f > 0 else negative_slope; sign(out) = sign(f) for a slope ≥ 0."""
    return (jnp.where(out > 0, g, negative_slope * g),)


def negative_slope_arg(negative_slope) -> float:
    """leaky_relu's slope as a float, or an error: a static Python number >= 0."""
    negative_slope = static_float("leaky_relu", "negative_slope", negative_slope, example=0.01)
    if not (negative_slope >= 0 and math.isfinite(negative_slope)):
        raise ValueError(
            f"leaky_relu: negative_slope must be a finite number >= 0, got "
            f"{negative_slope}; the backward reads the sign of f off the output"
        )
    return negative_slope


def _leaky_relu_args(f, negative_slope=0.01):
    """leaky_relu's validation: a float f and a static slope >= 0."""
    return as_float_array("leaky_relu", "f", f), negative_slope_arg(negative_slope)


_LEAKY_RELU = custom_rule(
    leaky_relu_twin, _leaky_relu_fwd, _leaky_relu_bwd, prepare=_leaky_relu_args, nondiff_argnums=(1,)
)


@implements(_LEAKY_RELU)
def leaky_relu(f, negative_slope: float = 0.01) -> jax.Array:
    """Leaky ReLU: f where f > 0, else ``negative_slope * f``; elementwise.

    Backward: ``f̄ = ḡ ⊙ (1 if f > 0 else negative_slope)``; at the kink
    ``leaky_relu'(0) = negative_slope``. The mask is read off the saved output, which
    requires ``negative_slope >= 0``.

    Args:
      f: any shape, floating point.
      negative_slope: a static Python float ≥ 0 (a change recompiles under jit).
    """
    return _LEAKY_RELU.core(*_LEAKY_RELU.prepare(f, negative_slope))


# --- softplus --------------------------------------------------------------------


def softplus_twin(f):
    """Plain twin of :func:`softplus`: ``log(1 + e^f)``, computed stably."""
    return jnp.logaddexp(f, 0)


def _softplus_fwd(f):
    out = softplus_twin(f)
    return out, out


def _softplus_bwd(out, g):
    """softplus'(f) = σ(f) = 1 − e^(−softplus(f)), read off the output."""
    return (g * -jnp.expm1(-out),)


_SOFTPLUS = custom_rule(softplus_twin, _softplus_fwd, _softplus_bwd, prepare=float_input("softplus"))


@implements(_SOFTPLUS)
def softplus(f) -> jax.Array:
    """Softplus log(1 + e^f), elementwise, any shape; finite for f = ±1e4.

    Backward: ``f̄ = ḡ ⊙ σ(f)``, with σ(f) = 1 − e^(−softplus(f)) computed from the
    saved output by ``-expm1(-out)`` (accurate at both tails).
    """
    return _SOFTPLUS.core(*_SOFTPLUS.prepare(f))


# --- gelu (tanh approximation) ---------------------------------------------------

_GELU_C = math.sqrt(2 / math.pi)
_GELU_A = 0.044715


def gelu_twin(f):
    """Plain twin of :func:`gelu`: ``½ f (1 + tanh(√(2/π)(f + 0.044715 f³)))``."""
    return 0.5 * f * (1 + jnp.tanh(_GELU_C * (f + _GELU_A * f**3)))


def _gelu_fwd(f):
    return gelu_twin(f), f


def _gelu_bwd(f, g):
    """a'(f) = ½(1 + t) + ½ f (1 − t²) √(2/π)(1 + 3·0.044715 f²), t = tanh(u)."""
    # From |f| = 10 on, u > 43 and t = ±1 in every float dtype, so a' is 1 or 0 exactly.
    # There the formula is evaluated at f = 0 and replaced: f³ (which overflows from about
    # 1e13 in float32, 40 in float16) never meets a 0, here or in grad of grad.
    inside = ~(jnp.abs(f) >= 10)  # NaN stays inside, and its gradient NaN
    fs = jnp.where(inside, f, 0)
    t = jnp.tanh(_GELU_C * (fs + _GELU_A * fs**3))
    du = _GELU_C * (1 + 3 * _GELU_A * fs * fs)
    slope = 0.5 * (1 + t) + 0.5 * fs * (1 - t * t) * du
    return (g * jnp.where(inside, slope, jnp.where(f > 0, 1, 0).astype(f.dtype)),)


_GELU = custom_rule(gelu_twin, _gelu_fwd, _gelu_bwd, prepare=float_input("gelu"))


@implements(_GELU)
def gelu(f) -> jax.Array:
    """GELU, tanh approximation: ``½ f (1 + tanh(u))``, ``u = √(2/π)(f + 0.044715 f³)``.

    Backward: ``f̄ = ḡ ⊙ (½(1 + t) + ½ f (1 − t²) u'(f))`` with ``t = tanh(u)`` and
    ``u'(f) = √(2/π)(1 + 0.134145 f²)``. Keeps the input f (the output does not
    determine it).
    """
    return _GELU.core(*_GELU.prepare(f))
