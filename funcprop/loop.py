"""The parts of a training run, each usable alone: the state, the loop, the log, the checkpointer.

:func:`funcprop.train.train` is their convenient whole; ``funcprop.train`` re-exports
every name here.
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcprop import checkpoint


class TrainState(NamedTuple):
    """Everything a run needs to go on: a checkpoint holds exactly this."""

    params: Any  # the model's parameter pytree
    opt_state: Any  # the optax state
    key: jax.Array  # typed PRNG key for the next epoch's shuffle
    epoch: jax.Array  # int32 (), epochs completed


def require_typed_key(fn: str, key) -> None:
    if not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ()):
        raise TypeError(f"{fn}: key must be a typed PRNG key from jax.random.key(seed), got {key!r}")


def init_state(params, optimizer: optax.GradientTransformation, key) -> TrainState:
    """A fresh :class:`TrainState` at epoch 0, of copies: the epoch donates its state,
    so the caller's ``params`` and ``key`` stay usable."""
    require_typed_key("init_state", key)
    return jax.tree.map(jnp.copy, TrainState(params, optimizer.init(params), key, jnp.zeros((), jnp.int32)))


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
