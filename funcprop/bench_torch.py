"""The PyTorch side of :mod:`funcprop.bench`: the same networks and Adam step, eager
and under ``torch.compile``. Imported only when PyTorch is installed."""

from __future__ import annotations

import os

import numpy as np

from funcprop.timing import median_seconds, timer

# OpenMP threads that spin after each op would steal the cores from the JAX variant
# timed next; let them sleep instead (read when torch is first imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _read_loss(loss) -> float:
    """Wait for a PyTorch step: reading its loss synchronizes."""
    return float(loss.detach())


def available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def build(case, *, train: bool = True):
    """A ``torch.nn.Module`` of the case's layer specs (NHWC input for the CNNs).

    ``train=False`` puts it in eval mode (no dropout), as funcprop's step runs with
    ``key=None``; the epoch, which passes keys, compares with train mode.
    """
    import torch
    from torch import nn

    class ToNCHW(nn.Module):
        def forward(self, x):
            return x.permute(0, 3, 1, 2)

    class ChannelNorm(nn.Module):  # LayerNorm over the channels of NCHW, as funcprop's over NHWC's last axis
        def __init__(self, d):
            super().__init__()
            self.norm = nn.LayerNorm(d)

        def forward(self, x):
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class Residual(nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

        def forward(self, x):
            return x + self.block(x)

    class Sum(nn.Module):
        def __init__(self, branches):
            super().__init__()
            self.branches = nn.ModuleList(branches)

        def forward(self, x):
            return sum(branch(x) for branch in self.branches)

    class Block(nn.Module):  # pre-norm: x + attn(LN(x)), then x + mlp(LN(x)), as nn.gpt's
        def __init__(self, d, heads, mlp_ratio):
            super().__init__()
            self.heads = heads  # modules in the order of nn.gpt's parameter leaves
            self.norm1 = nn.LayerNorm(d)
            self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
            self.norm2 = nn.LayerNorm(d)
            self.mlp = nn.Sequential(
                nn.Linear(d, mlp_ratio * d), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * d, d)
            )

        def forward(self, x):
            b, t, d = x.shape
            h = self.norm1(x)
            q, k, v = (f(h).view(b, t, self.heads, d // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
            return x + self.mlp(self.norm2(x))

    class GPT(nn.Module):  # ids (B, T) to logits (B, T, V): learned positions, an untied head
        def __init__(self, vocab, context, d, heads, layers, mlp_ratio):
            super().__init__()
            self.tokens, self.positions = nn.Embedding(vocab, d), nn.Embedding(context, d)
            self.blocks = nn.Sequential(*(Block(d, heads, mlp_ratio) for _ in range(layers)))
            self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

        def forward(self, ids):
            x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))
            return self.head(self.norm(self.blocks(x)))

    acts = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
    images = len(case.input_shape) == 3

    def seq(specs, spatial):
        layers = []
        for spec in specs:
            kind = spec[0]
            if kind == "dense":
                layers.append(nn.Linear(spec[1], spec[2]))
            elif kind == "act":
                layers.append(acts[spec[1]]())
            elif kind == "conv":
                layers.append(nn.Conv2d(spec[1], spec[2], spec[3], padding="same"))
            elif kind == "pool":
                layers.append(nn.MaxPool2d(spec[1]))
            elif kind == "flatten":
                layers.append(nn.Flatten())  # NCHW order: the weights are random, the cost the same
                spatial = False
            elif kind == "layernorm":
                layers.append(ChannelNorm(spec[1]) if spatial else nn.LayerNorm(spec[1]))
            elif kind == "dropout":
                layers.append(nn.Dropout(spec[1]))
            elif kind == "residual":
                layers.append(Residual(seq(spec[1], spatial)))
            elif kind == "sum":
                layers.append(Sum([seq(branch, spatial) for branch in spec[1]]))
            elif kind == "gpt":
                layers.append(GPT(*spec[1:]))
        return nn.Sequential(*layers)

    torch.manual_seed(0)
    model = nn.Sequential(*([ToNCHW()] if images else []), seq(case.torch_layers, images))
    return model.train(train)


def _input_dtype(case):
    return np.int64 if case.tokens else np.float32  # token ids, or features


def _step_fn(model, optimizer):
    import torch  # noqa: F401

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        # (B, C) logits, or (B, T, V) for an LM: the mean over every position
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, -2), y.flatten())
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
        timings[threads] = timer(lambda: step(xt, yt), _read_loss)(10)
    return min(timings, key=timings.get)


def runners(case, x: np.ndarray, y: np.ndarray, log=print) -> dict:
    """``{"torch": run, "torch.compile": run}``; ``run(steps)`` returns seconds per step.

    Each runner uses the thread count (1 or all cores) that is faster for the case.
    """
    import torch  # noqa: F401

    xt = torch.from_numpy(np.array(x, _input_dtype(case)))
    yt = torch.from_numpy(np.asarray(y, np.int64))
    out = {}
    for label in ("torch", "torch.compile"):
        model = build(case, train=False)
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
            return timer(lambda: step(xt, yt), _read_loss)(steps)

        run.threads = threads
        out[label] = run
    return out


def epoch_steps_per_s(case, xb: np.ndarray, yb: np.ndarray, repeats: int) -> float:
    """Steps per second of an eager PyTorch epoch over the batches xb: (steps, B, ...)."""
    import torch  # noqa: F401

    xb, yb = np.array(xb, _input_dtype(case)), np.array(yb, np.int64)  # writable copies: from_numpy shares memory
    model = build(case)
    step = _step_fn(model, torch.optim.Adam(model.parameters(), lr=1e-3))
    torch.set_num_threads(_best_threads(step, torch.from_numpy(xb[0]), torch.from_numpy(yb[0])))

    def epoch():
        for i in range(xb.shape[0]):
            loss = step(torch.from_numpy(xb[i]), torch.from_numpy(yb[i]))
        return loss

    return xb.shape[0] / median_seconds(epoch, repeats, wait=_read_loss)
