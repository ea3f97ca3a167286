"""funcprop.check.check_vjp: passes every rule, catches wrong ones, reports where."""

import json
import re
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest

from funcprop.check import GradientCheckError, check_vjp, default_rtol
from funcprop.rules.linear import dense, dense_twin
from funcprop.rules.losses import mse, softmax_cross_entropy
from funcprop.rules.table import RULES, rule_names


def _normal(key, *shape, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(key), shape, dtype)


def _case(name):
    return next(case for case in RULES if case.name == name)


def _rule(forward, bwd):
    """``jax.custom_vjp(forward)``: fwd keeps the inputs, ``bwd(inputs, g)`` is given."""
    rule = jax.custom_vjp(forward)
    rule.defvjp(lambda *args: (forward(*args), args), bwd)
    return rule


# --- every rule in the table passes ----------------------------------------------


@pytest.mark.parametrize("case", RULES, ids=rule_names())
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_passes_on_every_rule(case, dtype):
    report = check_vjp(case.rule, *case.args(jax.random.key(0), dtype), kwargs=case.kwargs)
    assert report.passed
    assert {"output", "vjp", "finite-diff"} == {row.check for row in report.rows}
    assert report.reference == case.twin.__name__  # the default reference: the twin


def test_vmap_and_second_order_pass_with_an_integer_leaf():
    logits, ids = _normal(0, 6, 5), jnp.arange(6) % 5
    report = check_vjp(softmax_cross_entropy, logits, ids, vmap=True, second_order=True)
    assert [(r.check, r.leaf) for r in report.rows] == [
        ("output", "out"),
        ("vjp", "args[0]"),
        ("finite-diff", "args[0]"),
        ("vmap", "out"),
        ("vmap", "args[0]"),
        ("second-order", "args[0]"),
    ]  # the integer class ids, args[1], are held fixed: no row
    assert report.passed


# --- wrong rules are caught, their correct versions pass --------------------------


def _mean_cross_entropy(logits, ids):
    log_p = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_p, ids[:, None], axis=1))


def _cross_entropy_bwd(batch_scale):
    def bwd(res, g):
        logits, ids = res
        one_hot = jax.nn.one_hot(ids, logits.shape[-1], dtype=logits.dtype)
        return g * batch_scale(logits) * (jax.nn.softmax(logits) - one_hot), None

    return bwd


def _mse(pred, target):
    return jnp.mean((pred - target) ** 2)


def _mse_bwd(swap):
    def bwd(res, g):
        pred, target = res
        pred_bar = 2 * g * (pred - target) / pred.size
        return (-pred_bar, pred_bar) if swap else (pred_bar, -pred_bar)

    return bwd


class Bug(NamedTuple):
    name: str
    forward: Callable
    args: tuple
    right: Callable  # bwd(inputs, g) -> cotangents
    wrong: Callable
    leaves: set  # the leaves whose cotangent the bug breaks


_H, _H4 = _normal(1, 5, 3), _normal(1, 5, 4)
_OMEGA, _OMEGA4, _BETA = _normal(2, 4, 3), _normal(2, 4, 4), _normal(3, 4)

BUGS = [
    # Ωᵀ δ written Ω δ: H̄ = Δ Ωᵀ instead of Δ Ω. On a non-square layer that is a shape
    # error JAX reports; on a square one it runs silently, which is what needs a checker.
    Bug(
        "dense/omega-not-transposed",
        dense_twin,
        (_H4, _OMEGA4, _BETA),
        lambda r, d: (d @ r[1], d.T @ r[0], d.sum(0)),
        lambda r, d: (d @ r[1].T, d.T @ r[0], d.sum(0)),
        {"args[0]"},
    ),
    # The same bug on a non-square layer, made to fit: Ω reshaped to (n_in, n_out)
    # where it must be transposed. Shapes agree, values do not.
    Bug(
        "dense/omega-reshaped-not-transposed",
        dense_twin,
        (_H, _OMEGA, _BETA),
        lambda r, d: (d @ r[1], d.T @ r[0], d.sum(0)),
        lambda r, d: (d @ r[1].reshape(r[1].shape[::-1]).T, d.T @ r[0], d.sum(0)),
        {"args[0]"},
    ),
    Bug(
        "dense/halved-dh",
        dense_twin,
        (_H, _OMEGA, _BETA),
        lambda r, d: (d @ r[1], d.T @ r[0], d.sum(0)),
        lambda r, d: (0.5 * (d @ r[1]), d.T @ r[0], d.sum(0)),
        {"args[0]"},
    ),
    Bug(
        "cross-entropy/missing-1/B",
        _mean_cross_entropy,
        (_normal(4, 6, 5), jnp.arange(6) % 5),
        _cross_entropy_bwd(lambda z: 1 / z.shape[0]),
        _cross_entropy_bwd(lambda z: 1.0),
        {"args[0]"},
    ),
    Bug(
        "mse/swapped-cotangents",
        _mse,
        (_normal(5, 5, 3), _normal(6, 5, 3)),
        _mse_bwd(swap=False),
        _mse_bwd(swap=True),
        {"args[0]", "args[1]"},
    ),
]


