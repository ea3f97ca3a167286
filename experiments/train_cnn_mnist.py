"""The CNN on 28×28 images for 2 epochs: funcprop's wall time beside PyTorch eager's.

    python experiments/train_cnn_mnist.py --out runs/cnn_mnist                 # digits at 28×28
    python experiments/train_cnn_mnist.py --data-path DIR [--limit 8000]       # MNIST IDX files

The network is :func:`funcprop.nn.cnn` (conv32-conv64 3×3 SAME with relu, max-pool 2,
dense 128 relu, dense 10), Adam 1e-3, batch 64, on the same data in the same process.
Without ``--data-path`` the images are scikit-learn's digits resized to 28×28 (1347
train, 450 test): MNIST's shape, not its size. Each side's clock runs from building the
model to the end of its last epoch's test evaluation, compilation included; each
epoch shuffles and evaluates the whole test set. Writes ``comparison.json`` and
prints one line per side.
"""

import argparse
import json
import pathlib
import time

import jax
import numpy as np
import optax

from funcprop import data, nn, train
from funcprop.bench_cases import cnn_case
from funcprop.bench_torch import available, build


def run_funcprop(ds, *, epochs: int, batch: int, seed: int) -> dict:
    start = time.perf_counter()
    model = nn.cnn(ds.num_classes)
    _, params = model.init(jax.random.key(seed), ds.example_shape)
    result = train.train(
        model,
        params,
        optax.adam(1e-3),
        ds,
        epochs=epochs,
        batch_size=batch,
        key=jax.random.key(seed + 1),
        progress=False,
    )
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "test_accuracy": result.history[-1]["test_accuracy"],
        "epoch_s": [r["epoch_time_s"] for r in result.history],
    }


def run_torch(ds, *, epochs: int, batch: int, seed: int) -> dict:
    import torch

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = build(cnn_case(ds.example_shape[0], batch, "cnn"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.from_numpy(np.array(ds.x_train)), torch.from_numpy(ds.y_train.astype(np.int64))
    x_test, y_test = torch.from_numpy(np.array(ds.x_test)), torch.from_numpy(ds.y_test.astype(np.int64))
    rng, n_batches, epoch_s = np.random.default_rng(seed), len(x) // batch, []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        for i in range(n_batches):
            idx = order[i * batch : (i + 1) * batch]
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum(
                int((model(x_test[i : i + 1024]).argmax(-1) == y_test[i : i + 1024]).sum())
                for i in range(0, len(x_test), 1024)
            )
        epoch_s.append(time.perf_counter() - t0)
    return {
        "wall_s": time.perf_counter() - start,
        "test_accuracy": correct / len(x_test),
        "epoch_s": epoch_s,
        "threads": torch.get_num_threads(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/cnn_mnist")
    parser.add_argument("--data-path", default=None, help="a folder with the four MNIST IDX files")
    parser.add_argument("--limit", type=int, default=None, help="the first LIMIT examples of each MNIST split")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args(argv)
    if args.data_path is None:
        ds = data.digits(seed=args.seed, image=True, size=28)
    else:
        ds = data.mnist(args.data_path, image=True, limit=args.limit)
    results = {"data": repr(ds), "epochs": args.epochs, "batch_size": args.batch_size, "jax": jax.__version__}
    sides = [("funcprop", run_funcprop)] + ([] if args.no_torch or not available() else [("pytorch eager", run_torch)])
    for name, run in sides:
        results[name] = run(ds, epochs=args.epochs, batch=args.batch_size, seed=args.seed)
        r = results[name]
        print(
            f"{name:14s} {r['wall_s']:6.2f} s for {args.epochs} epochs, compilation included "
            f"(epochs {', '.join(f'{t:.2f}' for t in r['epoch_s'])} s); test accuracy {100 * r['test_accuracy']:.2f}%"
        )
    if "pytorch eager" in results:
        results["wall_ratio_funcprop_to_torch"] = results["funcprop"]["wall_s"] / results["pytorch eager"]["wall_s"]
        print(f"funcprop ÷ pytorch eager wall time: {results['wall_ratio_funcprop_to_torch']:.2f}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
