"""Networks as graphs: the written-out backprop over every combinator, nested, against
jax.grad through the rules and through the plain twins; traces, keys, wrapping, and
the errors of a badly built graph."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, assert_close, assert_trees_close, grads_three_ways, random_params

import funcprop as fp
from funcprop import backprop, nn

F64 = RTOL[np.dtype("float64")]
P64 = dict(param_dtype=jnp.float64)
D, C, B, V = 3, 3, 4, 5  # features, classes, batch, vocabulary: tiny, so the suite stays fast


def dense(n):
    return nn.Dense(n, **P64)


def ln():
    return nn.LayerNorm(**P64)


def rms():
    return nn.RMSNorm(**P64)


# name -> (model in float64, one example's input shape, "ids" for integer inputs)
NETWORKS = {
    "residual": (lambda: nn.serial(dense(D), nn.residual(nn.serial(dense(D), nn.Tanh())), dense(C)), (2,), None),
    "fanout_sum": (lambda: nn.serial(nn.FanOut(2), nn.parallel(dense(C), dense(C)), nn.FanInSum()), (2,), None),
    "fanout3_concat": (
        lambda: nn.serial(
            nn.FanOut(3),
            nn.parallel(dense(2), nn.Sigmoid(), nn.serial(dense(1), nn.Tanh())),
            nn.FanInConcat(),
            dense(C),
        ),
        (2,),
        None,
    ),
    "identity_branch": (
        lambda: nn.serial(dense(D), nn.FanOut(2), nn.parallel(nn.Identity(), dense(D)), nn.FanInSum(), dense(C)),
        (2,),
        None,
    ),
    "branches_of_different_depth": (
        lambda: nn.serial(
            nn.FanOut(2),
            nn.parallel(nn.serial(dense(4), nn.Tanh(), dense(D), nn.Gelu(), dense(C)), dense(C)),
            nn.FanInSum(),
        ),
        (2,),
        None,
    ),
    "parallel_into_parallel": (  # a tuple whose elements differ reaches a parallel: x̄_i must go to input i
        lambda: nn.serial(
            nn.FanOut(2),
            nn.parallel(dense(D), nn.serial(dense(D), nn.Tanh())),
            nn.parallel(nn.Sigmoid(), dense(D)),
            nn.FanInSum(),
            dense(C),
        ),
        (2,),
        None,
    ),
    "residual_layernorm": (lambda: nn.serial(dense(D), nn.residual(nn.serial(ln(), dense(D))), dense(C)), (2,), None),
    "residual_rmsnorm": (
        lambda: nn.serial(dense(D), nn.residual(nn.serial(rms(), nn.Softplus(), dense(D))), dense(C)),
        (2,),
        None,
    ),
    "nested_residuals": (
        lambda: nn.serial(
            dense(D),
            nn.residual(nn.serial(dense(D), nn.residual(nn.serial(nn.Tanh(), dense(D))), nn.Sigmoid())),
            dense(C),
        ),
        (2,),
        None,
    ),
    "prenorm_mlp_block": (
        lambda: nn.serial(dense(D), nn.residual(nn.serial(ln(), dense(2 * D), nn.Gelu(), dense(D))), dense(C)),
        (2,),
        None,
    ),
    "embedding_flatten_dense": (lambda: nn.serial(nn.Embedding(V, 2, **P64), nn.Flatten(), dense(C)), (3,), "ids"),
    "prenorm_block_over_a_sequence": (  # Dense and LayerNorm per position of (T, d) examples
        lambda: nn.serial(
            nn.Embedding(V, D, **P64),
            nn.residual(nn.serial(ln(), dense(2 * D), nn.Gelu(), dense(D))),
            nn.Flatten(),
            dense(C),
        ),
        (3,),
        "ids",
    ),
    "fanout_into_two_embeddings": (  # the ids' cotangents are None on both branches
        lambda: nn.serial(
            nn.FanOut(2),
            nn.parallel(nn.Embedding(V, 2, **P64), nn.Embedding(V, 2, **P64)),
            nn.FanInSum(),
            nn.Flatten(),
            dense(C),
        ),
        (3,),
        "ids",
    ),
    "resmlp": (lambda: nn.resmlp(C, width=4, depth=2, **P64), (2,), None),
    "resnet": (lambda: nn.resnet(C, channels=(2, 3), hidden=4, **P64), (8, 8, 1), None),
}
LOSSES = {"mse": fp.mse, "softmax_cross_entropy": fp.softmax_cross_entropy}


def normal(seed, shape, dtype=jnp.float64):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def labels(seed, loss_name, n=B):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((n, C))) if loss_name == "mse" else jnp.asarray(rng.integers(0, C, n))


def problem(name, loss_name="mse", seed=0):
    """(model, params, x, y) for a network of the table."""
    make, shape, kind = NETWORKS[name]
    model = make()
    if kind == "ids":
        x = jnp.asarray(np.random.default_rng(seed + 1).integers(0, V, (B, *shape)), jnp.int32)
    else:
        x = normal(seed + 1, (B, *shape))
    return model, random_params(model, shape, seed), x, labels(seed + 2, loss_name)


def assert_matches_references(model, loss, params, x, y, key=None, what=""):
    """backprop's loss and grads equal jax.grad's through the rules and the twins, at 1e-12."""
    results = grads_three_ways(model, loss, params, x, y, key)
    value, grads = results.pop("backprop")
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for ref_name, (ref_value, ref_grads) in results.items():
        assert_close(value, ref_value, F64, f"{what} loss vs {ref_name}")
        assert_trees_close(grads, ref_grads, F64, f"{what} grads vs {ref_name}")


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("name", list(NETWORKS))
def test_backprop_equals_autodiff_through_rules_and_twins(name, loss_name):
    model, params, x, y = problem(name, loss_name)
    assert_matches_references(model, LOSSES[loss_name], params, x, y, what=f"{name}/{loss_name}")


def test_embedding_ids_are_not_differentiated():
    model, params, x, y = problem("embedding_flatten_dense")
    _, _, traces = jax.jit(backprop.value_and_grad(model, fp.mse, return_intermediates=True))(params, x, y)
    assert jnp.issubdtype(x.dtype, jnp.integer)
    assert traces[0].name == "0 Embedding(5, 2)" and traces[0].input_grad is None
    assert traces[1].input_grad.shape == (B, 3, 2)  # the rows' cotangent reaches the embedding


# --- intermediates ---------------------------------------------------------------------


def leaves_in_order(layer):
    """The leaf layers of a graph, depth first: the order the forward runs them."""
    return [layer] if not layer.children else [leaf for c in layer.children for leaf in leaves_in_order(c)]


@pytest.mark.parametrize("name", ["nested_residuals", "fanout3_concat", "resnet"])
def test_one_trace_per_leaf_in_forward_order(name):
    model, params, x, y = problem(name)
    _, _, traces = jax.jit(backprop.value_and_grad(model, fp.mse, return_intermediates=True))(params, x, y)
    assert [t.name.split(" ", 1)[1] for t in traces] == [leaf.name for leaf in leaves_in_order(model)]
    assert len({t.name for t in traces}) == len(traces)


def test_traces_are_named_by_path_and_cotangents_add_at_residual_and_fanout():
    model = nn.serial(
        dense(D),
        nn.residual(nn.serial(ln(), nn.Gelu(), dense(D))),
        nn.FanOut(2),
        nn.parallel(nn.Identity(), nn.serial(dense(D), nn.Tanh())),
        nn.FanInSum(),
    )
    params, x, y = random_params(model, (2,)), normal(1, (B, 2)), normal(2, (B, D))
    _, _, traces = jax.jit(backprop.value_and_grad(model, fp.mse, return_intermediates=True))(params, x, y)
    assert [t.name for t in traces] == [
        "0 Dense(3)",
        "1.0.0 LayerNorm",
        "1.0.1 Gelu",
        "1.0.2 Dense(3)",
        "2 FanOut(2)",
        "3.0 Identity",
        "3.1.0 Dense(3)",
        "3.1.1 Tanh",
        "4 FanInSum",
    ]
    t = {tr.name.split(" ")[0]: tr for tr in traces}
    # forward: the residual's output is x + block(x), and FanOut copies it
    assert_close(t["2"].input, t["0"].output + t["1.0.2"].output, F64, "residual output")
    assert isinstance(t["2"].output, tuple) and len(t["2"].output) == 2
    # backward: x̄ = ȳ (the skip) + the block's x̄, and a fan-out's copies add
    assert_close(t["0"].output_grad, t["2"].input_grad + t["1.0.0"].input_grad, F64, "residual x̄")
    assert_close(t["2"].input_grad, t["3.0"].input_grad + t["3.1.0"].input_grad, F64, "fan-out x̄")
    for i, branch in enumerate(["3.0", "3.1.1"]):
        assert_close(t["4"].input_grad[i], t["4"].output_grad, F64, "FanInSum hands ȳ to each input")
        assert_close(t[branch].output_grad, t["4"].output_grad, F64, f"branch {branch} ȳ")
    x_bar = jax.grad(lambda x: fp.mse.vjp_rule.twin(nn.twin(model)(params, x), y))(x)
    assert_close(t["0"].input_grad, x_bar, F64, "∂L/∂x")


# --- dropout and keys ------------------------------------------------------------------


def dropout_model(drop):
    """Dropout in a serial, inside a residual's block and in a parallel branch."""
    return nn.serial(
        dense(4),
        drop(0.5),
        nn.residual(nn.serial(dense(4), drop(0.3), nn.Tanh())),
        nn.FanOut(2),
        nn.parallel(drop(0.2), dense(4)),
        nn.FanInSum(),
        dense(C),
    )


