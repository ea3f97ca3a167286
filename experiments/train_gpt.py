"""A byte-level GPT on this Python's standard library, from the rules and from the twins.

    python experiments/train_gpt.py --out runs/gpt [--epochs 5] [--max-bytes 400000]

The model ``funcprop train --dataset text --arch gpt`` builds (``nn.gpt`` with the
``nn.LinearCrossEntropy`` head), trained with AdamW on windows of ``--context`` bytes
(:func:`funcprop.lm.run_lm`): once through the rules (the hand-written custom_vjp
backward of every layer), once through ``jax.grad`` of the plain twins, from the same
keys and data. Prints the validation bits per byte of both beside the unigram baseline,
with their wall times (compilation included), and writes ``lm.json``, ``lm.md``,
``sample.txt``, ``curves.png`` and the metrics into ``--out``. The defaults take about
three minutes on two CPU cores. Bits per byte of the standard library compare within
one run, not across Python builds.
"""

import argparse
import time

import optax

from funcprop import lm


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gpt", help="output folder (default: runs/gpt)")
    parser.add_argument("--text-path", nargs="+", default=None, help="text files or folders (default: the stdlib)")
    parser.add_argument("--max-bytes", type=int, default=400_000, help="bytes to train on (default: 400000)")
    parser.add_argument("--context", type=int, default=64, help="bytes per window (default: 64)")
    parser.add_argument("--d-model", type=int, default=64, help="(default: 64)")
    parser.add_argument("--heads", type=int, default=4, help="(default: 4)")
    parser.add_argument("--layers", type=int, default=2, help="(default: 2)")
    parser.add_argument("--epochs", type=int, default=5, help="(default: 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default: 0.003)")
    parser.add_argument("--seed", type=int, default=0, help="(default: 0)")
    parser.add_argument("--sample-bytes", type=int, default=200, help="(default: 200)")
    parser.add_argument("--temperature", type=float, default=0.8, help="(default: 0.8)")
    parser.add_argument("--no-twin-run", action="store_true", help="train from the rules only")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    setup = lm.setup(
        text_path=args.text_path,
        max_bytes=args.max_bytes,
        context=args.context,
        d_model=args.d_model,
        heads=args.heads,
        layers=args.layers,
    )
    print(setup.text.source)
    summary = lm.run_lm(
        setup,
        optax.adamw(args.lr, weight_decay=1e-4),
        args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        twin_run=not args.no_twin_run,
        sample_bytes=args.sample_bytes,
        temperature=args.temperature,
        checkpoint=False,  # a fresh run each time: the folder's files are overwritten
        progress=False,
        say=print,
    )
    print(f"\n{setup.title}, {summary['parameters']:,} parameters, {args.epochs} epochs\n")
    print(lm.summary_table(summary))
    if summary["twins_relative_difference"] is not None:
        print(
            f"twins vs rules, validation bits per byte: relative difference {summary['twins_relative_difference']:.2e}"
        )
    print(f"\n{summary['sample']['prompt']}|{summary['sample']['generated']}\n")
    print(f"{time.perf_counter() - t0:.0f} s in all; wrote {args.out}/lm.json, lm.md, sample.txt, curves.png")
    return summary


if __name__ == "__main__":
    main()
