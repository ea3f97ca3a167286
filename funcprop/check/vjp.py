"""The gradient-rule checker: a hand-written VJP against autodiff, element by element.

``check_vjp(fn, *args, reference=...)`` runs up to five checks on every leaf:

- ``output``: fn's forward value against the reference's;
- ``vjp``: fn's VJP against ``jax.vjp`` of the reference, for random cotangents c;
- ``finite-diff``: fn's VJP against central differences of φ(x) = ⟨c, fn(x)⟩ in
  float64, ``(φ(x + h eᵢ) − φ(x − h eᵢ)) / 2h`` for every element i of every leaf;
- ``vmap`` (optional): fn's VJP under ``jax.vmap`` against the unbatched VJP;
- ``second-order`` (optional): reverse over reverse, ``∇⟨v, ∇φ⟩`` of fn against the
  reference's, which differentiates the hand-written bwd itself.

Error measure, per element, with ``a`` fn's value and ``b`` the expected one:

    err = |a − b| / (|b| + max|b|)          (max over the finite entries of the leaf)

relative near the leaf's largest entries, absolute (to the leaf's scale) near zero,
where cancellation leaves only rounding. A leaf passes iff ``max err <= tol``, with tol
tied to the dtype, not to the array size (:func:`default_rtol`; 1e-6 for finite
differences). Equal values, NaN against NaN included, have error 0; a NaN or an
infinity on one side only has error inf.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = ["CheckReport", "CheckRow", "GradientCheckError", "check_vjp", "default_rtol"]

FD_STEP = 1e-5  # relative step: h = 1e-5 · max(1, |x|)
FD_RTOL = 1e-6  # O(h²) truncation + O(eps/h) rounding, with headroom
VMAP_COPIES = 3  # the args and two perturbed copies
_FD_CHUNK = 256  # elements perturbed per vmap in the finite differences (bounds memory)
_RTOL = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-2, "bfloat16": 3e-2}
_HINTS = {  # what to look at when a check fails
    "output": "fn's forward value differs: fwd must return the plain function's value.",
    "vjp": "Check this leaf's formula in bwd, and its position in the tuple bwd returns.",
    "finite-diff": "If 'vjp' passed, the reference shares the bug (or x is near a kink).",
    "vmap": "Look for custom batching rules, callbacks or Python state in fwd/bwd.",
    "second-order": "bwd is right but not differentiable as written: look for "
    "stop_gradient or values computed outside JAX.",
}


def default_rtol(dtype) -> float:
    """The tolerance on the scaled relative error for values of this dtype.

    float64 1e-12, float32 1e-5, float16 1e-2, bfloat16 3e-2: a few thousand ulps or
    less, room for a different but equally good order of operations.
    """
    name = jnp.dtype(dtype).name
    if name not in _RTOL:
        raise TypeError(f"check_vjp: no default tolerance for dtype {name}; pass rtol=")
    return _RTOL[name]


class CheckRow(NamedTuple):
    """One check on one leaf, summarised by its worst element over all trials."""

    check: str  # "output", "vjp", "finite-diff", "vmap" or "second-order"
    leaf: str  # key path: "args[1].omega" for an argument, "out" for the output
    trial: int  # the cotangent (or vmap copy) that gave the worst element
    index: tuple  # the worst element's index in the leaf, () for a scalar
    expected: float  # the trusted value there: reference, finite differences, unbatched
    received: float  # fn's value there
    max_abs_error: float  # max |a − b| over the leaf and all trials
    max_rel_error: float  # max |a − b| / (|b| + max|b|) over the leaf and all trials
    tol: float  # the tolerance max_rel_error is held to
    passed: bool  # max_rel_error <= tol


class CheckReport:
    """The rows of one :func:`check_vjp` call, with notes on what was skipped."""

    def __init__(self, name: str, reference: str, rows: list, notes: list):
        self.name, self.reference = name, reference
        self.rows, self.notes = tuple(rows), tuple(notes)

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def failures(self) -> tuple[CheckRow, ...]:
        return tuple(row for row in self.rows if not row.passed)

    def to_dict(self) -> dict:
        """Plain Python values only, ready for ``json.dumps``."""
        rows = [dict(row._asdict(), index=list(row.index)) for row in self.rows]
        return {
            "function": self.name,
            "reference": self.reference,
            "passed": self.passed,
            "rows": rows,
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        status = "passed" if self.passed else f"FAILED {len(self.failures)} of"
        head = f"check_vjp({self.name}) against {self.reference}: {status} {len(self.rows)} checks"
        cols = ("check", "leaf", "trial", "worst at", "expected", "received", "max abs", "max rel", "tol", "")
        table = [cols] + [
            (
                r.check,
                r.leaf,
                str(r.trial),
                str(r.index),
                f"{r.expected:.6g}",
                f"{r.received:.6g}",
                f"{r.max_abs_error:.2e}",
                f"{r.max_rel_error:.2e}",
                f"{r.tol:.0e}",
                "ok" if r.passed else "FAIL",
            )
            for r in self.rows
        ]
        widths = [max(len(line[j]) for line in table) for j in range(len(cols))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table]
        return "\n".join([head, *lines, *(f"note: {n}" for n in self.notes)])


class GradientCheckError(AssertionError):
    """Raised by :func:`check_vjp` when a check fails; ``.report`` holds every row."""

    def __init__(self, message: str, report: CheckReport):
        super().__init__(message)
        self.report = report


def _failure_message(report: CheckReport) -> str:
    lines = [
        f"check_vjp({report.name}): {len(report.failures)} of {len(report.rows)} "
        f"checks failed against {report.reference}"
    ]
    for r in report.failures:
        lines.append(
            f"  {r.check} check failed for {r.leaf} at index {r.index} (trial {r.trial}): "
            f"expected {r.expected:.10g}, received {r.received:.10g}; scaled relative "
            f"error {r.max_rel_error:.3g} > tolerance {r.tol:g} (max abs error "
            f"{r.max_abs_error:.3g}). {_HINTS[r.check]}"
        )
    return "\n".join(lines + ["", str(report)])


def _row(check: str, leaf: str, received, expected, tol: float) -> CheckRow:
    """One leaf's row; ``received`` and ``expected`` are stacked over trials (axis 0)."""
    a = np.asarray(received).astype(np.float64)
    b = np.asarray(expected).astype(np.float64)
    if b.size == 0:
        return CheckRow(check, leaf, 0, (), math.nan, math.nan, 0.0, 0.0, tol, True)
    finite = np.where(np.isfinite(b), np.abs(b), 0.0)
    scale = finite.max(axis=tuple(range(1, b.ndim)), keepdims=True)  # max|b| per trial
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(all="ignore"):
        diff, rel = np.abs(a - b), np.abs(a - b) / (np.abs(b) + scale)
    # NaN from a NaN or an inf on one side only: error inf
    diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
    rel = np.where(same, 0.0, np.where(np.isnan(rel), np.inf, rel))
    worst = np.unravel_index(np.argmax(rel), rel.shape)  # (trial, *index)
    index, err = tuple(int(k) for k in worst[1:]), float(rel[worst])
    return CheckRow(
        check, leaf, int(worst[0]), index, float(b[worst]), float(a[worst]), float(diff.max()), err, tol, err <= tol
    )


