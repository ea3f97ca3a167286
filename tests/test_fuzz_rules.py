"""Fuzzing every rule of ``funcprop.rules.table`` with adversarial shapes, dtypes, values
and static arguments.

Each drawn case either computes what the plain twin computes, or is refused at trace
time with a ValueError/TypeError whose message starts with the rule's name. Computing
means: the forward equals the twin's (NaN where the twin has NaN, the same ±Inf), in the
dtype DESIGN §7 promises (a loss returns float32 at least, any other rule its input's
float dtype); and the VJP equals ``jax.vjp`` of the twin, each cotangent in its input's
dtype, within a tolerance tied to that dtype. Any other exception fails the case.

The rules are swept from the table, grouped by rule: a rule added with its row is
fuzzed without a change here. Each case starts from one of the rule's rows and changes
one thing, so most draws reuse a row's shapes and JAX compiles little:

- shape: one size renamed in every argument (to 0, 1 or one more: an empty batch, 0
  features, 0 classes), one argument's shape one edit away, or one argument of any
  shape (rank 0 to 5);
- dtype: every float argument in one float dtype (float16, bfloat16, float32, float64),
  and one argument possibly of any dtype (integers, bool, complex);
- value: the row's shapes in one float dtype, with NaN, ±Inf, ±1e30, the dtype's
  extremes and subnormals among normal values; integer ids with out-of-range,
  negative and extreme entries;
- static: one static argument (an axis, a window, a padding, a rate, an eps, a key)
  replaced by a plausible wrong one.

The settings profile below is derandomized (the same cases on every run) and sized so
that this file and ``test_fuzz_layers.py`` take about a minute on two cores;
``FUNCPROP_FUZZ_EXAMPLES=200`` runs more cases per test.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, scaled_relative_error
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from funcprop.rules._core import accumulation_dtype, is_int
from funcprop.rules.table import RULES
from funcprop.testing import strategies as fst

settings.register_profile(
    "funcprop-fuzz",
    max_examples=int(os.environ.get("FUNCPROP_FUZZ_EXAMPLES", 6)),
    deadline=None,  # the first draw of a shape compiles
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("funcprop-fuzz")

# Tolerances tied to precision: helpers' for float32 and float64, eight roundings of the
# half-precision dtypes, where the rule's formula and autodiff of the twin round apart.
TOLERANCE = {**RTOL, **{np.dtype(d): 8 * float(jnp.finfo(d).eps) for d in (jnp.float16, jnp.bfloat16)}}

ROWS: dict[str, list] = {}
for _case in RULES:
    ROWS.setdefault(_case.rule.__name__, []).append(_case)
EXAMPLES = {case.name: case.args(jax.random.key(0), jnp.float64) for case in RULES}


def is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def is_loss(rule) -> bool:
    """A rule of ``rules/losses.py``: DESIGN §7 has it return float32 at least."""
    return rule.__module__ in ("funcprop.rules.losses", "funcprop.rules.lm_head")


# --- comparison ------------------------------------------------------------------------


def assert_like(actual, expected, what: str, *, where=None, rtol=None):
    """Same shape and dtype; NaN exactly where expected has NaN, the same ±Inf; finite
    entries within ``rtol``, by default the dtype's tolerance (scaled relative error, as
    in helpers). Only the entries ``where`` is True are compared, if given."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, expected {expected.dtype}"
    dtype = np.dtype(actual.dtype)
    if dtype.kind in "biu":  # ids, masks: exactly
        np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected), err_msg=what)
        return
    if dtype.kind == "c":  # the real and the imaginary parts, each in the parts' dtype
        for part in (np.real, np.imag):
            assert_like(part(np.asarray(actual)), part(np.asarray(expected)), what, where=where, rtol=rtol)
        return
    a, b = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if where is not None:
        a, b = np.where(where, a, 0.0), np.where(where, b, 0.0)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if (nan_a != nan_b).any():
        i = tuple(np.argwhere(nan_a != nan_b)[0])
        raise AssertionError(f"{what}: NaN pattern differs at {i}: got {a[i]}, expected {b[i]}")
    same = (a == b) | nan_a  # equal entries, ±Inf included, and NaN against NaN
    if same.all():
        return
    # below the smallest normal number a dtype has no relative precision (and XLA may
    # flush such values to 0): differences there count as equal
    with np.errstate(invalid="ignore"):  # ∞ − ∞
        same |= np.abs(a - b) <= float(jnp.finfo(dtype).tiny)
    finite = np.isfinite(a) & np.isfinite(b)  # the scale max|b| is the finite entries'
    if (~same & ~finite).any():
        i = tuple(np.argwhere(~same & ~finite)[0])
        raise AssertionError(f"{what}: ±Inf differs at {i}: got {a[i]}, expected {b[i]}")
    err = np.where(same, 0.0, scaled_relative_error(np.where(finite, a, 0.0), np.where(finite, b, 0.0)))
    tol = TOLERANCE[dtype] if rtol is None else rtol
    if not err.max() <= tol:
        i = np.unravel_index(np.argmax(err), err.shape)
        raise AssertionError(f"{what}: error {err.max():.3g} > {tol:g} at {i}: got {a[i]!r}, expected {b[i]!r}")


