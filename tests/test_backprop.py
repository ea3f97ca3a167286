"""The written-out recursion against jax.grad through the rules and through the twins."""

import ast
import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, assert_close

import funcprop as fp
from funcprop import backprop, nn

F64 = RTOL[np.dtype("float64")]
LOSSES = {
    "softmax_cross_entropy": fp.softmax_cross_entropy,
    "mse": fp.mse,
    "sigmoid_binary_cross_entropy": fp.sigmoid_binary_cross_entropy,
}


def _problem(activation, loss_name, sizes=(3, 6, 5, 4), batch=7):
    model = nn.mlp(list(sizes), activation=activation, param_dtype=jnp.float64)
    _, params = model.init(jax.random.key(0), (sizes[0],))
    # nonzero biases, so β̄ is exercised against a nontrivial forward
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(9), p.shape, p.dtype), params)
    x = jax.random.normal(jax.random.key(1), (batch, sizes[0]), jnp.float64)
    if loss_name == "softmax_cross_entropy":
        y = jax.random.randint(jax.random.key(2), (batch,), 0, sizes[-1])
    elif loss_name == "mse":
        y = jax.random.normal(jax.random.key(2), (batch, sizes[-1]), jnp.float64)
    else:
        y = jax.random.uniform(jax.random.key(2), (batch, sizes[-1]), jnp.float64)
    return model, params, x, y


@pytest.mark.parametrize("activation, loss_name", list(itertools.product(sorted(nn.ACTIVATIONS), sorted(LOSSES))))
def test_backprop_equals_autodiff_through_rules_and_twins(activation, loss_name):
    model, params, x, y = _problem(activation, loss_name)
    loss = LOSSES[loss_name]
    value, grads = jax.jit(backprop.value_and_grad(model, loss))(params, x, y)
    rules_value, rules_grads = jax.value_and_grad(lambda p: loss(model.apply(p, x), y))(params)
    twin_loss = loss.vjp_rule.twin
    twin_value, twin_grads = jax.value_and_grad(lambda p: twin_loss(nn.twin(model)(p, x), y))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert_close(value, twin_value, F64, "loss")
    for ref_name, ref in [("rules", rules_grads), ("twins", twin_grads)]:
        for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref)):
            assert_close(got, want, F64, f"{activation}/{loss_name} vs {ref_name} at {jax.tree_util.keystr(path)}")
    assert_close(rules_value, value, F64, "loss through rules")


def test_seed_network_intermediates_follow_the_recursion():
    """δ_k hᵀ, Ωᵀ δ, a'(f) ⊙ ∂L/∂h, layer by layer, as in the notes' walkthrough."""
    model, params, x, y = _problem("sigmoid", "softmax_cross_entropy", sizes=(2, 4, 7, 3, 2), batch=5)
    value, grads, traces = jax.jit(backprop.value_and_grad(model, fp.softmax_cross_entropy, return_intermediates=True))(
        params, x, y
    )
    assert [t.name for t in traces] == [
        "0 Dense(4)",
        "1 Sigmoid",
        "2 Dense(7)",
        "3 Sigmoid",
        "4 Dense(3)",
        "5 Sigmoid",
        "6 Dense(2)",
    ]
    # δ_K = (p − y) / B at the logits
    p = jax.nn.softmax(traces[-1].output)
    assert_close(traces[-1].output_grad, (p - jax.nn.one_hot(y, 2, dtype=p.dtype)) / 5, F64, "δ_K")
    for k, (trace, g) in enumerate(zip(traces[::2], grads[::2])):
        assert_close(g.omega, trace.output_grad.T @ trace.input, F64, f"∂L/∂Ω_{k} = δ hᵀ")
        assert_close(g.beta, trace.output_grad.sum(0), F64, f"∂L/∂β_{k} = Σ δ")
        assert_close(trace.input_grad, trace.output_grad @ params[2 * k].omega, F64, f"∂L/∂h_{k} = Ωᵀ δ")
    for act, nxt in zip(traces[1::2], traces[2::2]):
        s = act.output
        assert_close(act.output_grad, nxt.input_grad, F64, "chain")
        assert_close(act.input_grad, s * (1 - s) * act.output_grad, F64, "δ = σ'(f) ⊙ ∂L/∂h")
    twin_x_grad = jax.grad(lambda x: fp.softmax_cross_entropy.vjp_rule.twin(nn.twin(model)(params, x), y))(x)
    assert_close(traces[0].input_grad, twin_x_grad, F64, "∂L/∂x")


