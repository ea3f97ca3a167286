"""One clock for the benchmarks and the experiments: wall time of calls, waited for.

JAX dispatches asynchronously, so a call returns before its work is done: each timer
waits on the last result (``jax.block_until_ready``; for PyTorch, ``wait`` reads the
loss) before it stops the clock.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def timer(call: Callable[[], Any], wait: Callable[[Any], Any] = jax.block_until_ready) -> Callable[[int], float]:
    """``runner(steps) -> seconds per call``: ``call()`` run ``steps`` times back to back,
    the clock stopped once the last result is ready."""

    def run(steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            out = call()
        wait(out)
        return (time.perf_counter() - t0) / steps

    return run


def median_seconds(
    call: Callable[[], Any], repeats: int, *, warmup: int = 1, wait: Callable[[Any], Any] = jax.block_until_ready
) -> float:
    """The median wall time of one ``call()`` over ``repeats``, after ``warmup`` calls
    (the first compiles)."""
    run = timer(call, wait)
    for _ in range(warmup):
        run(1)
    return statistics.median(run(1) for _ in range(repeats))
