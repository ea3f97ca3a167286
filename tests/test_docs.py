"""The documentation site builds in strict mode, documents every public name, and renders
in a real browser with nothing loaded from outside localhost.

The build is the README's command: every page's code runs (a failing cell or a figure
that no longer holds fails it) and a warning is an error. It lands in ``docs/_build``:
the site in ``html/``, and the browser check's screenshot of one derivation page,
the build's artifact. The browser check needs Debian's chromium; ``.ci/run`` installs
it and sets ``FUNCPROP_REQUIRE_BROWSER=1``, so there a missing browser fails the test,
and elsewhere it skips only the browser part, after the build has passed.
"""

import importlib
import inspect
import os
import pathlib
import subprocess
import sys

import pytest

import funcprop

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OUT = DOCS / "_build"
BUILD = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-j", "auto", "-b", "html", "docs", "docs/_build/html"]
# the modules whose public names the API reference must hold: __all__ where a module has
# one, else the functions and classes it defines without a leading underscore
MODULES = ["funcprop", *(f"funcprop.{m}" for m in funcprop.SUBMODULES), "funcprop.testing.strategies"]
sys.path.insert(0, str(DOCS))
import browser_check  # noqa: E402  (docs/browser_check.py, also run by hand)


def public_names(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n
            for n, obj in vars(module).items()
            if not n.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__ == module_name
        ]
    return [f"{module_name}.{n}" for n in names if not inspect.ismodule(getattr(module, n))]


def documented_names(site: pathlib.Path) -> set[str]:
    from sphinx.util.inventory import InventoryFile

    with open(site / "objects.inv", "rb") as f:
        inventory = InventoryFile.load(f, "", lambda base, uri: uri)
    return {name for kind, entries in inventory.items() if kind.startswith("py:") for name in entries}


def resolve(name: str):
    """The object a dotted public name refers to, or None."""
    module_name, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return None


def is_documented(name: str, documented: set[str]) -> bool:
    """Documented under this name, or, for a function or class re-exported from another
    module (``funcprop.rules.dense`` is ``funcprop.dense``), under the name of its page."""
    if name in documented:
        return True
    obj = resolve(name)
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        return False
    return any(resolve(d) is obj for d in documented if d.rpartition(".")[2] == name.rpartition(".")[2])


def test_public_names_of_a_module():
    assert "funcprop.dense" in public_names("funcprop")
    assert "funcprop.nn" not in public_names("funcprop")  # submodules have pages of their own
    assert "funcprop.backprop.value_and_grad" in public_names("funcprop.backprop")
    assert not any(n.split(".")[-1].startswith("_") for n in public_names("funcprop.train"))


def test_a_reexport_counts_as_documented_under_its_page_name():
    assert is_documented("funcprop.rules.dense", {"funcprop.dense"})
    assert not is_documented("funcprop.rules.dense", {"funcprop.relu"})
    assert not is_documented("funcprop.check.FD_STEP", {"funcprop.check.funcprop.check.FD_STEP"})


def test_raw_tex_pattern():
    for text in (r"the \frac{a}{b} here", "cost $O(N)$ here", r"\(x\)", "$$x$$", r"\begin{aligned}"):
        assert browser_check.RAW_TEX.search(text), text
    for text in ("costs $5 and $6", "O(N) memory", "a price: $", "x_k = β + Ω h"):
        assert not browser_check.RAW_TEX.search(text), text


def test_site_builds_strict_documents_every_name_and_renders():
    done = subprocess.run(BUILD, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-8000:] + done.stdout[-2000:]
    site = OUT / "html"
    documented = documented_names(site)
    missing = [n for m in MODULES for n in public_names(m) if not is_documented(n, documented)]
    assert not missing, f"public names missing from the API reference (docs/api/*.rst): {missing}"
    pages = browser_check.pages_of(site)
    derivations = [p for p in pages if p.startswith("derivations/") and p != "derivations/index.html"]
    assert len(derivations) >= 8, derivations  # one page per family of rules
    if browser_check.chromium_path() is None and not os.environ.get("FUNCPROP_REQUIRE_BROWSER"):
        pytest.skip("the site built; no chromium here for the browser check (apt-get install chromium)")
    screenshot = OUT / "derivation-page.png"
    screenshot.unlink(missing_ok=True)
    problems = browser_check.check_site(site, screenshot=screenshot)
    assert not problems, "\n".join(problems)
    assert screenshot.stat().st_size > 10_000  # a page, not an empty image