def _name(f) -> str:
    return getattr(f, "__name__", None) or type(f).__name__


def _resolve_reference(fn, reference, args):
    if not callable(fn):
        raise TypeError(
            f"check_vjp: fn must be callable, got a {type(fn).__name__}; "
            f"pass the function itself: check_vjp(my_rule, x, ...)"
        )
    if not args:
        raise ValueError(
            f"check_vjp: no arguments given for {_name(fn)}; pass the inputs "
            f"to differentiate at after fn: check_vjp(fn, x, w, ...)"
        )
    if reference is None:
        if not hasattr(fn, "vjp_rule"):
            raise TypeError(
                f"check_vjp: {_name(fn)} is not a funcprop rule (it has no .vjp_rule), so "
                f"there is no default reference; pass reference=, the same function "
                f"written with plain jnp operations: check_vjp(fn, x, reference=plain_fn)"
            )
        return fn.vjp_rule.twin
    if not callable(reference):
        raise TypeError(
            f"check_vjp: reference must be callable, got a "
            f"{type(reference).__name__}; pass a plain function of fn's args"
        )
    return reference


def _leaf_array(path: str, x) -> jax.Array:
    try:
        x = jnp.asarray(x)
    except TypeError:
        raise TypeError(
            f"check_vjp: {path} is a {type(x).__name__}, not an array; pass static arguments by name through kwargs="
        ) from None
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_):
        raise TypeError(
            f"check_vjp: {path} has dtype {x.dtype}; pass real floating "
            f"leaves (differentiated) or integer ones (held fixed)"
        )
    return x


