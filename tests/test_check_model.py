"""check_model: every layer against its plain twin on the values the backprop gave it;
correct networks pass, and a wrong layer anywhere is named alone, by position."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_params

import funcprop as fp
from funcprop import nn
from funcprop.check._report import GradientCheckError
from funcprop.check.model import check_model
from funcprop.rules._core import custom_rule, implements

F64 = jnp.float64
P64 = dict(param_dtype=F64)
B, D, C = 4, 3, 3  # batch, features, classes
DENSE = fp.dense.vjp_rule


def dense(n):
    return nn.Dense(n, **P64)


def normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), F64)


def labels(seed, n=B, classes=C):
    return jnp.asarray(np.random.default_rng(seed).integers(0, classes, n), jnp.int32)


# --- a user's own layers, with a bug ---------------------------------------------------


def my_dense(n_out, bug=None):
    """``MyDense(n_out)``: dense from a rule of one's own, its fwd or bwd wrong by ``bug``."""

    def fwd(h, omega, beta):
        y, res = DENSE.fwd(h, omega, beta)
        return (1.01 * y if bug == "forward" else y), res

    def bwd(res, delta):
        h, omega = res
        h_bar, omega_bar, beta_bar = DENSE.bwd(res, delta)
        if bug == "factor":  # a wrong factor on Ω̄
            omega_bar = 2 * omega_bar
        if bug == "transposed":  # Ω̄ = H ᵀΔ, transposed (Ω is square)
            omega_bar = omega_bar.T
        if bug == "x_bar":  # H̄ = Δ Ωᵀ instead of Δ Ω (Ω is square)
            h_bar = delta @ omega.T
        return h_bar, omega_bar, beta_bar

    rule = custom_rule(DENSE.twin, fwd, bwd, prepare=DENSE.prepare)

    def make_params(key, input_shape, dtype):
        return nn.DenseParams(jnp.zeros((n_out, input_shape[-1]), dtype), jnp.zeros(n_out, dtype))

    return nn.from_rule(f"MyDense({n_out})", rule, make_params, param_dtype=F64)


def my_tanh():
    """``MyTanh``: tanh'(f) taken as 1 − y instead of 1 − y²."""
    base = fp.tanh.vjp_rule
    rule = custom_rule(base.twin, lambda f: (jnp.tanh(f), jnp.tanh(f)), lambda y, g: ((1 - y) * g,))
    return nn.elementwise("MyTanh", implements(rule)(lambda f: rule.core(f)))


# --- correct networks pass -------------------------------------------------------------


def branching():
    return nn.serial(
        nn.FanOut(3),
        nn.parallel(nn.serial(dense(4), nn.Tanh()), nn.Sigmoid(), nn.serial(dense(2), nn.Gelu())),
        nn.FanInConcat(),
        dense(C),
    )


def conv_net():
    conv = lambda c, k, pad: nn.Conv2D(c, k, padding=pad, **P64)  # noqa: E731
    return nn.serial(
        conv(2, 3, "SAME"), nn.Relu(), nn.AvgPool2D(2), conv(3, 2, 1), nn.LeakyRelu(0.1), nn.MaxPool2D(2), nn.Flatten()
    )


