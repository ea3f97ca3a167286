"""The machinery every rule shares: tying a public rule to its twin and its fwd/bwd.

A funcprop rule is written in five parts, always in this order:

1. the *plain twin*: the forward as a plain function of ``jnp``/``lax`` operations;
   differentiated by JAX it is the reference the rule is checked against;
2. ``fwd``: the twin's value plus the residuals the backward formula needs, nothing more;
3. ``bwd``: the hand-derived formula, cotangent in, one cotangent per primal argument out;
4. ``prepare``: the rule's one place of validation. It checks and normalizes the
   arguments (shapes, dtypes, static arguments such as padding) at trace time and
   returns them in the order the core, fwd and twin take;
5. the public wrapper: ``core(*prepare(...))``. It carries the docstring.

The public wrapper, the layers of :mod:`funcprop.nn` and the written-out backprop all
call ``prepare`` and then the same fwd/bwd, so no check and no formula is written
twice. ``implements`` records the :class:`VJPRule` on the wrapper as
``wrapper.vjp_rule``, where :mod:`funcprop.check` finds the twin.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

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
      prepare: ``prepare(*args) -> args``, validation and normalization; raises
        ValueError/TypeError naming the rule. The identity where a rule has none.
    """

    twin: Callable[..., Any]
    fwd: Callable[..., Any]
    bwd: Callable[..., Any]
    core: Callable[..., Any]
    nondiff_argnums: tuple[int, ...]
    prepare: Callable[..., tuple] = lambda *args: args

    def static(self, args: tuple) -> tuple:
        """The static arguments among prepared ``args``, in the order bwd takes them."""
        return tuple(args[i] for i in self.nondiff_argnums)


@functools.partial(jax.tree_util.register_static)
@dataclasses.dataclass(frozen=True)
class _Varying:
    """The mesh axes each differentiable argument varies over (static: no leaves)."""

    axes: tuple[frozenset, ...]


def _varying_axes(x) -> frozenset:
    """The mesh axes ``x`` varies over inside ``shard_map`` (empty outside one)."""
    if not isinstance(x, jax.Array):
        return frozenset()
    manual = getattr(jax.typeof(x), "manual_axis_type", None)  # jax 0.10: .varying
    return frozenset(getattr(manual, "varying", ()))


def summed_like(ct, axes: frozenset):
    """``ct`` summed over the mesh axes it varies over that its primal does not.

    Inside ``shard_map`` a replicated weight meets a batch-sharded input, and a
    hand-written bwd's contraction over the local batch gives a cotangent that varies
    over the batch axis: the local gradient. The primal is the same on every device, so
    its cotangent is the sum of the local ones, ``psum`` (what JAX's own transpose of
    an implicit broadcast gives). Outside ``shard_map`` there are no such axes: a no-op.
    """
    if ct is None or not isinstance(ct, jax.Array) or ct.dtype == jax.dtypes.float0:
        return ct
    extra = _varying_axes(ct) - axes
    return jax.lax.psum(ct, tuple(sorted(extra))) if extra else ct


def vary_like(tree, *refs):
    """``tree`` made to vary over every mesh axis that one of ``refs`` varies over.

    Inside ``shard_map`` (``check_vma`` on) a loop's initial carry built from
    ``jnp.zeros`` is invariant, while the body's result varies with the sharded arrays
    it reads, and ``lax.scan`` and ``lax.cond`` refuse carries and branches of two
    types. ``lax.pcast(..., to="varying")`` gives the carry the body's type. The
    identity outside ``shard_map``.
    """
    axes = frozenset().union(*(_varying_axes(r) for r in jax.tree.leaves(refs)))

    def cast(x):
        extra = tuple(sorted(axes - _varying_axes(x)))
        return jax.lax.pcast(x, extra, to="varying") if extra else x

    return jax.tree.map(cast, tree)


def custom_rule(twin, fwd, bwd, *, prepare=None, nondiff_argnums=(), primal=None) -> VJPRule:
    """Make ``jax.custom_vjp(twin)`` with the hand-written ``fwd``/``bwd``.

    ``primal`` is what the rule computes when it is not differentiated (inference);
    the twin by default. A rule whose twin is the naive O(N²) formula (attention, the
    fused LM head) passes its blocked forward, ``primal = lambda *a: fwd(*a)[0]``.

    The ``jax.custom_vjp`` keeps, beside fwd's residuals, which mesh axes each
    argument varies over, and sums each cotangent over the axes it varies over beyond
    its argument's (:func:`summed_like`), so the rule is right under ``shard_map``
    with ``check_vma`` on. ``fwd`` and ``bwd`` themselves are unchanged.
    """
    nondiff = tuple(nondiff_argnums)

    def core_fwd(*args):
        out, residuals = fwd(*args)
        varying = _Varying(tuple(_varying_axes(a) for i, a in enumerate(args) if i not in nondiff))
        return out, (residuals, varying)

    def core_bwd(*args):
        *static, (residuals, varying), ct = args
        cts = bwd(*static, residuals, ct)
        return tuple(summed_like(c, axes) for c, axes in zip(cts, varying.axes))

    core = jax.custom_vjp(primal or twin, nondiff_argnums=nondiff)
    core.defvjp(core_fwd, core_bwd)
    return VJPRule(twin, fwd, bwd, core, nondiff, *([prepare] if prepare else []))


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


