"""Dynamic loss scaling for float16 training, as an optimizer wrapper.

float16 keeps 5 exponent bits: a cotangent below about 6e-8 rounds to 0 in the
backward, and many of a network's do. So the backward runs on ``s·L`` instead of L:
every cotangent is s times larger, and the gradient is divided by s again before the
update. s starts high (2¹⁵); a step whose gradient is not finite (it overflowed) is
skipped and halves s; after ``period`` finite steps in a row s doubles. This is the
scheme of jmp's ``DynamicLossScale`` and of PyTorch's ``GradScaler``.

The scale lives in the optimizer's state (:class:`LossScaleState`), so it is saved in
checkpoints and resumed with them, and :func:`funcprop.train.make_epoch` reads it
there to seed the backward: ``jax.vjp``'s pullback is called with s instead of 1,
and the written-out backprop starts from δ_K = s ∂L/∂f_K. bfloat16 has float32's
exponent range and needs none of this.

``optax.apply_if_finite`` skips non-finite steps too, but it scales nothing: a
gradient that underflowed to 0 is finite and is applied as 0.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcprop.rules._core import accumulation_dtype


class LossScaleState(NamedTuple):
    """The wrapped optimizer's state and the loss scale's."""

    inner: Any  # the wrapped optimizer's state
    scale: jax.Array  # float32 (), s
    good_steps: jax.Array  # int32 (), finite steps since s last changed
    skipped: jax.Array  # int32 (), steps skipped for a non-finite gradient, in all


def dynamic_loss_scale(
    optimizer: optax.GradientTransformation,
    *,
    initial: float = 2.0**15,
    period: int = 2000,
    factor: float = 2.0,
    min_scale: float = 1.0,
) -> optax.GradientTransformation:
    """``optimizer`` behind a dynamic loss scale: its ``update`` takes the gradient of
    ``s·L`` (which :func:`funcprop.train.make_epoch` computes when it finds this state),
    divides it by s, and applies it only if it is finite.

    Args:
      optimizer: any optax GradientTransformation.
      initial: the first s.
      period: finite steps in a row after which s is multiplied by ``factor``.
      factor: what s is multiplied by after ``period`` finite steps, and divided by after
        a non-finite one.
      min_scale: s never falls below it.
    """
    fn = "dynamic_loss_scale"
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"{fn}: optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")
    if isinstance(period, bool) or not isinstance(period, int) or period < 1:
        raise ValueError(f"{fn}: period must be an int >= 1, got {period!r}")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    for name, value, low, bound in (
        ("min_scale", min_scale, 0.0, "> 0"),
        ("factor", factor, 1.0, "> 1"),
        ("initial", initial, None, f">= min_scale ({min_scale})"),
    ):
        if not number(value) or (value <= low if low is not None else value < min_scale):
            raise ValueError(f"{fn}: {name} must be a finite number {bound}, got {value!r}")

    def init(params):
        zero = jnp.zeros((), jnp.int32)
        return LossScaleState(optimizer.init(params), jnp.asarray(initial, jnp.float32), zero, zero)

    def update(grads, state: LossScaleState, params=None):
        grads = jax.tree.map(lambda g: _unscaled(g, state.scale), grads)
        floats = [g for g in jax.tree.leaves(grads) if jnp.issubdtype(g.dtype, jnp.inexact)]
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in floats] or [True]))
        updates, inner = optimizer.update(grads, state.inner, params)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        updates = jax.tree.map(lambda u: keep(u, jnp.zeros_like(u)), updates)
        inner = jax.tree.map(keep, inner, state.inner)
        grow = finite & (state.good_steps + 1 >= period)
        scale = jnp.where(
            finite,
            jnp.where(grow, state.scale * factor, state.scale),
            jnp.maximum(state.scale / factor, jnp.float32(min_scale)),
        )
        good = jnp.where(finite & ~grow, state.good_steps + 1, 0)
        return updates, LossScaleState(inner, scale, good, state.skipped + (~finite).astype(jnp.int32))

    return optax.GradientTransformation(init, update)


def _unscaled(g, scale):
    """g / s, computed in float32 at least (s = 2¹⁶ is inf in float16, and a small g / s
    would underflow there again); an integer or float0 leaf passes as it is."""
    if not jnp.issubdtype(g.dtype, jnp.inexact):
        return g
    acc = accumulation_dtype(g.dtype)
    return (g.astype(acc) / scale.astype(acc)).astype(g.dtype)


def loss_scale_of(opt_state):
    """The loss scale s in ``opt_state``, or None if the optimizer has none.

    The scale must wrap the whole optimizer: inside ``optax.chain`` or another wrapper
    the step could not find it to seed the backward, and the update would still divide
    the gradient by s. That raises a TypeError rather than shrink every step by 1/s.
    """
    if isinstance(opt_state, LossScaleState):
        return opt_state.scale
    is_scale = lambda node: isinstance(node, LossScaleState)  # noqa: E731
    if any(is_scale(node) for node in jax.tree.leaves(opt_state, is_leaf=is_scale)):
        raise TypeError(
            "dynamic_loss_scale: the loss scale is nested inside another optimizer (optax.chain, "
            "apply_if_finite, MultiSteps...), where training cannot seed the backward with it; wrap the "
            "whole optimizer instead: dynamic_loss_scale(optax.chain(...))"
        )
    return None
