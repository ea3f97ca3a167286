"""The checker's rows, reports and error measure, shared by every check.

Error measure, per element, with ``a`` the value under test and ``b`` the trusted one:

    err = |a − b| / (|b| + max|b|)          (max over the finite entries of the leaf)

relative near the leaf's largest entries, absolute (to the leaf's scale) near zero,
where cancellation leaves only rounding. It halves a uniform bias: a gradient 2% too
large scores about 0.01. Equal values, NaN against NaN included, have error 0; a NaN or
an infinity on one side only has error inf.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

_RTOL = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-2, "bfloat16": 3e-2}

HINTS = {  # what to look at when a check fails
    "output": "fn's forward value differs: fwd must return the plain function's value.",
    "vjp": "Check this leaf's formula in bwd, and its position in the tuple bwd returns.",
    "finite-diff": "If 'vjp' passed, the reference shares the bug (or x is near a kink).",
    "taylor": "The remainder falls as ε, not ε²: the VJP is not the derivative of fn's own "
    "forward (if 'vjp' passed, the reference shares the bug).",
    "jit": "fn's VJP differs between eager and jit: look for Python state or values read back to the host in fwd/bwd.",
    "vmap": "Wrong under vmap only: look for closed-over arrays, custom batching rules or callbacks in fwd/bwd.",
    "remat": "Wrong under jax.checkpoint, where fwd runs again: look for state or "
    "randomness that differs between the two runs.",
    "scan": "Wrong inside lax.scan: look for residuals or values kept outside the rule.",
    "shard_map": "Wrong under shard_map: a replicated input's cotangent must be summed over "
    "the devices (psum over the axes it varies in), not left local.",
    "symbolic-zeros": "Wrong when an output is unused (its cotangent is zero): bwd must treat a zero cotangent as one.",
    "second-order": "bwd is right but not differentiable as written: look for "
    "stop_gradient or values computed outside JAX.",
    "model": "This layer's rule disagrees with its plain twin on the same inputs.",
}


def default_rtol(dtype) -> float:
    """The fixed tolerance on the scaled relative error for values of this dtype.

    float64 1e-12, float32 1e-5, float16 1e-2, bfloat16 3e-2: a few thousand ulps or
    less, room for a different but equally good order of operations. :func:`check_vjp`
    holds float16 and bfloat16 to a tolerance measured on the inputs instead
    (:mod:`funcprop.check.precision`); this is the bound for callers who pass none.
    """
    name = jnp.dtype(dtype).name
    if name not in _RTOL:
        raise TypeError(f"check_vjp: no default tolerance for dtype {name}; pass rtol=")
    return _RTOL[name]


class CheckRow(NamedTuple):
    """One check on one leaf, summarised by its worst element over all trials."""

    check: str  # "output", "vjp", "finite-diff", "taylor", a transform, "second-order"
    leaf: str  # key path: "args[1].omega" for an argument, "out" for the output
    trial: int  # the cotangent (or vmap copy) that gave the worst element
    index: tuple  # the worst element's index in the leaf, () for a scalar
    expected: float  # the trusted value there: reference, finite differences, unbatched
    received: float  # fn's value there
    max_abs_error: float  # max |a − b| over the leaf and all trials
    max_rel_error: float  # max |a − b| / (|b| + max|b|) over the leaf and all trials
    tol: float  # the tolerance max_rel_error is held to
    passed: bool  # max_rel_error <= tol
    compared: str = ""  # what against what, at which dtypes: "bfloat16 fn vs float32 reference"


class CheckReport:
    """The rows of one check, with notes on what was skipped.

    ``title`` is the call that made it (``check_vjp(dense)``), ``reference`` what it was
    compared with.
    """

    def __init__(self, name: str, reference: str, rows: list, notes: list, title: str | None = None):
        self.name, self.reference = name, reference
        self.rows, self.notes = tuple(rows), tuple(notes)
        self.title = title or f"check_vjp({name})"

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
        head = f"{self.title} against {self.reference}: {status} {len(self.rows)} checks"
        cols = (
            "check",
            "leaf",
            "trial",
            "worst at",
            "expected",
            "received",
            "max abs",
            "max rel",
            "tol",
            "",
            "compared",
        )
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
                f"{r.tol:.1e}" if r.tol < 1e-3 or r.tol >= 0.1 else f"{r.tol:.4f}",
                "ok" if r.passed else "FAIL",
                r.compared,
            )
            for r in self.rows
        ]
        widths = [max(len(line[j]) for line in table) for j in range(len(cols))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table]
        return "\n".join([head, *lines, *(f"note: {n}" for n in self.notes)])


class GradientCheckError(AssertionError):
    """Raised when a check fails; ``.report`` holds every row."""

    def __init__(self, message: str, report: CheckReport):
        super().__init__(message)
        self.report = report


def failure_message(report: CheckReport) -> str:
    """The error's text: one line per failed row, with its hint, then the table."""
    lines = [f"{report.title}: {len(report.failures)} of {len(report.rows)} checks failed against {report.reference}"]
    for r in report.failures:
        lines.append(
            f"  {r.check} check failed for {r.leaf} at index {r.index} (trial {r.trial}): "
            f"expected {r.expected:.10g}, received {r.received:.10g}; scaled relative "
            f"error {r.max_rel_error:.3g} > tolerance {r.tol:g} (max abs error "
            f"{r.max_abs_error:.3g}). {HINTS.get(r.check, '')}".rstrip()
        )
    return "\n".join(lines + ["", str(report)])


def scaled_errors(received, expected, scale_floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(|a − b|, |a − b| / (|b| + max|b|)) in float64; axis 0 indexes trials, and max|b|
    is taken per trial (at least ``scale_floor``). Equal values (NaN and NaN too) give
    0, a one-sided NaN inf."""
    a = np.asarray(received).astype(np.float64)
    b = np.asarray(expected).astype(np.float64)
    finite = np.where(np.isfinite(b), np.abs(b), 0.0)
    scale = finite.max(axis=tuple(range(1, b.ndim)), keepdims=True) if b.size else finite
    scale = np.maximum(scale, scale_floor)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(all="ignore"):
        diff, rel = np.abs(a - b), np.abs(a - b) / (np.abs(b) + scale)
    diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
    rel = np.where(same, 0.0, np.where(np.isnan(rel), np.inf, rel))
    return diff, rel


def max_scaled_error(received, expected) -> float:
    """The largest scaled relative error of ``received`` against ``expected`` (0 if empty)."""
    rel = scaled_errors(received, expected)[1]
    return float(rel.max()) if rel.size else 0.0


def error_row(
    check: str, leaf: str, received, expected, tol: float, compared: str = "", scale_floor: float = 0.0
) -> CheckRow:
    """One leaf's row; ``received`` and ``expected`` are stacked over trials (axis 0)."""
    b = np.asarray(expected)
    if b.size == 0:
        return CheckRow(check, leaf, 0, (), math.nan, math.nan, 0.0, 0.0, tol, True, compared)
    diff, rel = scaled_errors(received, expected, scale_floor)
    worst = np.unravel_index(np.argmax(rel), rel.shape)  # (trial, *index)
    index, err = tuple(int(k) for k in worst[1:]), float(rel[worst])
    a = np.asarray(received).astype(np.float64)
    return CheckRow(
        check,
        leaf,
        int(worst[0]),
        index,
        float(b.astype(np.float64)[worst]),
        float(a[worst]),
        float(diff.max()),
        err,
        tol,
        err <= tol,
        compared,
    )