class _Problem:
    """fn and reference as functions of the float leaves of args, integers held fixed."""

    def __init__(self, fn, reference, args, kwargs):
        path_leaves, self.arg_def = jax.tree_util.tree_flatten_with_path(args)
        paths = ["args" + jax.tree_util.keystr(p) for p, _ in path_leaves]
        values = [_leaf_array(path, x) for path, (_, x) in zip(paths, path_leaves)]
        self.is_diff = [jnp.issubdtype(v.dtype, jnp.floating) for v in values]
        if not any(self.is_diff):
            raise TypeError(
                f"check_vjp: no floating-point leaf among the args of {_name(fn)} (integer "
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
                f"check_vjp: {_name(fn)} returns a pytree {got_def} but the reference "
                f"returns {jax.tree.structure(want)}; the reference must compute the same "
                f"function as fn, with the same signature"
            )
        self.out_paths = ["out" + jax.tree_util.keystr(p) for p, _ in got_paths]
        self.out_shapes = [g for _, g in got_paths]
        for path, g, w in zip(self.out_paths, self.out_shapes, jax.tree.leaves(want)):
            if (g.shape, g.dtype) != (w.shape, w.dtype):
                raise ValueError(
                    f"check_vjp: {_name(fn)} returns {g.dtype}{list(g.shape)} at {path} "
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


def _normals(key, n: int, like) -> list:
    """n standard-normal draws, ``(n, *x.shape)`` NumPy arrays, for each x in ``like``.

    Drawn at once and sliced: the size is rounded up to a power of two (at least 1024),
    so one compiled draw serves many checks (a threefry draw is slow to compile).
    """
    sizes = [n * math.prod(x.shape) for x in like]
    z = np.asarray(_standard_normals(key, max(1024, 1 << (sum(sizes) - 1).bit_length())))
    return [
        z[end - size : end].reshape(n, *x.shape).astype(x.dtype) for end, size, x in zip(np.cumsum(sizes), sizes, like)
    ]


def _per_trial(f, *stacked):
    """f of each trial t (axis 0 of every leaf list), restacked. Unrolled: a scan
    compiles slower."""
    results = [f(*([x[t] for x in leaves] for leaves in stacked)) for t in range(len(stacked[0][0]))]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *results)


def _vjp_pairs(problem: _Problem, fn, reference, cts):
    """(fn's, reference's) (outputs, VJPs), each leaf stacked over the cotangents."""

    @jax.jit
    def run(diff, fixed, cts):
        fn_vjp, ref_vjp = problem.pullback(fn), problem.pullback(reference)
        return _per_trial(lambda c: (fn_vjp(diff, fixed, c), ref_vjp(diff, fixed, c)), cts)

    return run(problem.diff, problem.fixed, cts)


