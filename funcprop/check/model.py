"""check_model: every layer of a network against its plain twin, on the values backprop gave it.

The written-out backprop (:func:`funcprop.backprop.value_and_grad`) runs once and keeps,
for each leaf layer l, its input x_l, params θ_l, key k_l, output y_l and the output
cotangent δ_l that came down to it. Then, for every leaf in the order the forward ran
them, with twin = ``layer.node.rule.twin``:

    output:  the rule's fwd y_l                       against  twin(θ_l, x_l, k_l)
    vjp:     the rule's bwd (θ̄_l, x̄_l) from δ_l       against  jax.vjp(twin, θ_l, x_l)(δ_l)

and the loss likewise, on the model's output with cotangent 1: its value, out̄, and a
loss layer's θ̄ (twin: ``loss.vjp_rule.twin``, or a loss layer's ``node.rule.twin``).
Every layer is compared on its own inputs, so a wrong layer in the middle is flagged
alone: the layers below it receive wrong cotangents, and their twins the same ones.
Floating leaves only (an embedding's ids have no cotangent, and are compared exactly); a
None cotangent counts as zeros. Tolerance: :func:`default_rtol` of the twin's dtype, or
``rtol=``, on the scaled error of :mod:`._report`, where a vjp leaf's scale max|b| is at
least max|δ_l|: a leaf that is 0 in exact arithmetic (the gradient of attention's key
bias) holds rounding only, and is measured against the cotangent it came from.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcprop import backprop, nn
from funcprop.check._report import CheckReport, CheckRow, GradientCheckError, default_rtol, error_row, failure_message
from funcprop.nn._layer import check_key

REFERENCE = "plain twins, layer by layer"


class LayerFailure(NamedTuple):
    """The first failing layer in forward order, and its first failing row."""

    position: str  # "2.1": the child positions from the root; "loss" for the loss
    name: str  # "Dense(3)", "softmax_cross_entropy"
    row: CheckRow


class ModelReport(CheckReport):
    """A :class:`CheckReport` whose rows belong to layers: row i is layer ``layers[i]``,
    a ``(position, name)`` pair."""

    def __init__(self, name: str, rows: list, layers: list):
        super().__init__(name, REFERENCE, rows, [], title=f"check_model({name})")
        self.layers = tuple(layers)

    @property
    def first_failure(self) -> LayerFailure | None:
        """The first layer in forward order (then the loss) with a failing row, or None."""
        for (position, name), row in zip(self.layers, self.rows):
            if not row.passed:
                return LayerFailure(position, name, row)
        return None

    def message(self) -> str:
        """The error's text: which layer is wrong and where, in the first line, then the table."""
        first = self.first_failure
        if first is None:
            return f"{self.title}: every layer agrees with its plain twin"
        r, inside = first.row, first.row.leaf.rpartition(": ")[2]
        who = f"the loss {first.name}" if first.position == "loss" else f"layer {first.position} {first.name}"
        what = f"output {inside}" if r.check == "output" else f"vjp for {inside}"
        lines = [
            f"check_model: {who} is wrong: its {what} at index {r.index}: expected {r.expected:.10g}, "
            f"received {r.received:.10g} (scaled relative error {r.max_rel_error:.3g} > tolerance {r.tol:g})"
            + (f"; {r.compared}" if r.compared else "")
        ]
        others = sorted({layer for layer, row in zip(self.layers, self.rows) if not row.passed} - {first[:2]})
        if others:
            lines.append("also failing: " + ", ".join(f"{p} {n}" for p, n in others))
        return "\n".join([*lines, failure_message(self)])


def check_model(model, loss, params, x, y, *, key=None, rtol=None, raise_on_fail: bool = True) -> ModelReport:
    """Check every leaf layer of ``model`` and the loss against their plain twins.

    The arguments are those of ``backprop.value_and_grad(model, loss)(params, x, y,
    key=key)``; with a loss layer, params is the pair ``(model_params, loss_params)``.

    Returns:
      A :class:`ModelReport`: rows ``output`` (y, the loss's value) and ``vjp`` (each
      ``params`` leaf, ``x̄``; the loss's ``out̄``) per layer, named by position and
      name, ``"2.1 Dense(3): params.omega"``; ``report.first_failure`` names the first
      wrong layer in forward order.

    Raises:
      GradientCheckError: if a row fails and ``raise_on_fail``; ``.report`` holds it.
      TypeError: for a hand-built layer (no rule), a model that is not a Layer, or a
        loss that is not a funcprop loss rule or loss layer.
    """
    _check_arguments(model, loss, key, rtol)
    with_head = nn.is_loss_layer(loss)
    model_params, head = nn.split_params("check_model", params) if with_head else (params, ())
    records, (out, value, head_bar, out_bar), twins = _compare(model, loss, model_params, head, x, y, key)
    loss_name = nn.layer_name(loss) if with_head else getattr(loss, "__name__", "loss")
    given = [(r.output, r.params, r.input, r.params_grad, r.input_grad, r.output_grad) for r in records]
    given.append((value, head, out, head_bar, out_bar, None))  # the loss's cotangent 1 sets no scale
    wheres = [(r.path, nn.layer_name(r.layer)) for r in records] + [("loss", loss_name)]
    rows, layers = [], []
    for where, values, twin in zip(wheres, given, twins):
        new = _rows(" ".join(where), values, twin, ("value", "out̄") if where[0] == "loss" else ("y", "x̄"), rtol)
        rows += new
        layers += [where] * len(new)
    report = ModelReport(nn.layer_name(model), rows, layers)
    if raise_on_fail and not report.passed:
        raise GradientCheckError(report.message(), report)
    return report