_BACKWARD_PATH = sorted(
    ["funcprop/backprop.py"]
    + [
        str(p.relative_to(pathlib.Path(fp.__file__).parent.parent))
        for p in pathlib.Path(fp.__file__).parent.glob("nn/*.py")
    ]
    + [
        str(p.relative_to(pathlib.Path(fp.__file__).parent.parent))
        for p in pathlib.Path(fp.__file__).parent.glob("rules/*.py")
    ]
)


@pytest.mark.parametrize("path", _BACKWARD_PATH)
def test_backprop_uses_no_autodiff(path):
    """No jax.grad, jax.vjp, jax.linearize or jax.jvp is called anywhere the written-out
    backprop runs: the module itself, the layers and combinators, and the rules."""
    banned = {"grad", "vjp", "linearize", "jvp", "value_and_grad", "jacrev", "jacfwd"}
    tree = ast.parse((pathlib.Path(fp.__file__).parent.parent / path).read_text())
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "jax"
    }
    imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names}
    assert not (used | imported) & banned


def test_backprop_rejects_user_layers_and_non_rule_losses():
    user = nn.serial(nn.Dense(3), nn.Layer(lambda k, s: (s, ()), lambda p, x: 2 * x))
    _, params = user.init(jax.random.key(0), (2,))
    with pytest.raises(TypeError, match=r"backprop: layer .* has no hand-written fwd/bwd"):
        backprop.value_and_grad(user, fp.mse)(params, jnp.ones((1, 2), jnp.float32), jnp.ones((1, 3), jnp.float32))
    with pytest.raises(TypeError, match=r"value_and_grad: loss must be a funcprop loss rule"):
        backprop.value_and_grad(user, lambda a, b: jnp.sum(a - b))


def test_backprop_checks_label_shapes():
    model, params, x, _ = _problem("relu", "softmax_cross_entropy")
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: integer labels have shape \(3,\)"):
        backprop.value_and_grad(model, fp.softmax_cross_entropy)(params, x, jnp.zeros(3, jnp.int32))


def test_backprop_refuses_integer_inputs_as_the_rules_do():
    model, params, x, y = _problem("relu", "softmax_cross_entropy")
    with pytest.raises(
        TypeError, match=r"serial layer 0 \(Dense\(\d+\)\): dense: h must be a floating-point array, got dtype int32"
    ):
        backprop.value_and_grad(model, fp.softmax_cross_entropy)(params, x.astype(jnp.int32), y)
    with pytest.raises(TypeError, match=r"dense: h must be a floating-point array, got dtype int32"):
        model.apply(params, x.astype(jnp.int32))


@pytest.mark.parametrize("activation", [fp.sigmoid, fp.tanh, fp.softplus, fp.gelu], ids=lambda f: f.__name__)
def test_jacobian_formulation_equals_vjp_and_autodiff(activation):
    n, m = 5, 3
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (m,), jnp.float64)
    omega = jax.random.normal(k[1], (n, m), jnp.float64)
    beta = jax.random.normal(k[2], (n,), jnp.float64)
    dc_da = jax.random.normal(k[3], (n,), jnp.float64)
    jac_w, jac_b = backprop.jacobian_layer_grads(x, omega, beta, dc_da, activation)
    vjp_w, vjp_b = backprop.vjp_layer_grads(x, omega, beta, dc_da, activation)
    twin = activation.vjp_rule.twin
    ref_w, ref_b = jax.grad(lambda w, b: jnp.sum(dc_da * twin(w @ x + b)), argnums=(0, 1))(omega, beta)
    assert jac_w.shape == (n, m)
    for got, want, what in [
        (jac_w, ref_w, "Jacobian dC/dΩ"),
        (vjp_w, ref_w, "VJP δ xᵀ"),
        (jac_b, ref_b, "Jacobian dC/dβ"),
        (vjp_b, ref_b, "VJP δ"),
    ]:
        assert_close(got, want, F64, what)


def test_backprop_shape_errors_name_the_layer_position():
    model = nn.serial(nn.Dense(3), nn.Relu(), nn.Dense(3))
    _, params = model.init(jax.random.key(0), (4,))
    bad = (params[0], params[1], nn.DenseParams(jnp.ones((3, 4), jnp.float32), jnp.ones(3, jnp.float32)))
    with pytest.raises(
        ValueError, match=r"serial layer 2 \(Dense\(3\)\): dense: omega has shape \(3, 4\) but h has 3 features"
    ):
        backprop.value_and_grad(model, fp.mse)(bad, jnp.ones((2, 4), jnp.float32), jnp.ones((2, 3), jnp.float32))


def test_backprop_keeps_a_list_of_params_a_list():
    model, params, x, y = _problem("tanh", "mse")
    _, grads = backprop.value_and_grad(model, fp.mse)(list(params), x, y)
    assert isinstance(grads, list) and jax.tree.structure(grads) == jax.tree.structure(list(params))
