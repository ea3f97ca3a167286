"""The README's Python examples run, as a user would run them, and print what it shows."""

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _blocks():
    """(language, body) of every fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _python_examples():
    """(code, the output block right after it, or None)."""
    blocks = _blocks()
    found = []
    for i, (lang, body) in enumerate(blocks):
        if lang == "python":
            nxt = blocks[i + 1] if i + 1 < len(blocks) else None
            found.append((body, nxt[1] if nxt and nxt[0] == "" else None))
    return found


def _run(code: str, cwd) -> str:
    # A fresh interpreter: the suite's x64 and strict-promotion settings must not leak in;
    # in a folder of its own, where an example may write its files.
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    "code, shown", _python_examples(), ids=lambda x: (x or "").strip().splitlines()[0][:30] if x else ""
)
def test_readme_example(code, shown, tmp_path):
    tests = re.findall(r"^def (test_\w+)\(", code, flags=re.M)
    prelude = "import jax\njax.config.update('jax_enable_x64', True)\n" if tests else ""
    out = _run(prelude + code + "".join(f"\n{t}()" for t in tests), tmp_path)
    if shown is not None:
        if tests:  # a report table: the same rows, checks and verdicts
            assert [line.split()[:2] + line.split()[-1:] for line in out.strip().splitlines()[2:]] == [
                line.split()[:2] + line.split()[-1:] for line in shown.strip().splitlines()[2:]
            ]
        else:
            assert out.strip() == shown.strip()


def test_readme_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pip install -e '.[test]' && python -m pytest" in text
    assert "python -m pip install -e '.[test]' && python -m pytest" in ci
