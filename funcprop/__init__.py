"""funcprop: backpropagation as explicit math in JAX.

Every primitive is a ``jax.custom_vjp`` whose backward is the hand-derived formula
(Ωᵀ δ, δ hᵀ, Σ δ, a'(f) ⊙ ḡ, p − y); ``jax.jit`` compiles it for CPU, GPU or TPU.
"""

from funcprop.xla_flags import apply_cpu_flags

apply_cpu_flags()  # before JAX's first compilation; see funcprop/xla_flags.py

from importlib import metadata as _metadata

from funcprop import backprop as backprop  # the submodules, re-exported
from funcprop import check as check
from funcprop import checkpoint as checkpoint
from funcprop import data as data
from funcprop import distributed as distributed
from funcprop import nn as nn
from funcprop import rules  # noqa: E402
from funcprop import train as train
from funcprop import xla_flags as xla_flags
from funcprop.rules import *  # noqa: E402, F403  (every rule: the one export list is rules.__all__)

try:
    __version__ = _metadata.version("funcprop")  # one version: pyproject.toml's
except _metadata.PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"

SUBMODULES = ["backprop", "check", "checkpoint", "data", "distributed", "nn", "rules", "train", "xla_flags"]
__all__ = [*rules.__all__, *SUBMODULES]
