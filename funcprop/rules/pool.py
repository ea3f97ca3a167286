"""Max and average pooling over NHWC windows (VALID), with hand-derived backwards.

Both backwards are written as a sum over the window's offsets (i, j): the cotangent of
every window is sent back to the input position ``(s·y + i, s·x + j)`` by ``lax.pad``
with interior padding (s − 1 zeros between entries), so overlapping windows
(stride < window) add up, and positions no window covers get zero.

- average: each of the k = kh·kw inputs of a window gets ``ḡ / k``;
- max: the whole ``ḡ`` goes to the window's maximum. Ties: the *first* maximum in
  row-major order within the window (smallest i, then smallest j) takes it all, the
  others get zero. The residual is that offset, one uint8 per output element.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcprop.rules._core import as_float_array, custom_rule, implements
from funcprop.rules.conv import _pair


def _offsets(window):
    return [(i, j) for i in range(window[0]) for j in range(window[1])]


def _window_slice(x, i, j, out_hw, stride):
    """x[:, s·y + i, s·x + j, :] for every output (y, x): ``(N, H_out, W_out, C)``."""
    (ho, wo), (sh, sw) = out_hw, stride
    return lax.slice(x, (0, i, j, 0), (x.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, x.shape[3]), (1, sh, sw, 1))


def _scatter_to_input(v, i, j, in_hw, stride):
    """The inverse placement of :func:`_window_slice`: v at rows s·y + i, zeros elsewhere."""
    (h, w), (sh, sw), (ho, wo) = in_hw, stride, v.shape[1:3]
    cfg = [(0, 0, 0), (i, h - i - sh * (ho - 1) - 1, sh - 1), (j, w - j - sw * (wo - 1) - 1, sw - 1), (0, 0, 0)]
    return lax.pad(v, jnp.zeros((), v.dtype), cfg)


def _out_hw(x, window, stride):
    return tuple((n - k) // s + 1 for n, k, s in zip(x.shape[1:3], window, stride))


# --- max_pool2d ----------------------------------------------------------------------


def _static(window, stride):
    window = _pair("pool", "window", window)
    return window, window if stride is None else _pair("pool", "stride", stride)


def _one_example_too(pool):
    """Let a twin taking (N, H, W, C) take (H, W, C) as well."""

    def twin(x, window, stride=None):
        return pool(x[None], window, stride)[0] if x.ndim == 3 else pool(x, window, stride)

    twin.__name__, twin.__doc__ = pool.__name__, pool.__doc__
    return twin


@_one_example_too
def max_pool2d_twin(x, window, stride=None):
    """Plain twin of :func:`max_pool2d`: ``lax.reduce_window`` with ``max``."""
    window, stride = _static(window, stride)
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *stride, 1), "VALID")


def _max_pool2d_fwd(x, window, stride):
    out_hw = _out_hw(x, window, stride)
    patches = jnp.stack([_window_slice(x, i, j, out_hw, stride) for i, j in _offsets(window)])
    arg = jnp.argmax(patches, axis=0).astype(jnp.uint8)  # first maximum on ties
    return jnp.max(patches, axis=0), (arg, x.shape[1:3])


def _max_pool2d_bwd(window, stride, res, g):
    """x̄ = Σ_(i,j) place(ḡ ⊙ [argmax = (i, j)]): all of ḡ to the first maximum."""
    arg, in_hw = res
    x_bar = sum(
        _scatter_to_input(jnp.where(arg == k, g, 0), i, j, in_hw, stride) for k, (i, j) in enumerate(_offsets(window))
    )
    return (x_bar,)


_MAX_POOL2D = custom_rule(max_pool2d_twin, _max_pool2d_fwd, _max_pool2d_bwd, nondiff_argnums=(1, 2))


# --- avg_pool2d ----------------------------------------------------------------------


@_one_example_too
def avg_pool2d_twin(x, window, stride=None):
    """Plain twin of :func:`avg_pool2d`: a window sum divided by kh·kw."""
    window, stride = _static(window, stride)
    zero = np.zeros((), x.dtype)  # a concrete identity, so XLA sees a window sum JAX can differentiate
    summed = lax.reduce_window(x, zero, lax.add, (1, *window, 1), (1, *stride, 1), "VALID")
    return summed / (window[0] * window[1])


def _avg_pool2d_fwd(x, window, stride):
    return avg_pool2d_twin(x, window, stride), x.shape[1:3]


def _avg_pool2d_bwd(window, stride, in_hw, g):
    """x̄ = Σ_(i,j) place(ḡ / (kh·kw)): every input of a window gets an equal share."""
    share = g / (window[0] * window[1])
    return (sum(_scatter_to_input(share, i, j, in_hw, stride) for i, j in _offsets(window)),)


_AVG_POOL2D = custom_rule(avg_pool2d_twin, _avg_pool2d_fwd, _avg_pool2d_bwd, nondiff_argnums=(1, 2))


# --- the public wrappers ------------------------------------------------------------------


def _pool_args(fn: str, x, window, stride):
    x = as_float_array(fn, "x", x)
    if x.ndim not in (3, 4):
        raise ValueError(f"{fn}: x must be NHWC (N, H, W, C) or one example (H, W, C), got shape {x.shape}")
    window = _pair(fn, "window", window)
    stride = window if stride is None else _pair(fn, "stride", stride)
    if window[0] * window[1] > 255:
        raise ValueError(f"{fn}: window {window} has more than 255 elements; use a smaller window")
    spatial = x.shape[-3:-1]
    if window[0] > spatial[0] or window[1] > spatial[1]:
        raise ValueError(f"{fn}: window {window} is larger than the input's spatial shape {spatial} (x: {x.shape})")
    return x, window, stride


def _batched(core, x, window, stride):
    if x.ndim == 3:
        return core(x[None], window, stride)[0]
    return core(x, window, stride)


@implements(_MAX_POOL2D)
def max_pool2d(x, window, stride=None) -> jax.Array:
    """Max over each ``window`` (VALID), NHWC; backward routes ḡ to the maximum.

    Ties: the first maximum of a window in row-major order takes the whole gradient.
    Keeps one uint8 per output element (the offset of the maximum).

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      window: an int or ``(kh, kw)``, static.
      stride: an int or ``(sh, sw)``; defaults to the window (non-overlapping).

    Returns:
      ``(N, (H − kh) // sh + 1, (W − kw) // sw + 1, C)``.
    """
    x, window, stride = _pool_args("max_pool2d", x, window, stride)
    return _batched(_MAX_POOL2D.core, x, window, stride)


@implements(_AVG_POOL2D)
def avg_pool2d(x, window, stride=None) -> jax.Array:
    """Mean over each ``window`` (VALID), NHWC; backward spreads ḡ / (kh·kw) evenly.

    Keeps nothing but the input's shape. Arguments as in :func:`max_pool2d`.
    """
    x, window, stride = _pool_args("avg_pool2d", x, window, stride)
    return _batched(_AVG_POOL2D.core, x, window, stride)
