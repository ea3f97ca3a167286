"""The sort-free shuffle: a permutation for every n, deterministic per key, even-handed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcprop import shuffle
from funcprop.shuffle import SORT_BELOW


@pytest.mark.parametrize(
    "n", [0, 1, 2, 3, 7, SORT_BELOW - 1, SORT_BELOW, SORT_BELOW + 1, 3000, 4096, 4097, 65537, 100_003]
)
def test_every_index_exactly_once(n):
    order = shuffle.permutation(jax.random.key(n), n)
    assert order.shape == (n,) and order.dtype == np.int32
    np.testing.assert_array_equal(np.sort(np.asarray(order)), np.arange(n))


def test_below_the_threshold_it_is_jax_random_permutation():
    key = jax.random.key(4)
    np.testing.assert_array_equal(shuffle.permutation(key, 1000), jax.random.permutation(key, 1000))


@pytest.mark.parametrize("bits", range(1, 21))
def test_the_feistel_network_is_a_bijection_of_its_whole_domain(bits):
    round_keys = jax.random.bits(jax.random.key(bits), (6,), jnp.uint32)
    image = np.asarray(shuffle._encrypt(jnp.arange(2**bits, dtype=jnp.uint32), round_keys, bits))
    np.testing.assert_array_equal(np.sort(image), np.arange(2**bits))


def _decrypt(v, round_keys, bits):
    """The inverse of shuffle._encrypt, written from the round: (l, r) -> (r, l ^ F(r))."""
    widths = [(bits // 2, bits - bits // 2)]  # (left, right) widths before each round
    for _ in range(len(round_keys) - 1):
        widths.append(widths[-1][::-1])
    l_bits, r_bits = widths[-1][::-1]  # widths after the last round
    left, right = v >> np.uint32(r_bits), v & np.uint32((1 << r_bits) - 1)
    for r in reversed(range(len(round_keys))):
        before_l, _ = widths[r]
        f = np.asarray(shuffle._hash32(jnp.asarray(left ^ round_keys[r]))) & np.uint32((1 << before_l) - 1)
        left, right = right ^ f, left  # undo: left' = right, right' = left ^ F(right)
    return (left << np.uint32(widths[0][1])) | right


@pytest.mark.parametrize("bits", [11, 20, 31])
def test_decrypting_gives_the_input_back_up_to_31_bits(bits):
    round_keys = np.asarray(jax.random.bits(jax.random.key(bits), (6,), jnp.uint32))
    x = np.random.default_rng(bits).integers(0, 2**bits, size=100_000, dtype=np.uint32)
    y = np.asarray(shuffle._encrypt(jnp.asarray(x), jnp.asarray(round_keys), bits))
    assert y.max() < 2**bits
    np.testing.assert_array_equal(_decrypt(y, round_keys, bits), x)


def test_deterministic_per_key_different_between_keys_and_jittable():
    n = 4096
    a = shuffle.permutation(jax.random.key(0), n)
    np.testing.assert_array_equal(a, shuffle.permutation(jax.random.key(0), n))
    np.testing.assert_array_equal(a, jax.jit(shuffle.permutation, static_argnums=1)(jax.random.key(0), n))
    b = shuffle.permutation(jax.random.key(1), n)
    assert np.mean(np.asarray(a) == np.asarray(b)) < 0.01  # about 1/n agree by chance
    assert np.mean(np.asarray(a) == np.arange(n)) < 0.01  # not near the identity


def test_raw_prng_keys_work_too():
    order = shuffle.permutation(jax.random.PRNGKey(3), 3000)
    np.testing.assert_array_equal(np.sort(np.asarray(order)), np.arange(3000))


def _chi_square(counts):
    counts = np.asarray(counts, float)
    expected = counts.sum() / counts.size
    return float(np.sum((counts - expected) ** 2 / expected))


N, DRAWS = 3000, 6400  # 3000 < 2^12: the filter drops a quarter of the domain


@pytest.fixture(scope="module")
def orders():
    keys = jax.random.split(jax.random.key(5), DRAWS)
    return np.asarray(jax.vmap(lambda k: shuffle.permutation(k, N))(keys))


def test_first_two_items_are_uniform_and_independent(orders):
    """(order[0], order[1]) in 8 × 8 bins over 6400 keys: 100 expected per cell. 63
    degrees of freedom; 120 has p = 2e-5 for a uniform shuffle."""
    bins = orders[:, :2] * 8 // N
    cells = np.zeros((8, 8))
    np.add.at(cells, (bins[:, 0], bins[:, 1]), 1)
    assert _chi_square(cells) < 120


def test_where_an_item_lands_is_uniform(orders):
    """The position of item 0 (and of item N - 1) in 16 bins over 6400 keys: 400 expected
    per bin; 15 degrees of freedom, 45 has p = 8e-5."""
    for item in (0, N - 1):
        position = np.argmax(orders == item, axis=1)
        assert _chi_square(np.bincount(position * 16 // N, minlength=16)) < 45


def test_neighbours_are_split_up(orders):
    """Items that were neighbours land on average ~N/3 apart, as in a uniform shuffle;
    a shuffle that moved blocks of items together would keep them close."""
    position = np.argsort(orders[:50], axis=1)
    gaps = np.abs(np.diff(position, axis=1))
    assert N / 3 * 0.95 < gaps.mean() < N / 3 * 1.05


@pytest.mark.parametrize("n", [-1, 2**31, 3.0, True, None])
def test_bad_n_raises_a_clear_error(n):
    with pytest.raises(ValueError, match=r"shuffle.permutation: n must be a Python int in \[0, 2\*\*31\)"):
        shuffle.permutation(jax.random.key(0), n)
