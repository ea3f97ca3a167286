"""pytest plugin: the ``assert_vjp`` fixture, a gradient check inside any test.

Installed with funcprop (the ``pytest11`` entry point ``funcprop``), so a test of your
own rule needs no conftest::

    def test_my_rule(assert_vjp):
        assert_vjp(my_rule, x, reference=my_plain)

``assert_vjp(fn, *args, reference=None, **options)`` runs
:func:`funcprop.check.check_vjp` (``options`` are its keyword arguments) and fails the
test with the report's table where a check fails. Command-line options, each also an
ini option with ``_`` for ``-`` (``funcprop_dtypes = float32,bfloat16``); the command
line wins:

- ``--funcprop-dtypes=float32,bfloat16``: check once per dtype, every floating leaf of
  the args cast to it (integer leaves as they are). Names: float16, bfloat16, float32,
  float64. float64 needs ``jax_enable_x64``: where it is off at the call, float64 is
  not checked and a :class:`FuncpropPluginWarning` says so (the test is skipped if no
  dtype is left). Without the option the args are checked as given.
- ``--funcprop-transforms=vmap,remat``: names from
  :data:`funcprop.check.TRANSFORMS`, added to the call's ``transforms=``.
- ``--funcprop-seed=N``: ``key=jax.random.key(N)`` where the call passes no ``key=``.

The plugin has no autouse fixture and changes no JAX setting; ``assert_vjp`` is
session-scoped, so it can be used under Hypothesis's ``@given``.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest

__all__ = ["DTYPES", "AssertVjp", "FuncpropPluginWarning", "Options", "assert_vjp", "parse_options"]

DTYPES = ("float16", "bfloat16", "float32", "float64")
"""The dtype names ``--funcprop-dtypes`` accepts."""

_OPTIONS = {  # name: help
    "dtypes": "check each assert_vjp once per dtype, the args' floating leaves cast to it: "
    "a comma-separated list of " + ", ".join(DTYPES) + " (float64 only where jax_enable_x64 is on)",
    "transforms": "add these check_vjp transforms to every assert_vjp: a comma-separated list "
    "of names from funcprop.check.TRANSFORMS (vmap,remat)",
    "seed": "the seed of assert_vjp's random cotangents and perturbations, key=jax.random.key(N), where a call passes no key=",
}


class FuncpropPluginWarning(UserWarning):
    """A dtype asked for on the command line that a call could not check."""


@dataclasses.dataclass(frozen=True)
class Options:
    """The plugin's options, parsed: None (or empty) where not set."""

    dtypes: tuple[str, ...] | None = None
    transforms: tuple[str, ...] = ()
    seed: int | None = None

    def header(self) -> str | None:
        parts = []
        if self.dtypes is not None:
            parts.append("dtypes=" + ",".join(self.dtypes))
        if self.transforms:
            parts.append("transforms=" + ",".join(self.transforms))
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return ", ".join(parts) or None


_OPTIONS_KEY = pytest.StashKey[Options]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("funcprop", "funcprop gradient checks (the assert_vjp fixture)")
    for name, text in _OPTIONS.items():
        group.addoption(f"--funcprop-{name}", dest=f"funcprop_{name}", default=None, metavar=name.upper(), help=text)
        parser.addini(f"funcprop_{name}", f"{text} (--funcprop-{name} overrides it)", default="")


def _names(label: str, value: str, allowed) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        what = f"unknown {', '.join(map(repr, unknown))}" if unknown else f"no names in {value!r}"
        raise pytest.UsageError(f"{label}: {what}; choose from {', '.join(allowed)}, comma-separated")
    return names


def parse_options(
    dtypes: str | None = None, transforms: str | None = None, seed: str | None = None, *, labels=None
) -> Options:
    """:class:`Options` from the raw option values (None where not set); raises
    ``pytest.UsageError`` naming the option (``labels[name]``, by default the
    command-line flag) and what it accepts."""
    labels = {name: f"--funcprop-{name}" for name in _OPTIONS} | dict(labels or {})
    parsed_seed = None
    if seed is not None:
        try:
            parsed_seed = int(seed)
        except ValueError:
            parsed_seed = -1
        if not 0 <= parsed_seed < 2**63:
            raise pytest.UsageError(f"{labels['seed']}: {seed!r} is not an integer from 0 to 2**63 - 1; pass e.g. 0")
    chosen_transforms = ()
    if transforms is not None:
        from funcprop.check import TRANSFORMS

        chosen_transforms = _names(labels["transforms"], transforms, TRANSFORMS)
    return Options(
        dtypes=None if dtypes is None else _names(labels["dtypes"], dtypes, DTYPES),
        transforms=chosen_transforms,
        seed=parsed_seed,
    )


