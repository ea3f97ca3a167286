"""funcprop.check.residuals: what a rule keeps for its backward, beside autodiff's."""

import json
import math
import re

import jax
import jax.numpy as jnp
import pytest

from funcprop.check.residuals import ResidualRow, ResidualTable, _size, residuals
from funcprop.rules.attention import attention
from funcprop.rules.linear import dense
from funcprop.rules.losses import softmax_cross_entropy
from funcprop.rules.pool import avg_pool2d
from funcprop.rules.table import RULES, rule_names


def _normal(key, *shape, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(key), shape, dtype)


def _leaves(tree) -> list:
    """(shape, dtype name, bytes) of each array leaf; Python numbers and None are not arrays."""
    arrays = [x for x in jax.tree.leaves(tree) if isinstance(x, (jax.Array, jax.ShapeDtypeStruct))]
    return [(x.shape, x.dtype.name, math.prod(x.shape) * x.dtype.itemsize) for x in arrays]


def _rows(table: ResidualTable, side: str) -> list:
    return [(r.shape, r.dtype, r.bytes) for r in table.side(side)]


# --- a rule's rows are its fwd's residuals -----------------------------------------


def test_dense_keeps_h_and_omega():
    h, omega, beta = _normal(0, 4, 3), _normal(1, 5, 3), _normal(2, 5)
    table = residuals(dense, h, omega, beta)
    assert _rows(table, "fn") == _leaves(dense.vjp_rule.fwd(h, omega, beta)[1])
    assert _rows(table, "fn") == [((4, 3), "float64", 96), ((5, 3), "float64", 120)]
    assert _rows(table, "reference") == [((4, 3), "float64", 96), ((3, 5), "float64", 120)]  # h, omega.T
    assert (table.fn_bytes, table.reference_bytes, table.ratio) == (216, 216, 1.0)
    assert [r.index for r in table.rows] == [0, 1, 0, 1]


# The public wrappers of these add the batch axis around prepare, so fwd(*prepare(args))
# is not the call that runs.
_SWEPT = [(case, name) for case, name in zip(RULES, rule_names()) if "one-example" not in name]


@pytest.mark.parametrize("case", [c for c, _ in _SWEPT], ids=[n for _, n in _SWEPT])
def test_every_rule_keeps_its_fwd_residuals(case):
    """The same arrays as fwd's residuals (each once), in JAX's order, not fwd's."""
    args = case.args(jax.random.key(0), jnp.float32)
    rule = case.rule.vjp_rule

    def kept(*args):  # fwd's array residuals, each once (a Python number is no jax.Array)
        res = jax.tree.leaves(rule.fwd(*rule.prepare(*args, **case.kwargs))[1])
        return list({id(x): x for x in res if isinstance(x, jax.Array)}.values())

    table = residuals(case.rule, *args, kwargs=case.kwargs)
    assert sorted(_rows(table, "fn")) == sorted(_leaves(jax.eval_shape(kept, *args)))


def test_order_and_sharing_of_a_custom_vjp():
    """A user's own rule, with reference=: fn's inputs first, then the computed
    residuals in fwd's order; an array returned twice is held once, a Python number not."""

    @jax.custom_vjp
    def scaled_sin(x, y):
        return jnp.sin(x) * y

    def fwd(x, y):
        c = jnp.cos(x)
        return scaled_sin(x, y), (c, y, c, x.astype(jnp.float32), x, 7)

    scaled_sin.defvjp(fwd, lambda res, g: (res[0] * res[1] * g, jnp.sin(res[4]) * g))
    x, y = _normal(0, 3), _normal(1, 3)
    table = residuals(scaled_sin, x, y, reference=lambda x, y: jnp.sin(x) * y)
    # x and y, then c and the float32 copy of x: 4 arrays where fwd returned 6 leaves
    assert _rows(table, "fn") == [
        ((3,), "float64", 24),
        ((3,), "float64", 24),
        ((3,), "float64", 24),
        ((3,), "float32", 12),
    ]
    assert (table.name, table.reference) == ("scaled_sin", "<lambda>")


def test_pytree_args():
    h, params = _normal(0, 4, 3), {"omega": _normal(1, 5, 3), "beta": _normal(2, 5)}
    table = residuals(
        lambda p, h: dense(h, p["omega"], p["beta"]), params, h, reference=lambda p, h: h @ p["omega"].T + p["beta"]
    )
    assert sorted(_rows(table, "fn")) == [((4, 3), "float64", 96), ((5, 3), "float64", 120)]


def test_integer_labels_are_held_fixed_and_kept():
    logits, labels = _normal(0, 4, 6, dtype=jnp.float32), jnp.array([0, 5, 2, 3], jnp.int32)
    table = residuals(softmax_cross_entropy, logits, labels)
    # log p, the labels, and a 0-byte array carrying logits' dtype
    assert _rows(table, "fn") == [((4, 6), "float32", 96), ((4,), "int32", 16), ((0,), "float32", 0)]
    assert _rows(table, "fn") == _leaves(softmax_cross_entropy.vjp_rule.fwd(logits, labels)[1])
    assert ((4, 6), "float32", 96) in _rows(table, "reference")  # autodiff keeps log p too


