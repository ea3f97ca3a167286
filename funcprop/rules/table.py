"""The one table of every rule: name, rule, plain twin and example inputs.

The tests and ``experiments/verify_rules.py`` sweep this table, so a rule added to
funcprop without a row here is a rule nobody verifies: add the row with the rule.

Each row's ``make_args(key, dtype)`` returns the positional array arguments; float
arguments are differentiated, integer ones (class ids) are held fixed. ``kwargs`` are
the static arguments (an axis, a slope), passed by name to the rule and its twin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcprop.rules.activations import gelu, leaky_relu, relu, sigmoid, softplus, tanh
from funcprop.rules.attention import attention
from funcprop.rules.conv import conv2d
from funcprop.rules.dropout import dropout
from funcprop.rules.embedding import embedding
from funcprop.rules.linear import dense
from funcprop.rules.lm_head import linear_cross_entropy
from funcprop.rules.losses import mse, sigmoid_binary_cross_entropy, softmax_cross_entropy
from funcprop.rules.norm import layer_norm, rms_norm
from funcprop.rules.pool import avg_pool2d, max_pool2d
from funcprop.rules.softmax import log_softmax, softmax


class RuleCase(NamedTuple):
    """One row: a rule with the example inputs it is verified on."""

    name: str
    rule: Callable[..., jax.Array]
    make_args: Callable[[jax.Array, Any], tuple]
    kwargs: dict = {}

    @property
    def twin(self) -> Callable[..., jax.Array]:
        """The plain twin: the same forward in jnp, differentiated by JAX."""
        return self.rule.vjp_rule.twin

    def args(self, key, dtype=jnp.float64) -> tuple:
        return self.make_args(key, dtype)


def _rng(key) -> np.random.Generator:
    """A NumPy generator seeded by the JAX key: drawing the examples with NumPy compiles
    nothing (a ``jax.random`` draw compiles one program per shape, which was half the
    verification's time)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def _normal(*shapes):
    """make_args drawing one standard-normal array per shape."""

    def make(key, dtype):
        rng = _rng(key)
        return tuple(jnp.asarray(rng.standard_normal(s), dtype) for s in shapes)

    return make


def _logits_and_ids(shape):
    def make(key, dtype):
        rng = _rng(key)
        logits = jnp.asarray(rng.standard_normal(shape), dtype)
        return logits, jnp.asarray(rng.integers(0, shape[-1], shape[:-1]), jnp.int32)

    return make


def _logits_and_probs(shape):
    def make(key, dtype):
        rng = _rng(key)
        logits, z = rng.standard_normal(shape), 2 * rng.standard_normal(shape)
        probs = np.exp(z - z.max(-1, keepdims=True))
        return jnp.asarray(logits, dtype), jnp.asarray(probs / probs.sum(-1, keepdims=True), dtype)

    return make


def _logits_and_unit(shape):
    def make(key, dtype):
        rng = _rng(key)
        return jnp.asarray(rng.standard_normal(shape), dtype), jnp.asarray(rng.uniform(size=shape), dtype)

    return make


def _hidden_head_and_labels(lead, vocab, d, labels):
    """Normal hidden states (*lead, d) and a normal (vocab, d) head, fixed labels (lead)."""

    def make(key, dtype):
        rng = _rng(key)
        h, omega = rng.standard_normal((*lead, d)), rng.standard_normal((vocab, d))
        return jnp.asarray(h, dtype), jnp.asarray(omega, dtype), jnp.asarray(labels, jnp.int32).reshape(lead)

    return make


def _ids_and_table(ids, vocab, d):
    """Fixed ids (repeats and ids outside [0, vocab) included) and a normal (vocab, d) table."""

    def make(key, dtype):
        return jnp.asarray(ids, jnp.int32), jnp.asarray(_rng(key).standard_normal((vocab, d)), dtype)

    return make


RULES: tuple[RuleCase, ...] = (
    RuleCase("dense", dense, _normal((5, 3), (4, 3), (4,))),
    RuleCase("dense/one-example", dense, _normal((3,), (4, 3), (4,))),
    RuleCase("dense/leading-axes", dense, _normal((2, 5, 3), (7, 3), (7,))),
    RuleCase("sigmoid", sigmoid, _normal((5, 4))),
    RuleCase("tanh", tanh, _normal((5, 4))),
    RuleCase("relu", relu, _normal((5, 4))),
    RuleCase("leaky_relu", leaky_relu, _normal((5, 4))),
    RuleCase(
        "leaky_relu/slope=0.2",
        leaky_relu,
        _normal((5, 4)),
        {"negative_slope": 0.2},
    ),
    RuleCase("softplus", softplus, _normal((5, 4))),
    RuleCase("gelu", gelu, _normal((5, 4))),
    RuleCase("softmax", softmax, _normal((5, 4))),
    RuleCase("softmax/axis=0", softmax, _normal((5, 4)), {"axis": 0}),
    RuleCase("log_softmax", log_softmax, _normal((5, 4))),
    RuleCase("log_softmax/axis=0", log_softmax, _normal((5, 4)), {"axis": 0}),
    RuleCase(
        "softmax_cross_entropy/ids",
        softmax_cross_entropy,
        _logits_and_ids((6, 5)),
    ),
    RuleCase(
        "softmax_cross_entropy/probs",
        softmax_cross_entropy,
        _logits_and_probs((6, 5)),
    ),
    RuleCase("mse", mse, _normal((5, 3), (5, 3))),
    RuleCase(
        "sigmoid_binary_cross_entropy",
        sigmoid_binary_cross_entropy,
        _logits_and_unit((5, 3)),
    ),
    # conv2d: strides 1 and 2, VALID / SAME / explicit padding, odd sizes, c_in ≠ c_out,
    # a non-square kernel, batch 1, one example
    RuleCase("conv2d", conv2d, _normal((2, 7, 5, 3), (3, 3, 3, 4), (4,))),
    RuleCase(
        "conv2d/stride=2,SAME", conv2d, _normal((2, 7, 6, 3), (3, 3, 3, 4), (4,)), {"stride": 2, "padding": "SAME"}
    ),
    RuleCase(
        "conv2d/stride=(2,1),explicit",
        conv2d,
        _normal((1, 8, 7, 2), (2, 3, 2, 5), (5,)),
        {"stride": (2, 1), "padding": ((1, 2), (0, 1))},
    ),
    RuleCase("conv2d/stride=3,VALID", conv2d, _normal((2, 9, 8, 2), (3, 2, 2, 3), (3,)), {"stride": 3}),
    RuleCase("conv2d/one-example", conv2d, _normal((6, 5, 2), (3, 3, 2, 3), (3,)), {"padding": "SAME"}),
    # padding as one int and as a pair per axis (PyTorch's and Flax's forms); dilation
    RuleCase("conv2d/padding=1", conv2d, _normal((2, 5, 6, 2), (3, 3, 2, 3), (3,)), {"padding": 1}),
    RuleCase(
        "conv2d/padding=(2,1),stride=2",
        conv2d,
        _normal((2, 6, 5, 2), (3, 2, 2, 3), (3,)),
        {"padding": (2, 1), "stride": 2},
    ),
    RuleCase("conv2d/dilation=2", conv2d, _normal((2, 8, 7, 2), (3, 2, 2, 3), (3,)), {"dilation": 2}),
    RuleCase(
        "conv2d/dilation=(2,1),stride=2,SAME",
        conv2d,
        _normal((2, 9, 7, 2), (3, 3, 2, 4), (4,)),
        {"dilation": (2, 1), "stride": 2, "padding": "SAME"},
    ),
    RuleCase("max_pool2d", max_pool2d, _normal((2, 6, 6, 3)), {"window": 2}),
    RuleCase("max_pool2d/odd,overlap", max_pool2d, _normal((2, 7, 5, 2)), {"window": (3, 2), "stride": (2, 1)}),
    RuleCase("max_pool2d/one-example", max_pool2d, _normal((5, 5, 2)), {"window": 2}),
    RuleCase("max_pool2d/SAME", max_pool2d, _normal((2, 5, 7, 2)), {"window": 3, "stride": 2, "padding": "SAME"}),
    RuleCase("max_pool2d/padding=1", max_pool2d, _normal((2, 6, 5, 2)), {"window": 3, "stride": 2, "padding": 1}),
    RuleCase("avg_pool2d", avg_pool2d, _normal((2, 6, 6, 3)), {"window": 2}),
    RuleCase("avg_pool2d/odd,overlap", avg_pool2d, _normal((1, 7, 5, 2)), {"window": (3, 2), "stride": (2, 1)}),
    RuleCase("avg_pool2d/padding=1", avg_pool2d, _normal((2, 6, 5, 2)), {"window": 3, "stride": 2, "padding": 1}),
    RuleCase(
        "avg_pool2d/SAME,exclude-pad",
        avg_pool2d,
        _normal((2, 5, 7, 2)),
        {"window": 3, "stride": 2, "padding": "SAME", "count_include_pad": False},
    ),
    RuleCase("layer_norm", layer_norm, _normal((4, 6), (6,), (6,))),
    RuleCase("layer_norm/leading-axes,eps=0.1", layer_norm, _normal((2, 3, 5), (5,), (5,)), {"eps": 0.1}),
    RuleCase("layer_norm/one-example", layer_norm, _normal((7,), (7,), (7,))),
    RuleCase("rms_norm", rms_norm, _normal((4, 6), (6,))),
    RuleCase("rms_norm/leading-axes,eps=0.1", rms_norm, _normal((2, 3, 5), (5,)), {"eps": 0.1}),
    RuleCase("rms_norm/one-example", rms_norm, _normal((5,), (5,))),
    # repeated ids (2 three times, 3 twice) add up; ids outside [0, 5) (−1, 5, 7) give
    # zero rows and no gradient
    RuleCase("embedding", embedding, _ids_and_table([[2, 0, 4], [2, 1, 2]], 5, 3)),
    RuleCase("embedding/out-of-range", embedding, _ids_and_table([3, -1, 5, 3, 7, 0], 5, 4)),
    # attention: several blocks with padding (T, S not multiples of the blocks), grouped
    # queries, causal with T = S and bottom-right with T < S, a mask with a fully masked
    # row (output 0, gradient 0), v's head dim differing from q's, and a scale
    RuleCase("attention", attention, _normal((2, 5, 2, 3), (2, 5, 2, 3), (2, 5, 2, 3)), {"block_q": 2, "block_k": 3}),
    RuleCase(
        "attention/causal,grouped",
        attention,
        _normal((2, 6, 4, 3), (2, 6, 2, 3), (2, 6, 2, 3)),
        {"causal": True, "block_q": 4, "block_k": 2},
    ),
    RuleCase(
        "attention/causal,T<S",
        attention,
        _normal((1, 3, 2, 4), (1, 7, 2, 4), (1, 7, 2, 4)),
        {"causal": True, "block_q": 2, "block_k": 3},
    ),
    RuleCase(
        "attention/mask,Dv=2,scale",
        attention,
        _normal((2, 4, 2, 3), (2, 5, 2, 3), (2, 5, 2, 2)),
        {"mask": jnp.asarray(np.random.default_rng(3).random((2, 1, 4, 5)) > 0.3).at[1, 0, 2].set(False), "scale": 0.7},
    ),
    # the key is passed by name: dropout(x, rate=, key=) and dropout_twin(x, key, rate) both bind
    RuleCase("dropout", dropout, _normal((6, 5)), {"rate": 0.3, "key": jax.random.key(0)}),
    RuleCase("dropout/raw-key,rate=0.5", dropout, _normal((2, 3, 4)), {"rate": 0.5, "key": jax.random.PRNGKey(1)}),
    # the LM head: N=7 rows, d=3, V=5; one label ignored (−100), one outside [0, 5) (7),
    # neither counted in the mean; chunks of 2 rows run 4 chunks over 1 row of padding
    RuleCase(
        "linear_cross_entropy", linear_cross_entropy, _hidden_head_and_labels((7,), 5, 3, [1, 4, -100, 0, 7, 2, 1])
    ),
    RuleCase(
        "linear_cross_entropy/chunk_size=2",
        linear_cross_entropy,
        _hidden_head_and_labels((7,), 5, 3, [1, 4, -100, 0, 7, 2, 1]),
        {"chunk_size": 2},
    ),
    RuleCase(
        "linear_cross_entropy/leading-axes,ignore_index=0,chunk_size=4",
        linear_cross_entropy,
        _hidden_head_and_labels((2, 3), 6, 4, [[0, 3, 5], [2, 0, -100]]),
        {"ignore_index": 0, "chunk_size": 4},
    ),
)


def rule_names() -> list[str]:
    """The name of every row, in table order."""
    return [case.name for case in RULES]
