"""`funcprop train --dataset text --arch gpt`: the files it writes, bits per byte that agree with
each other and with the twins run, the refusals (one line, exit 2, before any work) and resume.

One tiny run (20 kB of the standard library, context 16, one block of width 16, one epoch)
is shared by the module; the persistent compilation cache (the session's own) lets the
resumed run reuse its programs."""

import contextlib
import io
import json
import math
import shutil

import jax
import pytest

from funcprop import text
from funcprop.cli import main

TINY = [
    *("--dataset", "text", "--arch", "gpt", "--max-bytes", "20000", "--context", "16"),
    *("--d-model", "16", "--layers", "1", "--heads", "2", "--epochs", "1", "--sample-bytes", "8", "--no-progress"),
]


def _train(argv, out):
    """``main(["train", *argv, "--out", out])``: (status, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    # optax's update promotes python scalars (the standard_promotion fixture, here at module scope)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), jax.numpy_dtype_promotion("standard"):
        status = main(["train", *argv, "--out", str(out)])
    return status, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """The tiny run, rules and twins: (status, stdout, stderr, folder)."""
    out = tmp_path_factory.mktemp("lm") / "run"
    return (*_train(TINY, out), out)


def _read(out):
    return json.loads((out / "lm.json").read_text()), json.loads((out / "metrics.json").read_text())


def test_the_run_writes_its_files_and_prints_its_table(lm_run):
    status, stdout, err, out = lm_run
    assert status == 0, err
    for name in ("metrics.json", "metrics.csv", "config.json", "lm.json", "lm.md", "sample.txt", "checkpoint.npz"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "twins" / "metrics.json").is_file() and (out / "twins" / "checkpoint.npz").is_file()
    first, *table = stdout.splitlines()
    assert first.startswith("text, gpt d_model 16, 1 layer, 2 heads, context 16: 1 epochs, validation ")
    assert first.endswith(f"wrote {out}/")
    assert [row.split("|")[1].strip() for row in table[2:]] == [
        "unigram baseline",
        "the rules (custom_vjp)",
        "jax.grad of the twins",
    ]
    assert "funcprop train: training the same model through jax.grad of the twins" in err
    assert "| the rules (custom_vjp) | 1 |" in (out / "lm.md").read_text()


def test_bits_per_byte_are_finite_and_agree_with_the_metrics_and_the_twins(lm_run):
    out = lm_run[3]
    report, metrics = _read(out)
    twins_metrics = json.loads((out / "twins" / "metrics.json").read_text())
    rules, twins = report["runs"]
    assert (rules["gradient"], twins["gradient"]) == ("rules", "twins")
    assert report["validation_bits_per_byte"] == rules["validation_bits_per_byte"]
    assert rules["validation_bits_per_byte"] == pytest.approx(metrics[-1]["test_loss"] / math.log(2), rel=1e-12)
    assert twins["validation_bits_per_byte"] == pytest.approx(twins_metrics[-1]["test_loss"] / math.log(2), rel=1e-12)
    corpus = text.load_text(max_bytes=20000)
    assert report["unigram_bits_per_byte"] == pytest.approx(text.unigram_bits_per_byte(corpus.train, corpus.validation))
    for run in (rules, twins):
        for key in ("train_bits_per_byte", "validation_bits_per_byte"):
            assert math.isfinite(run[key]) and 0 < run[key] < 10, (key, run)
        assert run["wall_s"] > 0 and run["epochs"] == 1
    # the same math from the same keys and data: the hand-written backward against jax.grad of the twins
    assert twins["validation_bits_per_byte"] == pytest.approx(rules["validation_bits_per_byte"], rel=1e-3)
    assert twins["train_bits_per_byte"] == pytest.approx(rules["train_bits_per_byte"], rel=1e-3)
    assert report["twins_relative_difference"] < 1e-3


def test_the_sample_continues_a_prompt_of_context_validation_bytes(lm_run):
    out = lm_run[3]
    report, _ = _read(out)
    sample = (out / "sample.txt").read_bytes()
    assert len(sample) == 16 + 8
    assert sample[:16] == text.load_text(max_bytes=20000).validation[:16].tobytes()
    assert report["sample"]["prompt_bytes"] == 16 and report["sample"]["generated_bytes"] == 8
    assert report["sample"]["temperature"] == 0.8


def test_config_records_only_what_ran(lm_run):
    config = json.loads((lm_run[3] / "config.json").read_text())
    assert {k: config[k] for k in ("context", "d_model", "heads", "layers", "max_bytes", "sample_bytes")} == {
        "context": 16,
        "d_model": 16,
        "heads": 2,
        "layers": 1,
        "max_bytes": 20000,
        "sample_bytes": 8,
    }
    assert config["epochs"] == 1 and config["lr"] == 0.003 and config["no_twin_run"] is False  # gpt's lr default
    assert not {"hidden", "activation", "toy_kind", "data_path", "text_path"} & set(config)
    assert config["model"] == "gpt d_model 16, 1 layer, 2 heads, context 16" and "standard library" in config["text"]


def test_resume_goes_on_and_another_run_into_the_folder_is_refused(lm_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(lm_run[3], out)
    status, _, err = _train(TINY, out)
    assert status == 2 and err.strip().splitlines()[-1].endswith(
        "holds an earlier run; pass --resume to continue it, or another --out"
    )
    status, _, err = _train([*_with(TINY, "--d-model", "32"), "--resume"], out)
    assert status == 1 and "was written with other settings (d_model: 16 then, 32 now" in err, err
    status, stdout, err = _train([*_with(TINY, "--epochs", "2"), "--resume", "--no-twin-run"], out)
    assert status == 0, err
    report, metrics = _read(out)
    assert [row["epoch"] for row in metrics] == [1, 2] and metrics[0] == _read(lm_run[3])[1][0]
    assert [run["epochs"] for run in report["runs"]] == [2] and report["twins_relative_difference"] is None
    assert ": 2 epochs, validation" in stdout


def _with(argv, flag, value):
    """``argv`` with ``flag``'s value replaced."""
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def test_text_path_trains_on_the_user_s_files(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(600)))
    status, stdout, err = _train([*TINY, "--text-path", str(corpus), "--no-twin-run"], tmp_path / "run")
    assert status == 0, err
    report, _ = _read(tmp_path / "run")
    assert report["text"].startswith(f"'{corpus}'") and len(report["runs"]) == 1
    data = corpus.read_bytes()
    assert (tmp_path / "run" / "sample.txt").read_bytes()[:16] == data[len(data) - len(data) // 10 :][:16]
    assert math.isfinite(report["validation_bits_per_byte"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["text_path"] == [str(corpus)]


def test_a_bfloat16_gpt_trains_with_float32_parameters(tmp_path):
    status, stdout, err = _train([*TINY, "--no-twin-run", "--dtype", "bfloat16"], tmp_path / "run")
    assert status == 0, err
    report, _ = _read(tmp_path / "run")
    assert math.isfinite(report["validation_bits_per_byte"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dtype"] == "bfloat16"


GPT = ["--dataset", "text", "--arch", "gpt", "--max-bytes", "20000"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--arch", "gpt"], "--arch gpt is a byte-level language model: it needs --dataset text, got --dataset digits"),
        (["--dataset", "text"], "--dataset text trains a language model: it needs --arch gpt, got --arch mlp"),
        (["--dataset", "text", "--arch", "resnet"], "it needs --arch gpt, got --arch resnet"),
        (["--context", "16"], "--arch mlp does not use --context (only --arch gpt reads it), got --context 16"),
        (
            ["--arch", "cnn", "--no-twin-run"],
            "--arch cnn does not use --no-twin-run (only --arch gpt reads it), got --no-twin-run;",
        ),
        (["--sample-bytes", "5"], "--arch mlp does not use --sample-bytes"),
        (["--max-bytes", "100"], "--dataset digits does not use --max-bytes (only --dataset text reads it)"),
        (["--text-path", "a.txt"], "--dataset digits does not use --text-path"),
        ([*GPT, "--hidden", "32"], "--arch gpt does not use --hidden"),
        ([*GPT, "--gradient", "twins"], "--gradient twins trains through jax.grad of the twins already"),
        ([*GPT, "--text-path", "no/such/file.txt"], "load_text: 'no/such/file.txt' does not exist"),
        ([*GPT, "--context", "5000"], "windows: context=5000 needs at least 5001 bytes per split"),
        ([*GPT, "--d-model", "10"], "gpt: d_model 10 must be divisible by num_heads 4"),
        ([*GPT, "--batch-size", "100000"], "--batch-size 100000 exceeds the 312 training examples"),
    ],
)
def test_a_bad_lm_flag_is_refused_in_one_line_before_any_work(argv, message, tmp_path, monkeypatch):
    import funcprop.lm
    import funcprop.train

    monkeypatch.setattr(funcprop.train, "train", lambda *a, **k: pytest.fail("trained despite a bad flag"))
    monkeypatch.setattr(funcprop.lm, "run_lm", lambda *a, **k: pytest.fail("ran despite a bad flag"))
    status, _, err = _train([*argv, "--no-cache"], tmp_path / "run")
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err and message in lines[0], err
    assert not (tmp_path / "run").exists()  # a refused run leaves no folder behind


@pytest.mark.parametrize("flag, value", [("--temperature", "-1"), ("--sample-bytes", "-2"), ("--max-bytes", "0")])
def test_a_bad_lm_value_exits_2_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", *GPT, flag, value])
    assert stop.value.code == 2 and f"argument {flag}" in capsys.readouterr().err
