"""Verify every rule of the table: float32 and float64 against autodiff of its twin,
and float64 against central finite differences (``funcprop verify``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcprop.check import check_vjp
from funcprop.rules.table import RULES


def verify_rules(dtypes=(jnp.float32, jnp.float64), seed: int = 0, cases=RULES) -> list[dict]:
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
                by_check: dict = {}
                for r in report.rows:
                    by_check.setdefault(r.check, []).append(r)
                vjp_rows = by_check.get("vjp", [])
                fd_rows = by_check.get("finite-diff", [])
                rows.append(
                    {
                        "rule": case.name,
                        "dtype": dtype.name,
                        "vs_twin_max_rel_error": max((r.max_rel_error for r in vjp_rows), default=None),
                        "vs_twin_tol": vjp_rows[0].tol if vjp_rows else None,
                        "vs_fd_max_rel_error": max((r.max_rel_error for r in fd_rows), default=None),
                        "vs_fd_tol": fd_rows[0].tol if fd_rows else None,
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
        "|a − b| / (|b| + max|b|) over every element, argument and cotangent.",
    ]
    return "\n".join(lines) + "\n"
