"""Training with any optax optimizer; an epoch is one compiled loop.

The step (gradient, optax update) runs inside ``lax.scan`` over the shuffled
minibatches of an epoch, so a whole epoch is one call to one compiled function with
the training state donated: Python is not in the per-step path.

The gradient comes from one of three sources, which reach the same parameters:

- ``"rules"`` (default): ``jax.value_and_grad`` through the model, which runs the
  hand-written backward of every rule;
- ``"twins"``: ``jax.value_and_grad`` through the plain twins, JAX's own autodiff;
- ``"backprop"``: :func:`funcprop.backprop.value_and_grad`, the written-out recursion.

:func:`train` is the convenient whole. Its parts work alone, for a loop of one's own:
:func:`check_data` (once, before compiling), :func:`init_state`, :func:`make_epoch` and
:func:`make_evaluate`, :func:`run_epochs` (the loop, a generator of ``(state, row)``),
:class:`MetricsLog` (history, progress bar, time to target) and :class:`Checkpointer`
(save each epoch, resume refusing other settings).
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcprop import backprop, checkpoint, nn, shuffle
from funcprop.rules.losses import sigmoid_binary_cross_entropy, softmax_cross_entropy

GRADIENTS = ("rules", "twins", "backprop")


class TrainState(NamedTuple):
    """Everything a run needs to go on: a checkpoint holds exactly this."""

    params: Any  # the model's parameter pytree
    opt_state: Any  # the optax state
    key: jax.Array  # typed PRNG key for the next epoch's shuffle
    epoch: jax.Array  # int32 (), epochs completed


class TrainResult(NamedTuple):
    params: Any
    opt_state: Any
    history: list  # one dict per epoch: epoch, train_loss, test_loss, test_accuracy, ...


def loss_and_grad(model, loss: Callable = softmax_cross_entropy, gradient: str = "rules"):
    """``fn(params, x, y, *, key=None) -> (loss, grads)`` from the chosen source.

    ``key`` feeds the layers that need randomness (dropout); an apply function given
    instead of a Layer is called as ``apply(params, x)``, without it.

    Args:
      model: a ``Layer``, or an apply function ``apply(params, x)`` (``"rules"`` only).
      loss: a funcprop loss rule.
      gradient: ``"rules"``, ``"twins"`` or ``"backprop"``.
    """
    if gradient not in GRADIENTS:
        raise ValueError(f"loss_and_grad: gradient must be one of {GRADIENTS}, got {gradient!r}")
    is_layer = nn.is_layer(model)
    if is_layer:
        model = nn.as_layer("loss_and_grad", 0, model)  # a stax pair too (it has no structure)
    apply = model.apply if is_layer else model
    if not callable(apply):
        raise TypeError(f"loss_and_grad: model must be a Layer or an apply function, got {type(model).__name__}")
    if gradient != "rules" and not is_layer:
        raise TypeError(
            f"loss_and_grad: gradient={gradient!r} needs a funcprop.nn Layer, got a bare function; "
            f"pass the Layer, or use gradient='rules'"
        )
    if gradient == "backprop":
        return backprop.value_and_grad(model, loss)
    if gradient == "twins":
        apply, loss = nn.twin(model), loss.vjp_rule.twin
    value_and_grad = jax.value_and_grad(
        lambda params, x, y, key: loss(apply(params, x, key=key) if is_layer else apply(params, x), y)
    )
    return lambda params, x, y, *, key=None: value_and_grad(params, x, y, key)


def epoch_keys(key, n_batches: int):
    """``(next epoch's key, the shuffle's key, one key per step)`` from the epoch's key.

    Three independent streams: the step keys (for dropout; unused ones compile away)
    share nothing with the shuffle's. ``split(key, 3)`` begins with ``split(key, 2)``'s
    two keys, so the shuffles are those of a model without dropout.
    """
    key, shuffle_key, dropout_key = jax.random.split(key, 3)
    return key, shuffle_key, jax.random.split(dropout_key, n_batches)


def make_epoch(grad_fn, optimizer: optax.GradientTransformation, n_examples: int, batch_size: int, unroll: int = 1):
    """A jitted ``epoch(state, x, y) -> (state, mean train loss)``, state donated.

    The form was chosen by measurement (``funcprop bench``'s epoch table): one rolled
    ``lax.scan`` runs every model at 0.94–3.0 times the rate of its own jitted step, and
    at or above a Python loop of jitted steps fed host batches (no dispatch and no host
    transfer per step), the CNNs included now that every convolution of the rules is in
    the layout XLA:CPU keeps fast inside a loop body (``funcprop/rules/conv.py``).

    The examples are shuffled with the state's key (:func:`funcprop.shuffle.permutation`:
    no sort from 2048 examples on); ``n_examples // batch_size`` full minibatches are
    taken (the shuffled remainder is left out this epoch), and ``lax.scan`` runs the
    steps (``unroll`` of them per loop iteration).
    """
    n_batches = n_examples // batch_size

    def step(carry, idx, key, x, y):
        params, opt_state = carry
        value, grads = grad_fn(params, x[idx], y[idx], key=key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    def epoch(state: TrainState, x, y):
        key, shuffle_key, step_keys = epoch_keys(state.key, n_batches)
        order = shuffle.permutation(shuffle_key, n_examples)[: n_batches * batch_size]
        (params, opt_state), losses = jax.lax.scan(
            lambda c, xs: step(c, *xs, x, y),
            (state.params, state.opt_state),
            (order.reshape(n_batches, batch_size), step_keys),
            unroll=unroll,
        )
        return TrainState(params, opt_state, key, state.epoch + 1), jnp.mean(losses)

    return jax.jit(epoch, donate_argnums=0)


EVAL_BATCH = 1024  # examples per evaluation chunk: bounds the activations held at once


def accuracy_kind(loss: Callable, y) -> str | None:
    """What "accuracy" means for this loss and these targets, or None where nothing does.

    ``"class-ids"``: cross-entropy on int labels, argmax = label; ``"argmax"``:
    cross-entropy on probability labels, argmax = the labels' argmax; ``"binary"``:
    binary cross-entropy on 0/1 targets, logit > 0 = target. None for ``mse``, for
    soft binary targets and for any other loss.
    """
    y = jnp.asarray(y)
    if loss is softmax_cross_entropy:
        return "class-ids" if jnp.issubdtype(y.dtype, jnp.integer) else "argmax"
    if loss is sigmoid_binary_cross_entropy and bool(jnp.all((y == 0) | (y == 1))):
        return "binary"
    return None


def _n_correct(kind, out, y):
    if kind == "class-ids":
        return jnp.sum(jnp.argmax(out, axis=-1) == y)
    if kind == "argmax":
        return jnp.sum(jnp.argmax(out, axis=-1) == jnp.argmax(y, axis=-1))
    return jnp.sum((out > 0) == (y > 0.5)) / math.prod(out.shape[1:])  # per example


def make_evaluate(
    apply, loss: Callable = softmax_cross_entropy, *, accuracy: str | None = "class-ids", batch_size: int = EVAL_BATCH
):
    """A jitted ``evaluate(params, x, y) -> (mean loss, accuracy or None)``.

    The examples are evaluated in chunks of ``batch_size`` (a ``lax.map`` over the full
    chunks, then the remainder), so memory stays bounded on a large test set; the loss
    is each chunk's mean weighted by its size, which is the mean over all examples for
    every funcprop loss. ``accuracy`` is an :func:`accuracy_kind` (None: no accuracy).
    """
    if accuracy not in (None, "class-ids", "argmax", "binary"):
        raise ValueError(f"make_evaluate: accuracy must be None, 'class-ids', 'argmax' or 'binary', got {accuracy!r}")

    def chunk(params, x, y):  # (Σ loss, Σ correct) over the chunk's examples
        out = apply(params, x)
        correct = _n_correct(accuracy, out, y) if accuracy else 0
        return loss(out, y) * x.shape[0], jnp.asarray(correct, jnp.float32)

    def evaluate(params, x, y):
        n = x.shape[0]
        if n == 0:
            raise ValueError("evaluate: no examples to evaluate (x has 0 rows); pass a non-empty test set")
        full, b = n // batch_size, min(batch_size, n)
        parts = []
        if full:
            xs = x[: full * b].reshape(full, b, *x.shape[1:])
            ys = y[: full * b].reshape(full, b, *y.shape[1:])
            parts.append(jax.tree.map(jnp.sum, jax.lax.map(lambda xy: chunk(params, *xy), (xs, ys))))
        if full * b < n:
            parts.append(chunk(params, x[full * b :], y[full * b :]))
        total_loss, correct = (sum(t) for t in zip(*parts))
        return total_loss / n, (correct / n if accuracy else None)

    return jax.jit(evaluate)


def _typed_key(fn: str, key) -> None:
    if not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ()):
        raise TypeError(f"{fn}: key must be a typed PRNG key from jax.random.key(seed), got {key!r}")


def init_state(params, optimizer: optax.GradientTransformation, key) -> TrainState:
    """A fresh :class:`TrainState` at epoch 0, of copies: the epoch donates its state,
    so the caller's ``params`` and ``key`` stay usable."""
    _typed_key("init_state", key)
    return jax.tree.map(jnp.copy, TrainState(params, optimizer.init(params), key, jnp.zeros((), jnp.int32)))


