"""Training with any optax optimizer; an epoch is one compiled loop.

The step (gradient, optax update) runs inside ``lax.scan`` over the shuffled
minibatches of an epoch, so a whole epoch is one call to one compiled function with
the training state donated: Python is not in the per-step path.

The gradient comes from one of three sources, which reach the same parameters:

- ``"rules"`` (default): ``jax.value_and_grad`` through the model, which runs the
  hand-written backward of every rule;
- ``"twins"``: ``jax.value_and_grad`` through the plain twins, JAX's own autodiff;
- ``"backprop"``: :func:`funcprop.backprop.value_and_grad`, the written-out recursion.
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
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
    is_layer = isinstance(model, tuple) and len(model) == 2
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
            lambda c, xs: step(c, *xs, x, y), (state.params, state.opt_state),
            (order.reshape(n_batches, batch_size), step_keys), unroll=unroll,
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


def make_evaluate(apply, loss: Callable = softmax_cross_entropy, *, accuracy: str | None = "class-ids",
                  batch_size: int = EVAL_BATCH):
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
            parts.append(chunk(params, x[full * b:], y[full * b:]))
        total_loss, correct = (sum(t) for t in zip(*parts))
        return total_loss / n, (correct / n if accuracy else None)

    return jax.jit(evaluate)


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

    Args:
      model: a ``Layer`` or an apply function.
      params: the initial parameters (``model.init(...)[1]``).
      optimizer: any ``optax.GradientTransformation``.
      data: a :class:`funcprop.data.Dataset` (x_train, y_train, x_test, y_test).
      epochs: the total number of epochs (a resumed run goes on up to this).
      batch_size: the minibatch size; at most the number of training examples.
      key: a typed PRNG key (``jax.random.key``) for the shuffles and dropout.
      loss: a funcprop loss rule.
      gradient: ``"rules"``, ``"twins"`` or ``"backprop"`` (see the module docstring).
      checkpoint_path: if given, the state is saved there after every epoch,
        atomically and verified (:mod:`funcprop.checkpoint`).
      resume: continue from ``checkpoint_path`` if it exists.
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
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    n = x_train.shape[0]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"train: epochs must be an int >= 0, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ValueError(f"train: batch_size must be an int in [1, {n}] (the training set size), got {batch_size!r}")
    if not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
        raise TypeError(f"train: key must be a typed PRNG key from jax.random.key(seed), got {key!r}")
    apply = model.apply if isinstance(model, nn.Layer) else model
    epoch_fn = make_epoch(loss_and_grad(model, loss, gradient), optimizer, n, batch_size)
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    accuracy = accuracy_kind(loss, y_test)
    if target_accuracy is not None and accuracy is None:
        raise ValueError(
            "train: target_accuracy needs an accuracy, and there is none for this loss and these targets "
            "(class ids or probabilities with softmax_cross_entropy, 0/1 targets with "
            "sigmoid_binary_cross_entropy); leave target_accuracy=None"
        )
    evaluate = make_evaluate(apply, loss, accuracy=accuracy)

    # the epoch donates its state: copy, so the caller's params and key stay usable
    state = jax.tree.map(jnp.copy, TrainState(params, optimizer.init(params), key, jnp.zeros((), jnp.int32)))
    history: list = []
    config = {} if config is None else dict(config)
    if resume and checkpoint_path is None:
        raise ValueError("train: resume=True needs checkpoint_path, the checkpoint to continue from; pass it, "
                         "or leave resume=False to start fresh")
    if resume and pathlib.Path(checkpoint_path).exists():
        state, meta = checkpoint.load(checkpoint_path, like=state)
        history = list(meta.get("history", []))
        saved = meta.get("config", {})
        changed = {k: (saved.get(k), v) for k, v in config.items() if k in saved and saved[k] != v}
        if changed:
            listed = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in changed.items())
            raise ValueError(
                f"train: the checkpoint {checkpoint_path} was written with other settings ({listed}); "
                f"resume with the same settings, or start a new run elsewhere"
            )

    start = time.perf_counter()
    offset = history[-1]["elapsed_s"] if history else 0.0
    reached = next((r["elapsed_s"] for r in history if r.get("reached_target")), None)
    bar = _progress(range(int(state.epoch), epochs), progress)
    for _ in bar:
        t0 = time.perf_counter()
        state, train_loss = epoch_fn(state, x_train, y_train)
        test_loss, test_accuracy = evaluate(state.params, x_test, y_test)
        row = {
            "epoch": int(state.epoch),
            "train_loss": float(train_loss),
            "test_loss": float(test_loss),
            "test_accuracy": None if test_accuracy is None else float(test_accuracy),
            "epoch_time_s": time.perf_counter() - t0,
            "elapsed_s": offset + time.perf_counter() - start,
        }
        if target_accuracy is not None:
            row["reached_target"] = row["test_accuracy"] >= target_accuracy
            if row["reached_target"] and reached is None:
                reached = row["elapsed_s"]
            row["time_to_target_s"] = reached
        history.append(row)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", acc=f"{row['test_accuracy']:.4f}")
        if not all(math.isfinite(row[k]) for k in ("train_loss", "test_loss")):
            raise FloatingPointError(
                f"train: the loss became {row['train_loss']} at epoch {row['epoch']}; "
                f"lower the learning rate or check the data"
            )
        if checkpoint_path is not None:
            checkpoint.save(checkpoint_path, state, metadata={"history": history, "config": config})
    if out_dir is not None:
        write_history(history, out_dir)
    return TrainResult(state.params, state.opt_state, history)


def _progress(epochs, enabled: bool):
    if not enabled:
        return epochs
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a nicety; training goes on without it
        return epochs
    return tqdm(epochs, desc="epochs", unit="epoch", leave=False, disable=None)  # None: off without a terminal


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
