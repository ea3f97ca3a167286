"""The layer type and the structure it carries as data.

A layer is the pair ``(init, apply)`` of stax, and a :class:`Layer` unpacks as that
pair. A layer built by funcprop's constructors and combinators also carries a
:class:`Node`: its name, and either its hand-written pieces (:class:`LayerRules`, a
leaf) or its children (a combinator). The written-out backprop, :func:`funcprop.nn.twin`
and ``funcprop shapes`` read the node; the functions themselves carry nothing, so a
layer passed through ``functools.partial``, a lambda factory or a container keeps
working. A layer built by hand, ``Layer(init, apply)``, has no node: ``jax.grad``
works through it, and backprop refuses it by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Params = Any  # a pytree of arrays
Shape = tuple[int, ...]


class LayerRules(NamedTuple):
    """The hand-written pieces of a leaf layer, as :mod:`funcprop.backprop` runs them.

    Attributes:
      fwd: ``fwd(params, x, key) -> (y, residuals)``, through the rule's own fwd.
      bwd: ``bwd(params, residuals, y_bar) -> (params_bar, x_bar)``, the rule's bwd;
        ``params_bar`` has the structure and dtypes of ``params``.
      twin: ``twin(params, x, key) -> y``, the same layer built from plain twins.
    """

    fwd: Callable
    bwd: Callable
    twin: Callable


class LossRules(NamedTuple):
    """The hand-written pieces of a loss layer, whose ``apply(params, out, y)`` is a scalar.

    Attributes:
      fwd: ``fwd(params, out, y) -> (value, residuals)``.
      bwd: ``bwd(params, residuals, g) -> (params_bar, out_bar)`` for the scalar's
        cotangent g.
      twin: ``twin(params, out, y) -> value``, from plain twins.
      num_classes: the targets are class ids in ``[0, num_classes)`` (or the ignored id);
        :func:`funcprop.train.check_data` checks them once. None: not checked.
      ignore_index: the id that counts for nothing, or None.
    """

    fwd: Callable
    bwd: Callable
    twin: Callable
    num_classes: int | None = None
    ignore_index: int | None = None


class Node(NamedTuple):
    """A layer's structure.

    Attributes:
      name: readable, for messages and traces: ``Dense(7)``, ``residual``.
      kind: ``"rule"`` for a leaf, ``"loss"`` for a loss layer, else the combinator:
        ``"serial"``, ``"parallel"``, ``"residual"``.
      rule: a leaf's :class:`LayerRules`, a loss layer's :class:`LossRules`; None for a
        combinator.
      children: a combinator's layers, in order; ``()`` for a leaf.
    """

    name: str
    kind: str
    rule: LayerRules | LossRules | None = None
    children: tuple = ()


class _Functions(NamedTuple):
    init: Callable[[jax.Array, Shape], tuple[Shape, Params]]
    apply: Callable[..., jax.Array]


def _check_shape(fn: str, shape) -> tuple:
    """``shape`` as a tuple of ints >= 0, or a tuple of such shapes (a fan-in's input)."""
    if isinstance(shape, (tuple, list)) and shape and all(isinstance(s, (tuple, list)) for s in shape):
        return tuple(_check_shape(fn, s) for s in shape)
    ok = isinstance(shape, (tuple, list)) and all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape
    )
    if not ok:
        example = f"({shape},)" if isinstance(shape, int) and not isinstance(shape, bool) else "(784,) or (28, 28, 1)"
        raise TypeError(
            f"{fn}: input_shape must be one example's shape, a tuple of ints >= 0, got {shape!r}; pass e.g. {example}"
        )
    return tuple(int(d) for d in shape)


def check_key(fn: str, key):
    """``key`` if it is one PRNG key, typed (``jax.random.key``) or raw (``PRNGKey``)."""
    typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ()
    raw = isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,)
    if not (typed or raw):
        got = (
            f"an array of dtype {key.dtype} and shape {key.shape}"
            if isinstance(key, jax.Array)
            else f"{type(key).__name__} {key!r}"
        )
        raise TypeError(f"{fn}: key must be one PRNG key, got {got}; pass jax.random.key(seed)")
    return key


