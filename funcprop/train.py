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
(save each epoch, resume refusing other settings). The last four live in
:mod:`funcprop.loop` and are re-exported here.

Many devices: ``train(..., mesh=funcprop.distributed.data_mesh())`` shards each
minibatch over the mesh axis ``"data"`` and replicates the state, in the same one
program (:mod:`funcprop.distributed`). Low precision: build the model with
``dtype=jnp.bfloat16`` (parameters stay float32); for float16, wrap the optimizer in
:func:`dynamic_loss_scale` (:mod:`funcprop.loss_scale`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcprop import backprop, distributed, nn, shuffle
from funcprop.data_checks import check_data  # noqa: F401  (re-exported: train's parts)
from funcprop.loop import (  # noqa: F401  (re-exported: train's parts)
    Checkpointer,
    MetricsLog,
    TrainState,
    init_state,
    require_typed_key,
    run_epochs,
    write_history,
)
from funcprop.loss_scale import LossScaleState, dynamic_loss_scale, loss_scale_of  # noqa: F401  (re-exported)
from funcprop.rules.losses import sigmoid_binary_cross_entropy, softmax_cross_entropy

GRADIENTS = ("rules", "twins", "backprop")


class TrainResult(NamedTuple):
    params: Any
    opt_state: Any
    history: list  # one dict per epoch: epoch, train_loss, test_loss, test_accuracy, ...


def loss_and_grad(model, loss: Callable = softmax_cross_entropy, gradient: str = "rules"):
    """``fn(params, x, y, *, key=None, loss_scale=None) -> (loss, grads)`` from the chosen source.

    ``key`` feeds the layers that need randomness (dropout); an apply function given
    instead of a Layer is called as ``apply(params, x)``, without it. ``loss_scale`` s
    makes grads those of s·L, the loss staying L (float16's loss scaling): the
    pullback is seeded with s instead of 1.

    Args:
      model: a ``Layer``, or an apply function ``apply(params, x)`` (``"rules"`` only).
      loss: a funcprop loss rule, or a loss layer (``nn.LinearCrossEntropy``): then
        params are the pair ``(model_params, loss_params)``, and so are the grads.
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
    if nn.is_loss_layer(loss):  # params are (model_params, loss_params)
        head = loss.node.rule.twin if gradient == "twins" else loss.apply
        body = nn.twin(model) if gradient == "twins" else apply
        return _seeded(lambda params, x, y, key: head(*_head_params(params), body(params[0], x, key=key), y))
    if gradient == "twins":
        apply, loss = nn.twin(model), loss.vjp_rule.twin
    return _seeded(lambda params, x, y, key: loss(apply(params, x, key=key) if is_layer else apply(params, x), y))


def _seeded(objective):
    """``fn(params, x, y, *, key=None, loss_scale=None) -> (L, ∂(s·L)/∂params)`` by
    ``jax.vjp``: the pullback of the scalar L seeded with s (1 without a loss scale)."""

    def fn(params, x, y, *, key=None, loss_scale=None):
        value, pullback = jax.vjp(lambda p: objective(p, x, y, key), params)
        seed = jnp.ones_like(value) if loss_scale is None else jnp.asarray(loss_scale, value.dtype)
        return value, pullback(seed)[0]

    return fn


def _head_params(params) -> tuple:
    """``(loss_params,)`` of a model-and-loss-layer's params, checked."""
    return (nn.split_params("train", params)[1],)


def epoch_keys(key, n_batches: int):
    """``(next epoch's key, the shuffle's key, one key per step)`` from the epoch's key.

    Three independent streams: the step keys (for dropout; unused ones compile away)
    share nothing with the shuffle's. ``split(key, 3)`` begins with ``split(key, 2)``'s
    two keys, so the shuffles are those of a model without dropout.
    """
    key, shuffle_key, dropout_key = jax.random.split(key, 3)
    return key, shuffle_key, jax.random.split(dropout_key, n_batches)


def make_epoch(
    grad_fn, optimizer: optax.GradientTransformation, n_examples: int, batch_size: int, unroll: int = 1, mesh=None
):
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

    With a ``mesh`` (an Auto-axes mesh with an axis ``"data"``, see
    :mod:`funcprop.distributed`), each minibatch's indices and examples are sharded over
    ``"data"`` and the state stays replicated: still one program, each device computing
    its share of every batch, the partitioner summing the gradient across devices.

    With a :func:`~funcprop.loss_scale.dynamic_loss_scale` optimizer, ``grad_fn`` is
    called with ``loss_scale=`` the state's scale, and the optimizer unscales.
    """
    n_batches = n_examples // batch_size
    if mesh is not None:
        mesh = distributed.check_mesh("make_epoch", mesh, batch_size)
    shard = (
        (lambda a: a)
        if mesh is None
        else (lambda a: jax.lax.with_sharding_constraint(a, distributed.batch_sharded(mesh)))
    )
    whole = (
        (lambda t: t) if mesh is None else (lambda t: jax.lax.with_sharding_constraint(t, distributed.replicated(mesh)))
    )

    def step(carry, idx, key, x, y):
        params, opt_state = carry
        idx = shard(idx)
        scale = loss_scale_of(opt_state)
        value, grads = grad_fn(
            params, shard(x[idx]), shard(y[idx]), key=key, **({} if scale is None else {"loss_scale": scale})
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return whole((optax.apply_updates(params, updates), opt_state)), value

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
    if nn.is_loss_layer(loss):
        return None
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
    every funcprop loss (for a loss layer with ignored ids, the mean over chunks of their
    counted rows' means). With a loss layer, ``apply`` is the model's and params the pair. ``accuracy`` is an :func:`accuracy_kind` (None: no accuracy).
    """
    if accuracy not in (None, "class-ids", "argmax", "binary"):
        raise ValueError(f"make_evaluate: accuracy must be None, 'class-ids', 'argmax' or 'binary', got {accuracy!r}")

    with_head = nn.is_loss_layer(loss)

    def chunk(params, x, y):  # (Σ loss, Σ correct) over the chunk's examples
        if with_head:  # params are (model_params, loss_params)
            return loss.apply(params[1], apply(params[0], x), y) * x.shape[0], jnp.float32(0)
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
    mesh=None,
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
      loss: a funcprop loss rule, or a loss layer (``nn.LinearCrossEntropy``), whose
        parameters train too: params are then ``(model_params, loss_params)``.
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
      mesh: a ``jax.sharding.Mesh`` with an axis named ``"data"``
        (:func:`funcprop.distributed.data_mesh`): each minibatch is sharded over it and
        the parameters and optimizer state are replicated (:mod:`funcprop.distributed`);
        ``batch_size`` must be a multiple of its size. The result is the one-device
        run's up to rounding. Across processes (``jax.distributed``), every process
        calls ``train`` with the same arguments; process 0 alone writes the checkpoint
        and the history, and resumes from the checkpoint for all.

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
    require_typed_key("train", key)
    if resume and checkpoint_path is None:
        raise ValueError(
            "train: resume=True needs checkpoint_path, the checkpoint to continue from; pass it, "
            "or leave resume=False to start fresh"
        )
    apply = nn.as_layer("train", 0, model).apply if nn.is_layer(model) else model
    if nn.is_loss_layer(loss):
        nn.split_params("train", params)
    check_data(data, apply, params, loss)
    accuracy = accuracy_kind(loss, data.y_test) if len(data.x_test) else None
    if target_accuracy is not None and accuracy is None:
        raise ValueError(
            "train: target_accuracy needs an accuracy on a test set, and there is none for this loss and "
            "these targets (class ids or probabilities with softmax_cross_entropy, 0/1 targets with "
            "sigmoid_binary_cross_entropy, and a non-empty test set); leave target_accuracy=None"
        )
    if mesh is not None:
        mesh = distributed.check_mesh("train", mesh, batch_size)
    epoch_fn = make_epoch(loss_and_grad(model, loss, gradient), optimizer, n, batch_size, mesh=mesh)
    evaluate = make_evaluate(apply, loss, accuracy=accuracy)

    state, history = init_state(params, optimizer, key), []
    writer = distributed.is_writer()  # process 0: the only one that reads and writes files
    saver = None if checkpoint_path is None else Checkpointer(checkpoint_path, dict(config or {}))
    if resume:  # process 0 reads the checkpoint; the others take its state (the identity in one process)
        state, history = distributed.on_writer(
            lambda: saver.restore(state), "resume from the checkpoint", default=(state, [])
        )
        state = distributed.from_writer(state)
    if mesh is not None:
        state = distributed.replicate(state, mesh)
        data = distributed.replicate(_arrays(data), mesh)
    log = MetricsLog(history, target_accuracy=target_accuracy, progress=progress and writer, total=epochs)
    try:
        for state, row in run_epochs(epoch_fn, evaluate, state, data, epochs):
            log.record(row)
            if saver is not None:
                distributed.on_writer(lambda: saver.save(state, log.rows), "save the checkpoint")  # noqa: B023
    finally:
        log.close()
    if out_dir is not None and writer:
        write_history(log.rows, out_dir)
    return TrainResult(state.params, state.opt_state, log.rows)


class _Arrays(NamedTuple):
    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any


def _arrays(data) -> _Arrays:
    """The four arrays of a dataset, as NumPy arrays."""
    return _Arrays(*(np.asarray(getattr(data, f"{a}_{part}")) for part in ("train", "test") for a in ("x", "y")))