def pytest_configure(config: pytest.Config) -> None:
    raw, labels = {}, {}
    for name in _OPTIONS:
        value = config.getoption(f"funcprop_{name}")  # the command line wins over the ini file
        if value is None:
            value = config.getini(f"funcprop_{name}").strip() or None
            labels[name] = f"ini option funcprop_{name}"
        raw[name] = value
    config.stash[_OPTIONS_KEY] = parse_options(**raw, labels=labels)


def pytest_report_header(config: pytest.Config) -> str | None:
    options = config.stash.get(_OPTIONS_KEY, None)
    header = options.header() if options is not None else None
    return f"funcprop assert_vjp: {header}" if header else None


def _cast(args, dtype):
    """args with every floating leaf (array or Python float) cast to ``dtype``."""
    import jax
    import jax.numpy as jnp

    def cast(x):
        if isinstance(x, float) or (hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)):
            return jnp.asarray(x).astype(dtype)
        return x

    return jax.tree.map(cast, args)


def _float_dtypes(args) -> str:
    import jax
    import jax.numpy as jnp

    names = [jnp.asarray(x).dtype for x in jax.tree.leaves(args)]
    return ", ".join(dict.fromkeys(n.name for n in names if jnp.issubdtype(n, jnp.floating))) or "no float leaves"


def _x64_on() -> bool:
    import jax
    import jax.numpy as jnp

    return jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64


class AssertVjp:
    """The ``assert_vjp`` fixture's value: call it as
    ``assert_vjp(fn, *args, reference=None, **check_vjp_options)``."""

    def __init__(self, options: Options):
        self.options = options

    def __repr__(self) -> str:
        return f"<assert_vjp {self.options.header() or '(no --funcprop- options)'}>"

    def __call__(self, fn, *args, reference=None, **check_options):
        """check_vjp(fn, *args, reference=..., **check_options), once per dtype chosen on
        the command line; fails the test with the report where a check fails.

        Returns the report, or the list of reports (one per dtype checked) where
        ``--funcprop-dtypes`` is set.
        """
        __tracebackhide__ = True
        from funcprop.check import GradientCheckError, check_vjp

        if "raise_on_fail" in check_options:
            raise TypeError(
                "assert_vjp fails the test on any failed check, so it takes no raise_on_fail=; "
                "call funcprop.check.check_vjp(..., raise_on_fail=False) for the report alone"
            )
        options = self.options
        if options.transforms:
            given = check_options.get("transforms", ())
            given = (given,) if isinstance(given, str) else tuple(given)
            check_options["transforms"] = tuple(dict.fromkeys([*given, *options.transforms]))
        if options.seed is not None and check_options.get("key") is None:
            import jax

            check_options["key"] = jax.random.key(options.seed)
        name = getattr(fn, "__name__", None) or type(fn).__name__
        if options.dtypes is None:
            runs = [(None, args)]
        else:
            dtypes = list(options.dtypes)
            if "float64" in dtypes and not _x64_on():
                dtypes.remove("float64")
                warnings.warn(
                    f"assert_vjp({name}): float64 not checked: jax_enable_x64 is off "
                    f"(jax.config.update('jax_enable_x64', True) in conftest.py turns it on)",
                    FuncpropPluginWarning,
                    stacklevel=2,
                )
                if not dtypes:
                    pytest.skip("--funcprop-dtypes: float64 needs jax_enable_x64, which is off")
            runs = [(dtype, _cast(args, dtype)) for dtype in dtypes]
        reports, failures = [], []
        for dtype, cast_args in runs:
            try:
                reports.append(check_vjp(fn, *cast_args, reference=reference, **check_options))
            except GradientCheckError as e:
                text = str(e)
                if str(e.report) not in text:
                    text += "\n\n" + str(e.report)
                failures.append((f"in {dtype}" if dtype else f"in {_float_dtypes(args)} (the args as given)", text))
        if failures:  # outside the except: no chained traceback of the checker's frames
            head = f"assert_vjp({name}) failed {' and '.join(where for where, _ in failures)}"
            if len(runs) == 1:
                pytest.fail(f"{head}\n\n{failures[0][1]}")
            body = "\n\n".join(f"--- {where} ---\n{text}" for where, text in failures)
            pytest.fail(f"{head} ({len(failures)} of {len(runs)} dtypes)\n\n{body}")
        return reports if options.dtypes is not None else reports[0]


@pytest.fixture(scope="session")
def assert_vjp(pytestconfig: pytest.Config) -> AssertVjp:
    """``assert_vjp(fn, *args, reference=None, **check_vjp_options)``: the gradient check
    of :func:`funcprop.check.check_vjp`, failing the test with its table; once per
    ``--funcprop-dtypes`` dtype, with ``--funcprop-transforms`` and ``--funcprop-seed``.
    Returns the report (a list of them with ``--funcprop-dtypes``)."""
    return AssertVjp(pytestconfig.stash.get(_OPTIONS_KEY, Options()))
