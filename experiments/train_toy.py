"""The notes' 2-4-7-3-2 sigmoid network on two moons: decision boundary and loss curve.

    python experiments/train_toy.py            # writes runs/toy/{boundary,curves}.png

Extra arguments go to ``funcprop train`` (e.g. ``--toy-kind spirals --epochs 600``).
"""

import sys

from funcprop.cli import main

DEFAULTS = [
    "train",
    "--dataset",
    "toy",
    "--arch",
    "seed",
    "--optimizer",
    "adam",
    "--lr",
    "0.03",
    "--epochs",
    "300",
    "--batch-size",
    "32",
    "--out",
    "runs/toy",
]

if __name__ == "__main__":
    sys.exit(main(DEFAULTS + sys.argv[1:]))
