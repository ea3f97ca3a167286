"""Time and memory of one layer's weight gradient: full Jacobian chain against the VJP.

    python experiments/jacobian_vs_vjp.py --out runs/jacobian

For a = σ(Ω x + β) with n = m, the Jacobian chain dC/da · da/dz · dz/dΩ forms an
n×n and an n×n² matrix (O(n³) here), the VJP forms δ xᵀ (O(n²)). Memory is XLA's
compiled temporary memory (``memory_analysis``); time is the median of repeated calls.
"""

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp

from funcprop import backprop, plots
from funcprop.timing import median_seconds


def measure(fn, args, repeats: int):
    compiled = jax.jit(fn).lower(*args).compile()
    memory = compiled.memory_analysis()
    temp = memory.temp_size_in_bytes + memory.output_size_in_bytes if memory is not None else float("nan")
    return median_seconds(lambda: compiled(*args), repeats), temp


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/jacobian", help="output folder")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128, 256, 384])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows = []
    for n in args.widths:
        k = jax.random.split(jax.random.key(n), 4)
        layer = (
            jax.random.normal(k[0], (n,)),
            jax.random.normal(k[1], (n, n)) / n**0.5,
            jax.random.normal(k[2], (n,)),
            jax.random.normal(k[3], (n,)),
        )
        jac, vjp = backprop.jacobian_layer_grads(*layer), backprop.vjp_layer_grads(*layer)
        agree = float(jnp.max(jnp.abs(jac[0] - vjp[0])) / jnp.max(jnp.abs(vjp[0])))
        for method, fn in [("jacobian chain", backprop.jacobian_layer_grads), ("vjp", backprop.vjp_layer_grads)]:
            seconds, memory = measure(fn, layer, args.repeats)
            rows.append(
                {"method": method, "width": n, "time_s": seconds, "memory_bytes": memory, "max_rel_diff": agree}
            )
            print(f"n={n:5d} {method:15s} {seconds * 1e3:9.3f} ms {memory / 2**20:10.3f} MiB  (agree to {agree:.1e})")

    (out / "jacobian_vs_vjp.json").write_text(json.dumps({"device": str(jax.devices()[0]), "rows": rows}, indent=2))
    lines = [
        "| width n=m | Jacobian chain time (ms) | VJP time (ms) | Jacobian memory (MiB) | VJP memory (MiB) |",
        "|---|---|---|---|---|",
    ]
    for n in args.widths:
        j, v = [next(r for r in rows if r["width"] == n and r["method"] == m) for m in ("jacobian chain", "vjp")]
        lines.append(
            f"| {n} | {j['time_s'] * 1e3:.3f} | {v['time_s'] * 1e3:.3f} | {j['memory_bytes'] / 2**20:.3f} | {v['memory_bytes'] / 2**20:.3f} |"
        )
    (out / "jacobian_vs_vjp.md").write_text("\n".join(lines) + "\n")
    plots.plot_scaling(rows, out / "jacobian_vs_vjp.png")
    print(f"wrote {out}/jacobian_vs_vjp.{{json,md,png}}")


if __name__ == "__main__":
    main()