@pytest.mark.parametrize("bug", BUGS, ids=[b.name for b in BUGS])
def test_catches_a_wrong_rule_and_passes_the_right_one(bug):
    first = re.escape(f"vjp check failed for {sorted(bug.leaves)[0]} ")
    with pytest.raises(GradientCheckError, match=first) as err:
        check_vjp(_rule(bug.forward, bug.wrong), *bug.args, reference=bug.forward)
    failures = err.value.report.failures
    assert {r.leaf for r in failures} == bug.leaves
    assert {r.check for r in failures} == {"vjp", "finite-diff"}
    assert check_vjp(_rule(bug.forward, bug.right), *bug.args, reference=bug.forward).passed


def test_second_order_catches_a_bwd_that_cannot_be_differentiated():
    def bwd(inputs, g):  # right value, but stop_gradient hides σ'' from grad-of-grad
        s = jax.lax.stop_gradient(jax.nn.sigmoid(inputs[0]))
        return (g * s * (1 - s),)

    rule, x = _rule(jax.nn.sigmoid, bwd), _normal(7, 4, 3)
    assert check_vjp(rule, x, reference=jax.nn.sigmoid).passed
    with pytest.raises(GradientCheckError, match=r"second-order check failed for args\[0\]"):
        check_vjp(rule, x, reference=jax.nn.sigmoid, second_order=True)


# --- the report ---------------------------------------------------------------------


class Params(NamedTuple):
    omega: jax.Array  # (n_out, n_in)
    beta: jax.Array  # (n_out,)


def _unpack(params):  # a Params or a dict -> (omega, beta)
    return (params["omega"], params["beta"]) if isinstance(params, dict) else params


def _layer_and_loss(params, x, target):
    y = dense(x, *_unpack(params))
    return y, mse(y, target)


def _layer_and_loss_plain(params, x, target):
    y = x @ _unpack(params)[0].T + _unpack(params)[1]
    return y, jnp.mean((y - target) ** 2)


@pytest.mark.parametrize(
    "params, paths",
    [
        (Params(_OMEGA, _BETA), ["args[0].omega", "args[0].beta"]),
        ({"omega": _OMEGA, "beta": _BETA}, ["args[0]['beta']", "args[0]['omega']"]),
    ],
    ids=["namedtuple", "dict"],
)
def test_report_names_leaves_by_key_path(params, paths):
    report = check_vjp(_layer_and_loss, params, _H, _normal(8, 5, 4), reference=_layer_and_loss_plain)
    leaves = [*paths, "args[1]", "args[2]"]
    assert [(r.check, r.leaf) for r in report.rows] == (
        [("output", "out[0]"), ("output", "out[1]")]
        + [("vjp", leaf) for leaf in leaves]
        + [("finite-diff", leaf) for leaf in leaves]
    )
    text = str(report)
    assert text.startswith("check_vjp(_layer_and_loss) against _layer_and_loss_plain: passed")
    assert re.search(r"^check +leaf +trial +worst at +expected +received", text, re.M)
    assert all(leaf in text for leaf in leaves)
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["passed"] and len(as_json["rows"]) == len(report.rows)
    assert set(as_json["rows"][0]) == {
        "check",
        "leaf",
        "trial",
        "index",
        "expected",
        "received",
        "max_abs_error",
        "max_rel_error",
        "tol",
        "passed",
        "compared",
    }


