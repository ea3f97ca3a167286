"""MathJax 3 served from the site itself, so the math renders with no network.

The MathJax files come from the ``sphinx-mathjax-offline`` package (a copy of MathJax
3.2, fonts included); this extension points Sphinx's MathJax at them and copies them
into ``_static/mathjax`` after a build. It replaces that package's own extension only
to declare itself safe for parallel builds (``-j``).
"""

import importlib.util
import pathlib

from sphinx.util.fileutil import copy_asset

_PACKAGE = "sphinx-mathjax-offline"  # the distribution's module name has hyphens


def _mathjax_dir() -> pathlib.Path:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"offline_mathjax: the {_PACKAGE} package is not installed; pip install -e '.[docs]'")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax"


def _copy(app, exc):
    if exc is None and app.builder.format == "html":
        copy_asset(str(_mathjax_dir()), str(pathlib.Path(app.outdir) / "_static" / "mathjax"))


def setup(app):
    _mathjax_dir()  # fail at the start of a build, not at its end
    app.config.mathjax_path = "mathjax/tex-chtml.js"
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
