"""Combinators: serial, parallel, residual, fan-out and fan-in; and the plain twin.

Networks that are not a chain are made as in stax: ``FanOut(n)`` copies a value into
a tuple, ``parallel(*layers)`` applies layer i to element i, and ``FanInSum()`` /
``FanInConcat()`` join a tuple back into one array. ``residual(block)`` is
``x + block(x)``. For example, a block whose two branches differ in depth::

    serial(FanOut(2), parallel(serial(Conv2D(8, 3, padding="SAME"), Relu()),
                               Conv2D(8, 1)), FanInSum())

Combinator params: ``serial`` and ``parallel`` hold the tuple of their layers'
params; ``residual`` holds its block's. Keys: ``apply(params, x, key=k)`` splits k
among a serial's or a parallel's layers and hands it whole to a residual's block.

:func:`run` is the one interpreter of this structure: ``apply`` and :func:`twin` are
both ``run`` with a different function at the leaves, and
:mod:`funcprop.backprop` mirrors it with a backward pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from funcprop.nn._layer import Layer, Node, Params, as_layer, layer_name, leaf
from funcprop.rules._core import positive_int


def split_key(key, n: int) -> list:
    """n keys from one, or n Nones for deterministic evaluation."""
    return [None] * n if key is None else list(jax.random.split(key, n))


class located:
    """Re-raise a ValueError or TypeError from a child with its position in its
    combinator: ``serial layer 2 (Dense(3)): ...``."""

    def __init__(self, where: str, i, layer):
        self.prefix = f"{where} layer {i} ({layer_name(layer)}): "

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if kind in (ValueError, TypeError) and not str(err).startswith(self.prefix):
            raise kind(self.prefix + str(err)) from err
        return False


def check_params(name: str, params, n: int) -> None:
    """ValueError unless params is a tuple or list of n entries (a combinator's)."""
    if not isinstance(params, (tuple, list)) or len(params) != n:
        got = f"{len(params)} entries" if isinstance(params, (tuple, list)) else type(params).__name__
        raise ValueError(
            f"{name}: params must be a tuple of {n} layer params, got {got}; pass the params "
            f"that this model's init returned"
        )


def add_cotangents(cotangents):
    """Σ of the cotangents of a value used several times (a fan-out, a residual's input);
    None (an integer value's, e.g. ids) counts as zero, and None if all are."""
    present = [c for c in cotangents if c is not None]
    return functools.reduce(jnp.add, present) if present else None


def check_tuple_input(name: str, x, n: int | None) -> None:
    """ValueError unless x is a tuple (of n arrays, where n is given)."""
    if not isinstance(x, (tuple, list)) or (n is not None and len(x) != n):
        want = "a tuple" if n is None else f"a tuple of {n} arrays"
        got = f"{len(x)} arrays" if isinstance(x, (tuple, list)) else f"an array of shape {jnp.shape(x)}"
        raise ValueError(f"{name}: input must be {want} (put FanOut before it), got {got}")


def check_shapes_tuple(name: str, input_shape) -> None:
    """ValueError unless a fan-in's input_shape is a non-empty tuple of shapes."""
    if not (
        isinstance(input_shape, (tuple, list))
        and input_shape
        and all(isinstance(s, (tuple, list)) for s in input_shape)
    ):
        raise ValueError(
            f"{name}: input_shape must be a tuple of shapes (put FanOut and parallel before it), got {input_shape}"
        )


def same_arrays(name: str, what: str, arrays) -> None:
    """ValueError unless the arrays share one shape, TypeError unless one dtype: where
    values are added (a residual, FanInSum), jnp would broadcast or promote silently,
    and the backward would hand each input a cotangent of the wrong shape or dtype."""
    shapes = [tuple(jnp.shape(a)) for a in arrays]
    if len(set(shapes)) != 1:
        raise ValueError(f"{name}: {what} must share one shape, got {shapes}")
    dtypes = [jnp.result_type(a) for a in arrays]
    if len(set(dtypes)) != 1:
        raise TypeError(
            f"{name}: {what} must share one dtype, got {[str(d) for d in dtypes]}; funcprop never "
            f"promotes silently: give the layers one computation dtype (dtype=)"
        )


def residual_sum(name: str, x, y):
    """``x + y`` for a residual, or an error naming it if the block changed the shape
    (its params do not match its init) or the dtype of its input."""
    if jnp.shape(x) != jnp.shape(y):
        raise ValueError(
            f"{name}: the block maps {jnp.shape(x)} to {jnp.shape(y)}; a residual block must keep "
            f"the shape (do the params match the ones its init gave?)"
        )
    if jnp.result_type(x) != jnp.result_type(y):
        raise TypeError(
            f"{name}: the block maps {jnp.result_type(x)} to {jnp.result_type(y)}; funcprop never "
            f"promotes silently: give the block and the layers before it one computation dtype (dtype=)"
        )
    return x + y


def run(layer: Layer, params, x, key, at_leaf: Callable):
    """Evaluate a network, calling ``at_leaf(layer, params, x, key)`` at each leaf."""
    node = layer.node
    if node is None or node.kind == "rule":
        return at_leaf(layer, params, x, key)
    if node.kind == "residual":
        (block,) = node.children
        with located(node.kind, 0, block):
            y = run(block, params, x, key, at_leaf)
        return residual_sum(node.name, x, y)
    check_params(node.name, params, len(node.children))
    keys = split_key(key, len(node.children))
    if node.kind == "serial":
        for i, (child, p, k) in enumerate(zip(node.children, params, keys)):
            with located(node.kind, i, child):
                x = run(child, p, x, k, at_leaf)
        return x
    if node.kind == "parallel":
        check_tuple_input(node.name, x, len(node.children))
        out = []
        for i, (child, p, xi, k) in enumerate(zip(node.children, params, x, keys)):
            with located(node.kind, i, child):
                out.append(run(child, p, xi, k, at_leaf))
        return tuple(out)
    raise ValueError(f"run: unknown combinator kind {node.kind!r} in {node.name}")


def _apply_leaf(layer, params, x, key):
    if layer.node is None:  # a hand-built Layer(init, apply), stax-style: no key
        return layer.apply(params, x)
    return layer.apply(params, x, key=key)


def _twin_leaf(layer, params, x, key):
    if layer.node is None:
        raise TypeError(
            f"twin: layer {layer_name(layer)} has no plain twin (it was built by hand from "
            f"two functions); build it with funcprop.nn constructors (Dense, Relu, serial, ...)"
        )
    return layer.node.rule.twin(params, x, key)


def _require_rules(layer: Layer) -> None:
    """TypeError naming the first hand-built layer in the network, if there is one."""
    if layer.node is None:
        _twin_leaf(layer, None, None, None)
    for child in layer.children:
        _require_rules(child)


def _combinator(name: str, kind: str, children: tuple, init) -> Layer:
    def apply(params, x, *, key=None):
        return run(layer, params, x, key, _apply_leaf)

    layer = Layer(init, apply, Node(name, kind, None, children))
    return layer


def renamed(layer: Layer, name: str) -> Layer:
    """The same combinator under another name (``MultiHeadAttention(4)`` rather than
    ``serial[4]``), for messages and traces; structure and params are unchanged."""
    node = layer.node._replace(name=name)
    init = layer.init.init  # unwrap the checked init: Layer wraps it again under the new name

    def apply(params, x, *, key=None):
        return run(new, params, x, key, _apply_leaf)

    new = Layer(init, apply, node)
    return new


def serial(*layers: Layer) -> Layer:
    """Compose layers in order; params are the tuple of the layers' params.

    An error in a layer is re-raised naming its position: ``serial[3] layer 2
    (Dense(3)): ...``.
    """
    layers = tuple(as_layer("serial", i, layer) for i, layer in enumerate(layers))
    name = f"serial[{len(layers)}]"

    def init(key, input_shape):
        shape, params = input_shape, []
        for i, (layer, k) in enumerate(zip(layers, split_key(key, len(layers)))):
            with located("serial", i, layer):
                shape, p = layer.init(k, shape)
            params.append(p)
        return shape, tuple(params)

    return _combinator(name, "serial", layers, init)


def parallel(*layers: Layer) -> Layer:
    """Apply layer i to element i of a tuple input; the output is the tuple of results.

    Params are the tuple of the layers' params; ``input_shape`` is a tuple of shapes.
    """
    layers = tuple(as_layer("parallel", i, layer) for i, layer in enumerate(layers))
    name = f"parallel[{len(layers)}]"

    def init(key, input_shape):
        if (
            not isinstance(input_shape, (tuple, list))
            or len(input_shape) != len(layers)
            or not all(isinstance(s, (tuple, list)) for s in input_shape)
        ):
            raise ValueError(
                f"{name}: input_shape must be a tuple of {len(layers)} shapes (put FanOut before it), got {input_shape}"
            )
        shapes, params = [], []
        for i, (layer, shape, k) in enumerate(zip(layers, input_shape, split_key(key, len(layers)))):
            with located("parallel", i, layer):
                out, p = layer.init(k, tuple(shape))
            shapes.append(out)
            params.append(p)
        return tuple(shapes), tuple(params)

    return _combinator(name, "parallel", layers, init)


def residual(block: Layer) -> Layer:
    """``x + block(x)``: the block's output must have its input's shape and dtype
    (checked at init and on every pass; nothing is broadcast or promoted).

    Params are the block's. In the backward the input's cotangent is the sum of the
    two uses of x: ``x̄ = ȳ + block_x̄(ȳ)``.
    """
    block = as_layer("residual", 0, block)
    name = f"residual({block.name})"

    def init(key, input_shape):
        with located("residual", 0, block):
            out, params = block.init(key, input_shape)
        if tuple(out) != tuple(input_shape):
            raise ValueError(
                f"{name}: the block maps {tuple(input_shape)} to {tuple(out)}; a residual block "
                f"must keep the shape (add a projection with FanOut, parallel and FanInSum)"
            )
        return tuple(out), params

    return _combinator(name, "residual", (block,), init)


def Identity() -> Layer:
    """``y = x``; its backward passes the cotangent through. A parallel branch that
    leaves its input alone."""

    def init(key, input_shape):
        return input_shape, ()

    def apply(params, x, *, key=None):
        return x

    return leaf("Identity", init, apply, lambda p, x, k: (x, None), lambda p, r, g: ((), g), lambda p, x, k: x)


def FanOut(num: int) -> Layer:
    """``x -> (x, ..., x)``, num copies. Backward: the copies' cotangents add up,
    ``x̄ = Σ_i ȳ_i`` (the sum at every branch of backprop)."""
    num = positive_int("FanOut", "num", num)

    def init(key, input_shape):
        return (tuple(input_shape),) * num, ()

    def apply(params, x, *, key=None):
        return (x,) * num

    def bwd(params, res, y_bars):
        return (), add_cotangents(y_bars)

    return leaf(f"FanOut({num})", init, apply, lambda p, x, k: (apply(p, x), None), bwd, lambda p, x, k: apply(p, x))


def FanInSum() -> Layer:
    """``(x_1, ..., x_n) -> Σ x_i`` of one shape and dtype (nothing is broadcast or
    promoted). Backward: ``x̄_i = ȳ`` for every i."""

    def init(key, input_shape):
        check_shapes_tuple("FanInSum", input_shape)
        shapes = {tuple(s) for s in input_shape}
        if len(shapes) != 1:
            raise ValueError(f"FanInSum: the inputs must share one shape, got {list(input_shape)}")
        return tuple(input_shape[0]), ()

    def apply(params, x, *, key=None):
        check_tuple_input("FanInSum", x, None)
        same_arrays("FanInSum", "the inputs", x)
        return functools.reduce(jnp.add, x)

    def fwd(params, x, key):
        return apply(params, x), len(x)

    def bwd(params, n, y_bar):
        return (), (y_bar,) * n

    return leaf("FanInSum", init, apply, fwd, bwd, lambda p, x, k: apply(p, x))


def FanInConcat(axis: int = -1) -> Layer:
    """``(x_1, ..., x_n) -> concatenate(x_i, axis)``; ``axis`` counts one example's axes
    (−1, the features, by default). Backward: ȳ split back into the pieces' sizes."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"FanInConcat: axis must be an int, got {axis!r}")
    name = f"FanInConcat({axis})"
    batched = axis if axis < 0 else axis + 1  # the same axis of a batch

    def init(key, input_shape):
        check_shapes_tuple(name, input_shape)
        ranks = {len(s) for s in input_shape}
        rank = ranks.pop() if len(ranks) == 1 else 0
        if not -rank <= axis < rank:
            raise ValueError(f"{name}: the inputs must share one rank that has axis {axis}, got {list(input_shape)}")
        out = list(input_shape[0])
        out[axis] = sum(s[axis] for s in input_shape)
        return tuple(out), ()

    def apply(params, x, *, key=None):
        check_tuple_input(name, x, None)
        dtypes = {jnp.result_type(a) for a in x}
        if len(dtypes) != 1:
            raise TypeError(
                f"{name}: the inputs must share one dtype, got {sorted(map(str, dtypes))}; funcprop "
                f"never promotes silently: give the branches one computation dtype (dtype=)"
            )
        return jnp.concatenate(x, axis=batched)

    def fwd(params, x, key):
        return apply(params, x), [xi.shape[batched] for xi in x]

    def bwd(params, sizes, y_bar):
        cuts = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
        return (), tuple(jnp.split(y_bar, cuts, axis=batched))

    return leaf(name, init, apply, fwd, bwd, lambda p, x, k: apply(p, x))


def leaves(layer: Layer, params, path: str = ""):
    """``(path, leaf, leaf_params)`` for every leaf, in the order a forward runs them;
    ``params`` may be any pytree of the params' structure (the gradients). The path
    is the leaf's position, child by child: ``"2.0.1"``, as in backprop's traces."""
    node = layer.node
    if node is None or node.kind == "rule":
        yield path.rstrip(".") or "0", layer, params
        return
    if node.kind == "residual":
        yield from leaves(node.children[0], params, f"{path}0.")
        return
    for i, (child, p) in enumerate(zip(node.children, params)):
        yield from leaves(child, p, f"{path}{i}.")


def twin(model: Layer) -> Callable[..., jax.Array]:
    """The model's apply built from plain twins: differentiated by JAX's own autodiff.

    ``jax.grad`` through ``twin(model)(params, x, key=None)`` is the reference for the
    hand-written rules. Works on any network of funcprop layers and combinators.
    """
    model = as_layer("twin", 0, model)
    _require_rules(model)

    def apply(params: Params, x, *, key=None):
        return run(model, params, x, key, _twin_leaf)

    return apply