def test_report_finds_the_worst_element_without_raising():
    def bwd(inputs, g):  # one wrong element, (2, 1), off by exactly 1
        pred_bar = 2 * g * (inputs[0] - inputs[1]) / inputs[0].size
        return pred_bar.at[2, 1].add(1.0), -pred_bar

    pred, target = _normal(5, 5, 3), _normal(6, 5, 3)
    report = check_vjp(_rule(_mse, bwd), pred, target, reference=_mse, raise_on_fail=False)
    assert not report.passed
    assert [(r.check, r.leaf) for r in report.failures] == [("vjp", "args[0]"), ("finite-diff", "args[0]")]
    row = report.failures[0]
    assert row.index == (2, 1)
    assert row.received - row.expected == pytest.approx(1.0)
    assert row.max_abs_error == pytest.approx(1.0) and row.max_rel_error > row.tol
    assert "FAIL" in str(report)


def test_error_message_names_check_leaf_index_values_and_tolerance():
    bug = BUGS[1]  # halved dh
    with pytest.raises(GradientCheckError) as err:
        check_vjp(_rule(bug.forward, bug.wrong), *bug.args, reference=bug.forward)
    row = err.value.report.failures[0]
    message = str(err.value)
    assert isinstance(err.value, AssertionError)
    assert message.startswith("check_vjp(dense_twin): 2 of 7 checks failed against")
    assert f"vjp check failed for args[0] at index {row.index}" in message
    assert f"expected {row.expected:.10g}, received {row.received:.10g}" in message
    assert re.search(r"scaled relative error [\d.e+-]+ > tolerance 1e-12", message)
    assert str(err.value.report) in message  # the table too


def test_float32_uses_float32_tolerance():
    case = _case("dense")
    report = check_vjp(case.rule, *case.args(jax.random.key(0), jnp.float32))
    assert {(r.check, r.tol) for r in report.rows} == {("output", 1e-5), ("vjp", 1e-5), ("finite-diff", 1e-6)}
    report = check_vjp(case.rule, *case.args(jax.random.key(0), jnp.float64))
    assert {r.tol for r in report.rows if r.check != "finite-diff"} == {1e-12}

    def bwd(inputs, g):  # a relative error of 1e-4: over float32's 1e-5
        return (g * (1 + 1e-4) * (1 - jnp.tanh(inputs[0]) ** 2),)

    rule, x = _rule(jnp.tanh, bwd), _normal(9, 4, 3, dtype=jnp.float32)
    opts = dict(reference=jnp.tanh, finite_differences=False)
    with pytest.raises(GradientCheckError, match="> tolerance 1e-05"):
        check_vjp(rule, x, **opts)
    assert check_vjp(rule, x, rtol=1e-3, **opts).passed


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=["f16", "bf16"])
def test_low_precision_tolerance_is_measured(dtype):
    report = check_vjp(_case("sigmoid").rule, _normal(10, 5, 4, dtype=dtype))
    assert report.passed
    assert [r.check for r in report.rows] == ["output", "vjp", "finite-diff"]
    eps = float(jnp.finfo(dtype).eps)
    assert all(eps <= r.tol < default_rtol(dtype) for r in report.rows[:2])  # tighter than the fixed bound
    assert report.rows[2].tol == 1e-6


def test_nan_on_one_side_fails_and_equal_infinities_pass():
    rule = _rule(jnp.tanh, lambda inputs, g: (g * jnp.nan,))
    report = check_vjp(rule, _normal(9, 3), reference=jnp.tanh, raise_on_fail=False)
    assert [r.max_rel_error for r in report.failures] == [float("inf")] * 2
    sqrt = _rule(jnp.sqrt, lambda inputs, g: (g * 0.5 / jnp.sqrt(inputs[0]),))
    x = jnp.array([0.0, 1.0, 4.0])  # ∂√x = inf at 0, in the rule and in autodiff alike
    assert check_vjp(sqrt, x, reference=jnp.sqrt, finite_differences=False).passed


