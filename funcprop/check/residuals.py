"""The residual audit: what a rule keeps between forward and backward, beside autodiff.

What a function keeps for its backward is the leaves of the pullback ``jax.vjp``
returns, ``jax.tree_util.tree_leaves(jax.vjp(f, *args)[1])`` (DESIGN §7). For a
``jax.custom_vjp`` rule these are the array leaves of its fwd's residuals; for the plain
twin, whatever reverse-mode autodiff saved. Both are taken under ``jax.eval_shape``, so
the audit computes nothing and allocates nothing, however large the inputs.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcprop.check._problem import leaf_array, name_of, resolve_reference


class ResidualRow(NamedTuple):
    """One array kept for the backward pass."""

    side: str  # "fn" or "reference"
    index: int  # position among that side's pullback leaves
    shape: tuple  # the leaf's shape
    dtype: str  # its dtype's name: "float32", "bool", "key<fry>"
    bytes: int  # elements × itemsize


def _size(n: int) -> str:
    """A byte count for people: ``768 B``, ``12.0 KiB``, ``3.5 MiB``, ``1.2 GiB``."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"


class ResidualTable(NamedTuple):
    """The residual audit of ``fn`` against autodiff of ``reference``.

    ``ratio`` is ``reference_bytes / fn_bytes``: how many times less fn keeps. It is inf
    where fn keeps nothing and the reference something, 1.0 where neither keeps anything.
    """

    name: str  # fn's name
    reference: str  # the reference's name
    rows: tuple  # ResidualRow, fn's leaves first, then the reference's

    def side(self, side: str) -> tuple:
        """The rows of one side, "fn" or "reference"."""
        return tuple(r for r in self.rows if r.side == side)

    @property
    def fn_bytes(self) -> int:
        return sum(r.bytes for r in self.side("fn"))

    @property
    def reference_bytes(self) -> int:
        return sum(r.bytes for r in self.side("reference"))

    @property
    def ratio(self) -> float:
        if self.fn_bytes == 0:
            return 1.0 if self.reference_bytes == 0 else math.inf
        return self.reference_bytes / self.fn_bytes

    def to_dict(self) -> dict:
        """Plain Python values only, ready for ``json.dumps`` (which writes an inf ratio as Infinity)."""
        return {
            "function": self.name,
            "reference": self.reference,
            "rows": [dict(r._asdict(), shape=list(r.shape)) for r in self.rows],
            "fn_bytes": self.fn_bytes,
            "reference_bytes": self.reference_bytes,
            "ratio": self.ratio,
        }

    def __str__(self) -> str:
        n_fn, n_ref = len(self.side("fn")), len(self.side("reference"))
        head = f"residuals({self.name}): {n_fn} arrays kept by fn, {n_ref} by autodiff of {self.reference}"
        table = [("side", "leaf", "shape", "dtype", "bytes")] + [
            (r.side, str(r.index), str(r.shape), r.dtype, _size(r.bytes)) for r in self.rows
        ]
        widths = [max(len(line[j]) for line in table) for j in range(5)]
        lines = [
            "  ".join(c.rjust(w) if j == 4 else c.ljust(w) for j, (c, w) in enumerate(zip(line, widths)))
            for line in table
        ]
        r = self.ratio
        verdict = "the same" if r == 1 else f"{r:.3g}× less" if r > 1 else f"{1 / r:.3g}× more"
        tail = f"fn keeps {_size(self.fn_bytes)}, autodiff of reference keeps {_size(self.reference_bytes)}: {verdict}"
        return "\n".join([head, *(line.rstrip() for line in lines), tail])


def _abstract(path: str, x) -> jax.ShapeDtypeStruct:
    """The shape and dtype of one leaf of args; a ShapeDtypeStruct passes as it is."""
    x = leaf_array(path, x, caller="residuals", abstract=True)
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _saved(f, kwargs, arg_def, is_diff, diff, fixed):
    """f's output and the leaves of its pullback with respect to the float leaves."""

    def of_floats(*d):
        d, k = iter(d), iter(fixed)
        return f(*jax.tree.unflatten(arg_def, [next(d) if x else next(k) for x in is_diff]), **kwargs)

    out, pullback = jax.vjp(of_floats, *diff)
    return out, jax.tree.leaves(pullback)


