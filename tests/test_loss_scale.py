"""Dynamic loss scaling: the seed of the backward, the scale's rule, and float16 training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcprop as fp
from funcprop import checkpoint, data, nn, train
from funcprop.loss_scale import LossScaleState, dynamic_loss_scale

pytestmark = pytest.mark.usefixtures("standard_promotion")


def _problem(dtype=None):
    model = nn.serial(nn.Dense(8, dtype=dtype), nn.Tanh(dtype=dtype), nn.Dense(3, dtype=dtype))
    _, params = model.init(jax.random.key(0), (5,))
    x = jax.random.normal(jax.random.key(1), (16, 5), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (16,), 0, 3)
    return model, params, x, y


@pytest.mark.parametrize("gradient", train.GRADIENTS)
def test_a_loss_scale_multiplies_every_gradient_and_leaves_the_loss(gradient):
    model, params, x, y = _problem()
    fn = train.loss_and_grad(model, gradient=gradient)
    value, grads = fn(params, x, y)
    scaled_value, scaled = fn(params, x, y, loss_scale=jnp.float32(2.0**10))
    assert scaled_value == value
    for a, b in zip(jax.tree.leaves(scaled), jax.tree.leaves(grads)):
        np.testing.assert_array_equal(a, 2.0**10 * b)  # a power of 2: exact


def test_float16_gradients_that_underflow_survive_a_loss_scale():
    """Logits with a margin of 16: p − y ≈ e⁻¹⁶ ≈ 1e-7, over 16 examples 7e-9, below
    float16's smallest subnormal (6e-8), so δ rounds to 0; times 2¹⁵ it is 2e-4."""
    model = nn.Dense(3, dtype=jnp.float16)
    _, params = model.init(jax.random.key(0), (5,))
    params = params._replace(omega=0.01 * params.omega, beta=jnp.array([16.0, 0.0, 0.0], jnp.float32))
    x = jax.random.normal(jax.random.key(1), (16, 5), jnp.float32)
    y = jnp.zeros(16, jnp.int32)
    # the reference: float32 arithmetic on the float16-rounded inputs and parameters
    rounded = lambda t: jax.tree.map(lambda a: a.astype(jnp.float16).astype(jnp.float32), t)  # noqa: E731
    exact = jax.grad(lambda p: fp.softmax_cross_entropy(nn.twin(nn.Dense(3))(p, rounded(x)), y))(rounded(params))
    fn = train.loss_and_grad(model)
    plain = fn(params, x, y)[1]
    scale = 2.0**15
    rescued = jax.tree.map(lambda g: g / scale, fn(params, x, y, loss_scale=jnp.float32(scale))[1])
    assert all(not np.any(g) for g in jax.tree.leaves(plain))  # every gradient flushed to 0
    for got, want in zip(jax.tree.leaves(rescued), jax.tree.leaves(exact)):
        assert got.dtype == jnp.float32  # the parameters' dtype, whatever the computation's
        np.testing.assert_allclose(got, want, rtol=0.02, atol=0.02 * float(jnp.max(jnp.abs(want))))


def _update(opt, state, grads):
    return opt.update(grads, state, {"w": jnp.zeros(2)})


def test_a_non_finite_gradient_skips_the_step_and_halves_the_scale():
    opt = dynamic_loss_scale(optax.sgd(1.0), initial=8.0, period=2)
    state = opt.init({"w": jnp.zeros(2)})
    updates, state = _update(opt, state, {"w": jnp.array([8.0, jnp.inf])})
    np.testing.assert_array_equal(updates["w"], [0.0, 0.0])
    assert (float(state.scale), int(state.good_steps), int(state.skipped)) == (4.0, 0, 1)
    updates, state = _update(opt, state, {"w": jnp.array([4.0, -8.0])})
    np.testing.assert_array_equal(updates["w"], [-1.0, 2.0])  # unscaled by 4, then sgd's −lr·g
    assert (float(state.scale), int(state.good_steps)) == (4.0, 1)
    _, state = _update(opt, state, {"w": jnp.array([4.0, 4.0])})
    assert (float(state.scale), int(state.good_steps)) == (8.0, 0)  # period finite steps: doubled


