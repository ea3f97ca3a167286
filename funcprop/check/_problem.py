"""The function under check as data: its float leaves, its fixed leaves, its outputs.

:class:`Problem` flattens ``args`` once, validates them, and rebuilds calls of fn or the
reference from the differentiated (float) leaves and the fixed (integer) ones, so every
check (the VJP, finite differences, the Taylor remainder, each transform) runs the same
pullback on the same values.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def name_of(f) -> str:
    return getattr(f, "__name__", None) or type(f).__name__


def resolve_reference(fn, reference, args, caller: str = "check_vjp"):
    """The reference fn is checked against: ``reference``, or a funcprop rule's plain twin;
    a clear error naming ``caller`` for a non-callable or a missing one."""
    if not callable(fn):
        raise TypeError(
            f"{caller}: fn must be callable, got a {type(fn).__name__}; "
            f"pass the function itself: {caller}(my_rule, x, ...)"
        )
    if not args:
        raise ValueError(
            f"{caller}: no arguments given for {name_of(fn)}; pass the inputs "
            f"to differentiate at after fn: {caller}(fn, x, w, ...)"
        )
    if reference is None:
        if not hasattr(fn, "vjp_rule"):
            raise TypeError(
                f"{caller}: {name_of(fn)} is not a funcprop rule (it has no .vjp_rule), so "
                f"there is no default reference; pass reference=, the same function "
                f"written with plain jnp operations: {caller}(fn, x, reference=plain_fn)"
            )
        return fn.vjp_rule.twin
    if not callable(reference):
        raise TypeError(
            f"{caller}: reference must be callable, got a "
            f"{type(reference).__name__}; pass a plain function of fn's args"
        )
    return reference


def leaf_array(path: str, x, caller: str = "check_vjp", abstract: bool = False):
    """One leaf of args as an array (or, with ``abstract``, a ``jax.ShapeDtypeStruct`` as
    it is), or a TypeError naming ``caller``: floating leaves are differentiated, integer
    and bool ones held fixed, and nothing else is an argument."""
    if not (abstract and isinstance(x, jax.ShapeDtypeStruct)):
        try:
            x = jnp.asarray(x)
        except TypeError:
            arrays = "arrays (or jax.ShapeDtypeStruct) as args and " if abstract else ""
            raise TypeError(
                f"{caller}: {path} is a {type(x).__name__}, not an array; pass {arrays}static arguments "
                f"by name through kwargs="
            ) from None
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_):
        raise TypeError(
            f"{caller}: {path} has dtype {x.dtype}; pass real floating leaves (differentiated) "
            f"or integer/bool ones (held fixed), and keys or other static values through kwargs="
        )
    return x


class Problem:
    """fn and reference as functions of the float leaves of args, integers held fixed."""

    def __init__(self, fn, reference, args, kwargs):
        path_leaves, self.arg_def = jax.tree_util.tree_flatten_with_path(args)
        paths = ["args" + jax.tree_util.keystr(p) for p, _ in path_leaves]
        values = [leaf_array(path, x) for path, (_, x) in zip(paths, path_leaves)]
        self.is_diff = [jnp.issubdtype(v.dtype, jnp.floating) for v in values]
        if not any(self.is_diff):
            raise TypeError(
                f"check_vjp: no floating-point leaf among the args of {name_of(fn)} (integer "
                f"leaves are held fixed); pass float arrays to differentiate"
            )
        for path, v, d in zip(paths, values, self.is_diff):
            bad = int(np.size(v) - np.count_nonzero(np.isfinite(v))) if d else 0
            if bad:
                raise ValueError(
                    f"check_vjp: {path} holds {bad} non-finite values (NaN or inf) of {np.size(v)}; a "
                    f"gradient check there compares nothing (NaN equals NaN in every row); pass finite "
                    f"inputs, and test NaN propagation by comparing fn(x) with the reference directly"
                )
        self.paths = [p for p, d in zip(paths, self.is_diff) if d]
        self.diff = [v for v, d in zip(values, self.is_diff) if d]
        self.fixed = [v for v, d in zip(values, self.is_diff) if not d]
        self.kwargs = kwargs
        # The output leaves, from shapes alone, checked against the reference's.
        args = jax.tree.unflatten(self.arg_def, values)
        got = jax.eval_shape(functools.partial(fn, **kwargs), *args)
        want = jax.eval_shape(functools.partial(reference, **kwargs), *args)
        got_paths, got_def = jax.tree_util.tree_flatten_with_path(got)
        if got_def != jax.tree.structure(want):
            raise ValueError(
                f"check_vjp: {name_of(fn)} returns a pytree {got_def} but the reference "
                f"returns {jax.tree.structure(want)}; the reference must compute the same "
                f"function as fn, with the same signature"
            )
        self.out_paths = ["out" + jax.tree_util.keystr(p) for p, _ in got_paths]
        self.out_shapes = [g for _, g in got_paths]
        for path, g, w in zip(self.out_paths, self.out_shapes, jax.tree.leaves(want)):
            if (g.shape, g.dtype) != (w.shape, w.dtype):
                raise ValueError(
                    f"check_vjp: {name_of(fn)} returns {g.dtype}{list(g.shape)} at {path} "
                    f"but the reference returns {w.dtype}{list(w.shape)}; the reference "
                    f"must compute the same function as fn (same args, same kwargs=)"
                )
            if not jnp.issubdtype(g.dtype, jnp.floating):
                raise TypeError(
                    f"check_vjp: {path} has dtype {g.dtype}; check_vjp needs "
                    f"float outputs; return integers from another function"
                )

    def call(self, f, diff, fixed) -> list:
        """The output leaves of ``f`` at the args rebuilt from float and fixed leaves."""
        diff, fixed = iter(diff), iter(fixed)
        full = [next(diff) if d else next(fixed) for d in self.is_diff]
        return jax.tree.leaves(f(*jax.tree.unflatten(self.arg_def, full), **self.kwargs))

    def pullback(self, f):
        """``(diff, fixed, ct) -> (output leaves, cotangent of each float leaf)``."""

        def run(diff, fixed, ct):
            out, vjp_fn = jax.vjp(lambda d: self.call(f, d, fixed), diff)
            return out, vjp_fn(ct)[0]

        return run


@functools.partial(jax.jit, static_argnums=1)
def _standard_normals(key, size: int) -> jax.Array:
    return jax.random.normal(key, (size,), jnp.float32)


def normals(key, n: int, like) -> list:
    """n standard-normal draws, ``(n, *x.shape)`` NumPy arrays, for each x in ``like``.

    Drawn at once and sliced: the size is rounded up to a power of two (at least 1024),
    so one compiled draw serves many checks (a threefry draw is slow to compile).
    """
    sizes = [n * math.prod(x.shape) for x in like]
    z = np.asarray(_standard_normals(key, max(1024, 1 << (sum(sizes) - 1).bit_length())))
    return [
        z[end - size : end].reshape(n, *x.shape).astype(x.dtype) for end, size, x in zip(np.cumsum(sizes), sizes, like)
    ]


def per_trial(f, *stacked):
    """f of each trial t (axis 0 of every leaf list), restacked. Unrolled: a scan
    compiles slower."""
    results = [f(*([x[t] for x in leaves] for leaves in stacked)) for t in range(len(stacked[0][0]))]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *results)