def _first_bad(fn: str, name: str, bad: np.ndarray, values: np.ndarray, want: str, fix: str) -> None:
    """ValueError naming how many entries of ``name`` are bad, and the first one."""
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{fn}: {name} must hold {want}; {int(bad.sum())} entries do not, the first "
            f"{values[first].item()!r} at index {first}; {fix}"
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


class Checkpointer(NamedTuple):
    """Saves a run's state after each epoch and resumes it, refusing other settings.

    Attributes:
      path: the checkpoint file (written atomically and verified, :mod:`funcprop.checkpoint`).
      config: JSON-serialisable settings stored with it; resuming with different values
        of the same keys raises ValueError.
    """

    path: Any
    config: dict = {}

    def restore(self, state: TrainState) -> tuple[TrainState, list]:
        """``(state, history)`` from the checkpoint; ``(state, [])`` if there is none yet."""
        if not pathlib.Path(self.path).exists():
            return state, []
        try:
            state, meta = checkpoint.load(self.path, like=state)
        except checkpoint.CheckpointError:  # another model: name the settings that differ, if they do
            self._refuse_other_settings(checkpoint.load_flat(self.path)[1])
            raise
        self._refuse_other_settings(meta)
        return state, list(meta.get("history", []))

    def _refuse_other_settings(self, meta: dict) -> None:
        saved = meta.get("config", {})
        changed = {k: (saved.get(k), v) for k, v in self.config.items() if k in saved and saved[k] != v}
        if changed:
            listed = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in changed.items())
            raise ValueError(
                f"train: the checkpoint {self.path} was written with other settings ({listed}); "
                f"resume with the same settings, or start a new run elsewhere"
            )

    def save(self, state: TrainState, history: list) -> None:
        checkpoint.save(self.path, state, metadata={"history": history, "config": dict(self.config)})


