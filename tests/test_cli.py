"""The console script: `funcprop shapes` output; one-line errors (exit 2 for bad arguments, 1 for failures),
checked before any work; --version and every default in --help; clean stops on Ctrl-C and SIGTERM."""

import subprocess
import sys

import jax
import pytest

from funcprop.cli import main


def test_shapes_walks_the_seed_network(capsys):
    assert main(["shapes", "2", "4", "7", "3", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("mlp 2-4-7-3-2")
    rows = [line.split() for line in lines[3:]]
    # layer, h, Ω (two tokens), β, f, δ, ∂L/∂Ω (two tokens), ∂L/∂β, ∂L/∂h
    assert rows[1] == ["1", "(4,)", "(7,", "4)", "(7,)", "(7,)", "(7,)", "(7,", "4)", "(7,)", "(4,)"]
    assert len(rows) == 4


def test_shapes_with_batch(capsys):
    assert main(["shapes", "2", "4", "7", "3", "2", "--batch", "16"]) == 0
    out = capsys.readouterr().out
    assert "batch of 16" in out and "(16, 7)" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["shapes", "2", "x"], "expected a positive integer, got 'x'"),
        (["shapes", "2"], "shapes needs at least two layer sizes"),
        (["shapes", "2", "3", "--batch", "0"], "expected a positive integer, got 0"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message):
    done = subprocess.run([sys.executable, "-m", "funcprop.cli", *argv], capture_output=True, text=True)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_readme_shows_the_real_shapes_output(capsys):
    import pathlib

    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert main(["shapes", "2", "4", "7", "3", "2"]) == 0
    assert capsys.readouterr().out.strip() in readme


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999", "x"])
def test_bad_seed_exits_2_naming_the_flag(seed, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--seed", seed])
    assert stop.value.code == 2
    assert "argument --seed" in capsys.readouterr().err


@pytest.mark.parametrize("arch, row", [("resmlp", "1.0.0 LayerNorm"), ("resnet", "2.0 FanOut(2)"), ("cnn", "3 Relu")])
def test_shapes_walks_every_leaf_of_a_graph(arch, row, capsys):
    assert main(["shapes", "--arch", arch, "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{arch} for digits") and f"\n{row} " in out


def test_shapes_of_a_graph_takes_no_sizes(capsys):
    assert main(["shapes", "--arch", "resnet", "2", "3"]) == 2
    assert "takes no layer sizes" in capsys.readouterr().err


@pytest.mark.usefixtures("standard_promotion")  # optax's update promotes python scalars
@pytest.mark.parametrize("arch", ["resmlp", "resnet"])
def test_train_a_residual_architecture(arch, tmp_path, capsys):
    argv = ["train", "--arch", arch, "--epochs", "1", "--no-progress", "--no-cache", "--out", str(tmp_path)]
    assert main(argv + (["--hidden", "32"] if arch == "resmlp" else [])) == 0
    assert f"digits, {arch}" in capsys.readouterr().out
    assert (tmp_path / "checkpoint.npz").exists()


@pytest.mark.usefixtures("standard_promotion")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_train_in_low_precision_keeps_float32_parameters_and_refuses_resuming_in_another(dtype, tmp_path, capsys):
    import json

    from funcprop import checkpoint

    argv = ["train", "--dataset", "toy", "--arch", "seed", "--epochs", "2", "--no-progress", "--no-cache"]
    assert main([*argv, "--dtype", dtype, "--out", str(tmp_path)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == dtype
    arrays, meta = checkpoint.load_flat(tmp_path / "checkpoint.npz")
    assert {str(v.dtype) for k, v in arrays.items() if "params" in k} == {"float32"}
    scales = [k for k in arrays if k.endswith("scale")]
    assert bool(scales) == (dtype == "float16")  # float16's loss scale lives in the optimizer state
    code = main([*argv, "--epochs", "3", "--resume", "--out", str(tmp_path)])
    _one_line_error(capsys, code, f"dtype: '{dtype}' then, 'float32' now", status=1)


# --- the reliability sweep: flags a run would ignore, --out, --version, --help, signals, memory


def _one_line_error(capsys, code, expected, *, status=2):
    """The error: the last line on stderr, the only one that says error (the others are notices)."""
    err = capsys.readouterr().err.strip()
    assert code == status, err
    assert "Traceback" not in err and err.count("error:") == 1 and expected in err.splitlines()[-1], err
    return err.splitlines()[-1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--arch", "seed", "--hidden", "7"], "--arch seed does not use --hidden (only --arch mlp or resmlp"),
        (["train", "--arch", "seed", "--activation", "tanh"], "--arch seed does not use --activation"),
        (["train", "--arch", "cnn", "--activation", "tanh"], "--arch cnn does not use --activation"),
        (["train", "--arch", "resnet", "--hidden", "64"], "--arch resnet does not use --hidden"),
        (["train", "--dataset", "digits", "--toy-kind", "spirals"], "--dataset digits does not use --toy-kind"),
        (["train", "--dataset", "toy", "--data-path", "/x"], "--dataset toy does not use --data-path"),
        (["shapes", "--arch", "cnn", "--hidden", "5"], "--arch cnn does not use --hidden"),
        (["shapes", "2", "3", "--hidden", "5"], "--arch mlp does not use --hidden"),
        (["shapes", "--arch", "resmlp", "--hidden", "32", "64"], "got --hidden 32 64"),
        (["train", "--arch", "resmlp", "--hidden"], "got no widths"),
    ],
)
def test_a_flag_the_run_would_ignore_is_refused(argv, message, tmp_path, capsys, monkeypatch):
    import funcprop.train

    monkeypatch.setattr(funcprop.train, "train", lambda *a, **k: pytest.fail("trained despite a bad flag"))
    _one_line_error(capsys, main([*argv, "--out", str(tmp_path / "run")] if argv[0] == "train" else argv), message)
    assert not (tmp_path / "run").exists()  # a refused run leaves no folder behind


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    """One epoch of the notes' network on toy data, --resume without a checkpoint: (status, stdout, stderr, folder)."""
    import contextlib
    import io

    import jax

    out, stdout, stderr = tmp_path_factory.mktemp("seed"), io.StringIO(), io.StringIO()
    # optax's update promotes python scalars (the standard_promotion fixture, at module scope)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), jax.numpy_dtype_promotion("standard"):
        status = main(
            [
                "train",
                "--dataset",
                "toy",
                "--arch",
                "seed",
                "--epochs",
                "1",
                "--resume",
                "--no-progress",
                "--no-cache",
                "--out",
                str(out / "run"),
            ]
        )
    return status, stdout.getvalue(), stderr.getvalue(), out / "run"


def test_config_records_only_what_ran(seed_run):
    import json

    status, _, err, out = seed_run
    assert status == 0, err
    config = json.loads((out / "config.json").read_text())
    assert "hidden" not in config and "activation" not in config and "data_path" not in config
    assert config["toy_kind"] == "moons" and config["arch"] == "seed"
    assert config["model"] == "toy-moons, mlp 2-4-7-3-2 sigmoid"


def test_resume_without_a_checkpoint_says_it_starts_fresh(seed_run):
    status, _, err, out = seed_run
    assert status == 0 and f"funcprop train: no checkpoint at {out / 'checkpoint.npz'}; starting fresh\n" in err
    assert (out / "checkpoint.npz").exists()


def test_a_second_run_into_the_same_folder_keeps_the_first_run_s_checkpoint(seed_run, capsys):
    out = seed_run[3]
    before = (out / "checkpoint.npz").read_bytes()
    argv = ["train", "--dataset", "toy", "--epochs", "2", "--no-progress", "--no-cache", "--out", str(out)]
    _one_line_error(capsys, main([*argv, "--arch", "seed"]), "holds an earlier run; pass --resume to continue it")
    with jax.numpy_dtype_promotion("standard"):
        code = main([*argv, "--arch", "mlp", "--resume"])
    _one_line_error(capsys, code, "was written with other settings (arch: 'seed' then, 'mlp' now", status=1)
    assert (out / "checkpoint.npz").read_bytes() == before


def test_compiling_is_announced_on_stderr_only(seed_run):
    _, stdout, err, _ = seed_run
    assert "funcprop train: compiling the training step" in err
    assert "compiling" not in stdout and stdout.startswith("toy-moons, mlp 2-4-7-3-2 sigmoid: 1 epochs")


@pytest.mark.parametrize(
    "command, work",
    [
        ("train", "funcprop.train.train"),
        ("report", "funcprop.report.main_job"),
        ("bench", "funcprop.bench.run"),
        ("verify", "funcprop.verify.verify_rules"),
    ],
)
@pytest.mark.parametrize(
    "where, message",
    [
        ("afile", "--out {} is a file; pass a folder"),
        ("afile/sub", "--out {} is inside {}, which is a file; pass a folder"),
    ],
)
def test_out_is_checked_before_the_work_starts(command, work, where, message, tmp_path, capsys, monkeypatch):
    import importlib

    module, name = work.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, lambda *a, **k: pytest.fail("the work started"))
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / where
    expected = message.format(out, tmp_path / "afile")
    _one_line_error(capsys, main([command, "--out", str(out)]), expected)


def test_an_unwritable_out_is_refused_before_verifying(tmp_path, capsys, monkeypatch):
    import types

    import funcprop.cli_args
    import funcprop.verify

    def denied(dir):
        raise PermissionError(13, "Permission denied", str(dir))

    # the folder's permissions, as a test run by root (who writes anywhere) can see them
    monkeypatch.setattr(funcprop.cli_args, "tempfile", types.SimpleNamespace(TemporaryFile=denied))
    monkeypatch.setattr(funcprop.verify, "verify_rules", lambda *a, **k: pytest.fail("the work started"))
    out = tmp_path / "verify"
    _one_line_error(
        capsys,
        main(["verify", "--out", str(out)]),
        f"--out {out} cannot be written ({tmp_path}: Permission denied); pass a folder you can write to",
    )


def test_an_empty_out_is_refused(capsys):
    _one_line_error(capsys, main(["train", "--out", ""]), "--out is empty; pass a folder")


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"funcprop {version('funcprop')}"


def test_help_shows_every_default():
    import argparse

    from funcprop.cli import build_parser
    from funcprop.cli_args import shown as _shown

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    shown = {}
    for name, sub in commands.items():
        defaults = sub.get_default("fill_in") or {}
        for action in sub._actions:
            text = " ".join(sub._get_formatter()._format_action(action).split())
            default = defaults.get(action.dest, action.default)
            if action.option_strings and default is not None and default is not False and default != argparse.SUPPRESS:
                assert f"(default: {_shown(default)})" in text, (name, text)
                shown[name, action.option_strings[-1]] = text
        assert "(default: None)" not in sub.format_help() and "(default: False)" not in sub.format_help()
    assert "(default: 256 256)" in shown["train", "--hidden"] and "(default: moons)" in shown["train", "--toy-kind"]
    assert "(default: relu)" in shown["train", "--activation"] and "(default: 0)" in shown["train", "--seed"]
    assert "(default: 128 128)" in shown["shapes", "--hidden"] and "(default: 64)" in shown["train", "--context"]
    train = commands["train"]  # defaults that depend on --arch, filled in by the run
    helps = {a.dest: " ".join(train._get_formatter()._format_action(a).split()) for a in train._actions}
    assert "(default: 20; 3 with --arch gpt)" in helps["epochs"], helps["epochs"]
    assert "(default: 0.001; 0.003 with --arch gpt)" in helps["lr"], helps["lr"]


@pytest.mark.parametrize(
    "message, detail",
    [  # as XLA says it on a GPU, and on the CPU
        (
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 20000000000 bytes.\nBufferAssignment OOM Debugging.",
            "(Out of memory while trying to allocate 20000000000 bytes)",
        ),
        (
            "INTERNAL: Error dispatching computation: Out of memory allocating 400000000000000 bytes.",
            "(Out of memory allocating 400000000000000 bytes)",
        ),
    ],
)
def test_out_of_memory_is_one_line(message, detail, tmp_path, capsys, monkeypatch):
    import jax

    import funcprop.train

    def exhausted(*args, **kwargs):
        raise jax.errors.JaxRuntimeError(message)

    monkeypatch.setattr(funcprop.train, "train", exhausted)
    argv = ["train", "--dataset", "toy", "--hidden", "8", "--no-progress", "--no-cache", "--out", str(tmp_path)]
    err = _one_line_error(capsys, main(argv), "out of memory: the model and batch do not fit in the memory", status=1)
    assert f"{detail}; use smaller --hidden or --batch-size" in err


def test_ctrl_c_stops_with_130_and_sigterm_is_handled_only_during_the_command(tmp_path, capsys, monkeypatch):
    import signal

    import funcprop.train

    before, during = signal.getsignal(signal.SIGTERM), []

    def interrupted(*args, **kwargs):
        during.append(signal.getsignal(signal.SIGTERM))
        raise KeyboardInterrupt

    monkeypatch.setattr(funcprop.train, "train", interrupted)
    argv = ["train", "--dataset", "toy", "--arch", "seed", "--no-progress", "--no-cache", "--out", str(tmp_path)]
    assert main(argv) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "funcprop train: interrupted by SIGINT"
    assert during and during[0] is not before and signal.getsignal(signal.SIGTERM) is before


def test_a_sigterm_dropped_where_python_ignores_exceptions_is_raised_again(tmp_path, capsys, monkeypatch):
    import os
    import signal
    import time

    import funcprop.interrupts
    import funcprop.train

    def drops_the_first_then_waits(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises here
        except KeyboardInterrupt:
            pass  # as a __del__ or a weakref callback drops it
        time.sleep(10)
        pytest.fail("the SIGTERM was not raised again")

    monkeypatch.setattr(funcprop.interrupts, "SIGTERM_RETRY_S", 0.05)
    monkeypatch.setattr(funcprop.train, "train", drops_the_first_then_waits)
    argv = ["train", "--dataset", "toy", "--arch", "seed", "--no-progress", "--no-cache", "--out", str(tmp_path)]
    assert main(argv) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == "funcprop train: interrupted by SIGTERM"


def test_sigterm_stops_training_cleanly(tmp_path):
    import signal
    import time

    from funcprop import checkpoint

    argv = [
        "train",
        "--dataset",
        "toy",
        "--arch",
        "seed",
        "--epochs",
        "1000000",
        "--no-progress",
        "--no-cache",
        "--out",
        str(tmp_path),
    ]
    with subprocess.Popen(
        [sys.executable, "-m", "funcprop.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            deadline = time.monotonic() + 240
            while not (tmp_path / "checkpoint.npz").exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert (tmp_path / "checkpoint.npz").exists(), "no epoch finished"
            proc.send_signal(signal.SIGTERM)  # the first epoch is saved: training is in its loop now
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "funcprop train: interrupted by SIGTERM", err
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    checkpoint.load_flat(tmp_path / "checkpoint.npz")  # whole: its checksum holds


def test_a_sigterm_dropped_in_a_callback_is_kept_off_stderr(monkeypatch):
    """Python drops an exception raised in a __del__ or a gc callback and prints it; the
    retry thread raises SIGTERM's again, so that one is not printed. Others still are."""
    from funcprop.interrupts import Terminated, sigterm_interrupts

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append(type(info.exc_value)))

    class Raises:
        def __init__(self, error):
            self.error = error

        def __del__(self):
            raise self.error

    with sigterm_interrupts():
        Raises(Terminated())
        Raises(ValueError("shown"))
    assert seen == [ValueError]
    Raises(Terminated())  # outside the command: the previous hook again
    assert seen == [ValueError, Terminated]
