"""The dtype policy of DESIGN §7 on every path: apply, the written-out backprop, the
twin, jax.grad and abstract evaluation.

``dtype=None`` computes in the parameters' dtype and refuses another floating input
(funcprop never promotes, where Flax would); ``dtype`` set casts the floating inputs
and the parameters at each layer's entry, and each parameter's gradient comes back in
its own dtype."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, assert_close, assert_trees_close, grads_three_ways, random_params, scaled_relative_error

import funcprop as fp
from funcprop import backprop, nn

F32, F64, BF16 = jnp.float32, jnp.float64, jnp.bfloat16
EPS32 = float(jnp.finfo(F32).eps)  # one float32 rounding of a float64 result
EPS_BF16 = float(jnp.finfo(BF16).eps)  # 2⁻⁷: bfloat16's spacing at 1
B, C = 4, 3
LOSSES = {"mse": fp.mse, "softmax_cross_entropy": fp.softmax_cross_entropy}


def normal(seed, shape, dtype):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def targets(loss_name, dtype):
    """mse's targets in the output's dtype (mse takes one dtype), or class ids."""
    if loss_name == "mse":
        return normal(2, (B, C), dtype)
    return jnp.asarray(np.random.default_rng(2).integers(0, C, B))


def dtypes(tree):
    return jax.tree.map(lambda a: jnp.result_type(a), tree)


def output_dtypes(model, params, x):
    """The dtypes of apply's and the twin's outputs, found abstractly."""
    return tuple(jax.eval_shape(f, params, x).dtype for f in (model.apply, nn.twin(model)))


# --- dtype=None: an input of another float dtype is refused, the same way everywhere ------

# name -> (model of float32 params, input shape, the start of the message: the layer and its position)
REFUSING = {
    "dense": (lambda: nn.Dense(C), (2,), r"^Dense\(3\): "),
    "mlp": (lambda: nn.mlp([2, 4, C]), (2,), r"^serial layer 0 \(Dense\(4\)\): Dense\(4\): "),
    "norm_first_in_a_residual": (
        lambda: nn.serial(nn.residual(nn.serial(nn.LayerNorm(), nn.Dense(2))), nn.Dense(C)),
        (2,),
        r"^serial layer 0 \(residual\(serial\[2\]\)\): residual layer 0 \(serial\[2\]\): serial layer 0 "
        r"\(LayerNorm\): LayerNorm: ",
    ),
    "in_a_parallel_branch": (
        lambda: nn.serial(nn.FanOut(2), nn.parallel(nn.Identity(), nn.RMSNorm()), nn.FanInConcat()),
        (2,),
        r"^serial layer 1 \(parallel\[2\]\): parallel layer 1 \(RMSNorm\): RMSNorm: ",
    ),
    "cnn": (
        lambda: nn.cnn(C, channels=(2,), hidden=4),
        (4, 4, 1),
        r"^serial layer 0 \(Conv2D\(2, 3x3, stride 1x1, SAME\)\): Conv2D\(2, 3x3, stride 1x1, SAME\): ",
    ),
}


def _paths(model, loss=fp.mse):
    apply = model.apply
    vg = backprop.value_and_grad(model, loss)
    twin = nn.twin(model)
    by_rules = jax.grad(lambda p, x, y: loss(model.apply(p, x), y))
    return {
        "apply": apply,
        "backprop": vg,
        "twin": twin,
        "jax.grad": by_rules,
        "eval_shape(apply)": lambda *a: jax.eval_shape(apply, *a),
        "eval_shape(backprop)": lambda *a: jax.eval_shape(vg, *a),
        "eval_shape(twin)": lambda *a: jax.eval_shape(twin, *a),
        "eval_shape(jax.grad)": lambda *a: jax.eval_shape(by_rules, *a),
    }


def _refusal_messages(model, params, x, y):
    """Each path's TypeError message for a refused input."""
    messages = {}
    for path, fn in _paths(model).items():
        args = (params, x) if path in ("apply", "twin", "eval_shape(apply)", "eval_shape(twin)") else (params, x, y)
        with pytest.raises(TypeError) as err:
            fn(*args)
        messages[path] = str(err.value)
    return messages


