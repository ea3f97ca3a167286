"""The main job: verify every rule, train on digits, write a report folder.

``funcprop report --out DIR`` (and ``experiments/train_digits.py``) call
:func:`main_job`; the folder gets ``summary.md``, ``verify.{json,md}``,
``metrics.{json,csv}``, ``curves.png`` and ``checkpoint.npz``.
"""

from __future__ import annotations

import json
import pathlib
import platform
import time

import jax
import numpy as np
import optax

from funcprop import data, nn, plots, train
from funcprop.rules.table import RULES
from funcprop.verify import verification_markdown, verify_rules

DIGITS_SIZES = (64, 256, 256, 10)
TARGET = 0.97


def _digits_model(arch: str):
    if arch == "cnn":
        return nn.cnn(), "cnn conv32-conv64-pool-128 relu", True
    if arch == "mlp":
        return nn.mlp(list(DIGITS_SIZES), activation="relu"), f"mlp {'-'.join(map(str, DIGITS_SIZES))} relu", False
    raise ValueError(f"train_digits: arch must be 'mlp' or 'cnn', got {arch!r}")


def train_digits(
    out_dir,
    *,
    arch: str = "mlp",
    epochs: int = 40,
    seed: int = 0,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    gradient: str = "rules",
    target: float = TARGET,
    progress: bool = True,
) -> dict:
    """Train on digits with AdamW; write metrics, curves and a checkpoint into out_dir.

    ``arch="mlp"``: 64-256-256-10 relu on flat images; ``arch="cnn"``: :func:`nn.cnn`
    on 8×8×1 images. Returns a summary: final test accuracy, time to ``target``
    (compilation included), wall time, paths.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, description, image = _digits_model(arch)
    ds = data.digits(seed=seed, image=image)
    _, params = model.init(jax.random.key(seed), ds.example_shape)
    optimizer = optax.adamw(learning_rate, weight_decay=1e-4)
    ckpt = out / "checkpoint.npz"  # the full TrainState, resumable with train(..., resume=True)
    result = train.train(
        model,
        params,
        optimizer,
        ds,
        epochs=epochs,
        batch_size=batch_size,
        key=jax.random.key(seed + 1),
        gradient=gradient,
        out_dir=out,
        progress=progress,
        target_accuracy=target,
        checkpoint_path=ckpt,
        config={"model": description, "seed": seed, "batch_size": batch_size, "learning_rate": learning_rate},
    )
    plots.plot_history(result.history, out / "curves.png", title=f"digits, {description}")
    last = result.history[-1]
    return {
        "dataset": ds.name,
        "train_examples": int(ds.x_train.shape[0]),
        "test_examples": int(ds.x_test.shape[0]),
        "model": description,
        "parameters": int(sum(p.size for p in jax.tree.leaves(result.params))),
        "optimizer": f"adamw lr={learning_rate} wd=1e-4, batch {batch_size}",
        "gradient": gradient,
        "epochs": epochs,
        "test_accuracy": last["test_accuracy"],
        "best_test_accuracy": max(r["test_accuracy"] for r in result.history),
        "target": target,
        "time_to_target_s": last.get("time_to_target_s"),
        "mean_epoch_s": float(np.median([r["epoch_time_s"] for r in result.history[1:]] or [last["epoch_time_s"]])),
        "train_wall_s": time.perf_counter() - start,
        "checkpoint": str(ckpt),
    }


def sklearn_time_to_accuracy(
    seed: int = 0, target: float = TARGET, max_epochs: int = 200, batch_size: int = 32
) -> dict:
    """scikit-learn's MLPClassifier on the same digits split, the same widths and Adam.

    One ``partial_fit`` call per epoch; the clock runs from construction to the first
    epoch whose test accuracy reaches ``target``.
    """
    try:
        from sklearn.neural_network import MLPClassifier
    except ImportError as err:
        raise ImportError("the comparison needs scikit-learn: pip install -e '.[experiments]'") from err
    ds = data.digits(seed=seed)
    classes = np.arange(ds.num_classes)
    start = time.perf_counter()
    clf = MLPClassifier(
        hidden_layer_sizes=DIGITS_SIZES[1:-1],
        solver="adam",
        learning_rate_init=1e-3,
        batch_size=batch_size,
        alpha=1e-4,
        random_state=seed,
    )
    reached, accuracy, epochs = None, 0.0, 0
    while epochs < max_epochs:
        epochs += 1
        clf.partial_fit(ds.x_train, ds.y_train, classes=classes)
        accuracy = float(clf.score(ds.x_test, ds.y_test))
        if accuracy >= target:
            reached = time.perf_counter() - start
            break
    return {"time_to_target_s": reached, "target": target, "epochs": epochs, "test_accuracy": accuracy}


def main_job(
    out_dir, *, epochs: int = 40, seed: int = 0, progress: bool = True, compare_sklearn: bool = True, cases=RULES
) -> dict:
    """Verify every rule (float32, float64), train on digits, write the report folder.

    ``cases`` (default: the whole table) exists so that a smoke test can verify fewer.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = verify_rules(cases=cases)
    (out / "verify.json").write_text(json.dumps(rows, indent=2))
    (out / "verify.md").write_text(verification_markdown(rows))
    verified_s = time.perf_counter() - start
    summary = train_digits(out, epochs=epochs, seed=seed, progress=progress)
    if compare_sklearn:
        summary["sklearn"] = sklearn_time_to_accuracy(seed=seed)
    summary.update(
        rules_verified=len({r["rule"] for r in rows}),
        checks_passed=sum(r["passed"] for r in rows),
        checks=len(rows),
        verify_wall_s=verified_s,
        total_wall_s=time.perf_counter() - start,
        device=str(jax.devices()[0]),
        jax=jax.__version__,
        python=platform.python_version(),
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(summary_markdown(summary, rows))
    return summary


def summary_markdown(summary: dict, rows: list) -> str:
    def secs(x):
        return "not reached" if x is None else f"{x:.2f} s"

    lines = [
        "# funcprop report",
        "",
        f"Device: {summary['device']}, jax {summary['jax']}, Python {summary['python']}.",
        "",
        "## Rules verified",
        "",
        f"{summary['checks_passed']} of {summary['checks']} checks passed over {summary['rules_verified']} "
        f"table rows (hand-written VJP against jax.vjp of the plain twin in bfloat16, float32 and float64, "
        f"bfloat16 against a float32 or float64 twin, and against float64 central differences). Details: `verify.md`.",
        "",
        "## Training on scikit-learn's digits",
        "",
        f"- {summary['model']}, {summary['optimizer']}, gradients from the {summary['gradient']}, "
        f"{summary['epochs']} epochs on {summary['train_examples']} images, tested on {summary['test_examples']}.",
        f"- Final test accuracy: **{100 * summary['test_accuracy']:.2f}%** "
        f"(best {100 * summary['best_test_accuracy']:.2f}%).",
        f"- Time to {100 * summary['target']:.0f}% test accuracy, compilation included: "
        f"{secs(summary['time_to_target_s'])}.",
    ]
    if "sklearn" in summary:
        sk = summary["sklearn"]
        lines.append(
            f"- scikit-learn MLPClassifier, same split, widths and Adam: {secs(sk['time_to_target_s'])} "
            f"to {100 * sk['target']:.0f}% ({sk['epochs']} epochs, {100 * sk['test_accuracy']:.2f}%)."
        )
    lines += [
        f"- Wall time: verification {summary['verify_wall_s']:.1f} s, whole job {summary['total_wall_s']:.1f} s.",
        "",
        "![loss and accuracy](curves.png)",
        "",
        "Files: `metrics.json`, `metrics.csv` (per epoch), `checkpoint.npz` (params, optimizer "
        "state, key and epoch, checksummed), `verify.json`.",
        "",
    ]
    return "\n".join(lines)