NETWORKS = {  # name -> (model, one example's shape)
    "mlp": (lambda: nn.mlp([D, 5, 4, C], activation="tanh", **P64), (D,)),
    "cnn": (lambda: nn.cnn(C, channels=(2, 3), hidden=4, **P64), (4, 4, 1)),
    "conv_pools": (lambda: nn.serial(conv_net(), dense(C)), (6, 6, 2)),
    "resmlp": (lambda: nn.resmlp(C, width=4, depth=2, **P64), (D,)),
    "branching": (lambda: branching(), (2,)),
    "resnet_dropout": (lambda: nn.resnet(C, channels=(2, 3), hidden=4, dropout=0.5, **P64), (4, 4, 1)),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_a_correct_network_passes_with_a_row_per_leaf(name):
    build, shape = NETWORKS[name]
    model = build()
    params, x, y = random_params(model, shape), normal(1, (B, *shape)), labels(2)
    report = check_model(model, fp.softmax_cross_entropy, params, x, y, key=jax.random.key(3))
    assert report.passed and report.first_failure is None, str(report)
    assert report.title == f"check_model({model.name})" and report.reference == "plain twins, layer by layer"
    positions = [p for p, _, _ in nn.leaves(model, params)] + ["loss"]
    assert list(dict.fromkeys(p for p, _ in report.layers)) == positions
    assert {r.check for r in report.rows} == {"output", "vjp"} and all(r.tol == 1e-12 for r in report.rows)
    assert report.rows[-1].leaf == "loss softmax_cross_entropy: out̄"


def test_mlp_rows_are_named_by_position_layer_and_leaf():
    model = nn.serial(dense(4), nn.Tanh(), dense(C))
    report = check_model(model, fp.mse, random_params(model, (2,)), normal(1, (B, 2)), normal(2, (B, C)))
    assert [r.leaf for r in report.rows[:5]] == [
        "0 Dense(4): y",
        "0 Dense(4): params.omega",
        "0 Dense(4): params.beta",
        "0 Dense(4): x̄",
        "1 Tanh: y",
    ]
    assert [r.leaf for r in report.rows[-2:]] == ["loss mse: value", "loss mse: out̄"]


def test_a_model_with_a_loss_layer_checks_the_head_too():
    model, head = nn.serial(dense(4), nn.Tanh()), nn.LinearCrossEntropy(5, **P64)
    params = (random_params(model, (D,)), random_params(head, (4,)))
    report = check_model(model, head, params, normal(1, (B, D)), labels(2, classes=5))
    assert report.passed, str(report)
    assert [r.leaf for r in report.rows if r.leaf.startswith("loss")] == [
        "loss LinearCrossEntropy(5): value",
        "loss LinearCrossEntropy(5): params.omega",
        "loss LinearCrossEntropy(5): out̄",
    ]


def test_a_gpt_with_its_head_passes():
    model = nn.gpt(7, 4, d_model=4, num_heads=2, num_layers=1, mlp_ratio=2, **P64)
    head = nn.LinearCrossEntropy(7, **P64)
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 7, (2, 4)), jnp.int32)
    params = (random_params(model, (4,)), random_params(head, (4,)))
    report = check_model(model, head, params, ids, jnp.roll(ids, -1, axis=1))
    assert report.passed, str(report)
    assert not any("x̄" in r.leaf for r, (p, _) in zip(report.rows, report.layers) if p == "0")  # ids
    # the key bias's gradient is 0 (softmax ignores it): rounding only, held to max|δ| of its layer
    (key_bias,) = [r for r in report.rows if r.leaf.endswith("Dense(k): params.beta")]
    assert key_bias.passed and abs(key_bias.expected) < 1e-15


def test_dropout_is_checked_with_the_key_the_backprop_gave_it():
    model = nn.serial(dense(8), nn.Dropout(0.5), dense(C))
    params, x, y, key = random_params(model, (2,)), normal(1, (B, 2)), labels(2), jax.random.key(3)
    assert not np.allclose(model.apply(params, x, key=key), model.apply(params, x))  # the mask matters
    assert check_model(model, fp.softmax_cross_entropy, params, x, y, key=key).passed


# --- a wrong layer is named alone --------------------------------------------------------

WRONG = {  # name -> (model with a wrong layer, one example's shape, its position, the failing leaves)
    "mlp_factor": (
        lambda: nn.serial(dense(4), nn.Tanh(), my_dense(D, "factor"), nn.Tanh(), dense(C)),
        (2,),
        "2",
        ["params.omega"],
    ),
    "mlp_transposed": (
        lambda: nn.serial(dense(D), nn.Tanh(), my_dense(D, "transposed"), nn.Tanh(), dense(C)),
        (2,),
        "2",
        ["params.omega"],
    ),
    "residual_x_bar": (
        lambda: nn.serial(
            dense(D), nn.residual(nn.serial(nn.LayerNorm(**P64), my_dense(D, "x_bar"), nn.Tanh())), dense(C)
        ),
        (2,),
        "1.0.1",
        ["x̄"],
    ),
    "branching_forward": (
        lambda: nn.serial(
            nn.FanOut(2), nn.parallel(nn.serial(dense(4), nn.Tanh(), my_dense(D, "forward")), dense(D)), nn.FanInSum()
        ),
        (2,),
        "1.0.2",
        ["y"],
    ),
    "branching_activation": (
        lambda: nn.serial(dense(4), nn.FanOut(2), nn.parallel(nn.Identity(), my_tanh()), nn.FanInSum(), dense(C)),
        (2,),
        "2.1",
        ["x̄"],
    ),
}


