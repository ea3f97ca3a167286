"""The byte-level language model run: a GPT on text, a sample, and a report.

What ``funcprop train --dataset text --arch gpt`` and ``experiments/train_gpt.py`` run:

- :func:`setup` loads the text (:func:`funcprop.text.load_text`), cuts it into windows
  and builds ``nn.gpt`` with its head ``nn.LinearCrossEntropy(256)``;
- :func:`run_lm` trains it (``gradient`` as :func:`funcprop.train.train` takes it), then,
  unless ``twin_run=False``, the same model from the same keys and data through
  ``jax.grad`` of the twins; samples ``sample_bytes`` after a prompt of ``context``
  bytes of the validation text; and writes the loss curve (``curves.png``),
  ``sample.txt`` and :func:`write_lm_report`'s ``lm.json`` and ``lm.md``.

One seed gives every key: ``jax.random.split(jax.random.key(seed), 3)`` is the
parameters' init, the training (shuffles), and the sampling. Losses are the mean
cross-entropy in nats, as training records them; the report gives them in bits per
byte, beside the unigram baseline (:func:`funcprop.text.unigram_bits_per_byte`).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from funcprop import distributed, nn, plots, text, train
from funcprop.nn import lm_head

TWINS_DIR = "twins"  # the comparison run's metrics and checkpoint, inside the output folder


class LMSetup(NamedTuple):
    """The text, its windows and the model, built before any training."""

    text: text.TextData
    data: Any  # funcprop.data.Dataset of (M, T) int32 windows
    model: nn.Layer  # ids (B, T) -> hidden (B, T, d)
    head: nn.Layer  # nn.LinearCrossEntropy(256), the loss layer
    context: int
    title: str


def setup(*, text_path=None, max_bytes=None, context=64, d_model=64, heads=4, layers=2, dtype=None) -> LMSetup:
    """Load the text (the standard library, or ``text_path``) and build the GPT for it
    (``dtype``: its computation dtype; the parameters are float32).

    Raises ValueError or FileNotFoundError, naming the fix, for text that does not exist
    or is too short for ``context``, or a ``d_model`` that ``heads`` does not divide.
    """
    corpus = text.load_text(text_path, max_bytes=max_bytes)
    data = text.windows(corpus, context)
    model = nn.gpt(text.VOCAB_SIZE, context, d_model=d_model, num_heads=heads, num_layers=layers, dtype=dtype)
    title = f"gpt d_model {d_model}, {_plural(layers, 'layer')}, {_plural(heads, 'head')}, context {context}"
    return LMSetup(corpus, data, model, nn.LinearCrossEntropy(text.VOCAB_SIZE, dtype=dtype), context, title)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def init_params(lm: LMSetup, key) -> tuple:
    """``(model_params, head_params)``, the pair training takes with a loss layer."""
    model_key, head_key = jax.random.split(key)
    out_shape, model_params = lm.model.init(model_key, (lm.context,))
    _, head_params = lm.head.init(head_key, out_shape)
    return model_params, head_params


def count_params(params) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


def next_logits_fn(model, params) -> Callable:
    """A jitted ``next_logits(window (1, T) int32) -> (256,)``: the head's logits at the last position."""
    model_params, head_params = params

    @jax.jit
    def next_logits(window):
        return lm_head.logits(head_params, model.apply(model_params, window))[0, -1]

    return next_logits


def _train(lm: LMSetup, params, optimizer, *, gradient, key, out_dir, checkpoint, **kwargs):
    out_dir = pathlib.Path(out_dir)
    if distributed.is_writer():
        out_dir.mkdir(parents=True, exist_ok=True)
    return train.train(
        lm.model,
        params,
        optimizer,
        lm.data,
        loss=lm.head,
        gradient=gradient,
        key=key,
        out_dir=out_dir,
        checkpoint_path=out_dir / "checkpoint.npz" if checkpoint else None,
        **kwargs,
    )


def _run_summary(gradient: str, history: list) -> dict:
    last = history[-1]
    return {
        "gradient": gradient,
        "epochs": last["epoch"],
        "train_bits_per_byte": text.bits_per_byte(last["train_loss"]),
        "validation_bits_per_byte": text.bits_per_byte(last["test_loss"]),
        "wall_s": last["elapsed_s"],
        "last_epoch_s": last["epoch_time_s"],
        "history_validation_bits_per_byte": [text.bits_per_byte(r["test_loss"]) for r in history],
    }


