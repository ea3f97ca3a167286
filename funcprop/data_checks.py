"""The dataset's checks before training: one pass over the host arrays, before any
compilation, that names the first bad entry (:func:`check_data`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from funcprop import nn
from funcprop.rules.losses import sigmoid_binary_cross_entropy, softmax_cross_entropy


def _first_bad(fn: str, name: str, bad: np.ndarray, values: np.ndarray, want: str, fix: str) -> None:
    """ValueError naming how many entries of ``name`` are bad, and the first one."""
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{fn}: {name} must hold {want}; {int(bad.sum())} entries do not, the first "
            f"{values[first].item()!r} at index {first}; {fix}"
        )


def _check_head_targets(fn: str, part: str, y: np.ndarray, head) -> None:
    """A loss layer's targets: class ids in [0, num_classes), or its ignore_index."""
    if head.num_classes is None:
        return
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{fn}: y_{part} must be integer class ids for this loss layer, got dtype {y.dtype}")
    bad = ((y < 0) | (y >= head.num_classes)) & (y != head.ignore_index)
    _first_bad(
        fn,
        f"y_{part}",
        bad,
        y,
        f"class ids in [0, {head.num_classes}) or the ignored id {head.ignore_index}",
        "fix the labels, or give the loss layer as many classes as there are",
    )


def check_data(data, apply, params, loss: Callable = softmax_cross_entropy, fn: str = "train") -> None:
    """Check a dataset once, before any compilation: raise ValueError naming what is wrong.

    Inputs and targets agree in number, the training set is not empty, the inputs are
    finite, and the targets fit the loss and the model's output (``apply(params, x)``,
    traced abstractly): class ids in ``[0, C)`` and probabilities >= 0 for
    ``softmax_cross_entropy``, targets in ``[0, 1]`` for ``sigmoid_binary_cross_entropy``,
    finite targets for any other loss. A label of 7 with two classes, or -1, would
    otherwise train without a word (the forward drops it; the loss looks fine).
    """
    for part in ("train", "test"):
        x, y = np.asarray(getattr(data, f"x_{part}")), np.asarray(getattr(data, f"y_{part}"))
        if x.shape[:1] != y.shape[:1]:
            raise ValueError(
                f"{fn}: x_{part} has {x.shape[:1]} examples but y_{part} has {y.shape[:1]}; give one target per example"
            )
        if part == "train" and x.shape[0] == 0:
            raise ValueError(f"{fn}: the training set is empty (x_train has shape {x.shape}); pass examples")
        if np.issubdtype(x.dtype, np.inexact):
            _first_bad(
                fn,
                f"x_{part}",
                ~np.isfinite(x),
                x,
                "finite values",
                "drop or impute those examples (a NaN input makes every gradient NaN)",
            )
        if x.shape[0] == 0:
            continue
        if nn.is_loss_layer(loss):
            _check_head_targets(fn, part, y, loss.node.rule)
            continue
        out = jax.eval_shape(apply, params, jnp.asarray(x[:1]))
        if loss is softmax_cross_entropy and np.issubdtype(y.dtype, np.integer):
            classes = out.shape[-1]
            _first_bad(
                fn,
                f"y_{part}",
                (y < 0) | (y >= classes),
                y,
                f"class ids in [0, {classes})",
                f"the model has {classes} outputs: give it as many as there are classes, or fix the labels",
            )
        elif np.issubdtype(y.dtype, np.floating):
            low, high = {softmax_cross_entropy: (0.0, np.inf), sigmoid_binary_cross_entropy: (0.0, 1.0)}.get(
                loss, (-np.inf, np.inf)
            )
            want = "finite values" + (f" in [{low:g}, {high:g}]" if loss is not None and low == 0 else "")
            _first_bad(fn, f"y_{part}", ~np.isfinite(y) | (y < low) | (y > high), y, want, "fix those targets")
