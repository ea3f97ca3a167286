"""dropout beyond the table sweep: the mask's statistics, its scaling, keys, the
backward's mask, dtypes and bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, assert_close

import funcprop

RATES = pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])


def _x(shape=(64, 32), dtype=jnp.float64, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


@RATES
def test_kept_fraction_is_one_minus_rate(rate):
    y = funcprop.dropout(jnp.ones((512, 512)), rate, key=jax.random.key(0))
    kept = float(jnp.mean(y != 0))
    # n = 2^18 draws: the fraction's standard deviation is at most 0.001
    assert abs(kept - (1 - rate)) < 0.005


@RATES
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_kept_entries_are_scaled_dropped_are_zero(rate, dtype):
    x = _x(dtype=dtype)
    y = funcprop.dropout(x, rate, key=jax.random.key(1))
    assert y.dtype == dtype
    kept = np.asarray(y != 0)
    assert 0 < kept.sum() < kept.size
    scaled = np.asarray(x)[kept] / np.asarray(1 - rate, dtype)
    assert_close(np.asarray(y)[kept], scaled, RTOL[np.dtype(dtype)], "kept entries")


def test_same_key_same_mask_other_key_other_mask():
    x = _x()
    a = funcprop.dropout(x, 0.5, key=jax.random.key(2))
    np.testing.assert_array_equal(a, funcprop.dropout(x, 0.5, key=jax.random.key(2)))
    np.testing.assert_array_equal(a, jax.jit(lambda x, k: funcprop.dropout(x, 0.5, key=k))(x, jax.random.key(2)))
    assert not np.array_equal(a != 0, funcprop.dropout(x, 0.5, key=jax.random.key(3)) != 0)


def test_one_key_one_mask_for_every_dtype():
    masks = [
        funcprop.dropout(_x(dtype=dt), 0.3, key=jax.random.key(4)) != 0
        for dt in (jnp.bfloat16, jnp.float32, jnp.float64)
    ]
    for m in masks[1:]:
        np.testing.assert_array_equal(m, masks[0])


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_gradient_uses_the_forward_mask(jit):
    x, rate, key = _x(), 0.4, jax.random.key(5)
    y_bar = _x(seed=1)
    f = lambda x: funcprop.dropout(x, rate, key=key)  # noqa: E731
    y, pullback = jax.vjp(jax.jit(f) if jit else f, x)
    (x_bar,) = pullback(y_bar)
    kept = y != 0
    np.testing.assert_array_equal(x_bar, jnp.where(kept, y_bar / (1 - rate), 0))


def test_only_the_key_is_kept():
    key = jax.random.key(6)
    _, res = funcprop.dropout.vjp_rule.fwd(_x(), key, 0.5)
    assert jax.tree.leaves(res) == [key]  # no mask: the bwd draws it again


@pytest.mark.parametrize("rate", [0.0, 0])
def test_rate_zero_is_the_identity(rate):
    x, y_bar = _x(), _x(seed=1)
    y, pullback = jax.vjp(lambda x: funcprop.dropout(x, rate, key=jax.random.key(7)), x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(pullback(y_bar)[0], y_bar)


def test_typed_and_raw_keys_give_the_same_mask():
    x = _x()
    typed = funcprop.dropout(x, 0.5, key=jax.random.key(8))
    raw = funcprop.dropout(x, 0.5, key=jax.random.PRNGKey(8))
    np.testing.assert_array_equal(typed, raw)
    g_raw = jax.grad(lambda x: jnp.sum(funcprop.dropout(x, 0.5, key=jax.random.PRNGKey(8))))(x)
    np.testing.assert_array_equal(g_raw, jnp.where(typed != 0, 2.0, 0.0))


def test_bfloat16_output_and_cotangent():
    x = _x(dtype=jnp.bfloat16)
    y, pullback = jax.vjp(lambda x: funcprop.dropout(x, 0.5, key=jax.random.key(9)), x)
    assert y.dtype == jnp.bfloat16
    assert pullback(jnp.ones_like(y))[0].dtype == jnp.bfloat16  # JAX would not catch float32


def test_vmap_with_a_key_per_example_gives_independent_masks():
    x = jnp.ones((2, 256))
    keys = jax.random.split(jax.random.key(10), 2)
    y = jax.vmap(lambda x, k: funcprop.dropout(x, 0.5, key=k))(x, keys)
    np.testing.assert_array_equal(y[1], funcprop.dropout(x[1], 0.5, key=keys[1]))
    assert not np.array_equal(y[0], y[1])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"rate": 1.0}, ValueError, r"dropout: rate must be in \[0, 1\) .* got 1.0"),
        ({"rate": -0.1}, ValueError, r"dropout: rate must be in \[0, 1\) .* got -0.1"),
        ({"rate": float("nan")}, ValueError, r"dropout: rate must be in \[0, 1\)"),
        ({"rate": jnp.float32(0.5)}, TypeError, r"dropout: rate must be a static Python float"),
        ({"rate": True}, TypeError, r"dropout: rate must be a static Python float"),
        ({"rate": 0.5, "key": None}, TypeError, r"dropout: a key is required, got key=None; pass key=jax.random.key"),
        (
            {"rate": 0.5, "key": jnp.zeros(2, jnp.int32)},
            TypeError,
            r"dropout: key must be a PRNG key, got an array of dtype int32",
        ),
        ({"rate": 0.5, "key": "seed"}, TypeError, r"dropout: key must be a PRNG key, got a str"),
        (
            {"rate": 0.5, "key": jnp.zeros(3, jnp.uint32)},
            TypeError,
            r"dropout: key is a uint32 array of shape \(3,\), which is not a raw key",
        ),
        (
            {"rate": 0.5, "key": jax.random.split(jax.random.key(0), 4)},
            TypeError,
            r"dropout: key must be a single key, got \(4,\) keys",
        ),
    ],
    ids=[
        "rate=1",
        "rate<0",
        "rate=nan",
        "rate-array",
        "rate-bool",
        "key=None",
        "int-key",
        "str-key",
        "raw-key-shape",
        "batch-of-keys",
    ],
)
def test_bad_inputs_raise(kwargs, error, match):
    kwargs = {"key": jax.random.key(0), **kwargs}
    with pytest.raises(error, match=match):
        funcprop.dropout(_x(), **kwargs)


def test_missing_key_raises():
    with pytest.raises(TypeError, match=r"dropout: a key is required"):
        funcprop.dropout(_x(), 0.5)


def test_int_input_raises():
    with pytest.raises(TypeError, match=r"dropout: x must be a floating-point array, got dtype int32"):
        funcprop.dropout(jnp.ones(3, jnp.int32), 0.5, key=jax.random.key(0))
