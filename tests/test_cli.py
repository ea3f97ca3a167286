"""The console script: output of `funcprop shapes`, one-line errors with exit 2."""

import subprocess
import sys

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
