"""The PyTorch side of :mod:`funcprop.bench`: the same networks and Adam step, eager
and under ``torch.compile``. Imported only when PyTorch is installed."""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

# OpenMP threads that spin after each op would steal the cores from the JAX variant
# timed next; let them sleep instead (read when torch is first imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def build(case):
    """``torch.nn.Sequential`` of the case's layers (NHWC input for the CNN)."""
    import torch  # noqa: F401
    from torch import nn

    class ToNCHW(nn.Module):
        def forward(self, x):
            return x.permute(0, 3, 1, 2)

    acts = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
    layers = [ToNCHW()] if len(case.input_shape) == 3 else []
    for spec in case.torch_layers:
        kind = spec[0]
        if kind == "dense":
            layers.append(nn.Linear(spec[1], spec[2]))
        elif kind == "act":
            layers.append(acts[spec[1]]())
        elif kind == "conv":
            layers.append(nn.Conv2d(spec[1], spec[2], 3, padding="same"))
        elif kind == "pool":
            layers.append(nn.MaxPool2d(spec[1]))
        elif kind == "flatten":
            layers.append(nn.Flatten())
    torch.manual_seed(0)
    return nn.Sequential(*layers)


def _step_fn(model, optimizer):
    import torch  # noqa: F401

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    return step


def _best_threads(step, xt, yt) -> int:
    """1 thread or all cores, whichever runs this step faster: small networks lose more
    to thread hand-offs (and to contention with XLA's threads) than they gain."""
    import torch  # noqa: F401

    timings = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        step(xt, yt)
        t0 = time.perf_counter()
        for _ in range(10):
            loss = step(xt, yt)
        float(loss.detach())
        timings[threads] = time.perf_counter() - t0
    return min(timings, key=timings.get)


def runners(case, x: np.ndarray, y: np.ndarray, log=print) -> dict:
    """``{"torch": run, "torch.compile": run}``; ``run(steps)`` returns seconds per step.

    Each runner uses the thread count (1 or all cores) that is faster for the case.
    """
    import torch  # noqa: F401

    xt = torch.from_numpy(np.array(x, np.float32))
    yt = torch.from_numpy(np.asarray(y, np.int64))
    out = {}
    for label in ("torch", "torch.compile"):
        model = build(case)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        step = _step_fn(model, optimizer)
        if label == "torch.compile":
            try:
                # Dynamo caches per code object, and every case's step shares one: without a
                # reset the cases' recompiles pile up until it gives up and runs eager
                torch.compiler.reset()
                step = torch.compile(step)
                step(xt, yt)  # compile now, so a failure shows here
            except Exception as err:  # noqa: BLE001 - any backend failure means "not available"
                log(f"  torch.compile unavailable for {case.name}: {type(err).__name__}: {str(err)[:120]}")
                continue

        threads = _best_threads(step, xt, yt)

        def run(steps, step=step, threads=threads):
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = step(xt, yt)
            float(loss.detach())
            return (time.perf_counter() - t0) / steps

        run.threads = threads
        out[label] = run
    return out


def epoch_steps_per_s(case, xb: np.ndarray, yb: np.ndarray, repeats: int) -> float:
    """Steps per second of an eager PyTorch epoch over the batches xb: (steps, B, ...)."""
    import torch  # noqa: F401

    xb, yb = np.array(xb, np.float32), np.array(yb, np.int64)  # writable copies: from_numpy shares memory
    model = build(case)
    step = _step_fn(model, torch.optim.Adam(model.parameters(), lr=1e-3))
    torch.set_num_threads(_best_threads(step, torch.from_numpy(xb[0]), torch.from_numpy(yb[0])))
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        for i in range(xb.shape[0]):
            loss = step(torch.from_numpy(xb[i]), torch.from_numpy(yb[i]))
        float(loss.detach())
        if r:
            times.append(time.perf_counter() - t0)
    return xb.shape[0] / statistics.median(times)