def test_a_rule_that_keeps_nothing_has_an_infinite_ratio():
    table = residuals(avg_pool2d, _normal(0, 2, 4, 4, 3), kwargs={"window": 2})
    assert table.side("fn") == () and table.fn_bytes == 0 < table.reference_bytes
    assert table.ratio == math.inf
    assert str(table).endswith("inf× less")


# --- attention keeps O(N), its naive twin the T×S probabilities -------------------


def test_attention_keeps_far_less_than_its_twin():
    q = jax.ShapeDtypeStruct((1, 512, 2, 32), jnp.float32)
    table = residuals(attention, q, q, q, kwargs={"causal": True})
    qkvo, stats = ((1, 512, 2, 32), "float32", 131072), ((1, 2, 512), "float32", 4096)
    assert _rows(table, "fn") == [qkvo] * 4 + [stats] * 2  # q, k, v, O, then m and ℓ
    assert table.fn_bytes == 532480
    # (B, Hkv, G, T, S) probabilities and their kin, 2 MiB each in float32
    assert ((1, 2, 1, 512, 512), "float32", 2**21) in _rows(table, "reference")
    assert table.ratio > 20  # 22.4 measured on jax 0.10.2
    assert re.search(r"fn keeps 520\.0 KiB, autodiff of reference keeps [\d.]+ MiB: [\d.]+× less$", str(table))


def test_shapes_alone_suffice_and_nothing_is_computed():
    q = _normal(0, 1, 8, 2, 4, dtype=jnp.float32)
    spec = jax.ShapeDtypeStruct(q.shape, q.dtype)
    assert residuals(attention, q, q, q) == residuals(attention, spec, spec, spec)
    # T = S = 32768: the twin's probabilities alone would be 8 GiB each
    big = jax.ShapeDtypeStruct((1, 32768, 2, 64), jnp.float32)
    table = residuals(attention, big, big, big, kwargs={"causal": True})
    assert max(r.bytes for r in table.side("reference")) == 2 * 32768**2 * 4
    assert table.fn_bytes == 4 * 32768 * 2 * 64 * 4 + 2 * 2 * 32768 * 4


# --- the table ------------------------------------------------------------------


def test_str_and_to_dict():
    table = residuals(dense, _normal(0, 4, 3), _normal(1, 5, 3), _normal(2, 5))
    assert str(table).splitlines() == [
        "residuals(dense): 2 arrays kept by fn, 2 by autodiff of dense_twin",
        "side       leaf  shape   dtype    bytes",
        "fn         0     (4, 3)  float64   96 B",
        "fn         1     (5, 3)  float64  120 B",
        "reference  0     (4, 3)  float64   96 B",
        "reference  1     (3, 5)  float64  120 B",
        "fn keeps 216 B, autodiff of reference keeps 216 B: the same",
    ]
    d = json.loads(json.dumps(table.to_dict()))
    totals = {k: d[k] for k in ("function", "reference", "fn_bytes", "reference_bytes", "ratio")}
    assert totals == {
        "function": "dense",
        "reference": "dense_twin",
        "fn_bytes": 216,
        "reference_bytes": 216,
        "ratio": 1.0,
    }
    assert d["rows"][1] == {"side": "fn", "index": 1, "shape": [5, 3], "dtype": "float64", "bytes": 120}
    assert ResidualRow(**{**d["rows"][1], "shape": (5, 3)}) == table.rows[1]


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (3 * 2**20, "3.0 MiB"),
        (5 * 2**30, "5.0 GiB"),
    ],
)
def test_sizes_read_as_people_write_them(n, text):
    assert _size(n) == text


# --- bad input ------------------------------------------------------------------


def _plain(x):
    return jnp.sin(x)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: residuals("dense", jnp.ones(3)), TypeError, r"residuals: fn must be callable, got a str"),
        (lambda: residuals(dense), ValueError, r"residuals: no arguments given for dense"),
        (lambda: residuals(_plain, jnp.ones(3)), TypeError, r"residuals: _plain is not a funcprop rule.*reference="),
        (
            lambda: residuals(dense, jnp.ones((2, 3)), "w", jnp.ones(5)),
            TypeError,
            r"residuals: args\[1\] is a str, not an array",
        ),
        (
            lambda: residuals(_plain, {"w": "omega"}, reference=_plain),
            TypeError,
            r"residuals: args\[0\]\['w'\] is a str, not an array.*kwargs=",
        ),
        (
            lambda: residuals(_plain, jnp.ones(3, jnp.complex64), reference=_plain),
            TypeError,
            r"args\[0\] has dtype complex64",
        ),
        (lambda: residuals(_plain, jnp.arange(3), reference=_plain), TypeError, r"no floating-point leaf"),
        (
            lambda: residuals(_plain, jnp.ones(3), reference=jnp.sum),
            ValueError,
            r"the reference must compute the same function",
        ),
    ],
    ids=[
        "not-callable",
        "no-args",
        "no-reference",
        "not-an-array",
        "in-a-pytree",
        "complex",
        "no-float",
        "other-function",
    ],
)
def test_bad_input_is_named_and_explained(call, error, message):
    with pytest.raises(error, match=message) as info:
        call()
    assert "check_vjp" not in str(info.value)
