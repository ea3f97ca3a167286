"""The dropout layer: the rule with a key, or the identity without one."""

from __future__ import annotations

from funcprop.nn._layer import Layer, leaf
from funcprop.rules.dropout import dropout, dropout_rate


def Dropout(rate: float) -> Layer:
    """Inverted dropout with probability ``rate``; see :func:`funcprop.dropout`.

    ``apply(params, x, key=k)`` drops; ``key=None`` (evaluation) is the identity.
    Training passes a fresh key every step.
    """
    rule = dropout.vjp_rule
    rate = dropout_rate(rate)
    name = f"Dropout({rate:g})"

    def init(key, input_shape):
        return tuple(input_shape), ()

    def apply(params, x, *, key=None):
        return x if key is None else dropout(x, rate, key=key)

    def fwd(params, x, key):
        if key is None:
            return x, None
        y, res = rule.fwd(*rule.prepare(x, key, rate))
        return y, res

    def bwd(params, res, y_bar):
        return (), y_bar if res is None else rule.bwd(rate, res, y_bar)[0]

    def twin(params, x, key):
        return x if key is None else rule.twin(*rule.prepare(x, key, rate))

    return leaf(name, init, apply, fwd, bwd, twin)