class _CheckedInit(NamedTuple):
    """A funcprop layer's ``init``, checking its key and input shape first."""

    name: str
    init: Callable

    def __call__(self, key, input_shape):
        fn = f"{self.name}.init"
        return self.init(check_key(fn, key), _check_shape(fn, input_shape))


class Layer(_Functions):
    """A layer: ``init(key, input_shape) -> (output_shape, params)`` and
    ``apply(params, x, *, key=None) -> y``, with its structure as ``layer.node``.

    ``init, apply = layer`` and ``Layer(init, apply)`` work as in stax; ``input_shape``
    is one example's shape, ``x`` is batch-first. ``key`` feeds the layers that need
    randomness (dropout); ``None`` means deterministic evaluation.
    """

    node: Node | None = None  # a class default: a layer built by hand has none

    def __new__(cls, init, apply, node: Node | None = None):
        if node is not None and not isinstance(init, _CheckedInit):
            init = _CheckedInit(node.name, init)
        self = super().__new__(cls, init, apply)
        if node is not None:
            object.__setattr__(self, "node", node)
        return self

    def __setattr__(self, name, value):
        raise AttributeError(f"Layer is immutable; build a new one instead of setting {name!r}")

    # equal and hashed with its structure: a hand-built Layer(init, apply) of the same
    # functions is another layer (it would collide in jit's cache of static arguments)
    def __eq__(self, other):
        return isinstance(other, Layer) and tuple.__eq__(self, other) and self.node == other.node

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash((tuple(self), self.node))

    @property
    def name(self) -> str:
        """``Dense(7)``, ``serial[3]``; a hand-built layer's apply's ``__name__``."""
        if self.node is not None:
            return self.node.name
        return getattr(self.apply, "__name__", "layer")

    @property
    def children(self) -> tuple:
        """A combinator's layers; ``()`` for a leaf or a hand-built layer."""
        return self.node.children if self.node is not None else ()

    def __repr__(self) -> str:
        return f"Layer({self.name})"


# A layer holds functions, not arrays: jax.tree.map passes it through whole, node and all,
# instead of taking it apart as the namedtuple it also is.
jax.tree_util.register_static(Layer)


def layer_name(layer: Layer) -> str:
    """A readable name for messages: ``Dense(7)``, ``Sigmoid``, ``serial[3]``."""
    return layer.name if isinstance(layer, Layer) else getattr(layer[1], "__name__", "layer")


def is_layer(value) -> bool:
    """True for a :class:`Layer` or a stax-style ``(init, apply)`` pair of functions."""
    return isinstance(value, Layer) or (isinstance(value, tuple) and len(value) == 2 and all(map(callable, value)))


def is_loss_layer(value) -> bool:
    """True for a loss layer (``nn.LinearCrossEntropy``): a layer with parameters whose
    ``apply(params, out, y)`` returns the scalar loss. With one, a model's params are the
    pair ``(model_params, loss_params)`` in backprop, training and the checker."""
    return isinstance(value, Layer) and value.node is not None and value.node.kind == "loss"


def split_params(fn: str, params) -> tuple:
    """``(model_params, loss_params)`` from a model-and-loss-layer's params, or a ValueError."""
    if not (isinstance(params, (tuple, list)) and len(params) == 2):
        got = f"{len(params)} entries" if isinstance(params, (tuple, list)) else type(params).__name__
        raise ValueError(
            f"{fn}: with a loss layer, params must be the pair (model_params, loss_params), got {got}; "
            f"pass (model.init(...)[1], loss.init(...)[1])"
        )
    return params[0], params[1]


def as_layer(fn: str, i, layer) -> Layer:
    """``layer`` as a :class:`Layer` (a stax-style pair is accepted), or a TypeError."""
    if isinstance(layer, Layer):
        return layer
    if is_layer(layer):
        return Layer(*layer)
    raise TypeError(
        f"{fn}: argument {i} must be a Layer(init, apply), got {type(layer).__name__}; "
        f"call the constructor, e.g. Relu() rather than Relu"
    )


def leaf(name: str, init, apply, fwd, bwd, twin) -> Layer:
    """A leaf layer from its functions and its hand-written pieces."""
    return Layer(init, apply, Node(name, "rule", LayerRules(fwd, bwd, twin)))