def residuals(fn, *args, reference=None, kwargs=None) -> ResidualTable:
    """What ``fn`` keeps between forward and backward, beside what autodiff of ``reference`` keeps.

    The arrays a function keeps for its backward are the leaves of the pullback
    ``jax.vjp`` returns, ``jax.tree_util.tree_leaves(jax.vjp(f, *args)[1])``. For the
    reference, what reverse-mode autodiff saved. For a ``jax.custom_vjp`` rule, the array
    leaves of its fwd's residuals as JAX holds them: each array once (one returned twice
    is one leaf), fn's own inputs first, then the computed residuals in fwd's order;
    Python numbers and None among them are constants, not arrays, and are left out.
    Floating leaves of args are differentiated; integer and bool leaves (class ids) are
    held fixed, as in :func:`check_vjp`. It all runs under ``jax.eval_shape``: nothing is
    computed, and args may be ``jax.ShapeDtypeStruct``.

    Args:
      fn: the function to audit, typically a funcprop rule.
      *args: its positional arguments: arrays or ``jax.ShapeDtypeStruct``, in pytrees.
      reference: the same function in plain jnp; by default ``fn.vjp_rule.twin`` for a
        funcprop rule.
      kwargs: static keyword arguments for both (``causal=True``).

    Returns:
      A :class:`ResidualTable`: a :class:`ResidualRow` per kept array, the totals
      ``fn_bytes``, ``reference_bytes`` and their ratio; ``print`` it for a table.

    Example:
      >>> import funcprop
      >>> q = jax.ShapeDtypeStruct((1, 512, 2, 32), jnp.float32)
      >>> table = residuals(funcprop.attention, q, q, q, kwargs={"causal": True})
      >>> [row.shape for row in table.side("fn")]   # q, k, v, O, m, ℓ
      [(1, 512, 2, 32), (1, 512, 2, 32), (1, 512, 2, 32), (1, 512, 2, 32), (1, 2, 512), (1, 2, 512)]
      >>> table.reference_bytes > 20 * table.fn_bytes   # autodiff keeps the (512, 512) probabilities
      True
    """
    reference = resolve_reference(fn, reference, args, caller="residuals")
    kwargs = dict(kwargs or {})
    path_leaves, arg_def = jax.tree_util.tree_flatten_with_path(args)
    leaves = [_abstract("args" + jax.tree_util.keystr(p), x) for p, x in path_leaves]
    is_diff = [jnp.issubdtype(x.dtype, jnp.floating) for x in leaves]
    if not any(is_diff):
        raise TypeError(
            f"residuals: no floating-point leaf among the args of {name_of(fn)} (integer leaves "
            f"are held fixed), so there is nothing to differentiate; pass float arrays"
        )
    diff = [x for x, d in zip(leaves, is_diff) if d]
    fixed = [x for x, d in zip(leaves, is_diff) if not d]
    # Shapes only: jax.eval_shape traces fwd (and autodiff of the reference), runs nothing.
    saved = {
        side: jax.eval_shape(functools.partial(_saved, f, kwargs, arg_def, is_diff), diff, fixed)
        for side, f in (("fn", fn), ("reference", reference))
    }
    got, want = ([(o.shape, o.dtype) for o in jax.tree.leaves(saved[s][0])] for s in ("fn", "reference"))
    if got != want or jax.tree.structure(saved["fn"][0]) != jax.tree.structure(saved["reference"][0]):
        raise ValueError(
            f"residuals: {name_of(fn)} returns {got} but {name_of(reference)} returns {want} "
            f"(shape, dtype of each output leaf); the reference must compute the same function as fn"
        )
    rows = [
        ResidualRow(side, i, tuple(s.shape), str(s.dtype), math.prod(s.shape) * s.dtype.itemsize)
        for side in ("fn", "reference")
        for i, s in enumerate(saved[side][1])
    ]
    return ResidualTable(name_of(fn), name_of(reference), tuple(rows))
