"""Naive references for the tests: autodiff VJPs of float arguments, a network's
gradients three ways, and comparison.

The error measure is the scaled relative error of each element,
``|a − b| / (|b| + max|b|)``: relative for elements near the largest, absolute
(relative to the leaf's scale) for elements near zero, where cancellation leaves
only the rounding of the larger terms.
"""

import jax
import jax.numpy as jnp
import numpy as np

from funcprop import backprop, nn

# Tolerances tied to precision: a few thousand ulps of headroom, no more.
RTOL = {np.dtype("float32"): 1e-5, np.dtype("float64"): 1e-12}
FD_RTOL = 1e-6  # central differences in float64, step 1e-5: O(h²) + O(eps/h)


def is_float(x) -> bool:
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def float_argnums(args) -> tuple:
    return tuple(i for i, a in enumerate(args) if is_float(a))


def with_floats(fn, args, kwargs):
    """fn as a function of its float arguments only (integers held fixed)."""
    pos = float_argnums(args)

    def f(*floats):
        full = list(args)
        for i, x in zip(pos, floats):
            full[i] = x
        return fn(*full, **kwargs)

    return f, tuple(args[i] for i in pos)


def vjp(fn, args, kwargs, cotangent):
    """(output, cotangents of the float arguments) by jax.vjp."""
    f, floats = with_floats(fn, args, kwargs)
    out, pullback = jax.vjp(f, *floats)
    return out, pullback(cotangent)


def numpy_rng(key) -> np.random.Generator:
    """A NumPy generator seeded by a concrete JAX key. Drawing test data with NumPy
    compiles nothing; an eager ``jax.random`` draw compiles a program per new shape."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def random_like(key, x):
    """Standard normals of x's shape and dtype, drawn by NumPy from the key."""
    x = jnp.asarray(x)
    return jnp.asarray(numpy_rng(key).standard_normal(x.shape), x.dtype)


def scaled_relative_error(actual, expected) -> np.ndarray:
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    denom = np.abs(b) + (np.max(np.abs(b)) if b.size else 0.0)
    diff = np.abs(a - b)
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.where(diff == 0, 0.0, diff / denom)
    return np.where(np.isnan(a) != np.isnan(b), np.inf, err)


def assert_close(actual, expected, rtol, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    err = scaled_relative_error(actual, expected)
    if err.size and not err.max() <= rtol:
        i = np.unravel_index(np.argmax(err), err.shape)
        raise AssertionError(
            f"{what}: scaled relative error {err.max():.3g} > {rtol:g} at index {i}: "
            f"got {actual[i]!r}, expected {expected[i]!r}"
        )


def assert_trees_close(actual, expected, rtol, what=""):
    """assert_close leaf by leaf, after checking that the pytree structures agree."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected), f"{what}: pytree structure"
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
        assert_close(a, b, rtol, f"{what} at {jax.tree_util.keystr(path)}")


def random_params(model, input_shape, seed=0, scale=0.5):
    """Params of ``model``'s structure and dtypes, every entry drawn N(0, scale²) by
    NumPy (biases off 0, γ off 1, so each cotangent meets a nontrivial forward).

    The shapes come from ``jax.eval_shape`` of ``model.init`` (its checks still run):
    drawing eagerly with jax.random would compile a kernel for every new shape.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda k: model.init(k, input_shape)[1], jax.random.key(0))
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), shapes)


def grads_three_ways(model, loss, params, x, y, key=None):
    """``{"backprop", "rules", "twins"}`` -> (loss, grads): the written-out backprop,
    and jax.value_and_grad through the rules (``loss(model.apply(...), y)``) and through
    the plain twins. One jitted program, so one compilation per case."""
    twin, twin_loss = nn.twin(model), loss.vjp_rule.twin

    @jax.jit
    def run(params, x, y, key):
        return {
            "backprop": backprop.value_and_grad(model, loss)(params, x, y, key=key),
            "rules": jax.value_and_grad(lambda p: loss(model.apply(p, x, key=key), y))(params),
            "twins": jax.value_and_grad(lambda p: twin_loss(twin(p, x, key=key), y))(params),
        }

    return run(params, x, y, key)
