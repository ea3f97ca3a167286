"""bfloat16 and float16 training against float32 on digits, over several seeds.

    python experiments/mixed_precision.py --out runs/mixed_precision [--seeds 5] [--epochs 20] [--archs mlp cnn]

The models ``funcprop train --arch ... --dtype ...`` builds, with its defaults (AdamW
1e-3, batch 32): parameters and optimizer state in float32, the computation in the
given dtype (matmuls, convolutions, softmax and the loss accumulating in float32);
float16 behind a dynamic loss scale. The same seeds for every dtype. Reports the mean
and spread of the final test accuracy, the difference to float32, and the steady step
time (the median epoch after the first, over its steps). Writes ``mixed_precision.json``
and prints a markdown table.
"""

import argparse
import json
import pathlib
import statistics

import jax
import jax.numpy as jnp

from funcprop import data, train
from funcprop.cli_setup import optimizer
from funcprop.nn.models import IMAGE_ARCHS, build

DTYPES = ("float32", "bfloat16", "float16")
BATCH = 32


def run(arch: str, dtype: str, seed: int, epochs: int) -> dict:
    ds = data.load("digits", seed=0, image=arch in IMAGE_ARCHS)
    compute = None if dtype == "float32" else jnp.dtype(dtype)
    model, title = build(arch, ds.example_shape, ds.num_classes, [256, 256], "relu", dtype=compute)
    _, params = model.init(jax.random.key(seed), ds.example_shape)
    result = train.train(
        model,
        params,
        optimizer("adamw", 1e-3, dtype),
        ds,
        epochs=epochs,
        batch_size=BATCH,
        key=jax.random.key(seed + 1),
        progress=False,
    )
    steps = len(ds.x_train) // BATCH
    steady = statistics.median(r["epoch_time_s"] for r in result.history[1:]) if epochs > 1 else None
    state = result.opt_state
    return {
        "arch": arch,
        "model": title,
        "dtype": dtype,
        "seed": seed,
        "test_accuracy": result.history[-1]["test_accuracy"],
        "step_ms": None if steady is None else 1e3 * steady / steps,
        "loss_scale": float(state.scale) if hasattr(state, "scale") else None,
        "skipped_steps": int(state.skipped) if hasattr(state, "skipped") else None,
    }


def table(rows: list, archs, seeds: int) -> str:
    lines = [
        f"| model | dtype | test accuracy, mean ± sd over {seeds} seeds | vs float32 | step (ms) | float16 loss scale |",
        "|---|---|---:|---:|---:|---|",
    ]
    for arch in archs:
        by = {d: [r for r in rows if r["arch"] == arch and r["dtype"] == d] for d in DTYPES}
        base = statistics.mean(r["test_accuracy"] for r in by["float32"])
        for d in DTYPES:
            accs = [100 * r["test_accuracy"] for r in by[d]]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            step = statistics.median(r["step_ms"] for r in by[d]) if by[d][0]["step_ms"] is not None else None
            scale = (
                f"final {by[d][0]['loss_scale']:g}, {sum(r['skipped_steps'] for r in by[d])} steps skipped in all"
                if d == "float16"
                else ""
            )
            diff = statistics.mean(accs) - 100 * base
            lines.append(
                f"| {by[d][0]['model']} | {d} | {statistics.mean(accs):.2f} ± {sd:.2f} | "
                f"{diff:+.2f} | {'—' if step is None else f'{step:.2f}'} | {scale} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/mixed_precision")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--archs", nargs="+", default=["mlp", "cnn"])
    args = parser.parse_args(argv)
    rows = []
    for arch in args.archs:
        for seed in range(args.seeds):
            for dtype in DTYPES:
                rows.append(run(arch, dtype, seed, args.epochs))
                print(json.dumps(rows[-1]), flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mixed_precision.json").write_text(json.dumps(rows, indent=2))
    print(table(rows, args.archs, args.seeds), end="")


if __name__ == "__main__":
    main()