@pytest.mark.parametrize("x_dtype", [F64, BF16], ids=["float64", "bfloat16"])
@pytest.mark.parametrize("name", list(REFUSING))
def test_another_float_input_raises_one_type_error_on_every_path(name, x_dtype):
    make, shape, where = REFUSING[name]
    model = make()
    params = random_params(model, shape)
    x, y = normal(1, (B, *shape), x_dtype), normal(2, (B, C), F32)
    want = str(jnp.dtype(x_dtype))
    pattern = where + re.escape(
        f"input is {want} but the parameters are float32; cast the input "
        f"(x.astype(jnp.float32)) or build the layer with dtype= to compute in another dtype"
    )
    messages = _refusal_messages(model, params, x, y)
    assert re.fullmatch(pattern, messages["apply"]), messages["apply"]
    for path, message in messages.items():
        assert message == messages["apply"], f"{path} says {message!r}"


def test_float64_params_refuse_a_float32_input():
    model = nn.serial(nn.Dense(4, param_dtype=F64), nn.Relu(), nn.Dense(C, param_dtype=F64))
    params = random_params(model, (2,))
    messages = _refusal_messages(model, params, normal(1, (B, 2), F32), normal(2, (B, C), F32))
    assert set(messages.values()) == {
        "serial layer 0 (Dense(4)): Dense(4): input is float32 but the parameters "
        "are float64; cast the input (x.astype(jnp.float64)) or build the layer with "
        "dtype= to compute in another dtype"
    }


def test_a_layer_computing_in_float64_feeds_a_float32_layer_that_refuses_it():
    model = nn.serial(nn.Dense(4, dtype=F64), nn.Dense(C))
    params = random_params(model, (2,))
    messages = _refusal_messages(model, params, normal(1, (B, 2), F32), normal(2, (B, C), F32))
    assert set(messages.values()) == {
        "serial layer 1 (Dense(3)): Dense(3): input is float64 but the parameters "
        "are float32; cast the input (x.astype(jnp.float32)) or build the layer with "
        "dtype= to compute in another dtype"
    }


@pytest.mark.parametrize("path", ["apply", "backprop", "twin"])
@pytest.mark.parametrize(
    "make, pattern",
    [
        (
            lambda: nn.serial(nn.Dense(C), nn.residual(nn.Dense(C, dtype=BF16))),
            r"serial layer 1 \(residual\(Dense\(3\)\)\): residual\(Dense\(3\)\): the block maps float32 to bfloat16; "
            r"funcprop never promotes silently",
        ),
        (
            lambda: nn.serial(nn.FanOut(2), nn.parallel(nn.Dense(C), nn.Dense(C, dtype=BF16)), nn.FanInSum()),
            r"serial layer 2 \(FanInSum\): FanInSum: the inputs must share one dtype, got \['float32', 'bfloat16'\]",
        ),
    ],
    ids=["residual", "fan_in_sum"],
)
def test_values_of_two_dtypes_are_not_added(standard_promotion, make, pattern, path):
    """Even where jnp would promote (standard promotion), a sum of two dtypes is refused:
    its backward would hand the bfloat16 branch a float32 cotangent."""
    model = make()
    params = random_params(model, (2,))
    x, y = normal(1, (B, 2), F32), normal(2, (B, C), F32)
    run = {
        "apply": lambda: model.apply(params, x),
        "twin": lambda: nn.twin(model)(params, x),
        "backprop": lambda: backprop.value_and_grad(model, fp.mse)(params, x, y),
    }[path]
    with pytest.raises(TypeError, match=pattern):
        run()


# --- dtype set: computation in dtype, each gradient in its own dtype -----------------------


def models(dtype, param_dtype=F32):
    """name -> (model, input shape): each builder passes dtype and param_dtype to every layer."""
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    return {
        "mlp": (nn.mlp([2, 8, C], activation="gelu", **kw), (2,)),
        "resmlp": (nn.resmlp(C, width=8, depth=1, **kw), (2,)),
        "resnet": (nn.resnet(C, channels=(2, 3), hidden=4, **kw), (8, 8, 1)),
    }