def _check_arguments(model, loss, key, rtol) -> None:
    if not isinstance(model, nn.Layer):
        raise TypeError(
            f"check_model: model must be a funcprop.nn Layer, got {type(model).__name__}; build it from "
            f"funcprop.nn constructors and combinators, e.g. nn.serial(nn.Dense(8), nn.Relu(), nn.Dense(3))"
        )
    if not (nn.is_loss_layer(loss) or (callable(loss) and hasattr(loss, "vjp_rule"))):
        raise TypeError(
            f"check_model: loss must be a funcprop loss rule (funcprop.softmax_cross_entropy, mse, "
            f"sigmoid_binary_cross_entropy) or a loss layer (nn.LinearCrossEntropy), got {loss!r}; "
            f"pass one of them (check a loss rule of your own with check_vjp first)"
        )
    if key is not None:
        check_key("check_model", key)
    if rtol is not None and (isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol > 0):
        raise ValueError(f"check_model: rtol must be a number > 0 or None, got {rtol!r}; pass e.g. rtol=1e-6")


def _loss_twin(loss):
    if nn.is_loss_layer(loss):
        return loss.node.rule.twin
    rule = loss.vjp_rule
    return lambda head, out, y: rule.twin(*rule.prepare(out, y))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _compare(model, loss, model_params, head, x, y, key):
    """The backprop's records, and each leaf's and the loss's twin on the same values:
    one program, compiled once per model and shapes."""
    value, _, head_bar, records, (out, out_bar) = backprop._pass(model, loss, model_params, head, x, y, key)
    twins = [
        _twin_vjp(lambda p, xi, r=r: r.layer.node.rule.twin(p, xi, r.key), r.params, r.input, r.output_grad)
        for r in records
    ]
    loss_twin = _loss_twin(loss)
    twins.append(_twin_vjp(lambda p, o: loss_twin(p, o, y), head, out, jnp.ones_like(value)))
    return records, (out, value, head_bar, out_bar), twins


def _is_float(a) -> bool:
    return jnp.issubdtype(jnp.result_type(a), jnp.floating)


def _twin_vjp(twin, params, x, y_bar):
    """``(y, params_bar, x_bar)``: ``jax.vjp`` of ``twin(params, x)`` over the floating
    leaves, None at the others (ids)."""
    leaves, tree = jax.tree.flatten((params, x))
    at = [i for i, a in enumerate(leaves) if _is_float(a)]

    def f(*floats):
        full = list(leaves)
        for i, a in zip(at, floats):
            full[i] = a
        return twin(*jax.tree.unflatten(tree, full))

    if not at:
        return f(), *jax.tree.unflatten(tree, [None] * len(leaves))
    y, pullback = jax.vjp(f, *(leaves[i] for i in at))
    # None (a branch that reads only x's shape) counts as zeros; a wrong dtype upstream is its own row's
    cts = [jnp.zeros_like(o) if c is None else c.astype(o.dtype) for c, o in zip(_flat(y, y_bar), jax.tree.leaves(y))]
    y_bar = jax.tree.unflatten(jax.tree.structure(y), cts)
    bars = dict(zip(at, pullback(y_bar)))
    return y, *jax.tree.unflatten(tree, [bars.get(i) for i in range(len(leaves))])


def _flat(primal, value) -> list:
    """``value``'s entries at the leaves of ``primal`` (None where value is None)."""
    tree = jax.tree.structure(primal)
    return [None] * tree.num_leaves if value is None else tree.flatten_up_to(value)


def _rows(layer: str, given, twin, names, rtol) -> list[CheckRow]:
    """The rows of one layer: its output, then each floating params leaf, then x̄; the
    cotangents' scale is at least ``floor`` = max|δ_l| (0 for the loss)."""
    y, params, x, params_bar, x_bar, y_bar = given
    floor = max((float(np.abs(c).max()) for c in jax.tree.leaves(y_bar) if np.size(c)), default=0.0)
    twin_y, twin_params_bar, twin_x_bar = twin
    rows = []
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(y), _flat(y, twin_y)):
        rows.append(_row("output", f"{layer}: {names[0]}{jax.tree_util.keystr(path)}", a, b, rtol))
    for prefix, primal, got, want in [
        ("params", params, params_bar, twin_params_bar),
        (names[1], x, x_bar, twin_x_bar),
    ]:
        paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(primal)]
        for path, a, p, b in zip(paths, jax.tree.leaves(primal), _flat(primal, got), _flat(primal, want)):
            if _is_float(a) and b is not None:
                p = np.zeros(np.shape(b), np.asarray(b).dtype) if p is None else p
                rows.append(_row("vjp", f"{layer}: {prefix}{jax.tree_util.keystr(path)}", p, b, rtol, floor))
    return rows


def _row(check: str, leaf: str, received, expected, rtol, floor: float = 0.0) -> CheckRow:
    """error_row of one leaf; if it fails, again with its scale max|b| raised to ``floor``."""
    a, b = np.asarray(received), np.asarray(expected)
    tol = 0.0 if not _is_float(b) else default_rtol(b.dtype) if rtol is None else float(rtol)  # ids: equal
    if a.shape != b.shape or a.dtype != b.dtype:
        got = f"the rule gives {a.dtype}{list(a.shape)}, the twin {b.dtype}{list(b.shape)}"
        return CheckRow(check, leaf, 0, (), math.nan, math.nan, math.inf, math.inf, tol, False, got)
    row = error_row(check, leaf, a[None], b[None], tol)
    if row.passed or not (b.size and floor > np.abs(b).max()):
        return row
    row = error_row(check, leaf, a[None], b[None], tol, scale_floor=floor)
    return row._replace(compared=f"the leaf's scale raised to max|δ| {floor:.3g}")