@pytest.fixture(scope="module")
def dropout_problem():
    model = dropout_model(nn.Dropout)
    return model, random_params(model, (2,)), normal(1, (8, 2)), {n: labels(2, n, 8) for n in LOSSES}


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_dropout_backprop_equals_autodiff_with_the_same_key(dropout_problem, loss_name):
    model, params, x, y = dropout_problem
    assert_matches_references(model, LOSSES[loss_name], params, x, y[loss_name], key=jax.random.key(7), what="dropout")


def test_dropout_without_a_key_is_the_identity_on_every_path(dropout_problem):
    model, params, x, y = dropout_problem
    y = y["mse"]
    plain = dropout_model(lambda rate: nn.Identity())  # the same graph, the same params tree
    np.testing.assert_array_equal(model.apply(params, x), plain.apply(params, x))
    np.testing.assert_array_equal(nn.twin(model)(params, x), nn.twin(plain)(params, x))
    got = backprop.value_and_grad(model, fp.mse)(params, x, y)
    want = backprop.value_and_grad(plain, fp.mse)(params, x, y)
    assert_trees_close(got, want, 0.0, "backprop with key=None")
    assert_trees_close(got, jax.value_and_grad(lambda p: fp.mse(model.apply(p, x), y))(params), F64, "vs rules")


