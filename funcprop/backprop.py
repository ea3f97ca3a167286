"""Backpropagation written out: the notes' recursion over any network, in plain code.

Forward, keeping what each rule's fwd returns::

    f_k = β_k + Ω_k h_k,   h_{k+1} = a(f_k),   L = loss(f_K, y)

Backward, from δ_K = ∂L/∂f_K down to the input, running the rules' bwds in reverse::

    ∂L/∂β_k = δ_k,   ∂L/∂Ω_k = δ_k h_kᵀ,   ∂L/∂h_k = Ω_kᵀ δ_k,   δ_{k−1} = a'(f_{k−1}) ⊙ ∂L/∂h_k

Where a value is used twice its cotangents add, as micrograd's ``+=``: a residual's
input gets ``ȳ + block_x̄``, and ``FanOut``'s bwd sums its copies' cotangents. The
network's structure is read from ``layer.node`` (see :mod:`funcprop.nn`), the mirror of
:func:`funcprop.nn.run`. Each leaf calls the same hand-written ``fwd``/``bwd`` that its
rule's ``jax.custom_vjp`` uses (one source of truth), so no formula is written twice and
no ``jax.grad``, ``jax.vjp`` or ``jax.linearize`` appears here. The result is checked in
the tests against ``jax.grad`` through the rules and through the plain twins.

Also here: the Jacobian formulation of one layer (seed
``backprop-gradients-via-jacobians``), which forms the full Jacobians and agrees with
the VJP at O(n²m) cost instead of O(nm).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from funcprop import nn
from funcprop.nn import Layer, layer_name
from funcprop.nn.compose import add_cotangents, check_params, check_tuple_input, located, residual_sum, split_key
from funcprop.rules.activations import sigmoid
from funcprop.rules.linear import dense


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["input", "output", "input_grad", "output_grad"],
    meta_fields=["name"],
)
@dataclasses.dataclass(frozen=True)
class LayerTrace:
    """What one leaf layer saw in a pass. For a Dense layer k: input h_k, output f_k,
    output_grad δ_k = ∂L/∂f_k and input_grad ∂L/∂h_k. A pytree (name is static), so
    it comes out of ``jit``. A fan-out's output (a fan-in's input) is a tuple."""

    name: str  # "1.0 Dense(3)": the path of child positions in the graph, and the layer
    input: Any
    output: Any
    input_grad: Any
    output_grad: Any


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "key", "input", "output", "params_grad", "input_grad", "output_grad"],
    meta_fields=["path", "layer"],
)
@dataclasses.dataclass(frozen=True)
class LeafRecord:
    """All that one leaf's rule took and gave in a pass: ``fwd(params, input, key)``
    gave ``output``, and ``bwd`` turned ``output_grad`` into ``(params_grad,
    input_grad)``. :class:`LayerTrace` shows part of it; ``funcprop.check.check_model``
    runs the leaf's plain twin on the same values. A pytree (path and layer are static)."""

    path: str  # "2.1": the child positions from the root ("0" for a one-leaf model)
    layer: Layer
    params: Any
    key: Any
    input: Any
    output: Any
    params_grad: Any
    input_grad: Any
    output_grad: Any

    @property
    def name(self) -> str:
        """``"2.1 Dense(3)"``: the leaf's path and name, as :class:`LayerTrace` names it."""
        return f"{self.path} {layer_name(self.layer)}"


def _rules(layer: Layer):
    if layer.node is None:
        raise TypeError(
            f"backprop: layer {layer_name(layer)} has no hand-written fwd/bwd (it was built by hand "
            f"from two functions); build the model from funcprop.nn constructors and combinators "
            f"(Dense, Relu, serial, residual, ...), or use jax.grad for it"
        )
    return layer.node.rule


def _forward(layer: Layer, params, x, key, path: str, order: list):
    """(output, tape): the tape holds what the backward needs, node by node; ``order``
    collects the leaves' paths in the order they ran."""
    node = layer.node
    if node is None or node.kind == "rule":
        y, residuals = _rules(layer).fwd(params, x, key)
        order.append(path)
        return y, (x, y, residuals, key)
    if node.kind == "residual":
        (block,) = node.children
        with located(node.kind, 0, block):
            y, tape = _forward(block, params, x, key, f"{path}0.", order)
        return residual_sum(node.name, x, y), tape
    check_params(node.name, params, len(node.children))
    keys = split_key(key, len(node.children))
    tapes = []
    if node.kind == "parallel":
        check_tuple_input(node.name, x, len(node.children))
        out = []
        for i, (child, p, xi, k) in enumerate(zip(node.children, params, x, keys)):
            with located(node.kind, i, child):
                yi, tape = _forward(child, p, xi, k, f"{path}{i}.", order)
            out.append(yi)
            tapes.append(tape)
        return tuple(out), tapes
    for i, (child, p, k) in enumerate(zip(node.children, params, keys)):  # serial
        with located(node.kind, i, child):
            x, tape = _forward(child, p, x, k, f"{path}{i}.", order)
        tapes.append(tape)
    return x, tapes