# --- running a case ----------------------------------------------------------------------


def _split(kwargs):
    """(static items, array kwargs): a key is an argument of the program, the rest is
    part of what it is compiled for."""
    arrays = {k: v for k, v in kwargs.items() if isinstance(v, (jax.Array, np.ndarray))}
    return tuple(sorted((k, v) for k, v in kwargs.items() if k not in arrays)), arrays


# Fuzz programs are small and each runs a few times: XLA's backend optimizations
# (LLVM's) cost more than they save, about 3x the compile time on two cores. Rule and
# twin share the program, so they are compiled alike.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.partial(jax.jit, static_argnums=(0, 1), compiler_options=FAST_COMPILE)
def _rule_and_twin(rule, static, array_kwargs, args, ct):
    """Forward and VJP of the rule and of its twin (through the rule's prepare) under
    the cotangent ct: one compilation per rule, static arguments, shapes and dtypes."""
    kwargs = {**dict(static), **array_kwargs}
    vjp_rule = rule.vjp_rule
    float_pos = [i for i, a in enumerate(args) if is_float(a)]

    def of_floats(fn):
        def f(*floats):
            full = list(args)
            for i, x in zip(float_pos, floats):
                full[i] = x
            return fn(*full, **kwargs)

        return f

    floats = [args[i] for i in float_pos]
    out, rule_vjp = jax.vjp(of_floats(rule), *floats)
    twin_out, twin_vjp = jax.vjp(of_floats(lambda *a, **k: vjp_rule.twin(*vjp_rule.prepare(*a, **k))), *floats)
    return out, twin_out, rule_vjp(ct), twin_vjp(ct)


def check_case(rule, args, kwargs, seed: int) -> str:
    """The contract of one case; returns ``"refused"`` or ``"computed"`` (an event)."""
    name = rule.__name__
    try:
        out = jax.eval_shape(lambda *a: rule(*a, **kwargs), *args)  # traces, compiles nothing
    except (ValueError, TypeError) as e:
        assert str(e).startswith(f"{name}: "), f"{name} raised {type(e).__name__} without naming itself: {e}"
        return "refused"
    float_args = [(i, a) for i, a in enumerate(args) if is_float(a)]
    in_dtype = float_args[0][1].dtype
    want = accumulation_dtype(in_dtype) if is_loss(rule) else in_dtype
    assert out.dtype == want, f"{name}: output dtype {out.dtype} for {in_dtype} inputs, expected {want}"
    static, array_kwargs = _split(kwargs)
    ct = jnp.asarray(np.random.default_rng(seed).standard_normal(out.shape), out.dtype)
    out, twin_out, rule_cts, twin_cts = _rule_and_twin(rule, static, array_kwargs, args, ct)
    assert_like(out, twin_out, f"{name} forward")
    for k, ((i, x), got, ref) in enumerate(zip(float_args, rule_cts, twin_cts)):
        assert got.dtype == x.dtype, f"{name}: cotangent of argument {i} is {got.dtype}, the input {x.dtype}"
        assert_cotangent_like(
            got,
            ref,
            f"{name} cotangent of argument {i}",
            twin_error=lambda k=k: _twin_rounding_error(rule, static, array_kwargs, args, ct, k),
        )
    return "computed"


