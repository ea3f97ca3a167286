"""The README's Python examples run, as a user would run them, and print what it shows."""

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _blocks():
    """(language, body) of every fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _run(code: str) -> str:
    # A fresh interpreter: the suite's x64 and strict-promotion settings must not leak in.
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_seed_network_example_prints_what_the_readme_shows():
    blocks = _blocks()
    i = next(i for i, (lang, body) in enumerate(blocks) if "sizes = [2, 4, 7, 3, 2]" in body)
    lang, shown = blocks[i + 1]
    assert lang == "" and shown.startswith("loss ")
    assert _run(blocks[i][1]).strip() == shown.strip()