def _backward(layer: Layer, params, tape, y_bar, path: str, traces: dict):
    """(params_bar, x_bar) from the output's cotangent; fills ``traces[path]`` with each
    leaf's :class:`LeafRecord`."""
    node = layer.node
    if node is None or node.kind == "rule":
        x, y, residuals, key = tape
        params_bar, x_bar = _rules(layer).bwd(params, residuals, y_bar)
        traces[path] = LeafRecord(path.rstrip(".") or "0", layer, params, key, x, y, params_bar, x_bar, y_bar)
        return params_bar, x_bar
    if node.kind == "residual":  # y = x + block(x): x̄ = ȳ + block's x̄
        (block,) = node.children
        with located(node.kind, 0, block):
            params_bar, x_bar = _backward(block, params, tape, y_bar, f"{path}0.", traces)
        return params_bar, add_cotangents((y_bar, x_bar))
    grads = [None] * len(node.children)
    if node.kind == "parallel":
        x_bars = [None] * len(node.children)
        for i, child in enumerate(node.children):
            with located(node.kind, i, child):
                grads[i], x_bars[i] = _backward(child, params[i], tape[i], y_bar[i], f"{path}{i}.", traces)
        return type(params)(grads), tuple(x_bars)
    for i in reversed(range(len(node.children))):  # serial
        with located(node.kind, i, node.children[i]):
            grads[i], y_bar = _backward(node.children[i], params[i], tape[i], y_bar, f"{path}{i}.", traces)
    return type(params)(grads), y_bar  # a list for list params, as jax.grad gives


def _loss_pieces(loss: Callable):
    """``(fwd(params, out, y), bwd(params, res, g))`` of a loss rule or a loss layer;
    a rule's params are ``()``."""
    if nn.is_loss_layer(loss):
        return loss.node.rule.fwd, loss.node.rule.bwd
    rule = getattr(loss, "vjp_rule", None)
    if rule is None or not callable(loss):
        raise TypeError(
            f"value_and_grad: loss must be a funcprop loss rule (softmax_cross_entropy, mse, "
            f"sigmoid_binary_cross_entropy) or a loss layer (nn.LinearCrossEntropy), got {loss!r}"
        )

    def fwd(params, out, y):
        return rule.fwd(*rule.prepare(out, y))

    def bwd(params, res, g):
        return (), rule.bwd(res, g)[0]

    return fwd, bwd


def _pass(model: Layer, loss: Callable, model_params, head, x, y, key, loss_scale=None):
    """One forward and backward of ``loss(model(x), y)``, keeping what each leaf saw.

    ``head`` is a loss layer's params (``()`` for a loss rule). With ``loss_scale`` s
    the backward starts from s instead of 1: every cotangent and gradient is s times
    ∂L's (float16's loss scaling, :mod:`funcprop.loss_scale`). Returns ``(value,
    grads, head_bar, records, (out, out_bar))``: the model's grads, the loss layer's,
    the leaves' :class:`LeafRecord` in the order the forward ran them, and the model's
    output with its cotangent δ_K = ∂L/∂f_K.
    """
    loss_fwd, loss_bwd = _loss_pieces(loss)
    order: list = []
    out, tape = _forward(model, model_params, x, key, "", order)
    value, loss_residuals = loss_fwd(head, out, y)
    seed = jnp.ones_like(value) if loss_scale is None else jnp.asarray(loss_scale, value.dtype)
    head_bar, out_bar = loss_bwd(head, loss_residuals, seed)  # δ_K = ∂L/∂f_K (times s)
    traces: dict = {}
    grads, _ = _backward(model, model_params, tape, out_bar, "", traces)
    return value, grads, head_bar, [traces[p] for p in order], (out, out_bar)


