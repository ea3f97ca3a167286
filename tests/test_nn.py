"""Layers as pure functions: shapes, params as pytrees, initialisers, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcprop import nn

SEED_SIZES = [2, 4, 7, 3, 2]


def test_seed_network_has_the_seeds_shapes():
    out_shape, params = nn.mlp(SEED_SIZES, activation="sigmoid").init(jax.random.key(0), (2,))
    assert out_shape == (2,)
    dense = [p for p in params if isinstance(p, nn.DenseParams)]
    assert [p.omega.shape for p in dense] == [(4, 2), (7, 4), (3, 7), (2, 3)]
    assert [p.beta.shape for p in dense] == [(4,), (7,), (3,), (2,)]
    assert all(np.all(p.beta == 0) for p in dense)  # zero biases by default


def test_apply_is_batch_first_and_takes_one_example():
    model = nn.mlp(SEED_SIZES, activation="tanh")
    _, params = model.init(jax.random.key(0), (2,))
    x = jax.random.normal(jax.random.key(1), (5, 2), jnp.float32)
    batch = model.apply(params, x)
    assert batch.shape == (5, 2)
    np.testing.assert_allclose(model.apply(params, x[3]), batch[3], rtol=1e-6)


def test_params_work_with_optax_and_jax_tree(standard_promotion):
    model = nn.mlp([3, 8, 2])
    _, params = model.init(jax.random.key(0), (3,))
    opt = optax.adam(1e-2)
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = opt.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    assert jax.tree.structure(new) == jax.tree.structure(params)
    assert isinstance(new[0], nn.DenseParams)


@pytest.mark.parametrize(
    "init, variance",
    [
        (nn.he_normal, lambda fi, fo: 2 / fi),
        (nn.lecun_normal, lambda fi, fo: 1 / fi),
        (nn.glorot_normal, lambda fi, fo: 2 / (fi + fo)),
        (nn.glorot_uniform, lambda fi, fo: 2 / (fi + fo)),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_initialiser_variance(init, variance):
    n_out, n_in = 300, 500
    w = np.asarray(init(jax.random.key(0), (n_out, n_in), jnp.float64))
    # 150,000 draws: the sample variance is within 2% of the target with overwhelming odds
    assert abs(w.var() / variance(n_in, n_out) - 1) < 0.02
    assert abs(w.mean()) < 0.01 * w.std()


def test_initialisers_are_chosen_per_layer_and_deterministic():
    layer = nn.Dense(4, w_init="glorot_uniform", b_init=lambda k, s, d: jnp.full(s, 0.5, d))
    _, p1 = layer.init(jax.random.key(3), (6,))
    _, p2 = layer.init(jax.random.key(3), (6,))
    np.testing.assert_array_equal(p1.omega, p2.omega)
    np.testing.assert_array_equal(p1.beta, 0.5)
    _, p3 = layer.init(jax.random.key(4), (6,))
    assert not np.array_equal(p1.omega, p3.omega)


def test_twin_matches_apply():
    model = nn.serial(nn.Dense(5), nn.Gelu(), nn.Dense(4), nn.LeakyRelu(0.1), nn.Dense(3), nn.Softplus())
    _, params = model.init(jax.random.key(0), (6,))
    x = jax.random.normal(jax.random.key(1), (7, 6), jnp.float32)
    np.testing.assert_allclose(nn.twin(model)(params, x), model.apply(params, x), rtol=1e-6)


def test_init_error_names_layer_and_position():
    model = nn.serial(nn.Dense(4), nn.Relu(), nn.Dense(3))
    with pytest.raises(
        ValueError, match=r"serial layer 0 \(Dense\(4\)\): Dense\(4\): input_shape must end in the features .*got \(\)"
    ):
        model.init(jax.random.key(0), ())


def test_dense_maps_the_last_axis_of_an_example():
    """A sequence (T, n_in) or an image (H, W, C): each position alike, as dense(h) does."""
    out, params = nn.Dense(5).init(jax.random.key(0), (7, 3))
    x = jnp.ones((2, 7, 3), jnp.float32)
    assert out == (7, 5) and nn.Dense(5).apply(params, x).shape == (2, 7, 5)


def test_apply_error_names_layer_position_and_shapes():
    model = nn.serial(nn.Dense(4), nn.Relu(), nn.Dense(3))
    _, params = model.init(jax.random.key(0), (5,))
    with pytest.raises(
        ValueError, match=r"serial layer 0 \(Dense\(4\)\): dense: omega has shape \(4, 5\) but h has 6 features"
    ):
        model.apply(params, jnp.ones((2, 6), jnp.float32))
    with pytest.raises(ValueError, match=r"serial\[3\]: params must be a tuple of 3"):
        model.apply(params[:2], jnp.ones((2, 5)))


@pytest.mark.parametrize(
    "make, exception, pattern",
    [
        (lambda: nn.mlp([2]), ValueError, r"mlp: sizes must be at least two positive ints"),
        (lambda: nn.mlp([2, 3], activation="swish"), ValueError, r"mlp: unknown activation 'swish'"),
        (lambda: nn.Dense(0), ValueError, r"Dense: n_out must be a positive int, got 0"),
        (lambda: nn.Dense(3, w_init="orthogonal"), ValueError, r"Dense\(3\): unknown initialiser 'orthogonal'"),
        (lambda: nn.serial(nn.Dense(3), nn.Relu), TypeError, r"serial: argument 1 must be a Layer"),
        (lambda: nn.LeakyRelu(-1.0), ValueError, r"leaky_relu: negative_slope must be a finite number >= 0"),
        (lambda: nn.mlp([3, 2]).init(jax.random.key(0), (4,)), ValueError, r"mlp: input_shape must be \(3,\)"),
    ],
)
def test_bad_construction_raises(make, exception, pattern):
    with pytest.raises(exception, match=pattern):
        make()


def test_twin_of_a_user_layer_raises():
    user = nn.Layer(lambda k, s: (s, ()), lambda p, x: 2 * x)
    with pytest.raises(TypeError, match=r"twin: layer .* has no plain twin"):
        nn.twin(user)


def test_build_knows_the_cli_s_architectures_and_no_other():
    from funcprop.nn import models

    model, title = models.build("seed", (2,), 2, None, None)
    assert title == "mlp 2-4-7-3-2 sigmoid" and model.init(jax.random.key(0), (2,))[0] == (2,)
    with pytest.raises(ValueError, match=r"build: arch must be one of \('mlp', 'seed'"):
        models.build("rnn", (2,), 2, [8], "relu")
