"""Data-parallel training on 1, 2, 4 and 8 devices: the same parameters, and the time.

    python experiments/data_parallel.py --out runs/data_parallel [--devices 1 2 4 8] [--epochs 5] [--float64]

Each device count runs in its own process (on CPU, ``--xla_force_host_platform_device_count``
splits the host into that many devices; on a machine with accelerators, the visible
ones are used as they are). Each trains the ``funcprop train`` models (mlp, cnn) on
digits with ``train(..., mesh=data_mesh())`` from the same initial parameters and keys,
and with SGD and with AdamW, then the final parameters are compared with the one-device
run's: the largest difference relative to each leaf's largest entry. The time is the
median epoch after the first (compilation). ``--float64`` runs the same in float64
(parameters and data): what is left of the difference then is float64's rounding.
Writes ``data_parallel.json`` and prints a table.

On this project's 2-core CPU machine, forced host devices share the same two cores, so
the time shows the cost of the sharding (the all-reduce, the smaller matmuls), not a
speed-up.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

ARCHS = ("mlp", "cnn")
OPTIMIZERS = ("sgd", "adamw")


def worker(n_devices: int, epochs: int, out: pathlib.Path, float64: bool) -> None:
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", float64)
    wide = (lambda a: np.asarray(a, np.float64)) if float64 else (lambda a: a)  # layers compute in their params' dtype

    from funcprop import data, distributed, train
    from funcprop.cli_setup import optimizer
    from funcprop.nn.models import IMAGE_ARCHS, build

    rows, arrays = [], {}
    for arch in ARCHS:
        ds = data.load("digits", seed=0, image=arch in IMAGE_ARCHS)
        ds = ds._replace(x_train=wide(ds.x_train), x_test=wide(ds.x_test))
        model, title = build(arch, ds.example_shape, ds.num_classes, [256, 256], "relu")
        _, params = model.init(jax.random.key(0), ds.example_shape)
        params = jax.tree.map(wide, params)
        for name in OPTIMIZERS:
            mesh = distributed.data_mesh() if n_devices > 1 else None
            lr = 0.05 if name == "sgd" else 1e-3
            result = train.train(
                model, params, optimizer(name, lr), ds, epochs=epochs, batch_size=64, key=jax.random.key(1),
                progress=False, mesh=mesh,
            )  # fmt: skip
            for i, leaf in enumerate(jax.tree.leaves(result.params)):
                arrays[f"{arch}/{name}/{i}"] = np.asarray(leaf)
            rows.append(
                {
                    "arch": title,
                    "optimizer": name,
                    "devices": jax.device_count(),
                    "epoch_s": statistics.median(r["epoch_time_s"] for r in result.history[1:]),
                    "test_accuracy": result.history[-1]["test_accuracy"],
                }
            )
    np.savez(out / f"params_{n_devices}.npz", **arrays)
    (out / f"rows_{n_devices}.json").write_text(json.dumps(rows))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/data_parallel")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--float64", action="store_true", help="parameters and data in float64")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return worker(args.worker, args.epochs, pathlib.Path(args.scratch), args.float64)

    import numpy as np

    scratch = pathlib.Path(tempfile.mkdtemp())
    for n in args.devices:
        env = dict(os.environ)
        if n > 1:
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
        argv = [sys.executable, __file__, "--worker", str(n), "--scratch", str(scratch), "--epochs", str(args.epochs)]
        argv += ["--float64"] * args.float64
        subprocess.run(argv, env=env, check=True)
    base = np.load(scratch / f"params_{args.devices[0]}.npz")
    rows = []
    for n in args.devices:
        params = np.load(scratch / f"params_{n}.npz")
        for row in json.loads((scratch / f"rows_{n}.json").read_text()):
            keys = [k for k in base.files if k.startswith(f"{row['arch'].split()[0]}/{row['optimizer']}/")]
            row["max_rel_diff"] = max(
                float(np.max(np.abs(params[k] - base[k])) / (np.max(np.abs(base[k])) or 1.0)) for k in keys
            )
            rows.append(row)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_parallel.json").write_text(json.dumps(rows, indent=2))
    print(
        f"| model | optimizer | devices | params vs 1 device (max rel) | test accuracy | epoch (s), {args.epochs} epochs |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["arch"], r["optimizer"], r["devices"])):
        print(
            f"| {r['arch']} | {r['optimizer']} | {r['devices']} | {r['max_rel_diff']:.1e} | "
            f"{100 * r['test_accuracy']:.2f}% | {r['epoch_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