def assert_cotangent_like(got, ref, what: str, *, rtol=None, twin_error=None):
    """assert_like for a cotangent, ``ref`` from autodiff of the twin.

    Compared where ``ref`` is finite: where it is not, autodiff met ∞ − ∞ or 0 · ∞ inside
    the chain rule, and the hand-derived formula may keep the limit (gelu'(±∞) is 1 or
    0, rms_norm's x̄ at 1e308 is 0, not NaN). If they differ by more than the dtype's
    tolerance, ``twin_error()`` (the twin's own rounding error there) widens it: an
    ill-conditioned result, such as rms_norm's x̄ over one feature (γḡε/(x² + ε)^{3/2},
    the difference of two nearly equal terms), has no more digits in the twin either.
    """
    where = np.isfinite(np.asarray(ref, np.float64))
    try:
        assert_like(got, ref, what, where=where, rtol=rtol)
    except AssertionError:
        if twin_error is None:
            raise
        tol = (TOLERANCE[np.dtype(got.dtype)] if rtol is None else rtol) + 4 * twin_error()
        assert_like(got, ref, f"{what} (tolerance widened by the twin's own rounding error)", where=where, rtol=tol)


def _twin_rounding_error(rule, static, array_kwargs, args, ct, k: int) -> float:
    """The scaled error of the twin's k-th float cotangent, estimated by computing it again
    in another precision: against float64 for a lower dtype; for float64, float32's error
    scaled down by eps64/eps32. 0 where that is not finite. Runs only on a mismatch."""
    dtype = np.dtype(next(a.dtype for a in args if is_float(a)))
    other = np.dtype(np.float32 if dtype == np.float64 else np.float64)
    moved = tuple(a.astype(other) if is_float(a) else a for a in args)
    kwargs = {**dict(static), **array_kwargs}
    out = jax.eval_shape(lambda *a: rule(*a, **kwargs), *moved)
    here = _rule_and_twin(rule, static, array_kwargs, args, ct)[3][k]
    there = _rule_and_twin(rule, static, array_kwargs, moved, ct.astype(out.dtype))[3][k]
    with np.errstate(all="ignore"):
        a, b = (np.asarray(here, np.float64), np.asarray(there, np.float64))
        finite = np.isfinite(a) & np.isfinite(b)
        err = scaled_relative_error(np.where(finite, a, 0.0), np.where(finite, b, 0.0)).max(initial=0.0)
    if dtype == np.float64:
        err *= float(jnp.finfo(np.float64).eps / jnp.finfo(np.float32).eps)
    return float(err) if np.isfinite(err) else 0.0


# --- the cases ---------------------------------------------------------------------------

IDS = st.integers(-2, 7)  # class ids and token ids, some outside the rows' [0, 5)


def _array_like(draw, example, shape, dtype=None, elements="normal"):
    dtype = example.dtype if dtype is None else dtype
    if not is_float(example) and elements == "normal":
        elements = IDS
    return draw(fst.arrays(dtype, shape, elements=elements))


@st.composite
def shape_cases(draw, rows):
    case = draw(st.sampled_from(rows))
    args = EXAMPLES[case.name]
    shapes = [a.shape for a in args]
    how = draw(st.sampled_from(["resize", "mismatch", "any"]))
    if how == "resize":  # the same size everywhere it occurs: n_in in h and omega alike
        old = draw(st.sampled_from(sorted({n for s in shapes for n in s})))
        new = draw(st.sampled_from(sorted({0, 1, old + 1} - {old})))
        shapes = [tuple(new if n == old else n for n in s) for s in shapes]
    else:
        i = draw(st.integers(0, len(args) - 1))
        shapes[i] = draw(fst.mismatched_shapes(shapes[i]) if how == "mismatch" else fst.shapes(0, 5, max_side=3))
    event(f"shape: {how}")
    return case.rule, [tuple(_array_like(draw, a, s) for a, s in zip(args, shapes))], case.kwargs


