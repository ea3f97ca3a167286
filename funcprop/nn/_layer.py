"""The layer type, and what a funcprop layer carries for the written-out backprop."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

Params = Any  # a pytree of arrays
Shape = tuple[int, ...]


class Layer(NamedTuple):
    """A layer: ``init(key, input_shape) -> (output_shape, params)``, ``apply(params, x)``."""

    init: Callable[[jax.Array, Shape], tuple[Shape, Params]]
    apply: Callable[[Params, jax.Array], jax.Array]


class LayerRules(NamedTuple):
    """The hand-written pieces of a leaf layer, as :mod:`funcprop.backprop` uses them.

    Attributes:
      fwd: ``fwd(params, x) -> (y, residuals)``, the rule's fwd.
      bwd: ``bwd(params, residuals, y_bar) -> (params_bar, x_bar)``, the rule's bwd.
      twin: ``twin(params, x) -> y``, the same layer built from plain twins.
    """

    fwd: Callable
    bwd: Callable
    twin: Callable


def _describe(name: str, apply, *, rules=None, layers=None):
    apply.layer_name = name
    apply.rules = rules
    apply.layers = layers
    return apply


def layer_name(layer: Layer) -> str:
    """A readable name for messages: ``Dense(7)``, ``Sigmoid``, ``serial[3]``."""
    return getattr(layer.apply, "layer_name", getattr(layer.apply, "__name__", "layer"))
