"""A small CNN on digits to at least 98.5%, beside the MLP of train_digits.py.

    python experiments/train_cnn.py --out runs/cnn [--epochs 20]

Trains both on the same split (AdamW, batch 32) and writes cnn/ and mlp/ report
folders and comparison.json: test accuracy, time to 98.5% and to 97% (compilation
included), median epoch time, parameters.
"""

import argparse
import json
import pathlib

from funcprop.report import train_digits


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/cnn")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--mlp-epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    cnn = train_digits(out / "cnn", arch="cnn", epochs=args.epochs, seed=args.seed, target=0.985)
    mlp = train_digits(out / "mlp", arch="mlp", epochs=args.mlp_epochs, seed=args.seed, target=0.97)
    (out / "comparison.json").write_text(json.dumps({"cnn": cnn, "mlp": mlp}, indent=2))
    for name, s in (("cnn", cnn), ("mlp", mlp)):
        reached = "not reached" if s["time_to_target_s"] is None else f"{s['time_to_target_s']:.2f} s"
        print(
            f"{name}: {s['model']}, {s['parameters']} parameters, test accuracy {100 * s['test_accuracy']:.2f}% "
            f"(best {100 * s['best_test_accuracy']:.2f}%), {100 * s['target']:.1f}% after {reached}, "
            f"{1e3 * s['mean_epoch_s']:.1f} ms/epoch, {s['train_wall_s']:.1f} s in all"
        )


if __name__ == "__main__":
    main()
