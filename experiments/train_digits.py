"""An MLP on scikit-learn's digits to at least 97%, timed against sklearn's MLPClassifier.

    python experiments/train_digits.py --out runs/digits [--epochs 40] [--gradient backprop]

Writes metrics.{json,csv}, curves.png, checkpoint.npz and digits.json (the summary,
with the time to 97% test accuracy, compilation included, for funcprop and for
scikit-learn on the same split, widths, optimizer and batch size).
"""

import argparse
import json
import pathlib

from funcprop.report import sklearn_time_to_accuracy, train_digits


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/digits")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gradient", choices=("rules", "twins", "backprop"), default="rules")
    args = parser.parse_args(argv)
    summary = train_digits(args.out, epochs=args.epochs, seed=args.seed, gradient=args.gradient)
    summary["sklearn"] = sklearn_time_to_accuracy(seed=args.seed)
    pathlib.Path(args.out, "digits.json").write_text(json.dumps(summary, indent=2))
    sk = summary["sklearn"]

    def secs(x):
        return "not reached" if x is None else f"{x:.2f} s"

    print(
        f"funcprop: test accuracy {100 * summary['test_accuracy']:.2f}%, 97% after {secs(summary['time_to_target_s'])} "
        f"(compilation included); scikit-learn: 97% after {secs(sk['time_to_target_s'])} ({sk['epochs']} epochs)"
    )


if __name__ == "__main__":
    main()
