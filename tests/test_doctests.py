"""The docstrings' examples run as doctests: every ``>>>`` in funcprop, module by module.

Each module's examples run in a namespace of their own holding ``jax`` and ``jnp``
(as a reader would have them) and the module's own names. Under this suite float64 is
enabled, so the examples print nothing that depends on it.
"""

import doctest
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import pytest

import funcprop

OPTIONAL = {"funcprop.bench_torch"}  # needs torch, an optional comparison


def _modules() -> list[str]:
    names = ["funcprop"]
    for info in pkgutil.walk_packages(funcprop.__path__, "funcprop."):
        names.append(info.name)
    return sorted(n for n in names if n not in OPTIONAL)


def _with_examples() -> list[str]:
    finder = doctest.DocTestFinder()
    return [n for n in _modules() if any(t.examples for t in finder.find(importlib.import_module(n)))]


WITH_EXAMPLES = _with_examples()


def test_the_docstrings_carry_examples():
    # the rules, the layers, the backprop, the checker and training each show one
    for module in ("funcprop.rules.linear", "funcprop.nn.models", "funcprop.backprop", "funcprop.check.vjp"):
        assert module in WITH_EXAMPLES, module


@pytest.mark.usefixtures("standard_promotion")
@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, globs={**vars(module), "jax": jax, "jnp": jnp}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (output above)"