def test_other_keys_other_outputs_on_every_path(dropout_problem):
    model, params, x, y = dropout_problem
    y = y["mse"]
    k1, k2 = jax.random.key(1), jax.random.key(2)
    for what, f in [
        ("apply", model.apply),
        ("twin", nn.twin(model)),
        ("backprop", lambda p, x, key: backprop.value_and_grad(model, fp.mse)(p, x, y, key=key)[0]),
    ]:
        a = f(params, x, key=k1)
        np.testing.assert_array_equal(a, f(params, x, key=k1), err_msg=f"{what}: one key, one output")
        assert not np.allclose(a, f(params, x, key=k2)), f"{what}: two keys gave one output"


def test_serial_and_parallel_give_their_dropout_layers_different_masks():
    rate, x, key = 0.5, jnp.ones((64, 64), jnp.float64), jax.random.key(3)
    two = nn.serial(nn.Dropout(rate), nn.Dropout(rate))
    y = two.apply(((), ()), x, key=key)
    # independent masks keep 1/4 of the elements, one mask used twice would keep 1/2
    assert abs(float(jnp.mean(y != 0)) - 0.25) < 0.03
    k0, k1 = jax.random.split(key)  # as documented: a serial splits its key among its layers
    np.testing.assert_array_equal(y, fp.dropout(fp.dropout(x, rate, key=k0), rate, key=k1))
    a, b = nn.serial(nn.FanOut(2), nn.parallel(nn.Dropout(rate), nn.Dropout(rate))).apply(((), ((), ())), x, key=key)
    assert not np.array_equal(a != 0, b != 0)


# --- wrapping keeps the structure ------------------------------------------------------


def _stored_in_containers(layer):
    box = {"layers": [layer]}
    return box["layers"][0]


