"""What the per-epoch shuffle costs: sorting keys against the sort-free Feistel shuffle.

    python experiments/shuffle_cost.py --out runs/shuffle

Two tables, medians of repeated calls:

- one shuffle of n examples: ``jax.random.permutation`` (sorts random keys) against
  ``funcprop.shuffle.permutation`` (one elementwise pass and a compaction);
- the notes' net's training epoch (2-4-7-3-2, batch 64, Adam), per step, built as
  ``train.make_epoch`` builds it: shuffled by ``funcprop.shuffle.permutation`` (what
  ``make_epoch`` uses), shuffled by ``jax.random.permutation``, and a scan over
  batches that are not shuffled at all, the floor for the steps.
"""

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import optax

from funcprop import nn, shuffle, timing, train
from funcprop.rules.losses import softmax_cross_entropy


def median_seconds(fn, *args, repeats: int) -> float:
    return timing.median_seconds(lambda: fn(*args), repeats)


def shuffle_times(sizes, repeats):
    rows = []
    for n in sizes:
        by_sort = jax.jit(lambda key, n=n: jax.random.permutation(key, n))
        feistel = jax.jit(lambda key, n=n: shuffle.permutation(key, n))
        key = jax.random.key(0)
        rows.append(
            {
                "n": n,
                "jax.random.permutation_ms": 1e3 * median_seconds(by_sort, key, repeats=repeats),
                "funcprop.shuffle.permutation_ms": 1e3 * median_seconds(feistel, key, repeats=repeats),
            }
        )
    return rows


def seed_epoch_times(batches: int, repeats: int):
    """Microseconds per step of the notes' net's epoch, three ways."""
    model = nn.mlp([2, 4, 7, 3, 2], activation="sigmoid")
    _, params = model.init(jax.random.key(0), (2,))
    batch, n = 64, 64 * batches
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (n, 2), jnp.float32)
    y = jax.random.randint(ky, (n,), 0, 2)
    optimizer = optax.adam(1e-3)
    grad_fn = train.loss_and_grad(model, softmax_cross_entropy, "rules")

    def step(carry, xb, yb):
        p, s = carry
        value, grads = grad_fn(p, xb, yb)
        updates, s = optimizer.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), value

    def epoch_with(order_fn):
        def epoch(p, s, key):
            order = order_fn(key, n).reshape(batches, batch)
            return jax.lax.scan(lambda c, i: step(c, x[i], y[i]), (p, s), order)

        return jax.jit(epoch)

    def unshuffled(p, s, key):
        return jax.lax.scan(
            lambda c, xy: step(c, *xy), (p, s), (x.reshape(batches, batch, 2), y.reshape(batches, batch))
        )

    variants = {
        "funcprop.shuffle.permutation": epoch_with(shuffle.permutation),
        "jax.random.permutation": epoch_with(jax.random.permutation),
        "no shuffle": jax.jit(unshuffled),
    }
    opt_state, key = optimizer.init(params), jax.random.key(2)
    return {
        name: 1e6 * median_seconds(fn, params, opt_state, key, repeats=repeats) / batches
        for name, fn in variants.items()
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/shuffle", help="output folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1437, 4096, 4097, 60000, 65537])
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args(argv)
    shuffles = shuffle_times(args.sizes, args.repeats)
    print("| n | jax.random.permutation (ms) | funcprop.shuffle.permutation (ms) |\n|---|---|---|")
    for r in shuffles:
        print(f"| {r['n']} | {r['jax.random.permutation_ms']:.3f} | {r['funcprop.shuffle.permutation_ms']:.3f} |")
    epochs = {b: seed_epoch_times(b, args.repeats) for b in (64, 1000)}
    print("\n| seed net epoch, batches of 64 | " + " | ".join(epochs[64]) + " |\n|---|---|---|---|")
    for b, row in epochs.items():
        print(f"| {b} batches (µs/step) | " + " | ".join(f"{v:.1f}" for v in row.values()) + " |")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shuffle_cost.json").write_text(
        json.dumps({"shuffles": shuffles, "seed_epoch_us_per_step": epochs}, indent=2)
    )


if __name__ == "__main__":
    main()