def run_epochs(epoch_fn, evaluate, state: TrainState, data, epochs: int):
    """The loop: yield ``(state, row)`` after each epoch, from ``state.epoch`` up to ``epochs``.

    ``epoch_fn`` is :func:`make_epoch`'s, ``evaluate`` :func:`make_evaluate`'s (a test set
    of 0 examples is not evaluated: its loss and accuracy are None). A row holds epoch,
    train_loss, test_loss, test_accuracy and epoch_time_s. A non-finite loss raises
    FloatingPointError naming it, before the state is yielded (or saved).
    """
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    for _ in range(int(state.epoch), epochs):
        t0 = time.perf_counter()
        state, train_loss = epoch_fn(state, x_train, y_train)
        test_loss, test_accuracy = evaluate(state.params, x_test, y_test) if len(x_test) else (None, None)
        row = {
            "epoch": int(state.epoch),
            "train_loss": float(train_loss),
            "test_loss": None if test_loss is None else float(test_loss),
            "test_accuracy": None if test_accuracy is None else float(test_accuracy),
            "epoch_time_s": time.perf_counter() - t0,
        }
        for name in ("train_loss", "test_loss"):
            if row[name] is not None and not math.isfinite(row[name]):
                raise FloatingPointError(
                    f"train: the {name.replace('_', ' ')} became {row[name]} at epoch {row['epoch']}; "
                    f"lower the learning rate or check the data"
                )
        yield state, row