def _unpacked_and_rebuilt(layer):
    init, apply = layer
    return nn.Layer(init, apply, layer.node)


WRAPPERS = {
    "partial": lambda make: functools.partial(make)(),
    "lambda_factory": lambda make: (lambda: make())(),
    "container": lambda make: _stored_in_containers(make()),
    "unpacked": lambda make: _unpacked_and_rebuilt(make()),
}


@pytest.mark.parametrize("wrap", list(WRAPPERS))
def test_wrapped_layers_keep_working_in_backprop(wrap):
    w = WRAPPERS[wrap]
    model = w(
        lambda: nn.serial(
            w(functools.partial(nn.Dense, 4, **P64)),
            w(nn.Tanh),
            w(lambda: nn.residual(nn.serial(w(ln), w(lambda: dense(4))))),
            w(lambda: dense(C)),
        )
    )
    assert model.node is not None and [c.name for c in model.children][:2] == ["Dense(4)", "Tanh"]
    out_shape = []  # init's output shape, found abstractly (nothing is drawn)
    jax.eval_shape(lambda k: out_shape.append(model.init(k, (2,))[0]), jax.random.key(0))
    assert out_shape == [(C,)]
    params, x, y = random_params(model, (2,)), normal(1, (B, 2)), normal(2, (B, C))
    assert_matches_references(model, fp.mse, params, x, y, what=wrap)


def test_a_stax_pair_of_funcprop_layers_keeps_its_functions():
    init, apply = dense(C)
    model = nn.serial(dense(D), (init, apply))
    params, x = random_params(model, (2,)), normal(1, (B, 2))
    np.testing.assert_array_equal(model.apply(params, x), apply(params[1], dense(D).apply(params[0], x)))


def double(params, x):
    del params
    return 2 * x


def test_a_hand_built_layer_works_with_jax_grad_and_is_refused_by_name():
    user = nn.Layer(lambda key, shape: (shape, ()), double)
    assert user.node is None and user.name == "double"
    model = nn.serial(dense(D), user, dense(C))
    params, x, y = random_params(model, (2,)), normal(1, (B, 2)), normal(2, (B, C))

    def by_hand(p):
        return fp.mse(fp.dense(2 * fp.dense(x, *p[0]), *p[2]), y)

    assert_close(model.apply(params, x), fp.dense(2 * fp.dense(x, *params[0]), *params[2]), F64, "apply")
    assert_trees_close(
        jax.grad(lambda p: fp.mse(model.apply(p, x), y))(params),
        jax.grad(by_hand)(params),
        F64,
        "jax.grad through a hand-built layer",
    )
    with pytest.raises(TypeError, match=r"backprop: layer double has no hand-written fwd/bwd"):
        backprop.value_and_grad(model, fp.mse)(params, x, y)
    with pytest.raises(TypeError, match=r"twin: layer double has no plain twin"):
        nn.twin(model)


# --- a badly built graph ---------------------------------------------------------------


def _paths(model, y):
    """Every way to run a model: apply, the written-out backprop, the twin."""
    return {
        "apply": model.apply,
        "backprop": lambda p, x: backprop.value_and_grad(model, fp.mse)(p, x, y),
        "twin": lambda p, x: nn.twin(model)(p, x),
    }


def _bad_params_case(kind):
    model = nn.serial(dense(D), nn.Tanh(), dense(C))
    params = random_params(model, (2,))
    return model, {"too_few": params[:2], "a_dict": dict(enumerate(params))}[kind]