def test_explicit_key_gives_reproducible_cotangents():
    x, relu = _normal(11, 5, 4), _case("relu").rule
    assert check_vjp(relu, x).to_dict() == check_vjp(relu, x, key=jax.random.key(0)).to_dict()
    assert check_vjp(relu, x).rows != check_vjp(relu, x, key=jax.random.key(1)).rows


def test_without_float64_the_taylor_remainder_replaces_finite_differences():
    with jax.enable_x64(False):
        x = jax.random.normal(jax.random.key(0), (4, 3), jnp.float32)
        report = check_vjp(_case("sigmoid").rule, x)
    assert report.passed and [r.check for r in report.rows] == ["output", "vjp", "taylor"]
    taylor = report.rows[2]
    assert abs(taylor.received - 2) < 0.3 and taylor.compared.startswith("slope of fn's float32 remainder")


# --- bad input ----------------------------------------------------------------------

_X = _normal(0, 5, 4)

BAD_INPUTS = [
    ("fn-not-callable", lambda: check_vjp(3.0, _X), TypeError, r"check_vjp: fn must be callable, got a float"),
    (
        "no-args",
        lambda: check_vjp(_case("relu").rule),
        ValueError,
        r"check_vjp: no arguments given for relu; pass the inputs",
    ),
    (
        "no-reference",
        lambda: check_vjp(jnp.tanh, _X),
        TypeError,
        r"check_vjp: tanh is not a funcprop rule .*pass reference=",
    ),
    (
        "reference-shape",
        lambda: check_vjp(_case("relu").rule, _X, reference=lambda f: f.T),
        ValueError,
        r"check_vjp: relu returns float64\[5, 4\] at out but the reference returns "
        r"float64\[4, 5\]; the reference must compute the same function",
    ),
    (
        "reference-pytree",
        lambda: check_vjp(_case("relu").rule, _X, reference=lambda f: (f, f)),
        ValueError,
        r"check_vjp: relu returns a pytree .* but the reference returns",
    ),
    (
        "only-integers",
        lambda: check_vjp(jnp.sin, jnp.arange(3), reference=jnp.sin),
        TypeError,
        r"check_vjp: no floating-point leaf",
    ),
    (
        "string-arg",
        lambda: check_vjp(_case("relu").rule, _X, "x"),
        TypeError,
        r"check_vjp: args\[1\] is a str, not an array; pass static arguments by name",
    ),
    (
        "n_cotangents",
        lambda: check_vjp(_case("relu").rule, _X, n_cotangents=0),
        ValueError,
        r"check_vjp: n_cotangents must be a positive int, got 0",
    ),
]


@pytest.mark.parametrize("call, error, pattern", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_check_vjp_and_the_fix(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


# --- what a user writes for their own rule -------------------------------------------


def swish_plain(x):
    return x * jax.nn.sigmoid(x)


@jax.custom_vjp
def swish(x):
    return swish_plain(x)


def swish_fwd(x):
    s = jax.nn.sigmoid(x)
    return x * s, (x, s)


def swish_bwd(residuals, g):
    x, s = residuals
    return (g * s * (1 + x * (1 - s)),)  # swish'(x) = σ(x) + x σ(x)(1 − σ(x))


swish.defvjp(swish_fwd, swish_bwd)


def test_user_custom_vjp_rule():
    x = jax.random.normal(jax.random.key(0), (8, 16))
    report = check_vjp(swish, x, reference=swish_plain, second_order=True)
    print(report)  # pytest -s shows the table; a failure raises with it


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_a_check_over_non_finite_inputs_says_it_checks_nothing(bad):
    off = lambda x: jnp.sin(x) * 1.01  # noqa: E731  (1% off: any real check fails it)
    with pytest.raises(ValueError, match=r"check_vjp: args\[0\] holds 3 non-finite values .* compares nothing"):
        check_vjp(off, jnp.full(3, bad, jnp.float32), reference=jnp.sin)
    with pytest.raises(GradientCheckError):
        check_vjp(off, jnp.ones(3, jnp.float32), reference=jnp.sin)