def value_and_grad(model: Layer, loss: Callable, *, return_intermediates: bool = False):
    """The written-out backprop of ``loss(model.apply(params, x, key=key), y)``.

    Args:
      model: a network of funcprop.nn layers and combinators, nested any way.
      loss: a funcprop loss rule (``softmax_cross_entropy``, ``mse``,
        ``sigmoid_binary_cross_entropy``), or a loss layer (``nn.LinearCrossEntropy``),
        whose parameters then train too: params are the pair ``(model_params,
        loss_params)``, and so are the grads.
      return_intermediates: also return a list of :class:`LayerTrace`, one per leaf
        layer in the order the forward ran them, with its input, output and both
        cotangents, named by its path in the graph (``"2.1 Dense(3)"``).

    Returns:
      ``fn(params, x, y, *, key=None, loss_scale=None) -> (loss, grads)`` (or
      ``(loss, grads, traces)``), where grads has the pytree structure of params, as
      ``jax.value_and_grad`` gives it. ``key`` feeds dropout (None: no dropout);
      ``loss_scale`` s, if given, makes the grads those of s·L (the loss stays L).
      Jittable.

    Example:
      >>> from funcprop import backprop, nn, softmax_cross_entropy
      >>> model = nn.mlp([2, 3, 2], "tanh")
      >>> _, params = model.init(jax.random.key(0), (2,))   # one example's shape
      >>> x, y = jnp.ones((4, 2), jnp.float32), jnp.array([0, 1, 1, 0])
      >>> loss, grads = backprop.value_and_grad(model, softmax_cross_entropy)(params, x, y)
      >>> autodiff = jax.grad(lambda p: softmax_cross_entropy(nn.twin(model)(p, x), y))(params)
      >>> all(bool(jnp.allclose(a, b, atol=1e-6)) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(autodiff)))
      True
    """
    _loss_pieces(loss)  # a TypeError now, not at the first call, if loss is no rule
    with_head = nn.is_loss_layer(loss)
    if not isinstance(model, Layer):
        raise TypeError(f"value_and_grad: model must be a Layer, got {type(model).__name__}")

    def fn(params, x, y, *, key=None, loss_scale=None):
        model_params, head = nn.split_params("value_and_grad", params) if with_head else (params, ())
        value, grads, head_bar, records, _ = _pass(model, loss, model_params, head, x, y, key, loss_scale)
        if with_head:
            grads = type(params)((grads, head_bar))
        if not return_intermediates:
            return value, grads
        return value, grads, [LayerTrace(r.name, r.input, r.output, r.input_grad, r.output_grad) for r in records]

    return fn


# --- one layer, the Jacobian way and the VJP way -------------------------------------


def _activation_parts(z, activation):
    rule = activation.vjp_rule
    a, residuals = rule.fwd(z)
    return a, rule.bwd, residuals


def jacobian_layer_grads(x, omega, beta, dc_da, activation: Any = sigmoid):
    """dC/dΩ and dC/dβ of one layer a = σ(Ω x + β) by multiplying full Jacobians.

    ``dC/dΩ = dC/da (1×n) · da/dz (n×n) · dz/dΩ (n×nm)``, where dz/dΩ is the n×n×m
    tensor ``∂z_i/∂Ω_jk = [i = j] x_k`` reshaped to n×nm, and the 1×nm product is
    reshaped to n×m. Memory and time O(n²m); see :func:`vjp_layer_grads`.

    Args:
      x: ``(m,)`` one example. omega: ``(n, m)``. beta: ``(n,)``.
      dc_da: ``(n,)``, ∂C/∂a.
      activation: an elementwise funcprop rule (its Jacobian da/dz is diag(a'(z))).

    Returns:
      ``(dC/dΩ: (n, m), dC/dβ: (n,))``.
    """
    n, m = omega.shape
    z, _ = dense.vjp_rule.fwd(x, omega, beta)
    _, bwd, residuals = _activation_parts(z, activation)
    da_dz = jnp.diag(bwd(residuals, jnp.ones_like(z))[0])  # (n, n), diagonal: a'(z)
    dz_domega = jnp.einsum("ij,k->ijk", jnp.eye(n, dtype=x.dtype), x).reshape(n, n * m)
    dc_dz = dc_da[None, :] @ da_dz  # (1, n)
    return (dc_dz @ dz_domega).reshape(n, m), (dc_dz @ jnp.eye(n, dtype=x.dtype))[0]


def vjp_layer_grads(x, omega, beta, dc_da, activation: Any = sigmoid):
    """The same gradients by the VJP: δ = a'(z) ⊙ dC/da, dC/dΩ = δ xᵀ, dC/dβ = δ.

    O(nm) memory and time. Shapes as in :func:`jacobian_layer_grads`.
    """
    z, dense_residuals = dense.vjp_rule.fwd(x, omega, beta)
    _, bwd, residuals = _activation_parts(z, activation)
    (delta,) = bwd(residuals, dc_da)
    _, omega_bar, beta_bar = dense.vjp_rule.bwd(dense_residuals, delta)
    return omega_bar, beta_bar
