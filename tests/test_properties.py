"""Property-based: random shapes and batch sizes, each rule's VJP equals its twin's."""

import jax
import jax.numpy as jnp
import numpy as np
from helpers import RTOL, assert_close, float_argnums, random_like, vjp
from hypothesis import given, settings
from hypothesis import strategies as st

import funcprop as fp

F64 = RTOL[np.dtype("float64")]
dims = st.integers(1, 6)
batch_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)
seeds = st.integers(0, 2**31 - 1)
SETTINGS = settings(max_examples=20, deadline=None)


def _assert_vjp_matches_twin(rule, args, seed, **kwargs):
    twin = rule.vjp_rule.twin
    ct = random_like(jax.random.key(seed), twin(*args, **kwargs))
    out_rule, cts_rule = vjp(rule, args, kwargs, ct)
    out_twin, cts_twin = vjp(twin, args, kwargs, ct)
    assert_close(out_rule, out_twin, F64, f"{rule.__name__} output")
    for pos, a, b in zip(float_argnums(args), cts_rule, cts_twin):
        assert_close(a, b, F64, f"{rule.__name__} argument {pos}")


def _normal(seed, *shapes):
    rng = np.random.default_rng(seed)  # NumPy: no program compiled per random shape
    return tuple(jnp.asarray(rng.standard_normal(s), jnp.float64) for s in shapes)


@SETTINGS
@given(batch=batch_shapes, n_in=dims, n_out=dims, seed=seeds)
def test_dense_any_batch(batch, n_in, n_out, seed):
    args = _normal(seed, (*batch, n_in), (n_out, n_in), (n_out,))
    _assert_vjp_matches_twin(fp.dense, args, seed + 1)


@SETTINGS
@given(
    rule=st.sampled_from([fp.sigmoid, fp.tanh, fp.relu, fp.leaky_relu, fp.softplus, fp.gelu]),
    shape=st.lists(dims, min_size=0, max_size=3).map(tuple),
    seed=seeds,
)
def test_activations_any_shape(rule, shape, seed):
    _assert_vjp_matches_twin(rule, _normal(seed, shape), seed + 1)


@SETTINGS
@given(
    rule=st.sampled_from([fp.softmax, fp.log_softmax]),
    shape=st.lists(dims, min_size=1, max_size=3).map(tuple),
    axis_seed=st.integers(0, 10),
    seed=seeds,
)
def test_softmax_any_shape_and_axis(rule, shape, axis_seed, seed):
    axis = axis_seed % len(shape)
    _assert_vjp_matches_twin(rule, _normal(seed, shape), seed + 1, axis=axis)


@SETTINGS
@given(batch=batch_shapes, classes=st.integers(2, 7), as_ids=st.booleans(), seed=seeds)
def test_softmax_cross_entropy_any_batch(batch, classes, as_ids, seed):
    (logits,) = _normal(seed, (*batch, classes))
    if as_ids:
        labels = jax.random.randint(jax.random.key(seed + 2), batch, 0, classes)
    else:
        labels = jax.nn.softmax(_normal(seed + 2, (*batch, classes))[0])
    _assert_vjp_matches_twin(fp.softmax_cross_entropy, (logits, labels), seed + 1)


@SETTINGS
@given(shape=st.lists(dims, min_size=0, max_size=3).map(tuple), seed=seeds)
def test_elementwise_losses_any_shape(shape, seed):
    a, b = _normal(seed, shape, shape)
    _assert_vjp_matches_twin(fp.mse, (a, b), seed + 1)
    _assert_vjp_matches_twin(fp.sigmoid_binary_cross_entropy, (a, jax.nn.sigmoid(b)), seed + 1)


CONV_SETTINGS = settings(max_examples=12, deadline=None)
pads = st.sampled_from(["VALID", "SAME", ((1, 0), (0, 2)), ((2, 2), (1, 1))])


@CONV_SETTINGS
@given(
    batch=st.integers(1, 2),
    hw=st.tuples(st.integers(3, 8), st.integers(3, 8)),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=pads,
    channels=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    seed=seeds,
)
def test_conv2d_any_geometry(batch, hw, kernel, stride, padding, channels, seed):
    args = _normal(seed, (batch, *hw, channels[0]), (*kernel, *channels), (channels[1],))
    _assert_vjp_matches_twin(fp.conv2d, args, seed + 1, stride=stride, padding=padding)


@CONV_SETTINGS
@given(
    rule=st.sampled_from([fp.max_pool2d, fp.avg_pool2d]),
    hw=st.tuples(st.integers(3, 8), st.integers(3, 8)),
    window=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
    seed=seeds,
)
def test_pooling_any_geometry(rule, hw, window, stride, seed):
    (x,) = _normal(seed, (2, *hw, 2))
    _assert_vjp_matches_twin(rule, (x,), seed + 1, window=window, stride=stride)
