"""The sort-free shuffle: a permutation for every n, deterministic per key, even-handed."""

import collections
import itertools

import jax
import numpy as np
import pytest

from funcprop import shuffle


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 64, 1437, 4096, 4097, 65536, 65537])
def test_every_index_exactly_once(n):
    order = shuffle.permutation(jax.random.key(n), n)
    assert order.shape == (n,) and order.dtype == np.int32
    np.testing.assert_array_equal(np.sort(np.asarray(order)), np.arange(n))


def test_deterministic_per_key_different_between_keys_and_jittable():
    a = shuffle.permutation(jax.random.key(0), 1000)
    np.testing.assert_array_equal(a, shuffle.permutation(jax.random.key(0), 1000))
    np.testing.assert_array_equal(a, jax.jit(shuffle.permutation, static_argnums=1)(jax.random.key(0), 1000))
    b = shuffle.permutation(jax.random.key(1), 1000)
    assert np.mean(np.asarray(a) == np.asarray(b)) < 0.02  # about 1/n agree by chance
    assert np.mean(np.asarray(a) == np.arange(1000)) < 0.02  # not near the identity


def test_raw_prng_keys_work_too():
    order = shuffle.permutation(jax.random.PRNGKey(3), 10)
    np.testing.assert_array_equal(np.sort(np.asarray(order)), np.arange(10))


def _chi_square(counts, expected):
    counts = np.asarray(counts, float)
    return float(np.sum((counts - expected) ** 2 / expected))


def test_positions_are_uniform_over_keys():
    """Where each index lands, over 8000 keys (n = 8): each of the 64 (index, position)
    cells has expected count 1000. The statistic has 49 degrees of freedom; 100 is far
    in its tail (p < 1e-4), while a shuffle that favoured a position by 10% would reach
    several hundred."""
    n, draws = 8, 8000
    orders = np.asarray(jax.vmap(lambda k: shuffle.permutation(k, n))(jax.random.split(jax.random.key(5), draws)))
    cells = np.zeros((n, n))
    for i in range(n):
        cells[i] = np.bincount(orders[:, i], minlength=n)
    assert _chi_square(cells, draws / n) < 100


def test_all_orders_of_three_are_drawn_evenly():
    """6 orders of 3 items, 6000 keys: expected 1000 each; 5 degrees of freedom, 25 is
    p < 2e-4."""
    orders = np.asarray(jax.vmap(lambda k: shuffle.permutation(k, 3))(jax.random.split(jax.random.key(6), 6000)))
    seen = collections.Counter(map(tuple, orders.tolist()))
    assert set(seen) == set(itertools.permutations(range(3)))
    assert _chi_square([seen[p] for p in itertools.permutations(range(3))], 1000) < 25


def test_neighbours_are_split_up():
    """In a shuffle of 1000, items that were neighbours land on average ~n/3 apart,
    as in a uniform shuffle (an affine or block-wise map would keep them close)."""
    order = np.asarray(shuffle.permutation(jax.random.key(7), 1000))
    position = np.argsort(order)
    gaps = np.abs(np.diff(position))
    assert 280 < gaps.mean() < 390


@pytest.mark.parametrize("n", [-1, 2**31, 3.0, True, None])
def test_bad_n_raises_a_clear_error(n):
    with pytest.raises(ValueError, match=r"shuffle.permutation: n must be a Python int in \[0, 2\*\*31\)"):
        shuffle.permutation(jax.random.key(0), n)
