"""The package as a whole: one version, one export list, and code that ruff keeps tidy."""

import pathlib
import shutil
import subprocess
import sys
import tomllib

import pytest

import funcprop
from funcprop import rules

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_version_is_pyproject_s():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert funcprop.__version__ == declared


def test_one_export_list_every_name_of_it_resolves():
    assert len(funcprop.__all__) == len(set(funcprop.__all__))
    assert set(rules.__all__) <= set(funcprop.__all__)
    for name in funcprop.__all__:
        assert getattr(funcprop, name) is not None, name
    for name in rules.__all__:
        assert getattr(funcprop, name) is getattr(rules, name), name


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_finds_nothing(command):
    ruff = shutil.which("ruff") or pytest.skip("ruff is not installed (pip install -e '.[test]' brings it)")
    done = subprocess.run(
        [ruff, *command, "funcprop", "tests", "experiments", "docs"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, f"ruff {' '.join(command)}:\n{done.stdout}{done.stderr}"


def test_importing_funcprop_does_not_import_hypothesis():
    code = "import sys, funcprop, funcprop.nn, funcprop.train; print('hypothesis' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