@pytest.mark.parametrize("name", list(WRONG))
def test_a_wrong_layer_in_the_middle_is_named_alone(name):
    build, shape, position, bad_leaves = WRONG[name]
    model = build()
    params, x, y = random_params(model, shape), normal(1, (B, *shape)), labels(2)
    layer = dict((p, leaf.name) for p, leaf, _ in nn.leaves(model, params))[position]
    with pytest.raises(GradientCheckError) as err:
        check_model(model, fp.softmax_cross_entropy, params, x, y)
    report = err.value.report
    first = report.first_failure
    assert (first.position, first.name) == (position, layer)
    assert [r.leaf for r in report.failures] == [f"{position} {layer}: {leaf}" for leaf in bad_leaves]
    assert {where for where, r in zip(report.layers, report.rows) if not r.passed} == {(position, layer)}
    what = "output y" if bad_leaves == ["y"] else f"vjp for {re.escape(bad_leaves[0])}"
    head = (
        rf"check_model: layer {re.escape(position)} {re.escape(layer)} is wrong: its {what} at index \(\d+(, \d+)*\): "
    )
    assert re.match(head + r"expected -?[\d.e+-]+, received -?[\d.e+-]+", str(err.value).splitlines()[0])
    assert report.failures[0].check == ("output" if bad_leaves == ["y"] else "vjp")


def test_no_raise_returns_the_failing_report():
    model = nn.serial(dense(D), my_dense(D, "factor"))
    report = check_model(
        model, fp.mse, random_params(model, (2,)), normal(1, (B, 2)), normal(2, (B, D)), raise_on_fail=False
    )
    assert not report.passed and report.first_failure[:2] == ("1", "MyDense(3)")
    assert report.message().startswith("check_model: layer 1 MyDense(3) is wrong: its vjp for params.omega")


def test_of_two_wrong_layers_the_first_in_forward_order_is_named():
    model = nn.serial(dense(D), my_dense(D, "x_bar"), nn.Tanh(), my_dense(D, "forward"))
    params, x, y = random_params(model, (2,)), normal(1, (B, 2)), normal(2, (B, D))
    with pytest.raises(GradientCheckError) as err:
        check_model(model, fp.mse, params, x, y)
    first, also = str(err.value).splitlines()[:2]
    assert first.startswith("check_model: layer 1 MyDense(3) is wrong: its vjp for x̄ at index")
    assert also == "also failing: 3 MyDense(3)"


def test_a_wrong_loss_rule_is_named():
    base = fp.mse.vjp_rule
    rule = custom_rule(base.twin, base.fwd, lambda res, g: tuple(2 * c for c in base.bwd(res, g)), prepare=base.prepare)

    @implements(rule)
    def my_mse(pred, target):
        return rule.core(*rule.prepare(pred, target))

    model = nn.serial(dense(D), nn.Tanh())
    with pytest.raises(GradientCheckError, match=r"^check_model: the loss my_mse is wrong: its vjp for out̄ at index"):
        check_model(model, my_mse, random_params(model, (2,)), normal(1, (B, 2)), normal(2, (B, D)))


# --- bad input -----------------------------------------------------------------------------


def test_bad_input_is_named():
    model = nn.serial(dense(D), nn.Layer(lambda k, s: (s, ()), lambda p, x: 2 * x))
    params, x, y = random_params(model, (2,)), normal(1, (B, 2)), normal(2, (B, D))
    with pytest.raises(TypeError, match=r"backprop: layer .* has no hand-written fwd/bwd"):
        check_model(model, fp.mse, params, x, y)
    with pytest.raises(TypeError, match=r"check_model: model must be a funcprop.nn Layer, got tuple; build it"):
        check_model(tuple(dense(D)), fp.mse, params, x, y)
    with pytest.raises(TypeError, match=r"check_model: loss must be a funcprop loss rule .* got <function"):
        check_model(dense(D), lambda a, b: jnp.sum(a - b), params, x, y)
    with pytest.raises(ValueError, match=r"check_model: with a loss layer, params must be the pair"):
        check_model(dense(D), nn.LinearCrossEntropy(5), params[0].omega, x, labels(2))
    with pytest.raises(TypeError, match=r"check_model: key must be one PRNG key"):
        check_model(dense(D), fp.mse, params[0], x, y, key=3)