STRUCTURE_ERRORS = {
    "parallel_given_an_array": (
        lambda: (
            nn.serial(dense(D), nn.parallel(dense(C), dense(C))),
            (random_params(dense(D), (2,)), random_params(nn.parallel(dense(C), dense(C)), ((D,), (D,)))),
        ),
        r"serial layer 1 \(parallel\[2\]\): parallel\[2\]: input must be a tuple of 2 arrays \(put FanOut before "
        r"it\), got an array of shape \(4, 3\)",
    ),
    "fan_in_sum_of_different_shapes": (
        lambda: (
            nn.serial(nn.FanOut(2), nn.parallel(dense(C), dense(1)), nn.FanInSum()),
            ((), (nn.DenseParams(jnp.ones((C, 2)), jnp.ones(C)), nn.DenseParams(jnp.ones((1, 2)), jnp.ones(1))), ()),
        ),
        r"serial layer 2 \(FanInSum\): FanInSum: the inputs must share one shape, got \[\(4, 3\), \(4, 1\)\]",
    ),
    "residual_block_changes_the_shape": (
        lambda: (
            nn.serial(nn.residual(dense(1)), dense(C)),
            (nn.DenseParams(jnp.ones((1, 2)), jnp.ones(1)), nn.DenseParams(jnp.ones((C, 2)), jnp.ones(C))),
        ),
        r"serial layer 0 \(residual\(Dense\(1\)\)\): residual\(Dense\(1\)\): the block maps \(4, 2\) to \(4, 1\)",
    ),
    "serial_params_too_few": (
        lambda: _bad_params_case("too_few"),
        r"serial\[3\]: params must be a tuple of 3 layer params, got 2 entries",
    ),
    "serial_params_a_dict": (
        lambda: _bad_params_case("a_dict"),
        r"serial\[3\]: params must be a tuple of 3 layer params, got dict",
    ),
}


@pytest.mark.parametrize("path", ["apply", "backprop", "twin"])
@pytest.mark.parametrize("case", list(STRUCTURE_ERRORS))
def test_a_bad_structure_names_the_combinator_on_every_path(case, path):
    make, pattern = STRUCTURE_ERRORS[case]
    model, params = make()
    with pytest.raises(ValueError, match=pattern):
        _paths(model, jnp.zeros((B, C), jnp.float64))[path](params, normal(1, (B, 2)))


@pytest.mark.parametrize(
    "model, input_shape, pattern",
    [
        (
            nn.parallel(dense(C), dense(C)),
            (2,),
            r"parallel\[2\]: input_shape must be a tuple of 2 shapes \(put FanOut before it\), got \(2,\)",
        ),
        (
            nn.serial(nn.FanOut(3), nn.parallel(dense(C), dense(C))),
            (2,),
            r"serial layer 1 \(parallel\[2\]\): parallel\[2\]: input_shape must be a tuple of 2 shapes",
        ),
        (
            nn.serial(dense(D), nn.residual(dense(4))),
            (2,),
            r"serial layer 1 \(residual\(Dense\(4\)\)\): residual\(Dense\(4\)\): the block maps \(3,\) to \(4,\); "
            r"a residual block must keep the shape",
        ),
        (
            nn.residual(nn.serial(nn.FanOut(2), nn.parallel(dense(2), dense(1)), nn.FanInConcat())),
            (2,),
            r"residual\(serial\[3\]\): the block maps \(2,\) to \(3,\)",
        ),
        (
            nn.serial(nn.FanOut(2), nn.parallel(dense(C), dense(4)), nn.FanInSum()),
            (2,),
            r"serial layer 2 \(FanInSum\): FanInSum: the inputs must share one shape, got \[\(3,\), \(4,\)\]",
        ),
    ],
    ids=[
        "parallel_given_a_shape",
        "parallel_given_three",
        "residual_changes_shape",
        "residual_of_concat",
        "fan_in_sum_of_different_shapes",
    ],
)
def test_a_bad_structure_is_caught_at_init(model, input_shape, pattern):
    with pytest.raises(ValueError, match=pattern):  # abstractly: the checks run while init traces
        jax.eval_shape(lambda k: model.init(k, input_shape)[1], jax.random.key(0))


def test_fan_in_sum_alone_names_itself():
    with pytest.raises(ValueError, match=re.escape("FanInSum: the inputs must share one shape, got [(2, 3), (2, 1)]")):
        nn.FanInSum().apply((), (jnp.ones((2, 3)), jnp.ones((2, 1))))
    with pytest.raises(ValueError, match=r"FanInSum: input must be a tuple \(put FanOut before it\)"):
        nn.FanInSum().apply((), jnp.ones((2, 3)))


def test_params_of_a_leaf_may_be_a_plain_tuple():
    """apply and jax.grad take a tuple in place of DenseParams; so does backprop."""
    model, params, x, y = problem("residual")
    as_tuples = jax.tree.map(
        lambda p: tuple(p) if isinstance(p, nn.DenseParams) else p,
        params,
        is_leaf=lambda p: isinstance(p, nn.DenseParams),
    )
    assert_matches_references(model, fp.mse, as_tuples, x, y, what="tuple params")
