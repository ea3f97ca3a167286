"""Verify every rule of the table: bfloat16, float32 and float64 against autodiff of
its twin, and float64 against central finite differences (``funcprop verify``).

A bfloat16 row runs the rule in bfloat16 and its twin in float64 on the same values;
each leaf's tolerance is measured: 3 times the error of the twin itself run in
bfloat16, at least 2⁻⁷ (:mod:`funcprop.check.precision`). Like float32, it runs no finite
differences.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from funcprop.check import check_vjp, precision
from funcprop.rules.table import RULES


def _worst(rows):
    """(error, tol) of the row nearest to failing: the largest error / tol.

    float32 and float64 hold every leaf to one tolerance, so this is the largest error;
    a bfloat16 tolerance is measured per leaf. A NaN error counts as the worst.
    """
    if not rows:
        return None, None
    worst = max(rows, key=lambda r: math.inf if math.isnan(r.max_rel_error) else r.max_rel_error / r.tol)
    return worst.max_rel_error, worst.tol


def verify_rules(dtypes=(jnp.bfloat16, jnp.float32, jnp.float64), seed: int = 0, cases=RULES) -> list[dict]:
    """One row per (rule, dtype): the worst scaled relative errors and pass/fail.

    float64 is switched on for the duration (``jax.enable_x64``), whatever the
    caller's setting. ``cases`` defaults to the whole table.
    """
    rows = []
    with jax.enable_x64(True):
        for i, case in enumerate(cases):
            for dtype in dtypes:
                dtype = jnp.dtype(dtype)
                args = case.args(jax.random.key(seed + i), dtype)
                report = check_vjp(
                    case.rule,
                    *args,
                    kwargs=case.kwargs,
                    key=jax.random.key(seed + 1000 + i),
                    finite_differences=dtype == jnp.float64,
                    raise_on_fail=False,
                )
                twin_error, twin_tol = _worst([r for r in report.rows if r.check == "vjp"])
                fd_error, fd_tol = _worst([r for r in report.rows if r.check == "finite-diff"])
                rows.append(
                    {
                        "rule": case.name,
                        "dtype": dtype.name,
                        "vs_twin_max_rel_error": twin_error,
                        "vs_twin_tol": twin_tol,
                        "vs_fd_max_rel_error": fd_error,
                        "vs_fd_tol": fd_tol,
                        "checks": len(report.rows),
                        "passed": report.passed,
                    }
                )
    return rows


def verification_markdown(rows: list[dict]) -> str:
    """The rows as a markdown table."""

    def err(x, tol):
        return "—" if x is None else f"{x:.1e} (≤ {tol:.0e})"

    lines = [
        "| rule | dtype | VJP vs jax.vjp of twin | VJP vs central differences | result |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rule']} | {r['dtype']} | {err(r['vs_twin_max_rel_error'], r['vs_twin_tol'])} | "
            f"{err(r['vs_fd_max_rel_error'], r['vs_fd_tol'])} | {'pass' if r['passed'] else '**FAIL**'} |"
        )
    passed = sum(r["passed"] for r in rows)
    lines += [
        "",
        f"{passed} of {len(rows)} passed. Errors are the worst scaled relative error "
        "|a − b| / (|b| + max|b|) over every element, argument and cotangent (for each, "
        "the argument nearest to its tolerance).",
    ]
    low = sorted({r["dtype"] for r in rows if precision.is_low(r["dtype"])})
    if low:
        lines.append(
            f"A {' or '.join(low)} row compares the rule in that dtype with its twin in float64 on the "
            f"same values; its tolerance is measured per argument: {precision.ROUNDING_FACTOR:g} times the "
            "twin's own error in that dtype, at least its spacing at 1 (2⁻⁷ for bfloat16)."
        )
    return "\n".join(lines) + "\n"