def test_the_scale_stays_at_or_above_its_floor():
    opt = dynamic_loss_scale(optax.sgd(1.0), initial=2.0, min_scale=1.0)
    state = opt.init({"w": jnp.zeros(2)})
    for _ in range(3):
        _, state = _update(opt, state, {"w": jnp.array([jnp.nan, 0.0])})
    assert float(state.scale) == 1.0 and int(state.skipped) == 3


def test_the_wrapped_optimizer_state_is_kept_on_a_skipped_step():
    opt = dynamic_loss_scale(optax.adam(0.1), initial=1.0)
    state = opt.init({"w": jnp.zeros(2)})
    _, state = _update(opt, state, {"w": jnp.array([1.0, 1.0])})
    before = state.inner
    _, state = _update(opt, state, {"w": jnp.array([jnp.inf, 1.0])})
    for a, b in zip(jax.tree.leaves(state.inner), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(period=0), "period must be an int >= 1"),
        (dict(factor=1.0), r"factor must be a finite number > 1, got 1.0"),
        (dict(initial=0.5), r"initial must be a finite number >= min_scale \(1.0\), got 0.5"),
        (dict(min_scale=float("inf")), "min_scale must be a finite number > 0"),
    ],
)
def test_bad_settings_are_refused_by_name(kw, match):
    with pytest.raises(ValueError, match=f"dynamic_loss_scale: {match}"):
        dynamic_loss_scale(optax.sgd(1.0), **kw)


def test_float16_training_with_a_loss_scale_learns_and_checkpoints_the_scale(tmp_path):
    ds = data.toy(jax.random.key(0), n=256)
    model = nn.mlp([2, 16, 2], activation="tanh", dtype=jnp.float16)
    _, params = model.init(jax.random.key(1), (2,))
    opt = dynamic_loss_scale(optax.adam(1e-2), initial=2.0**20, period=4)  # 2²⁰ overflows float16 at first
    path = tmp_path / "c.npz"
    result = train.train(
        model, params, opt, ds, epochs=3, batch_size=32, key=jax.random.key(2), progress=False, checkpoint_path=path
    )
    assert isinstance(result.opt_state, LossScaleState)
    assert int(result.opt_state.skipped) >= 1 and float(result.opt_state.scale) < 2.0**20
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(result.params))
    arrays, _ = checkpoint.load_flat(path)
    assert float(next(v for k, v in arrays.items() if k.endswith("scale"))) == float(result.opt_state.scale)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda opt: optax.chain(optax.clip_by_global_norm(1.0), opt),
        lambda opt: optax.apply_if_finite(opt, max_consecutive_errors=3),
    ],
    ids=["chain", "apply_if_finite"],
)
def test_a_loss_scale_inside_another_optimizer_is_refused_not_applied_as_1_over_s(wrap):
    """Nested, the backward would be seeded with 1 and the update still divide by s."""
    ds = data.toy(jax.random.key(0), n=64)
    model = nn.mlp([2, 4, 2])
    _, params = model.init(jax.random.key(1), (2,))
    opt = wrap(dynamic_loss_scale(optax.sgd(0.1)))
    with pytest.raises(TypeError, match=r"dynamic_loss_scale: the loss scale is nested .* dynamic_loss_scale\(optax"):
        train.train(model, params, opt, ds, epochs=1, batch_size=16, key=jax.random.key(2), progress=False)


def test_float16_gradients_are_unscaled_in_float32():
    """s = 2¹⁶ is inf in float16: dividing there would make every update 0."""
    opt = dynamic_loss_scale(optax.sgd(1.0), initial=2.0**16)
    grads = {"w": jnp.full(3, 2.0**14, jnp.float16)}  # the gradient 0.25, times s
    state = opt.init({"w": jnp.zeros(3, jnp.float16)})
    updates, state = opt.update(grads, state)
    np.testing.assert_array_equal(updates["w"], np.full(3, -0.25, np.float16))
    assert updates["w"].dtype == jnp.float16 and int(state.skipped) == 0