class MetricsLog:
    """The history of a run, one row per epoch, with a progress bar and time to target.

    ``record(row)`` adds ``elapsed_s`` (wall time since the log began, plus ``offset``
    for a resumed run) and, with ``target_accuracy``, ``reached_target`` and
    ``time_to_target_s`` (the elapsed time at which the target was first reached).
    """

    def __init__(
        self, rows=(), *, target_accuracy: float | None = None, progress: bool = True, total: int | None = None
    ):
        self.rows = list(rows)
        self.target_accuracy = target_accuracy
        self.offset = self.rows[-1]["elapsed_s"] if self.rows else 0.0
        self.reached = next((r["elapsed_s"] for r in self.rows if r.get("reached_target")), None)
        self.start = time.perf_counter()
        self.bar = _progress(len(self.rows), total, progress)

    def record(self, row: dict) -> dict:
        row = dict(row, elapsed_s=self.offset + time.perf_counter() - self.start)
        if self.target_accuracy is not None:
            row["reached_target"] = row["test_accuracy"] >= self.target_accuracy
            if row["reached_target"] and self.reached is None:
                self.reached = row["elapsed_s"]
            row["time_to_target_s"] = self.reached
        self.rows.append(row)
        if self.bar is not None:
            shown = {
                k: f"{row[v]:.4f}" for k, v in (("loss", "train_loss"), ("acc", "test_accuracy")) if row[v] is not None
            }
            self.bar.set_postfix(**shown)
            self.bar.update()
        return row

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(
    model,
    params,
    optimizer: optax.GradientTransformation,
    data,
    *,
    epochs: int,
    batch_size: int = 64,
    key,
    loss: Callable = softmax_cross_entropy,
    gradient: str = "rules",
    checkpoint_path=None,
    resume: bool = False,
    out_dir=None,
    progress: bool = True,
    target_accuracy: float | None = None,
    config: dict | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` with ``optimizer``; deterministic for a given key.

    The convenient whole of the parts, each of which can be used alone:
    :func:`check_data`, :func:`init_state`, :func:`make_epoch` and :func:`make_evaluate`,
    :class:`Checkpointer`, :func:`run_epochs` and :class:`MetricsLog`.

    Args:
      model: a ``Layer`` or an apply function.
      params: the initial parameters (``model.init(...)[1]``).
      optimizer: any ``optax.GradientTransformation``.
      data: a :class:`funcprop.data.Dataset` (x_train, y_train, x_test, y_test); checked
        once before training (:func:`check_data`). A test set may be empty.
      epochs: the total number of epochs (a resumed run goes on up to this).
      batch_size: the minibatch size; at most the number of training examples.
      key: a typed PRNG key (``jax.random.key``) for the shuffles and dropout.
      loss: a funcprop loss rule.
      gradient: ``"rules"``, ``"twins"`` or ``"backprop"`` (see the module docstring).
      checkpoint_path: if given, the state is saved there after every epoch,
        atomically and verified (:mod:`funcprop.checkpoint`).
      resume: continue from ``checkpoint_path`` if it exists (needs checkpoint_path).
      out_dir: if given, the history is written there as ``metrics.json`` and
        ``metrics.csv``.
      progress: show a progress bar over epochs (tqdm).
      target_accuracy: if given, record in each epoch's row whether it was reached,
        and the wall time at which it first was (``time_to_target_s``).
      config: JSON-serialisable settings stored in the checkpoint; resuming with
        different values of the same keys raises ValueError.

    ``params`` and ``key`` are copied, not consumed: the caller can train again from them.

    Returns:
      TrainResult(params, opt_state, history). Each history row holds epoch,
      train_loss, test_loss, test_accuracy, epoch_time_s and elapsed_s (wall time since
      the call began, compilation included).
    """
    n = len(data.x_train)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"train: epochs must be an int >= 0, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= max(n, 1):
        raise ValueError(f"train: batch_size must be an int in [1, {n}] (the training set size), got {batch_size!r}")
    _typed_key("train", key)
    if resume and checkpoint_path is None:
        raise ValueError(
            "train: resume=True needs checkpoint_path, the checkpoint to continue from; pass it, "
            "or leave resume=False to start fresh"
        )
    apply = nn.as_layer("train", 0, model).apply if nn.is_layer(model) else model
    check_data(data, apply, params, loss)
    accuracy = accuracy_kind(loss, data.y_test) if len(data.x_test) else None
    if target_accuracy is not None and accuracy is None:
        raise ValueError(
            "train: target_accuracy needs an accuracy on a test set, and there is none for this loss and "
            "these targets (class ids or probabilities with softmax_cross_entropy, 0/1 targets with "
            "sigmoid_binary_cross_entropy, and a non-empty test set); leave target_accuracy=None"
        )
    epoch_fn = make_epoch(loss_and_grad(model, loss, gradient), optimizer, n, batch_size)
    evaluate = make_evaluate(apply, loss, accuracy=accuracy)

    state, history = init_state(params, optimizer, key), []
    saver = None if checkpoint_path is None else Checkpointer(checkpoint_path, dict(config or {}))
    if resume:
        state, history = saver.restore(state)
    log = MetricsLog(history, target_accuracy=target_accuracy, progress=progress, total=epochs)
    try:
        for state, row in run_epochs(epoch_fn, evaluate, state, data, epochs):
            log.record(row)
            if saver is not None:
                saver.save(state, log.rows)
    finally:
        log.close()
    if out_dir is not None:
        write_history(log.rows, out_dir)
    return TrainResult(state.params, state.opt_state, log.rows)


def _progress(done: int, total: int | None, enabled: bool):
    """A tqdm bar over the epochs, or None: off, without tqdm, or without a terminal."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a nicety; training goes on without it
        return None
    return tqdm(initial=done, total=total, desc="epochs", unit="epoch", leave=False, disable=None)


def write_history(history: list, out_dir) -> tuple[pathlib.Path, pathlib.Path]:
    """Write the metrics history as ``metrics.json`` and ``metrics.csv`` in out_dir."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / "metrics.json", out / "metrics.csv"
    json_path.write_text(json.dumps(history, indent=2))
    fields = list(dict.fromkeys(k for row in history for k in row))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
    return json_path, csv_path