def _finite_difference_pairs(problem: _Problem, fn, cts):
    """(fn's VJPs, central differences) in float64, stacked over the cotangents.

    ∂φ_t/∂xᵢ ≈ (φ_t(x + h eᵢ) − φ_t(x − h eᵢ)) / 2h, φ_t(x) = ⟨c_t, fn(x)⟩,
    h = 1e-5 · max(1, |xᵢ|), for every element i of every float leaf: two calls of
    fn per element, all cotangents t at once.
    """

    @jax.jit
    def run(diff, fixed, cts):
        diff = [x.astype(jnp.float64) for x in diff]
        cts = [c.astype(jnp.float64) for c in cts]  # (T, *out.shape)
        flat, unravel = ravel_pytree(diff)

        def phi(x):  # (T,)
            outs = problem.call(fn, unravel(x), fixed)
            return sum(jnp.sum((c * o.astype(c.dtype)).reshape(len(c), -1), axis=1) for c, o in zip(cts, outs))

        steps = FD_STEP * jnp.maximum(1.0, jnp.abs(flat))

        def one(i):
            e = jnp.zeros_like(flat).at[i].set(steps[i])
            plus, minus = flat + e, flat - e  # divide by the step actually taken
            return (phi(plus) - phi(minus)) / (plus[i] - minus[i])

        idx = jnp.arange(flat.size)
        big = flat.size > _FD_CHUNK
        fd = jax.lax.map(one, idx, batch_size=_FD_CHUNK) if big else jax.vmap(one)(idx)
        vjps = _per_trial(lambda c: problem.pullback(fn)(diff, fixed, c)[1], cts)
        return (None, vjps), (None, jax.vmap(unravel)(fd.T))

    return run(problem.diff, problem.fixed, cts)


def _vmap_pairs(problem: _Problem, fn, key):
    """fn's (outputs, VJPs) under vmap and copy by copy: x, then x · (1 + 0.05 z)."""
    k_args, k_cts = jax.random.split(key)
    z = _normals(k_args, VMAP_COPIES - 1, problem.diff)
    copies = [
        np.concatenate([x[None], x * (1 + 0.05 * np.clip(zx, -2, 2)).astype(x.dtype)])
        for x, zx in zip(map(np.asarray, problem.diff), z)
    ]
    cts = _normals(k_cts, VMAP_COPIES, problem.out_shapes)

    @jax.jit
    def run(copies, fixed, cts):
        pullback = problem.pullback(fn)
        batched = jax.vmap(pullback, in_axes=(0, None, 0))(copies, fixed, cts)
        return batched, _per_trial(lambda x, c: pullback(x, fixed, c), copies, cts)

    return run(copies, problem.fixed, cts)


def _second_order_pairs(problem: _Problem, fn, reference, cts, key):
    """(fn's, reference's) ∇ψ, ψ(x) = ⟨v, ∇φ(x)⟩, φ(x) = ⟨c, f(x)⟩, v random."""
    acc = max((x.dtype for x in problem.diff), key=lambda d: jnp.finfo(d).bits)

    def grad_psi(f):
        def psi(diff, fixed, ct, v):
            grads = problem.pullback(f)(diff, fixed, ct)[1]
            return sum(jnp.sum(vk * gk).astype(acc) for vk, gk in zip(v, grads))

        return jax.grad(psi)

    @jax.jit
    def run(diff, fixed, cts, vs):
        fn_h, ref_h = grad_psi(fn), grad_psi(reference)
        return _per_trial(lambda c, v: ((None, fn_h(diff, fixed, c, v)), (None, ref_h(diff, fixed, c, v))), cts, vs)

    vs = _normals(key, len(cts[0]), problem.diff)
    return run(problem.diff, problem.fixed, cts, vs)