# each network with one of the losses: the loss only sets the output's cotangent
CASES = pytest.mark.parametrize(
    "name, loss_name", [("mlp", "softmax_cross_entropy"), ("resmlp", "mse"), ("resnet", "softmax_cross_entropy")]
)


@CASES
def test_dtype_float64_computes_in_float64_and_returns_float32_gradients(name, loss_name):
    model, shape = models(F64)[name]
    params = random_params(model, shape)
    x = normal(1, (B, *shape), F32)  # a float input of any dtype is cast at the entry
    y = targets(loss_name, F64)
    assert output_dtypes(model, params, x) == (F64, F64)
    results = grads_three_ways(model, LOSSES[loss_name], params, x, y)
    for path, (value, grads) in results.items():
        assert value.dtype == F64, path
        assert dtypes(grads) == dtypes(params), f"{path}: gradients in the params' dtypes"
    # the same network with float64 params: its gradients, rounded once to float32
    ref_model, _ = models(None, F64)[name]
    ref_params = jax.tree.map(lambda p: p.astype(F64), params)
    ref_value, ref_grads = jax.jit(backprop.value_and_grad(ref_model, LOSSES[loss_name]))(ref_params, x.astype(F64), y)
    value, grads = results["backprop"]
    assert_close(value, ref_value, RTOL[np.dtype(F64)], "loss")
    assert_trees_close(grads, jax.tree.map(lambda g: g.astype(F32), ref_grads), EPS32, "vs the float64 network")
    for ref in ("rules", "twins"):
        assert_trees_close(grads, results[ref][1], EPS32, f"backprop vs {ref}")


@CASES
def test_dtype_bfloat16_computes_in_bfloat16_and_returns_float32_gradients(name, loss_name):
    model, shape = models(BF16)[name]
    params = random_params(model, shape)
    x = normal(1, (B, *shape), F32)
    assert output_dtypes(model, params, x) == (BF16, BF16)
    results = grads_three_ways(model, LOSSES[loss_name], params, x, targets(loss_name, BF16))
    for path, (_, grads) in results.items():
        assert dtypes(grads) == dtypes(params), f"{path}: gradients in the params' dtypes"
    value, grads = results["backprop"]
    # the same fwd and bwd run in both (exact on CPU); one bfloat16 rounding of slack for
    # an accelerator's reductions
    assert_close(value, results["rules"][0], EPS_BF16, "loss vs rules")
    assert_trees_close(grads, results["rules"][1], EPS_BF16, "backprop vs rules")
    # autodiff of the twins rounds elsewhere: within a few bfloat16 roundings
    assert_trees_close(grads, results["twins"][1], 4 * EPS_BF16, "backprop vs twins")


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_a_loss_of_bfloat16_outputs_is_a_float32_scalar(loss_name):
    model, shape = models(BF16)["mlp"]
    params = random_params(model, shape)
    vg = backprop.value_and_grad(model, LOSSES[loss_name])
    value, _ = jax.eval_shape(vg, params, normal(1, (B, 2), F32), targets(loss_name, BF16))
    assert value.dtype == F32


def test_input_cotangent_comes_back_in_the_inputs_dtype():
    model, shape = models(BF16)["resmlp"]
    params = random_params(model, shape)
    vg = backprop.value_and_grad(model, fp.mse, return_intermediates=True)
    y = targets("mse", BF16)
    x_grad = jax.grad(lambda x: fp.mse(model.apply(params, x), y))
    for x_dtype in (F32, BF16, F64):
        x = normal(1, (B, 2), x_dtype)
        _, _, traces = jax.eval_shape(vg, params, x, y)  # dtypes only: abstractly
        assert traces[0].input_grad.dtype == x_dtype and jax.eval_shape(x_grad, x).dtype == x_dtype
        assert traces[0].output.dtype == BF16 and traces[-1].output_grad.dtype == BF16


