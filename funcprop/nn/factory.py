"""One factory for every leaf layer made of a rule: :func:`from_rule`.

A layer made of a rule calls ``rule(x, *params, *static)``: its parameters are a
NamedTuple whose fields follow ``x`` in the rule's signature (``DenseParams(omega,
beta)`` for ``dense(h, omega, beta)``), or ``()`` for a layer without parameters.
Every path, ``apply``, the written-out backprop's fwd and bwd, and the twin, goes
through :func:`_entry` (the dtype policy) and then the rule's own ``prepare`` (its
validation), so each check is made once and is the same everywhere.

The dtype policy (DESIGN §7), one place for every path:

- ``dtype=None`` computes in the parameters' dtype. A floating input of another dtype
  is a TypeError naming the layer: funcprop never promotes silently (Flax would).
- ``dtype`` set: floating inputs and the parameters are cast to it at the layer's
  entry. The cast's cotangent is a cast back, so each parameter's gradient arrives in
  its own dtype (``param_dtype``, float32 by default) and the input's in the input's.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from funcprop.nn._layer import Layer, leaf
from funcprop.rules._core import VJPRule


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _float_dtype(fn: str, name: str, value):
    if value is None:
        return None
    try:
        dt = jnp.dtype(value)
    except TypeError:
        dt = None
    if dt is None or not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"{fn}: {name} must be a floating dtype such as jnp.float32, got {value!r}")
    return dt


def layer_dtypes(fn: str, dtype, param_dtype):
    """A constructor's ``(dtype, param_dtype)`` as NumPy dtypes (None stays None), or a
    TypeError naming the layer."""
    return _float_dtype(fn, "dtype", dtype), _float_dtype(fn, "param_dtype", param_dtype)


def _entry(name: str, params: tuple, x, dtype, input_rank, float_input: bool):
    """The dtype policy at a layer's entry: ``(x, params)`` in the computation dtype.
    An integer input (an embedding's ids) is left to the rule's own check."""
    x = jnp.asarray(x)
    if input_rank is not None and x.ndim != input_rank:
        raise ValueError(
            f"{name}: input must have rank {input_rank} (a batch of examples), got shape "
            f"{tuple(x.shape)}; add a batch axis with x[None]"
        )
    floats = [p for p in params if _is_float(p)]
    if dtype is None:
        if float_input and floats and _is_float(x) and x.dtype != floats[0].dtype:
            want = floats[0].dtype
            raise TypeError(
                f"{name}: input is {x.dtype} but the parameters are {want}; cast the input "
                f"(x.astype(jnp.{want})) or build the layer with dtype= to compute in another dtype"
            )
        return x, params
    cast = lambda a: a.astype(dtype) if _is_float(a) else a  # noqa: E731
    return (cast(x) if float_input else x), tuple(cast(p) for p in params)


def from_rule(
    name: str,
    rule: VJPRule,
    make_params: Callable | None = None,
    *,
    static: tuple = (),
    dtype=None,
    param_dtype=jnp.float32,
    input_dtype=None,
    input_rank: int | None = None,
) -> Layer:
    """A leaf layer computing ``rule(x, *params, *static)``.

    Args:
      name: for messages and traces, ``"Dense(7)"``.
      rule: the rule's :class:`~funcprop.rules._core.VJPRule`.
      make_params: ``make_params(key, input_shape, param_dtype) -> params``, a
        NamedTuple in the rule's argument order (its leaves are the rule's arrays after
        x, in order); None for a layer without parameters.
      static: the rule's static arguments after the arrays, as its ``prepare`` takes
        them (a padding spec, a slope).
      dtype: the computation dtype, or None for the parameters'.
      param_dtype: the parameters' dtype.
      input_dtype: the dtype ``init`` traces the rule with; by default the
        computation dtype (an embedding passes int32 for its ids).
      input_rank: the rank ``x`` must have (4 for a batch of images), if fixed.

    Returns:
      A Layer whose ``init`` validates the input shape through the rule's ``prepare``
      and finds the output shape by tracing the twin abstractly (nothing runs).
    """

    float_input = input_dtype is None or jnp.issubdtype(input_dtype, jnp.floating)

    expected_shapes: dict = {}  # input shape -> the shapes of the params init makes for it

    def check_params(params, x, count_only: bool) -> None:
        """ValueError unless params has the leaves (count_only) or the leaves' shapes that
        init makes for inputs like x. The shapes are checked after the rule's prepare,
        which names a wrong input size itself; init's output width only here (n_out)."""
        shape = tuple(jnp.shape(x))
        shape = shape[1:] if len(shape) > 1 or input_rank else shape  # a batch, or one example
        if shape not in expected_shapes:
            try:
                made = jax.eval_shape(lambda: make_params(jax.random.key(0), shape, param_dtype))
            except (ValueError, TypeError):  # x itself is wrong: the rule's prepare says how
                return
            expected_shapes[shape] = [
                (jax.tree_util.keystr(p), s.shape) for p, s in jax.tree_util.tree_leaves_with_path(made)
            ]
        want = expected_shapes[shape]
        got = [tuple(jnp.shape(leaf)) for leaf in jax.tree.leaves(params)]
        if len(got) != len(want) or (not count_only and any(g != w for g, (_, w) in zip(got, want))):
            listed = ", ".join(f"{p or 'params'} {w}" for p, w in want)
            raise ValueError(
                f"{name}: params do not fit this layer on inputs of shape {shape}: expected "
                f"{listed}, got shapes {got}; pass the params that this layer's init returned"
            )

    def args(params, x):
        if make_params is not None:
            check_params(params, x, count_only=True)
        x, leaves = _entry(name, tuple(jax.tree.leaves(params)), x, dtype, input_rank, float_input)
        prepared = rule.prepare(x, *leaves, *static)
        if make_params is not None:
            check_params(params, x, count_only=False)
        return prepared

    def init(key, input_shape):
        input_shape = tuple(input_shape)
        if make_params is not None and float_input and 0 in input_shape:
            raise ValueError(
                f"{name}: input_shape {input_shape} has an empty axis, so the layer would have no "
                f"inputs to weigh; give every axis of an example at least one element"
            )
        params = () if make_params is None else make_params(key, input_shape, param_dtype)
        spec = jax.ShapeDtypeStruct((1, *input_shape), input_dtype or dtype or param_dtype)
        out = jax.eval_shape(lambda p, x: rule.twin(*args(p, x)), params, spec)
        return tuple(out.shape[1:]), params

    def apply(params, x, *, key=None):
        del key
        return rule.core(*args(params, x))

    def fwd(params, x, key):
        del key
        a = args(params, x)
        y, res = rule.fwd(*a)
        return y, (rule.static(a), res, jnp.result_type(x))

    def bwd(params, res, y_bar):
        static_args, res, x_dtype = res
        x_bar, *p_bars = rule.bwd(*static_args, res, y_bar)
        leaves, structure = jax.tree.flatten(params)
        p_bars = [b.astype(p.dtype) for b, p in zip(p_bars, leaves)]  # the entry cast's cotangent
        x_bar = None if x_bar is None else x_bar.astype(x_dtype)
        return jax.tree.unflatten(structure, p_bars), x_bar

    def twin(params, x, key):
        del key
        return rule.twin(*args(params, x))

    return leaf(name, init, apply, fwd, bwd, twin)