def check_vjp(
    fn: Callable[..., Any],
    *args,
    reference: Callable[..., Any] | None = None,
    kwargs: dict | None = None,
    n_cotangents: int = 3,
    key=None,
    finite_differences: bool = True,
    vmap: bool = False,
    second_order: bool = False,
    rtol: float | None = None,
    fd_rtol: float = FD_RTOL,
    raise_on_fail: bool = True,
) -> CheckReport:
    """Check fn's VJP (a ``jax.custom_vjp``) against autodiff of a plain reference.

    Every float leaf of ``args`` is differentiated, every integer leaf held fixed.
    The VJPs are computed under ``jax.jit``; each check gives one row per leaf, its
    worst element judged by the scaled relative error ``|a − b| / (|b| + max|b|)``.

    Args:
      fn: the function under test, ``fn(*args, **kwargs) -> pytree of float arrays``.
      *args: arrays or pytrees of arrays (a params NamedTuple, a dict), any shapes.
      reference: the same function in plain jnp, differentiated by ``jax.vjp``.
        Defaults to ``fn.vjp_rule.twin`` for a funcprop rule.
      kwargs: static keyword arguments (an axis, a slope) for fn and reference.
      n_cotangents: number of random normal cotangents (trials) per check.
      key: PRNG key for cotangents and perturbations; ``jax.random.key(0)`` if None.
      finite_differences: also check against float64 central differences (skipped,
        with a note, unless ``jax_enable_x64`` is on). Costs 2 calls of fn per element.
      vmap: also check fn's VJP under ``jax.vmap`` over 3 perturbed copies of args.
      second_order: also check ``∇⟨v, ∇φ⟩`` (reverse over reverse) for random v.
      rtol: tolerance for every check but finite-diff; default per dtype,
        :func:`default_rtol`.
      fd_rtol: tolerance of the finite-diff check.
      raise_on_fail: raise :class:`GradientCheckError` if any row fails.

    Returns:
      The :class:`CheckReport`; ``print`` it for the table.

    Raises:
      GradientCheckError: a check failed (and ``raise_on_fail``). The message names
        the check, the leaf's key path, the worst index, both values and the error.
      TypeError, ValueError: fn or reference not callable, no args, no reference for
        a function that is not a funcprop rule, reference output unlike fn's.
    """
    reference = _resolve_reference(fn, reference, args)
    if not isinstance(n_cotangents, int) or n_cotangents < 1:
        raise ValueError(f"check_vjp: n_cotangents must be a positive int, got {n_cotangents!r}")
    problem = _Problem(fn, reference, args, dict(kwargs or {}))
    key = jax.random.key(0) if key is None else key
    k_ct, k_vmap, k_second = jax.random.split(key, 3)
    cts = _normals(k_ct, n_cotangents, problem.out_shapes)
    fn_pair, ref_pair = _vjp_pairs(problem, fn, reference, cts)
    rows, notes = [], []

    def add_rows(check, received, expected, parts=(0, 1), tol=None):
        """Rows from (outputs, cotangents), each leaf stacked over the trials."""
        groups = [(problem.out_paths, problem.out_shapes), (problem.paths, problem.diff)]
        received, expected = jax.device_get((received, expected))
        for part in parts:
            for k, (path, like) in enumerate(zip(*groups[part])):
                leaf_tol = default_rtol(like.dtype) if rtol is None else rtol
                rows.append(_row(check, path, received[part][k], expected[part][k], leaf_tol if tol is None else tol))

    add_rows("output", fn_pair, ref_pair, parts=(0,))
    add_rows("vjp", fn_pair, ref_pair, parts=(1,))
    if finite_differences and not jax.config.jax_enable_x64:
        notes.append(
            "finite-diff skipped: float64 is disabled; enable it with jax.config.update('jax_enable_x64', True)"
        )
    elif finite_differences:
        add_rows("finite-diff", *_finite_difference_pairs(problem, fn, cts), (1,), fd_rtol)
    if vmap:
        add_rows("vmap", *_vmap_pairs(problem, fn, k_vmap))
    if second_order:
        pairs = _second_order_pairs(problem, fn, reference, cts, k_second)
        add_rows("second-order", *pairs, parts=(1,))

    report = CheckReport(_name(fn), _name(reference), rows, notes)
    if raise_on_fail and not report.passed:
        raise GradientCheckError(_failure_message(report), report)
    return report
