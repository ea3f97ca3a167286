"""XLA settings: a CPU flag applied at import, and the persistent compilation cache.

On XLA:CPU (jaxlib 0.10), a convolution goes to YNNPACK by default. For the kernel
gradient of a 28×28 convolution (a correlation whose window is the whole 28×28 image)
YNNPACK is slow: the CNN's training step at batch 64 took 2.2× longer than with the same
convolutions run by Eigen, XLA's other CPU path (measured in
``experiments/conv_budget.py``). The flag below takes convolutions out of YNNPACK's
fusions; matmuls and elementwise work stay with it.

XLA reads ``XLA_FLAGS`` once, at the first compilation of the process, so this takes
effect only if funcprop is imported before anything is jitted. It is skipped:

- where ``XLA_FLAGS`` already names ``--xla_cpu_experimental_ynn_fusion_type`` (your
  value wins: to keep YNNPACK's default, set ``...ynn_fusion_type=individual_convolution``
  yourself, or ``FUNCPROP_XLA_FLAGS=0``);
- on a jaxlib other than the versions it was checked on: the flag is experimental, and
  XLA aborts the process at an unknown flag.
"""

from __future__ import annotations

import os
import pathlib
from importlib import metadata

FLAG_NAME = "--xla_cpu_experimental_ynn_fusion_type"
CONV_FLAG = f"{FLAG_NAME}=-individual_convolution"
CHECKED_JAXLIB = ("0.10.",)  # version prefixes where the flag exists and was measured


def apply_cpu_flags(environ=os.environ) -> bool:
    """Add :data:`CONV_FLAG` to ``environ["XLA_FLAGS"]`` unless told not to; True if added."""
    flags = environ.get("XLA_FLAGS", "")
    if environ.get("FUNCPROP_XLA_FLAGS", "1") == "0" or FLAG_NAME in flags:
        return False
    try:
        version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return False
    if not version.startswith(CHECKED_JAXLIB):
        return False
    environ["XLA_FLAGS"] = f"{flags} {CONV_FLAG}".strip()
    return True


def conv_flag_in_effect() -> bool:
    """Whether this process's XLA:CPU compiles convolutions without YNNPACK: compiles (but
    does not run) the 28×28 CNN's second kernel gradient and reads the optimized HLO."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    if jax.default_backend() != "cpu":
        return False
    # YNNPACK takes only large convolutions: a small one would say False with the flag off too
    x = jax.ShapeDtypeStruct((32, 28, 28, 64), jnp.float32)  # (c_in, H, W, N), as conv2d's bwd has it
    delta = jax.ShapeDtypeStruct((28, 28, 64, 64), jnp.float32)  # (H_out, W_out, N, c_out)
    conv = jax.jit(
        lambda x, d: lax.conv_general_dilated(
            2 * x, d, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )
    return "__ynn_fusion" not in conv.lower(x, delta).compile().as_text()


def default_cache_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/funcprop/jax`` (``~/.cache/funcprop/jax`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "funcprop" / "jax"


def enable_compilation_cache(path=None) -> pathlib.Path:
    """Keep every compiled program in JAX's persistent cache at ``path``.

    A second run of the same job then loads its programs instead of compiling them:
    the main job compiles about 200 small programs (the rule checks, the epoch), which
    is most of its time on a cold start. Every program is kept, however fast it
    compiled (JAX's default skips those under one second). The CLI turns this on for
    ``report`` and ``train``; ``--no-cache`` leaves it off.
    """
    import jax

    path = pathlib.Path(path) if path is not None else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
