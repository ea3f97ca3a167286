"""The shapes of every term of backprop, layer by layer: ``funcprop shapes``.

Both tables come from a real pass of :func:`funcprop.backprop.value_and_grad` with
``return_intermediates=True``, traced by ``jax.eval_shape`` (nothing is computed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcprop import backprop, nn
from funcprop.rules.losses import softmax_cross_entropy


def _fmt(value) -> str:
    """``(5, 4)``; a tuple of arrays (a fan-out's copies) as ``(5, 4) (5, 4)``."""
    if isinstance(value, (tuple, list)):
        return " ".join(_fmt(v) for v in value)
    return str(tuple(value.shape))


def _pass(model, example_shape, batch):
    """(params, grads, traces) of one traced pass with softmax cross-entropy."""
    lead = () if batch is None else (batch,)
    x = jax.ShapeDtypeStruct((*lead, *example_shape), jnp.float32)
    y = jax.ShapeDtypeStruct(lead, jnp.int32)
    params = jax.eval_shape(lambda k: model.init(k, example_shape)[1], jax.random.key(0))
    fn = backprop.value_and_grad(model, softmax_cross_entropy, return_intermediates=True)
    _, grads, traces = jax.eval_shape(fn, params, x, y)
    return params, grads, traces


def _table(header, rows, title) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([title, *lines])


def mlp_table(sizes, batch=None, activation="sigmoid") -> str:
    """Per dense layer k of ``mlp(sizes)``, the shapes of h, Ω, β, f, δ, ∂L/∂Ω, ∂L/∂β
    and ∂L/∂h. Without ``batch`` one example is shown, as in the notes' walkthrough."""
    model = nn.mlp(list(sizes), activation=activation)
    params, grads, traces = _pass(model, (sizes[0],), batch)
    header = ["layer", "h_k", "Ω_k", "β_k", "f_k", "δ_k = ∂L/∂f_k", "∂L/∂Ω_k", "∂L/∂β_k", "∂L/∂h_k"]
    dense = [(t, p, g) for t, p, g in zip(traces, params, grads) if isinstance(p, nn.DenseParams)]
    rows = [
        [
            str(k),
            _fmt(t.input),
            _fmt(p.omega),
            _fmt(p.beta),
            _fmt(t.output),
            _fmt(t.output_grad),
            _fmt(g.omega),
            _fmt(g.beta),
            _fmt(t.input_grad),
        ]
        for k, (t, p, g) in enumerate(dense)
    ]
    what = "one example" if batch is None else f"batch of {batch}"
    return _table(header, rows, f"mlp {'-'.join(map(str, sizes))} ({activation}, softmax cross-entropy), {what}:")


def graph_table(model, example_shape, batch=None, *, title="model") -> str:
    """Per leaf of any network: its path and name, input, output, parameters, and the
    cotangents of its output, parameters and input (softmax cross-entropy at the end)."""
    params, grads, traces = _pass(model, tuple(example_shape), batch)
    leaf_params = [p for _, _, p in nn.leaves(model, params)]
    leaf_grads = [g for _, _, g in nn.leaves(model, grads)]
    header = ["layer", "input", "output", "params", "∂L/∂output", "∂L/∂params", "∂L/∂input"]
    rows = [
        [
            t.name,
            _fmt(t.input),
            _fmt(t.output),
            _fmt(list(jax.tree.leaves(p))) or "-",
            _fmt(t.output_grad),
            _fmt(list(jax.tree.leaves(g))) or "-",
            _fmt(t.input_grad),
        ]
        for t, p, g in zip(traces, leaf_params, leaf_grads)
    ]
    what = "one example" if batch is None else f"batch of {batch}"
    return _table(header, rows, f"{title} (softmax cross-entropy), {what}:")
