"""Training-step benchmark: funcprop rules against jax.grad, the written-out backprop
and PyTorch (eager and torch.compile, when installed).

    python experiments/benchmark.py --out runs/bench [--quick] [--rounds 15] [--no-torch]

Writes benchmark.json, benchmark.md (the tables) and benchmark.png. On a machine with
a GPU, the matmul peak is measured in bfloat16.
"""

import sys

from funcprop.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