def test_layer_norm_statistics_are_float32_in_a_bfloat16_layer():
    """Rows of mean 100 and spread 1: in bfloat16 (spacing 0.5 at 100) the mean alone
    would be off by up to a quarter of the spread."""
    d = 16
    layer = nn.LayerNorm(dtype=BF16)
    params = random_params(layer, (d,))
    x = 100 + normal(1, (B, d), F32)
    y = jax.jit(layer.apply)(params, x)
    assert y.dtype == BF16
    # the exact result for the bfloat16 inputs and parameters, in float64
    xb, gamma, beta = (np.asarray(a.astype(BF16), np.float64) for a in (x, params.gamma, params.beta))
    mu, var = xb.mean(-1, keepdims=True), xb.var(-1, keepdims=True)
    exact = gamma * (xb - mu) / np.sqrt(var + 1e-5) + beta
    assert scaled_relative_error(y, exact).max() <= EPS_BF16 / 2  # one rounding of the output
    # statistics in bfloat16 would be far off: the test can tell the difference
    assert scaled_relative_error(_bfloat16_layer_norm(x, params), exact).max() > 10 * EPS_BF16
    # its gradients: the parameters' in float32, the input's in the input's dtype
    y_target = normal(2, (B, d), BF16)

    @jax.jit
    def both(params, x):
        return (
            backprop.value_and_grad(layer, fp.mse, return_intermediates=True)(params, x, y_target),
            jax.grad(lambda p: fp.mse(layer.apply(p, x), y_target))(params),
        )

    (_, grads, traces), rules_grads = both(params, x)
    assert dtypes(grads) == dtypes(params) and traces[0].input_grad.dtype == F32
    assert_trees_close(grads, rules_grads, EPS_BF16, "vs rules")


@jax.jit
def _bfloat16_layer_norm(x, params):
    """Layer norm with its statistics in bfloat16: what the rule must not do."""
    x = x.astype(BF16)
    mu = jnp.mean(x, -1, keepdims=True)
    r = jax.lax.rsqrt(jnp.mean(jnp.square(x - mu), -1, keepdims=True) + jnp.asarray(1e-5, BF16))
    return params.gamma.astype(BF16) * ((x - mu) * r) + params.beta.astype(BF16)


# --- constructors check their dtypes ------------------------------------------------------


@pytest.mark.parametrize(
    "make, pattern",
    [
        (
            lambda: nn.Dense(3, dtype="int32"),
            r"Dense\(3\): dtype must be a floating dtype such as jnp.float32, "
            r"got 'int32'",
        ),
        (lambda: nn.Dense(3, param_dtype=jnp.int8), r"Dense\(3\): param_dtype must be a floating dtype"),
        (lambda: nn.Conv2D(2, 3, dtype=jnp.int32), r"Conv2D\(2, 3x3, .*\): dtype must be a floating dtype"),
        (lambda: nn.LayerNorm(dtype="foo"), r"LayerNorm: dtype must be a floating dtype .*got 'foo'"),
        (lambda: nn.RMSNorm(param_dtype=bool), r"RMSNorm: param_dtype must be a floating dtype"),
        (lambda: nn.Embedding(5, 2, param_dtype=jnp.int32), r"Embedding\(5, 2\): param_dtype must be a floating"),
        (lambda: nn.Relu(dtype=jnp.int32), r"Relu: dtype must be a floating dtype"),
        (lambda: nn.MaxPool2D(2, dtype=jnp.uint8), r"MaxPool2D\(2x2, stride 2x2\): dtype must be a floating dtype"),
        (lambda: nn.mlp([2, 3], dtype="int32"), r"Dense\(3\): dtype must be a floating dtype"),
    ],
    ids=["dense_dtype", "dense_param_dtype", "conv", "layer_norm", "rms_norm", "embedding", "relu", "max_pool", "mlp"],
)
def test_a_bad_dtype_argument_names_the_layer(make, pattern):
    with pytest.raises(TypeError, match=pattern):
        make()