@st.composite
def dtype_cases(draw, rows):
    case = draw(st.sampled_from(rows))
    args = EXAMPLES[case.name]
    shared = draw(fst.float_dtypes())
    odd = draw(st.integers(-1, len(args) - 1))  # the argument of any dtype; -1: none
    dtypes = [draw(fst.dtypes()) if i == odd else shared if is_float(a) else a.dtype for i, a in enumerate(args)]
    with np.errstate(invalid="ignore", over="ignore"):
        new = tuple(jnp.asarray(np.asarray(a).astype(d)) for a, d in zip(args, dtypes))
    event(f"dtype: {'mixed' if odd >= 0 else shared}")
    return case.rule, [new], case.kwargs


VALUE_DRAWS = 3  # value sets per drawn row and dtype: one compilation, three checks

# attention's scores are sums of products of q and k: one huge or infinite entry makes
# ±∞ scores, where 0 · ∞ and ∞ − ∞ are resolved differently from one compilation to the
# next (the jitted twin's NaN pattern differed from the eager twin's on 86 of 300 such
# draws), so the reference has no stable answer to compare with; and on moderate values
# Hypothesis shrinks to degenerate inputs (equal value rows) whose dq is 0 in exact
# arithmetic, all rounding noise in the twin, which a relative comparison cannot judge.
# Its values are tested in test_rules.py (the table) and test_attention.py (NaN
# propagation, masked rows, peers); its shapes and dtypes are fuzzed here.
VALUE_FUZZ_SKIPPED = {"attention": "no stable reference on adversarial values (see VALUE_FUZZ_SKIPPED)"}


@st.composite
def value_cases(draw, rows):
    case = draw(st.sampled_from(rows))
    args = EXAMPLES[case.name]
    dtype = draw(fst.float_dtypes())
    event(f"value: {dtype}")
    return (
        case.rule,
        [
            tuple(_array_like(draw, a, a.shape, dtype if is_float(a) else None, "adversarial") for a in args)
            for _ in range(VALUE_DRAWS)
        ],
        case.kwargs,
    )


def wrong_static(value) -> st.SearchStrategy:
    """Plausible wrong values in place of a static argument like ``value``."""
    if isinstance(value, bool):
        return st.sampled_from([not value, 0, 1, None, "yes"])
    if is_int(value):
        return st.sampled_from([-3, -2, -1, 0, 1, 2, 4, True, 2.0, None])
    if isinstance(value, float):
        return st.sampled_from([0.0, -0.5, 0.5, 1.0, math.nan, math.inf, 1e30, True, None, np.float32(0.1)])
    if isinstance(value, str):
        return st.sampled_from(["VALID", "SAME", "same", "FULL", ""])
    if isinstance(value, tuple):
        small = st.sampled_from([-1, 0, 1, 2, 3, True])
        return st.one_of(
            st.lists(small, min_size=1, max_size=3).map(tuple),
            small,
            st.tuples(st.tuples(small, small), st.tuples(small, small)),
        )
    return st.sampled_from([None, 0, "key", np.zeros(3, np.uint32), jax.random.split(jax.random.key(0))])


@st.composite
def static_cases(draw, rows):
    case = draw(st.sampled_from([r for r in rows if r.kwargs]))
    name = draw(st.sampled_from(sorted(case.kwargs)))
    kwargs = {**case.kwargs, name: draw(wrong_static(case.kwargs[name]))}
    event(f"static: {name}")
    return case.rule, [EXAMPLES[case.name]], kwargs


CLASSES = {"shape": shape_cases, "dtype": dtype_cases, "value": value_cases, "static": static_cases}
PARAMS = [
    pytest.param(kind, name, id=f"{kind}-{name}")
    for kind in CLASSES
    for name, rows in ROWS.items()
    if kind != "static" or any(r.kwargs for r in rows)
]


@pytest.mark.parametrize("kind, rule_name", PARAMS)
def test_rule_computes_like_its_twin_or_refuses_by_name(kind, rule_name):
    if kind == "value" and rule_name in VALUE_FUZZ_SKIPPED:
        pytest.skip(VALUE_FUZZ_SKIPPED[rule_name])

    @FUZZ
    @given(case=CLASSES[kind](ROWS[rule_name]), seed=st.integers(0, 2**16))
    def fuzz(case, seed):
        rule, arg_sets, kwargs = case
        for args in arg_sets:
            event(check_case(rule, args, kwargs, seed))

    fuzz()
