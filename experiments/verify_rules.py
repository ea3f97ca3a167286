"""Every rule in bfloat16, float32 and float64 against jax.grad of its twin and finite differences.

    python experiments/verify_rules.py --out runs/verify

Writes verify.md (a markdown table) and verify.json; exits 1 if any rule fails.
"""

import sys

from funcprop.cli import main

if __name__ == "__main__":
    sys.exit(main(["verify", "--out", "runs/verify", *sys.argv[1:]]))
