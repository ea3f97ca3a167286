"""What ``funcprop train`` sets up around the training itself: the optimizer by name,
the computation dtype, the devices and processes (``--data-parallel``, ``--coordinator``),
the notices only process 0 prints, and out-of-memory errors of one line."""

from __future__ import annotations

import contextlib
import re
import sys

from funcprop.cli_args import UsageError


def optimizer(name: str, lr: float, dtype: str = "float32"):
    """The optax optimizer by name; for float16, behind a dynamic loss scale."""
    import optax

    chosen = {
        "adam": lambda: optax.adam(lr),
        "adamw": lambda: optax.adamw(lr, weight_decay=1e-4),
        "sgd": lambda: optax.sgd(lr),
        "momentum": lambda: optax.sgd(lr, momentum=0.9, nesterov=True),
        "rmsprop": lambda: optax.rmsprop(lr),
    }[name]()
    if dtype != "float16":
        return chosen
    from funcprop.loss_scale import dynamic_loss_scale

    return dynamic_loss_scale(chosen)


def say(message: str) -> None:
    """A notice on stderr, from process 0 only (the others would repeat it)."""
    from funcprop.distributed import is_writer

    if is_writer():
        print(f"funcprop train: {message}", file=sys.stderr)


def mesh(args):
    """The mesh that --data-parallel or --coordinator asks for, or None for one device.

    With --coordinator this process first joins the others (``jax.distributed``), so it
    must run before anything starts JAX's backend."""
    if not (args.data_parallel or args.coordinator):
        return None
    from funcprop import distributed

    if args.coordinator:
        try:
            distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        except RuntimeError as err:  # jax's errors of the connection are RuntimeErrors
            raise OSError(
                f"process {args.process_id} could not join {args.num_processes} processes at {args.coordinator}: "
                f"{err}; start every process with the same --coordinator and --num-processes"
            ) from err
    devices = distributed.data_mesh()
    n = devices.size
    if args.batch_size % n:  # --batch-size is the global batch, shared by every device of every process
        raise UsageError(
            f"--batch-size {args.batch_size} must be a multiple of the {n} devices that share each batch; "
            f"use e.g. --batch-size {n * max(1, args.batch_size // n)}"
        )
    return devices


def on_writer(args, work, what: str, default=None):
    """``work()`` (a check or a write of OUT) on process 0 alone, its failure shared with
    the others (:func:`funcprop.distributed.on_writer`); simply ``work()`` without
    --coordinator."""
    if args.coordinator is None:
        return work()
    from funcprop import distributed

    return distributed.on_writer(work, what, default)


def dtype(args):
    """--dtype as the layers' computation dtype (None for float32, the parameters' own)."""
    import jax.numpy as jnp

    return None if args.dtype == "float32" else jnp.dtype(args.dtype)


def local(tree):
    """The arrays of a tree on this host: replicated global arrays of many processes become NumPy
    arrays, which one process alone can compute with (to plot, to sample)."""
    import jax
    import numpy as np

    return jax.tree.map(np.asarray, tree)


@contextlib.contextmanager
def memory_errors_named(fix: str):
    """Out of memory in XLA becomes a MemoryError of one line, naming the device and ``fix``."""
    import jax

    try:
        yield
    except jax.errors.JaxRuntimeError as err:  # GPU: RESOURCE_EXHAUSTED; CPU: INTERNAL: ... Out of memory
        said = re.search(r"out of memory[^\n]*", str(err), flags=re.I)
        if not said and "RESOURCE_EXHAUSTED" not in str(err):
            raise
        device = jax.devices()[0]
        name = device if device.device_kind == device.platform else f"{device} ({device.device_kind})"
        detail = (said.group() if said else str(err).splitlines()[0]).rstrip(".")
        raise MemoryError(
            f"out of memory: the model and batch do not fit in the memory of {name} ({detail}); {fix}"
        ) from err
