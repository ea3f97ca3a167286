"""Backpropagation written out: the seed's recursion, layer by layer, in plain code.

Forward, keeping every layer's input and output::

    f_k = β_k + Ω_k h_k,   h_{k+1} = a(f_k),   L = loss(f_K, y)

Backward, from δ_K = ∂L/∂f_K down to the input::

    ∂L/∂β_k = δ_k,   ∂L/∂Ω_k = δ_k h_kᵀ,   ∂L/∂h_k = Ω_kᵀ δ_k,   δ_{k−1} = a'(f_{k−1}) ⊙ ∂L/∂h_k

Each step calls the same hand-written ``fwd``/``bwd`` that the rules'
``jax.custom_vjp`` uses (one source of truth), so no formula is written twice and no
``jax.grad``, ``jax.vjp`` or ``jax.linearize`` appears here. The result is checked in
the tests against ``jax.grad`` through the rules and through the plain twins.

Also here: the Jacobian formulation of one layer (seed
``backprop-gradients-via-jacobians``), which forms the full Jacobians and agrees with
the VJP at O(n²m) cost instead of O(nm).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from funcprop.nn import Layer, layer_name
from funcprop.nn.compose import located
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
    it comes out of ``jit``."""

    name: str  # "2 Dense(3)": position among the leaf layers, and the layer
    input: jax.Array
    output: jax.Array
    input_grad: jax.Array
    output_grad: jax.Array


def _leaf_rules(layer: Layer):
    rules = getattr(layer.apply, "rules", None)
    if rules is None:
        raise TypeError(
            f"backprop: layer {layer_name(layer)} has no hand-written fwd/bwd; build the "
            f"model from funcprop.nn constructors (Dense, Relu, serial, mlp, ...)"
        )
    return rules


def _forward(layer: Layer, params, x):
    """(output, tape): the tape holds what the backward pass needs, layer by layer."""
    sublayers = getattr(layer.apply, "layers", None)
    if sublayers is not None:
        if not isinstance(params, (tuple, list)) or len(params) != len(sublayers):
            raise ValueError(
                f"backprop: {layer_name(layer)} needs a tuple of {len(sublayers)} layer params, "
                f"got {type(params).__name__}"
            )
        tapes = []
        for i, (sub, p) in enumerate(zip(sublayers, params)):
            with located(i, sub):
                x, tape = _forward(sub, p, x)
            tapes.append(tape)
        return x, tapes
    y, residuals = _leaf_rules(layer).fwd(params, x)
    return y, (x, y, residuals)


def _backward(layer: Layer, params, tape, y_bar, traces: list):
    """(params_bar, x_bar); appends a LayerTrace per leaf layer, last layer first."""
    sublayers = getattr(layer.apply, "layers", None)
    if sublayers is not None:
        grads = [None] * len(sublayers)
        for i in reversed(range(len(sublayers))):
            with located(i, sublayers[i]):
                grads[i], y_bar = _backward(sublayers[i], params[i], tape[i], y_bar, traces)
        return type(params)(grads), y_bar  # a list for list params, as jax.grad gives
    x, y, residuals = tape
    params_bar, x_bar = _leaf_rules(layer).bwd(params, residuals, y_bar)
    traces.append((layer_name(layer), x, y, x_bar, y_bar))
    return params_bar, x_bar


def value_and_grad(model: Layer, loss: Callable, *, return_intermediates: bool = False):
    """The written-out backprop of ``loss(model.apply(params, x), y)``.

    Args:
      model: a ``Layer`` built from funcprop.nn constructors.
      loss: a funcprop loss rule: ``softmax_cross_entropy``, ``mse`` or
        ``sigmoid_binary_cross_entropy``.
      return_intermediates: also return a list of :class:`LayerTrace`, first layer
        first, with every layer's input, output and both cotangents.

    Returns:
      ``fn(params, x, y) -> (loss, grads)`` (or ``(loss, grads, traces)``), where
      grads has the pytree structure of params, as ``jax.value_and_grad`` gives it.
      Jittable.
    """
    loss_rule = getattr(loss, "vjp_rule", None)
    if loss_rule is None or not callable(loss):
        raise TypeError(
            f"value_and_grad: loss must be a funcprop loss rule (softmax_cross_entropy, mse, "
            f"sigmoid_binary_cross_entropy), got {loss!r}"
        )
    if not (isinstance(model, tuple) and len(model) == 2):
        raise TypeError(f"value_and_grad: model must be a Layer(init, apply), got {type(model).__name__}")

    def fn(params, x, y):
        out, tape = _forward(model, params, x)
        jax.eval_shape(loss, out, y)  # the loss's shape and dtype checks, at trace time only
        value, loss_residuals = loss_rule.fwd(out, y)
        out_bar = loss_rule.bwd(loss_residuals, jnp.ones_like(value))[0]  # δ_K = ∂L/∂f_K
        traces: list = []
        grads, _ = _backward(model, params, tape, out_bar, traces)
        if not return_intermediates:
            return value, grads
        ordered = [LayerTrace(f"{i} {t[0]}", *t[1:]) for i, t in enumerate(reversed(traces))]
        return value, grads, ordered

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
