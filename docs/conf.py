"""Sphinx configuration for funcprop's documentation site.

Build it with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
Every ``{code-cell}`` on a page runs at build time (myst-nb, a fresh kernel per page):
a cell that raises, or an ``assert`` on a measured figure that no longer holds, fails
the build. Math is typeset by a MathJax 3 copied from a Python package into the site
(``_ext/offline_mathjax.py``), so no page loads anything from outside it.
"""

import os
import sys

import funcprop

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

project = "funcprop"
author = "the funcprop developers"
copyright = "2026, the funcprop developers"
release = version = funcprop.__version__

extensions = [
    "myst_nb",  # Markdown pages (MyST) whose code cells run at build time
    "sphinx.ext.autodoc",  # the API reference from the docstrings
    "sphinx.ext.napoleon",  # Google-style docstrings
    "sphinx.ext.viewcode",  # each documented name links to its source lines
    "offline_mathjax",  # docs/_ext: MathJax 3 copied into _static, no CDN
]

exclude_patterns = ["_build", "**/.ipynb_checkpoints"]
suppress_warnings = ["myst.header"]  # the measurement records start at level 2

# MyST: $…$ and $$…$$ math, ::: fences, definition lists
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Execution: every page's code, every build; a failing cell fails the build
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_timeout = 600
nb_merge_streams = True
# each page's kernel inherits this: no GPU or TPU probing, the figures are CPU figures
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# the API reference
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # a NamedTuple's fields once, not again as attributes

html_theme = "furo"
html_title = f"funcprop {release}"
html_static_path = ["_static"]
html_css_files = ["funcprop.css"]
html_favicon = "_static/favicon.svg"  # served by the site itself (a browser asks for one)
html_show_sourcelink = True
html_theme_options = {"navigation_with_keys": True}
