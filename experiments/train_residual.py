"""Residual networks against their plain counterparts on digits, over several seeds.

    python experiments/train_residual.py --out runs/residual [--seeds 5] [--epochs 20]

Pairs: ``mlp`` 64-256-256-10 against ``resmlp`` (width 256, two pre-norm residual
blocks), and ``cnn`` against ``resnet`` (a two-branch block with LayerNorm, dropout in
the head): the models ``funcprop train --arch ...`` builds, with its defaults (AdamW
1e-3, batch 32). Each is trained from the rules (``jax.grad`` through the custom_vjp
rules) for every seed; for the first seed also from the written-out backprop
(``funcprop.backprop.value_and_grad``), and the two final parameter sets are
compared. Writes ``residual.json`` and prints a table.
"""

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcprop import data, train
from funcprop.nn.models import IMAGE_ARCHS, build

PAIRS = (("mlp", "resmlp"), ("cnn", "resnet"))


def run(arch, seed, epochs, gradient):
    ds = data.load("digits", seed=0, image=arch in IMAGE_ARCHS)
    model, title = build(arch, ds.example_shape, ds.num_classes, [256, 256], "relu")
    _, params = model.init(jax.random.key(seed), ds.example_shape)
    t0 = time.perf_counter()
    result = train.train(
        model,
        params,
        optax.adamw(1e-3, weight_decay=1e-4),
        ds,
        epochs=epochs,
        batch_size=32,
        key=jax.random.key(seed + 1),
        gradient=gradient,
        progress=False,
    )
    wall = time.perf_counter() - t0
    return title, result, wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/residual")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    rows = []
    for pair in PAIRS:
        for arch in pair:
            accs, walls = [], []
            for seed in range(args.seeds):
                title, result, wall = run(arch, seed, args.epochs, "rules")
                accs.append(result.history[-1]["test_accuracy"])
                walls.append(wall)
                if seed == 0:
                    _, written_out, _ = run(arch, seed, args.epochs, "backprop")
                    diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), result.params, written_out.params)
                    max_diff = max(jax.tree.leaves(diffs))
                    backprop_acc = written_out.history[-1]["test_accuracy"]
            rows.append(
                {
                    "arch": arch,
                    "model": title,
                    "seeds": args.seeds,
                    "epochs": args.epochs,
                    "test_accuracy": accs,
                    "mean": float(np.mean(accs)),
                    "std": float(np.std(accs)),
                    "wall_s_median": float(np.median(walls)),
                    "backprop_seed0_accuracy": backprop_acc,
                    "rules_vs_backprop_max_param_diff": max_diff,
                }
            )
            print(
                f"{arch}: mean {100 * rows[-1]['mean']:.2f}% ± {100 * rows[-1]['std']:.2f} over {args.seeds} seeds "
                f"{[round(100 * a, 2) for a in accs]}; backprop seed 0 {100 * backprop_acc:.2f}%, params differ by "
                f"at most {max_diff:.2e}; {rows[-1]['wall_s_median']:.1f} s per run",
                flush=True,
            )
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "residual.json").write_text(json.dumps(rows, indent=2))
    print("\n| model | mean test accuracy | std | seeds | backprop = rules (max param diff) |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {100 * r['mean']:.2f}% | {100 * r['std']:.2f} | {r['seeds']} | "
            f"{r['rules_vs_backprop_max_param_diff']:.1e} |"
        )


if __name__ == "__main__":
    main()
