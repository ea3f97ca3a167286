"""The main job and the train command, end to end on small settings."""

import json

import pytest

from funcprop import report
from funcprop.cli import main
from funcprop.rules._core import custom_rule, implements
from funcprop.rules.table import RULES, RuleCase
from funcprop.verify import verification_markdown, verify_rules

pytestmark = pytest.mark.usefixtures("standard_promotion")


def test_main_job_writes_the_report_folder(tmp_path):
    summary = report.main_job(tmp_path, epochs=2, progress=False, compare_sklearn=False, cases=RULES[:2])
    for name in (
        "summary.md",
        "summary.json",
        "verify.md",
        "verify.json",
        "metrics.json",
        "metrics.csv",
        "curves.png",
        "checkpoint.npz",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    assert summary["checks"] == summary["checks_passed"] == 6  # 2 rules × bfloat16, float32, float64
    assert 0.5 < summary["test_accuracy"] <= 1.0
    assert "Final test accuracy" in (tmp_path / "summary.md").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 2


def _broken_relu():
    """relu whose backward forgets the mask: a wrong rule that verification must flag."""
    relu = next(case for case in RULES if case.name == "relu")
    twin = relu.twin
    rule = custom_rule(twin, lambda f: (twin(f), None), lambda res, g: (g,))

    @implements(rule)
    def broken(f):
        return rule.core(f)

    return RuleCase("broken-relu", broken, relu.make_args)


def test_verification_flags_a_wrong_rule():
    rows = verify_rules(cases=[_broken_relu()])
    assert [(r["dtype"], r["passed"]) for r in rows] == [("bfloat16", False), ("float32", False), ("float64", False)]
    assert "**FAIL**" in verification_markdown(rows)


def test_train_command_writes_and_resumes(tmp_path, capsys):
    argv = ["train", "--dataset", "toy", "--arch", "seed", "--epochs", "2", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    for name in ("metrics.json", "curves.png", "boundary.png", "checkpoint.npz", "config.json"):
        assert (tmp_path / name).exists(), name
    assert main([*argv[:5], "--epochs", "3", *argv[7:], "--resume"]) == 0
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert "test accuracy" in capsys.readouterr().out


def test_train_command_reports_a_missing_mnist_folder(tmp_path, capsys):
    assert main(["train", "--dataset", "mnist", "--data-path", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("funcprop train: error: mnist:") and "\n" not in err


def test_train_command_cnn_on_digits(tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--arch", "cnn", "--epochs", "1", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert history[0]["test_accuracy"] > 0.5
    assert "digits, cnn" in capsys.readouterr().out


def test_train_digits_rejects_an_unknown_arch(tmp_path):
    with pytest.raises(ValueError, match=r"train_digits: arch must be 'mlp' or 'cnn', got 'rnn'"):
        report.train_digits(tmp_path, arch="rnn")
