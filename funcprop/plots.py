"""PNG plots for the experiments and the report (matplotlib, headless)."""

from __future__ import annotations

import pathlib


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("funcprop.plots needs matplotlib; install it with pip install -e '.[experiments]'") from err
    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()
    return path


def plot_history(history: list, path, title: str = "training") -> pathlib.Path:
    """Loss (train and test) and test accuracy per epoch, side by side (the loss alone
    where the history has no accuracy, as for ``mse``)."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    has_accuracy = any(r.get("test_accuracy") is not None for r in history)
    fig, axes = plt.subplots(1, 2 if has_accuracy else 1, figsize=(10 if has_accuracy else 5, 3.8), squeeze=False)
    ax_loss = axes[0, 0]
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in history], label="test")
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log", title=f"{title}: loss")
    ax_loss.legend()
    if has_accuracy:
        ax_acc = axes[0, 1]
        ax_acc.plot(epochs, [100 * r["test_accuracy"] for r in history], color="C2")
        ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title=f"{title}: test accuracy")
        ax_acc.grid(alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_bits_per_byte(histories: dict, path, *, baseline: float, title: str = "language model") -> pathlib.Path:
    """Train and validation loss per epoch in bits per byte, with the unigram baseline.

    ``histories``: a run's name -> its history (rows with ``train_loss`` and
    ``test_loss`` in nats, as :func:`funcprop.train.train` records them). The first run
    is drawn solid, train and validation; each other run's validation dashed beside it.
    """
    import math

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, (name, history) in enumerate(histories.items()):
        epochs = [r["epoch"] for r in history]
        bpb = {part: [r[f"{part}_loss"] / math.log(2.0) for r in history] for part in ("train", "test")}
        if k == 0:
            ax.plot(epochs, bpb["train"], "o-", color="C0", label=f"train ({name})")
            ax.plot(epochs, bpb["test"], "o-", color="C1", label=f"validation ({name})")
        else:
            ax.plot(epochs, bpb["test"], "x--", color=f"C{k + 1}", label=f"validation ({name})")
    ax.axhline(baseline, color="k", linestyle=":", linewidth=1, label=f"unigram baseline ({baseline:.2f})")
    ax.set(xlabel="epoch", ylabel="bits per byte", title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_decision_boundary(apply, params, x, y, path, title: str = "decision boundary") -> pathlib.Path:
    """The predicted class over a grid around 2-D points x: (N, 2), with the points."""
    import jax.numpy as jnp
    import numpy as np

    plt = _pyplot()
    x, y = np.asarray(x), np.asarray(y)
    lo, hi = x.min(0) - 0.5, x.max(0) + 0.5
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(x.dtype)
    logits = np.asarray(apply(params, jnp.asarray(grid)), dtype=np.float64)  # bf16 or f16 logits too
    p1 = np.exp(logits - logits.max(1, keepdims=True))
    p1 = (p1 / p1.sum(1, keepdims=True))[:, 1].reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.contourf(gx, gy, p1, levels=20, cmap="RdBu_r", alpha=0.6)
    ax.contour(gx, gy, p1, levels=[0.5], colors="k", linewidths=1)
    ax.scatter(x[:, 0], x[:, 1], c=y, cmap="RdBu_r", edgecolors="k", s=12)
    ax.set(title=title, xlabel="x₁", ylabel="x₂")
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_scaling(rows: list, path, title: str = "Jacobian chain vs VJP") -> pathlib.Path:
    """Time and memory against layer width, log-log, one line per method."""
    plt = _pyplot()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        widths = [r["width"] for r in mine]
        ax_t.plot(widths, [r["time_s"] * 1e3 for r in mine], "o-", label=method)
        ax_m.plot(widths, [r["memory_bytes"] / 2**20 for r in mine], "o-", label=method)
    ax_t.set(yscale="log", xlabel="layer width n (= m)", ylabel="time (ms)", title=f"{title}: time")
    ax_m.set(yscale="log", xlabel="layer width n (= m)", ylabel="memory (MiB)", title=f"{title}: memory")
    widths = sorted({r["width"] for r in rows})
    for ax in (ax_t, ax_m):
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.minorticks_off()
        ax.legend()
        ax.grid(alpha=0.3, which="both")
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_benchmark(report: dict, path) -> pathlib.Path:
    """Step time of every variant relative to jax.grad, one group of bars per case."""
    import numpy as np

    plt = _pyplot()
    cases = report["cases"]
    labels = list(dict.fromkeys(label for c in cases for label in c["variants"]))
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(cases)), 4))
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        ratios = [c["variants"].get(label, {}).get("ratio_to_jax_grad", np.nan) for c in cases]
        ax.bar(np.arange(len(cases)) + k * width, ratios, width, label=label)
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_xticks(np.arange(len(cases)) + width * (len(labels) - 1) / 2, [c["case"] for c in cases], fontsize=8)
    ax.set(yscale="log", ylabel="step time ÷ jax.grad (log)", title=f"training step, {report['device']}")
    ax.legend(fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out
