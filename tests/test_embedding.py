"""embedding beyond the table sweep: a one-hot matmul reference, repeated ids,
ids out of range, dtypes and bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, assert_close

import funcprop

V, D = 6, 3
F64 = RTOL[np.dtype("float64")]
RULE_AND_TWIN = pytest.mark.parametrize(
    "fn", [funcprop.embedding, funcprop.embedding.vjp_rule.twin], ids=["rule", "twin"]
)


def _table(dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal((V, D)).astype(dtype)


def _one_hot_reference(ids, table, y_bar):
    """y = onehot(ids) @ T and T̄ = onehot(ids)ᵀ ḡ; an id outside [0, V) has an all-zero
    one-hot row, so it looks up zeros and sends nothing back."""
    one_hot = (np.asarray(ids)[..., None] == np.arange(V)).astype(table.dtype)  # (..., V)
    y = one_hot @ table
    table_bar = one_hot.reshape(-1, V).T @ np.asarray(y_bar).reshape(-1, D)
    return y, table_bar


@RULE_AND_TWIN
@pytest.mark.parametrize(
    "ids",
    [[4, 1, 0], [[2, 0, 2], [5, 2, 2]], [3, -1, V, 3, V + 5, 0, -7]],
    ids=["distinct", "repeated,2-D", "out-of-range"],
)
def test_matches_one_hot_matmul(fn, ids):
    ids = np.asarray(ids, np.int32)
    table = _table()
    y_bar = np.random.default_rng(1).standard_normal((*ids.shape, D))
    y, pullback = jax.vjp(lambda t: fn(jnp.asarray(ids), t), table)
    want_y, want_bar = _one_hot_reference(ids, table, y_bar)
    assert_close(y, want_y, F64, "embedding output")
    assert_close(pullback(y_bar)[0], want_bar, F64, "embedding cotangent of table")


def test_repeated_ids_add_up():
    ids = jnp.array([1, 1, 3, 1], jnp.int32)
    grad = jax.grad(lambda t: funcprop.embedding(ids, t).sum())(_table())
    expected = np.zeros((V, D))
    expected[1], expected[3] = 3.0, 1.0
    np.testing.assert_array_equal(grad, expected)


@RULE_AND_TWIN
def test_out_of_range_ids_give_zero_rows_and_no_gradient(fn):
    ids = jnp.array([-1, V, V + 5], jnp.int32)  # −1 must not wrap, V must not clamp to V − 1
    table = _table()
    for f in (fn, jax.jit(fn)):
        y, pullback = jax.vjp(lambda t, f=f: f(ids, t), table)
        np.testing.assert_array_equal(y, np.zeros((3, D)))
        np.testing.assert_array_equal(pullback(jnp.ones((3, D)))[0], np.zeros((V, D)))


@pytest.mark.parametrize("ids_dtype", [jnp.int8, jnp.uint8, jnp.int32, jnp.uint32, jnp.int64])
def test_ids_of_any_integer_dtype(ids_dtype):
    ids = np.array([[0, 5], [7, 2]])  # 7 is out of range
    table = _table()
    y_bar = np.ones((2, 2, D))
    y, pullback = jax.vjp(lambda t: funcprop.embedding(jnp.asarray(ids, ids_dtype), t), table)
    want_y, want_bar = _one_hot_reference(ids, table, y_bar)
    assert_close(y, want_y, F64)
    assert_close(pullback(y_bar)[0], want_bar, F64)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_output_and_cotangent_in_the_tables_dtype(dtype):
    table = jnp.asarray(_table(), dtype)
    ids = jnp.array([0, 0, 4], jnp.int32)
    y, pullback = jax.vjp(lambda t: funcprop.embedding(ids, t), table)
    (table_bar,) = pullback(jnp.ones((3, D), dtype))
    assert y.dtype == dtype and table_bar.dtype == dtype  # JAX would not catch a float32 here
    np.testing.assert_array_equal(np.asarray(table_bar[0], np.float32), np.full(D, 2.0, np.float32))


def test_only_the_ids_are_kept():
    ids, table = jnp.array([1, 2], jnp.int32), jnp.asarray(_table())
    _, (saved_ids, vocab) = funcprop.embedding.vjp_rule.fwd(ids, table)
    assert saved_ids is ids and vocab.shape == (V, 0) and vocab.size == 0  # V, in zero bytes


@pytest.mark.parametrize(
    "ids, table, error, match",
    [
        (np.array([0.0, 1.0]), _table(), TypeError, r"embedding: ids must be integer token ids, got dtype float64"),
        (np.array([True, False]), _table(), TypeError, r"embedding: ids must be integer token ids, got dtype bool"),
        (np.array([0, 1]), _table()[0], ValueError, r"embedding: table must be a matrix \(V, d\).* got shape \(3,\)"),
        (np.array([0, 1]), np.zeros((2, 3, 4)), ValueError, r"embedding: table must be a matrix .* \(2, 3, 4\)"),
        (np.array([0, 1]), np.zeros((0, 3)), ValueError, r"embedding: table must be a matrix \(V, d\) with V >= 1"),
        (
            np.array([0, 1]),
            np.ones((V, D), np.int32),
            TypeError,
            r"embedding: table must be a floating-point array, got dtype int32",
        ),
    ],
    ids=["float-ids", "bool-ids", "1-D-table", "3-D-table", "empty-table", "int-table"],
)
def test_bad_inputs_raise(ids, table, error, match):
    with pytest.raises(error, match=match):
        funcprop.embedding(ids, table)
