"""The machinery every rule shares: tying a public rule to its twin and its fwd/bwd.

A funcprop rule is written in four parts, always in this order:

1. the *plain twin*: the forward as a plain function of ``jnp``/``lax`` operations;
   differentiated by JAX it is the reference the rule is checked against;
2. ``fwd``: the twin's value plus the residuals the backward formula needs, nothing more;
3. ``bwd``: the hand-derived formula, cotangent in, one cotangent per primal argument out;
4. the public wrapper: validates shapes and dtypes at trace time and calls the
   ``jax.custom_vjp`` built from (1)-(3). It carries the docstring.

``implements`` attaches a :class:`VJPRule` to the wrapper, so that
``funcprop.backprop`` can call the very same fwd/bwd, and ``funcprop.check`` can find
the twin, without the formula being written twice.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class VJPRule(NamedTuple):
    """The parts of one hand-derived rule.

    Attributes:
      twin: the forward in plain jnp; ``jax.vjp(twin, ...)`` is the reference.
      fwd: ``fwd(*args) -> (out, residuals)``, the same signature as the twin.
      bwd: ``bwd(*nondiff_args, residuals, cotangent) -> tuple`` of cotangents, one per
        differentiable argument (``None`` for a zero or an integer argument).
      core: the ``jax.custom_vjp`` function made of the three.
      nondiff_argnums: positions of static arguments (an axis, a slope, a stride).
    """

    twin: Callable[..., Any]
    fwd: Callable[..., Any]
    bwd: Callable[..., Any]
    core: Callable[..., Any]
    nondiff_argnums: tuple[int, ...]


def custom_rule(twin, fwd, bwd, *, nondiff_argnums=()) -> VJPRule:
    """Make ``jax.custom_vjp(twin)`` with the hand-written ``fwd``/``bwd``."""
    core = jax.custom_vjp(twin, nondiff_argnums=nondiff_argnums)
    core.defvjp(fwd, bwd)
    return VJPRule(twin, fwd, bwd, core, tuple(nondiff_argnums))


def implements(vjp_rule: VJPRule):
    """Decorate a public wrapper: record the rule it calls as ``wrapper.vjp_rule``."""

    def attach(wrapper):
        wrapper.vjp_rule = vjp_rule
        return wrapper

    return attach


def as_float_array(fn: str, name: str, x) -> jax.Array:
    """``jnp.asarray(x)``, or a TypeError naming ``fn`` if x is not floating point."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{fn}: {name} must be a floating-point array, got dtype {x.dtype}; "
            f"cast it first, e.g. {name}.astype(jnp.float32)"
        )
    return x


def require_same_dtype(fn: str, **arrays: jax.Array) -> None:
    """TypeError if the floating arrays given by keyword do not share one dtype."""
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n} is {d}" for n, d in dtypes.items())
        first = next(iter(arrays))
        raise TypeError(
            f"{fn}: arguments must share one float dtype, but {listed}; cast them "
            f"to one dtype, e.g. x.astype({first}.dtype)"
        )


def require_same_shape(fn: str, a_name: str, a, b_name: str, b) -> None:
    """ValueError unless ``a.shape == b.shape`` (no silent broadcasting in losses)."""
    if a.shape != b.shape:
        raise ValueError(
            f"{fn}: {a_name} has shape {a.shape} but {b_name} has shape {b.shape}; "
            f"they must have the same shape (reshape or squeeze one of them)"
        )


def normalize_axis(fn: str, axis, ndim: int) -> int:
    """The non-negative form of ``axis`` for an array of rank ``ndim``, or ValueError."""
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise TypeError(f"{fn}: axis must be a Python int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{fn}: axis {axis} is out of range for an input of rank {ndim}; "
            f"use an axis in [{-ndim}, {ndim - 1}]"
        )
    return axis % ndim


def numel(shape) -> int:
    """The number of elements of an array of this shape (1 for a scalar)."""
    return functools.reduce(lambda a, b: a * b, shape, 1)