def run_lm(
    lm: LMSetup,
    optimizer,
    out,
    *,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    gradient: str = "rules",
    twin_run: bool = True,
    sample_bytes: int = 200,
    temperature: float = 0.8,
    checkpoint: bool = True,
    resume: bool = False,
    progress: bool = True,
    config: dict | None = None,
    say: Callable[[str], Any] = lambda message: None,
    mesh=None,
) -> dict | None:
    """Train, train again through the twins, sample and write the report; return its summary.

    With ``checkpoint``, each run saves ``checkpoint.npz`` after every epoch (the
    comparison run in ``out/twins/``) and ``resume`` continues from it, refusing other
    settings (``config``). ``say`` receives progress notices (the CLI prints them on stderr).
    ``mesh``: train data-parallel on it (:func:`funcprop.train.train`); across processes
    every process trains and process 0 alone samples and writes.

    Returns:
      The summary :func:`write_lm_report` wrote as ``lm.json`` (None in a process other
      than 0, which writes nothing).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"run_lm: epochs must be an int >= 1, got {epochs!r}")
    if gradient == "twins" and twin_run:
        raise ValueError(
            "run_lm: gradient='twins' is the comparison run itself; pass twin_run=False, or gradient='rules'"
        )
    out = pathlib.Path(out)
    init_key, train_key, sample_key = jax.random.split(jax.random.key(seed), 3)
    params = init_params(lm, init_key)
    common = dict(
        epochs=epochs, batch_size=batch_size, checkpoint=checkpoint, resume=resume, progress=progress, mesh=mesh
    )
    say(f"training {lm.title} from the {gradient} (the first epoch compiles)...")
    result = _train(lm, params, optimizer, gradient=gradient, key=train_key, out_dir=out, config=config, **common)
    histories = {gradient: result.history}
    if twin_run:
        say("training the same model through jax.grad of the twins (same keys and data)...")
        twins = _train(
            lm,
            params,
            optimizer,
            gradient="twins",
            key=train_key,
            out_dir=out / TWINS_DIR,
            config={**(config or {}), "gradient": "twins"},
            **common,
        )
        histories["twins"] = twins.history

    if not distributed.is_writer():  # a resumed history is process 0's alone
        return None
    runs = [_run_summary(g, h) for g, h in histories.items()]
    say(f"sampling {sample_bytes} bytes...")
    prompt = lm.text.validation[: lm.context]
    sample = text.generate(
        next_logits_fn(lm.model, jax.tree.map(np.asarray, result.params)),  # this process's copy
        prompt,
        sample_bytes,
        key=sample_key,
        temperature=temperature,
        context=lm.context,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "sample.txt").write_bytes(sample.tobytes())
    unigram = text.unigram_bits_per_byte(lm.text.train, lm.text.validation)

    plots.plot_bits_per_byte(histories, out / "curves.png", baseline=unigram, title=lm.title)
    summary = {
        "model": lm.title,
        "text": lm.text.source,
        "parameters": count_params(result.params),
        "train_windows": int(lm.data.x_train.shape[0]),
        "validation_windows": int(lm.data.x_test.shape[0]),
        "context": lm.context,
        "batch_size": batch_size,
        "seed": seed,
        "unigram_bits_per_byte": unigram,
        "validation_bits_per_byte": runs[0]["validation_bits_per_byte"],
        "runs": runs,
        "twins_relative_difference": _relative_difference(runs),
        "sample": {
            "file": "sample.txt",
            "prompt_bytes": int(prompt.size),
            "generated_bytes": int(sample.size - prompt.size),
            "temperature": temperature,
            "prompt": text.decode(prompt),
            "generated": text.decode(sample[prompt.size :]),
        },
    }
    write_lm_report(summary, out)
    return summary


def _relative_difference(runs: list) -> float | None:
    """|twins − main| / main of the validation bits per byte, where both ran as many epochs."""
    if len(runs) < 2 or runs[0]["epochs"] != runs[1]["epochs"]:
        return None
    main, twins = runs[0]["validation_bits_per_byte"], runs[1]["validation_bits_per_byte"]
    return abs(twins - main) / main


RUN_NAMES = {
    "rules": "the rules (custom_vjp)",
    "twins": "jax.grad of the twins",
    "backprop": "the written-out backprop",
}


def summary_table(summary: dict) -> str:
    """The markdown table of the runs beside the unigram baseline (what the CLI prints)."""
    lines = [
        "| run | epochs | train bits/byte | validation bits/byte | wall time (s) |",
        "|---|---:|---:|---:|---:|",
        f"| unigram baseline | | | {summary['unigram_bits_per_byte']:.4f} | |",
    ]
    for r in summary["runs"]:
        lines.append(
            f"| {RUN_NAMES[r['gradient']]} | {r['epochs']} | {r['train_bits_per_byte']:.4f} | "
            f"{r['validation_bits_per_byte']:.4f} | {r['wall_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_lm_report(summary: dict, out) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``lm.json`` (the summary) and ``lm.md`` (its table, the sample) in ``out``."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "lm.json", out / "lm.md"
    json_path.write_text(json.dumps(summary, indent=2))
    diff = summary["twins_relative_difference"]
    sample = summary["sample"]
    md = [
        f"# Byte-level language model: {summary['model']}",
        "",
        f"Text: {summary['text']}.",
        "",
        f"{summary['train_windows']:,} training and {summary['validation_windows']:,} validation windows of "
        f"{summary['context']} bytes, batch {summary['batch_size']}, seed {summary['seed']}; "
        f"{summary['parameters']:,} parameters. Train bits/byte is the mean over the last epoch's steps; "
        f"wall time includes compilation. Bits per byte of the standard library compare within one run, "
        f"not across Python builds.",
        "",
        summary_table(summary),
    ]
    if diff is not None:
        md += [
            f"Validation bits per byte, twins against {summary['runs'][0]['gradient']}: relative difference {diff:.2e}.",
            "",
        ]
    fence = "~~~~~~~~"
    md += [
        f"## Sample (temperature {sample['temperature']:g})",
        "",
        f"Prompt ({sample['prompt_bytes']} bytes of the validation text):",
        "",
        fence,
        sample["prompt"],
        fence,
        "",
        f"Generated ({sample['generated_bytes']} bytes):",
        "",
        fence,
        sample["generated"],
        fence,
        "",
    ]
    md_path.write_text("\n".join(md))
    return json_path, md_path
