"""Initialisers ``init(key, shape, dtype) -> array``, explicit PRNG keys throughout.

``shape`` is a dense weight ``(n_out, n_in)`` or a kernel ``(kh, kw, c_in, c_out)``;
fans count the receptive field for a kernel.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Shape = tuple[int, ...]


def _fans(shape: Shape) -> tuple[int, int]:
    """(fan_in, fan_out) of ``(n_out, n_in)`` or of a kernel ``(*window, c_in, c_out)``."""
    if len(shape) == 2:
        return shape[1], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def he_normal(key, shape, dtype=jnp.float32):
    """Kaiming/He normal: N(0, 2 / fan_in); for relu-like activations."""
    return jax.random.normal(key, shape, dtype) * math.sqrt(2 / _fans(shape)[0])


def lecun_normal(key, shape, dtype=jnp.float32):
    """LeCun normal: N(0, 1 / fan_in)."""
    return jax.random.normal(key, shape, dtype) * math.sqrt(1 / _fans(shape)[0])


def glorot_normal(key, shape, dtype=jnp.float32):
    """Glorot/Xavier normal: N(0, 2 / (fan_in + fan_out)); for sigmoid and tanh."""
    fan_in, fan_out = _fans(shape)
    return jax.random.normal(key, shape, dtype) * math.sqrt(2 / (fan_in + fan_out))


def glorot_uniform(key, shape, dtype=jnp.float32):
    """Glorot/Xavier uniform: U(−a, a), a = √(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(shape)
    limit = math.sqrt(6 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def zeros(key, shape, dtype=jnp.float32):
    """All zeros (the default bias)."""
    del key
    return jnp.zeros(shape, dtype)


INITIALIZERS = {
    "he_normal": he_normal,
    "lecun_normal": lecun_normal,
    "glorot_normal": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "zeros": zeros,
}


def initializer(fn: str, init):
    """``init`` as a function: itself if callable, else the :data:`INITIALIZERS` entry of
    that name, or a ValueError naming ``fn``."""
    if callable(init):
        return init
    if init in INITIALIZERS:
        return INITIALIZERS[init]
    raise ValueError(f"{fn}: unknown initialiser {init!r}; use one of {sorted(INITIALIZERS)} or a function")