def float_input(fn: str, name: str = "f"):
    """The prepare of a rule of one float array: ``(as_float_array(x),)``."""

    def prepare(x):
        return (as_float_array(fn, name, x),)

    return prepare


def is_int(value, low: int | None = None) -> bool:
    """Whether ``value`` is a Python int (not a bool, which Python counts as one), and
    ``>= low`` if given: the one test behind every static int argument of the rules."""
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def positive_int(fn: str, name: str, value) -> int:
    """``value`` if it is a positive Python int, else a ValueError naming ``fn``."""
    if not is_int(value, 1):
        raise ValueError(f"{fn}: {name} must be a positive int, got {value!r}; pass e.g. {name}=8")
    return value


def static_float(fn: str, name: str, value, *, example: float) -> float:
    """A static Python number (not a bool, not an array) as a float, or a TypeError
    naming ``fn``; the range is the caller's to check."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{fn}: {name} must be a static Python float, got {type(value).__name__} {value!r}; "
            f"pass e.g. {name}={example}"
        )
    return float(value)


def positive_float(fn: str, name: str, value) -> float:
    """A static, finite Python float > 0 (an epsilon), or a clear error."""
    value = static_float(fn, name, value, example=1e-5)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{fn}: {name} must be finite and > 0, got {value}; pass e.g. {name}=1e-5")
    return value


def require_same_dtype(fn: str, **arrays: jax.Array) -> None:
    """TypeError if the floating arrays given by keyword do not share one dtype."""
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n} is {d}" for n, d in dtypes.items())
        first = next(iter(arrays))
        other = next(n for n, d in dtypes.items() if d != dtypes[first])
        raise TypeError(
            f"{fn}: arguments must share one float dtype, but {listed}; cast them "
            f"to one dtype, e.g. {other}.astype({first}.dtype)"
        )


def require_same_shape(fn: str, a_name: str, a, b_name: str, b) -> None:
    """ValueError unless ``a.shape == b.shape`` (no silent broadcasting in losses)."""
    if a.shape != b.shape:
        raise ValueError(
            f"{fn}: {a_name} has shape {a.shape} but {b_name} has shape {b.shape}; "
            f"they must have the same shape (reshape or squeeze one of them)"
        )


def require_nonempty(fn: str, x, axis: int, what: str) -> None:
    """ValueError naming ``fn`` if ``x`` has no entries along ``axis``: there is nothing
    to take a max, a sum or a mean over (``what`` names them: "class", "feature")."""
    if x.shape[axis] == 0:
        raise ValueError(
            f"{fn}: needs at least one {what} on axis {axis}, got shape {x.shape}; "
            f"pass an input with a nonzero size on that axis"
        )


def require_some(fn: str, n: int, what: str, shape) -> None:
    """ValueError naming the loss ``fn`` if it averages over ``n = 0`` items (``what``:
    "example", "element"): the mean of nothing is NaN, which would train on silently."""
    if n == 0:
        raise ValueError(
            f"{fn}: needs at least one {what} to average over, got shape {tuple(shape)}; the "
            f"mean over 0 {what}s is NaN, so skip empty batches before the loss"
        )


def normalize_axis(fn: str, axis, ndim: int) -> int:
    """The non-negative form of ``axis`` for an array of rank ``ndim``, or ValueError."""
    if not is_int(axis):
        raise TypeError(f"{fn}: axis must be a Python int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{fn}: axis {axis} is out of range for an input of rank {ndim}; use an axis in [{-ndim}, {ndim - 1}]"
        )
    return axis % ndim


def numel(shape) -> int:
    """The number of elements of an array of this shape (1 for a scalar)."""
    return functools.reduce(lambda a, b: a * b, shape, 1)


def accumulation_dtype(dtype) -> jnp.dtype:
    """The dtype a float ``dtype`` accumulates in: float32 at least (DESIGN §7).

    ``jnp.promote_types(dtype, jnp.float32)``: bfloat16 and float16 go through
    float32, float32 and float64 stay. Written out because ``promote_types`` raises
    under ``jax_numpy_dtype_promotion="strict"``.
    """
    dtype = jnp.dtype(dtype)
    return dtype if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)
