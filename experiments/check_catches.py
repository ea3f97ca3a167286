"""What the gradient checker catches and passes: wrong rules in bf16, f16 and f32.

    python experiments/check_catches.py --out runs/check_catches
    python experiments/check_catches.py --quick        # one size, seconds

A softsign rule, right and with four bugs (a 2% bias, a 5% bias, one element's sign, a
missing factor), is checked by ``funcprop.check.check_vjp`` at several sizes and dtypes,
with float64 on and off. Beside each verdict: the ``vjp`` row's scaled error and its
(measured) tolerance, the ``taylor`` row's slope where float64 is off, and the verdict
the old rule of thumb would give (fn and reference both in the low dtype, against the
fixed tolerance 3e-2). Then funcprop's own rules, one case per rule, in bfloat16 and
float16. Writes check_catches.json and check_catches.md in --out.
"""

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp

from funcprop.check import check_vjp, default_rtol
from funcprop.check._report import max_scaled_error
from funcprop.rules.table import RULES


def softsign(x):
    return x / (1 + jnp.abs(x))


def _right(x, g):
    return g / (1 + jnp.abs(x)) ** 2


BWDS = {
    "right": _right,
    "bias 2%": lambda x, g: 1.02 * _right(x, g),
    "bias 5%": lambda x, g: 1.05 * _right(x, g),
    "one sign": lambda x, g: _right(x, g).at[(0,) * x.ndim].multiply(-1),
    "missing factor": lambda x, g: g / (1 + jnp.abs(x)),
}


def rule_of(bwd):
    rule = jax.custom_vjp(softsign)
    rule.defvjp(lambda x: (softsign(x), x), lambda x, g: (bwd(x, g),))
    return rule


def old_verdict(rule, x) -> bool:
    """Both sides in x's dtype, against the fixed tolerance: what check_vjp did before."""
    c = jax.random.normal(jax.random.key(1), x.shape, jnp.float32).astype(x.dtype)
    got, want = jax.vjp(rule, x)[1](c)[0], jax.vjp(softsign, x)[1](c)[0]
    return max_scaled_error(got[None], want[None]) <= default_rtol(x.dtype)


def softsign_table(sizes, dtypes) -> list[dict]:
    rows = []
    for x64 in (True, False):
        with jax.enable_x64(x64):
            for dtype in dtypes:
                for shape in sizes:
                    x = jax.random.normal(jax.random.key(0), shape, jnp.float32).astype(dtype)
                    for bug, bwd in BWDS.items():
                        rule = rule_of(bwd)
                        report = check_vjp(rule, x, reference=softsign, raise_on_fail=False)
                        vjp = next(r for r in report.rows if r.check == "vjp")
                        taylor = next((r for r in report.rows if r.check == "taylor"), None)
                        rows.append(
                            {
                                "x64": x64,
                                "dtype": jnp.dtype(dtype).name,
                                "shape": list(shape),
                                "bwd": bug,
                                "passed": report.passed,
                                "failed_checks": sorted({r.check for r in report.failures}),
                                "vjp_error": vjp.max_rel_error,
                                "vjp_tol": vjp.tol,
                                "taylor_slope": None if taylor is None else taylor.received,
                                "old_passed": old_verdict(rule, x),
                            }
                        )
    return rows


def funcprop_table(dtypes) -> list[dict]:
    rows, seen = [], set()
    for case in RULES:
        if case.rule in seen:
            continue
        seen.add(case.rule)
        for dtype in dtypes:
            args = case.args(jax.random.key(0), dtype)
            report = check_vjp(case.rule, *args, kwargs=case.kwargs, finite_differences=False, raise_on_fail=False)
            worst = max((r for r in report.rows if r.tol > 0), key=lambda r: r.max_rel_error / r.tol)
            rows.append(
                {
                    "rule": case.name,
                    "dtype": jnp.dtype(dtype).name,
                    "passed": report.passed,
                    "worst_leaf": f"{worst.check} {worst.leaf}",
                    "error_over_tol": worst.max_rel_error / worst.tol,
                }
            )
    return rows


def markdown(softsign_rows, rule_rows) -> str:
    lines = [
        "| x64 | dtype | shape | bwd | verdict | failed | vjp error / tol | taylor slope | old verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in softsign_rows:
        slope = "" if r["taylor_slope"] is None else f"{r['taylor_slope']:.2f}"
        lines.append(
            f"| {'on' if r['x64'] else 'off'} | {r['dtype']} | {tuple(r['shape'])} | {r['bwd']} | "
            f"{'pass' if r['passed'] else 'FAIL'} | {', '.join(r['failed_checks'])} | "
            f"{r['vjp_error']:.2g} / {r['vjp_tol']:.2g} | {slope} | {'pass' if r['old_passed'] else 'FAIL'} |"
        )
    lines += ["", "| rule | dtype | verdict | worst row | error / tol |", "|---|---|---|---|---|"]
    for r in rule_rows:
        lines.append(
            f"| {r['rule']} | {r['dtype']} | {'pass' if r['passed'] else 'FAIL'} | {r['worst_leaf']} | "
            f"{r['error_over_tol']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/check_catches"))
    parser.add_argument("--quick", action="store_true", help="one size, the softsign table only")
    args = parser.parse_args(argv)
    sizes = [(64, 32)] if args.quick else [(8,), (64, 32), (128, 128)]
    dtypes = [jnp.bfloat16, jnp.float16, jnp.float32]
    softsign_rows = softsign_table(sizes, dtypes)
    rule_rows = [] if args.quick else funcprop_table([jnp.bfloat16, jnp.float16])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "check_catches.json").write_text(json.dumps({"softsign": softsign_rows, "rules": rule_rows}, indent=1))
    text = markdown(softsign_rows, rule_rows)
    (args.out / "check_catches.md").write_text(text)
    print(text)
    wrong_passed = [r for r in softsign_rows if r["bwd"] != "right" and r["passed"]]
    right_failed = [r for r in softsign_rows if r["bwd"] == "right" and not r["passed"]]
    print(f"wrong rules passed: {len(wrong_passed)}; right rules failed: {len(right_failed)}")
    print(f"funcprop rules failing in low precision: {[r['rule'] for r in rule_rows if not r['passed']]}")
    return int(bool(wrong_passed or right_failed))


if __name__ == "__main__":
    raise SystemExit(main())
