"""Max and average pooling over NHWC windows, with hand-derived backwards.

The input is first padded (−∞ for max, 0 for average) by the explicit pads of
``padding``; the windows then tile the padded input as in VALID pooling. Both
backwards are written as a sum over the window's offsets (i, j): the cotangent of every
window is sent back to the padded-input position ``(s·y + i, s·x + j)`` by ``lax.pad``
with interior padding (s − 1 zeros between entries), so overlapping windows
(stride < window) add up, positions no window covers get zero, and the pad's share is
sliced off at the end.

- average: each of the kh·kw positions of a window gets ``ḡ / c``, with c = kh·kw
  (``count_include_pad=True``, as Flax and PyTorch default to) or the number of real
  inputs in that window (``count_include_pad=False``);
- max: the whole ``ḡ`` goes to the window's maximum. Ties: the *first* maximum in
  row-major order within the window (smallest i, then smallest j) takes it all, the
  others get zero. A NaN counts as a window's maximum (the output is NaN), so the
  first NaN takes it. The residual is that offset, one uint8 per output element.

Dtypes (DESIGN §7): the average's window sums and both backwards' sums over the
offsets (overlapping windows add up) are computed in float32 at least (bfloat16 and
float16 go through float32, float32 and float64 stay); the output and x̄ come back in
x's dtype. The max itself is exact in any dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcprop.rules._core import accumulation_dtype, as_float_array, custom_rule, implements
from funcprop.rules._spatial import check_fits, explicit_padding, out_size, padding_spec, window_and_stride


def _offsets(window):
    return [(i, j) for i in range(window[0]) for j in range(window[1])]


def _window_slice(x, i, j, out_hw, stride):
    """x[:, s·y + i, s·x + j, :] for every output (y, x): ``(N, H_out, W_out, C)``."""
    (ho, wo), (sh, sw) = out_hw, stride
    return lax.slice(
        x, (0, i, j, 0), (x.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, x.shape[3]), (1, sh, sw, 1)
    )


def _scatter_to_input(v, i, j, in_hw, stride, pads):
    """The inverse placement of :func:`_window_slice` on the padded input, then the pad
    cut off: v at rows s·y + i − top, zeros elsewhere."""
    (h, w), (sh, sw), (ho, wo) = in_hw, stride, v.shape[1:3]
    (top, bottom), (left, right) = pads
    cfg = [
        (0, 0, 0),
        (i - top, h + top - i - sh * (ho - 1) - 1, sh - 1),
        (j - left, w + left - j - sw * (wo - 1) - 1, sw - 1),
        (0, 0, 0),
    ]
    return lax.pad(v, jnp.zeros((), v.dtype), cfg)


def _out_hw(in_hw, window, stride, pads):
    return tuple(out_size(n, k, s, p) for n, k, s, p in zip(in_hw, window, stride, pads))


def _pad(x, pads, value):
    (top, bottom), (left, right) = pads
    return lax.pad(x, jnp.asarray(value, x.dtype), [(0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)])


def pool_static(fn: str, spatial, window, stride, padding):
    """Normalize a pool's static arguments: (window, stride, explicit pads)."""
    window, stride = window_and_stride(fn, window, stride)
    return window, stride, explicit_padding(padding_spec(fn, padding), spatial, window, stride)


def _one_example_too(pool):
    """Let a twin taking (N, H, W, C) take (H, W, C) as well."""

    @functools.wraps(pool)  # the signature too, which custom_vjp binds arguments by
    def twin(x, *args, **kwargs):
        return pool(x[None], *args, **kwargs)[0] if x.ndim == 3 else pool(x, *args, **kwargs)

    return twin


# --- max_pool2d ----------------------------------------------------------------------


def _first_maximum(x, window, stride, pads):
    """(value, offset) of each window's first maximum in row-major order, over the
    input padded with −∞. ``jnp.argmax`` counts NaN as the maximum, so a window holding
    a NaN gives NaN and routes ḡ to its first NaN."""
    out_hw = _out_hw(x.shape[1:3], window, stride, pads)
    xp = _pad(x, pads, -jnp.inf)
    patches = jnp.stack([_window_slice(xp, i, j, out_hw, stride) for i, j in _offsets(window)])
    arg = jnp.argmax(patches, axis=0)
    return jnp.take_along_axis(patches, arg[None], axis=0)[0], arg


@_one_example_too
def max_pool2d_twin(x, window, stride=None, padding="VALID"):
    """Plain twin of :func:`max_pool2d`: each window's element at its first maximum
    (``argmax`` over the window, then a gather), so autodiff routes ḡ as the rule does.

    ``lax.reduce_window`` with ``max`` gives the same values (``tests/test_conv.py``
    checks it) and, differentiated, the same ḡ except where a window holds a NaN: there
    XLA's select sends ḡ to an element that depends on the NaN's position.
    """
    window, stride, pads = pool_static("max_pool2d", x.shape[1:3], window, stride, padding)
    return _first_maximum(x, window, stride, pads)[0]


def _max_pool2d_fwd(x, window, stride, pads):
    out, arg = _first_maximum(x, window, stride, pads)
    return out, (arg.astype(jnp.uint8), x.shape[1:3])  # uint8: pool_args caps a window at 255


def _max_pool2d_bwd(window, stride, pads, res, g):
    """x̄ = Σ_(i,j) place(ḡ ⊙ [argmax = (i, j)]): all of ḡ to the first maximum."""
    arg, in_hw = res
    wide = g.astype(accumulation_dtype(g.dtype))  # overlapping windows add up
    x_bar = sum(
        _scatter_to_input(jnp.where(arg == k, wide, 0), i, j, in_hw, stride, pads)
        for k, (i, j) in enumerate(_offsets(window))
    )
    return (x_bar.astype(g.dtype),)


def _max_pool2d_args(x, window, stride=None, padding="VALID"):
    return pool_args("max_pool2d", x, window, stride, padding)


_MAX_POOL2D = custom_rule(
    max_pool2d_twin, _max_pool2d_fwd, _max_pool2d_bwd, nondiff_argnums=(1, 2, 3), prepare=_max_pool2d_args
)


# --- avg_pool2d ----------------------------------------------------------------------


def _window_counts(in_hw, window, stride, pads, count_include_pad: bool) -> np.ndarray:
    """c per output position ``(H_out, W_out, 1)``: kh·kw, or the real inputs it covers."""
    out_hw = _out_hw(in_hw, window, stride, pads)
    if count_include_pad:
        return np.full((*out_hw, 1), window[0] * window[1], np.float64)
    per_axis = []
    for n, k, s, (lo, _), m in zip(in_hw, window, stride, pads, out_hw):
        start = s * np.arange(m) - lo  # the window's first row, in input coordinates
        per_axis.append(np.minimum(start + k, n) - np.maximum(start, 0))
    return np.outer(*per_axis)[..., None].astype(np.float64)


@_one_example_too
def avg_pool2d_twin(x, window, stride=None, padding="VALID", count_include_pad=True):
    """Plain twin of :func:`avg_pool2d`: a window sum divided by the window's count, in
    float32 at least."""
    window, stride, pads = pool_static("avg_pool2d", x.shape[1:3], window, stride, padding)
    wide = x.astype(accumulation_dtype(x.dtype))
    zero = np.zeros((), wide.dtype)  # a concrete identity, so XLA sees a window sum JAX can differentiate
    summed = lax.reduce_window(wide, zero, lax.add, (1, *window, 1), (1, *stride, 1), ((0, 0), *pads, (0, 0)))
    counts = _window_counts(x.shape[1:3], window, stride, pads, count_include_pad).astype(wide.dtype)
    return (summed / counts).astype(x.dtype)


def _avg_pool2d_fwd(x, window, stride, pads, count_include_pad):
    return avg_pool2d_twin(x, window, stride, pads, count_include_pad), x.shape[1:3]


def _avg_pool2d_bwd(window, stride, pads, count_include_pad, in_hw, g):
    """x̄ = Σ_(i,j) place(ḡ / c): every input of a window gets an equal share."""
    wide = g.astype(accumulation_dtype(g.dtype))
    share = wide / _window_counts(in_hw, window, stride, pads, count_include_pad).astype(wide.dtype)
    x_bar = sum(_scatter_to_input(share, i, j, in_hw, stride, pads) for i, j in _offsets(window))
    return (x_bar.astype(g.dtype),)


def _avg_pool2d_args(x, window, stride=None, padding="VALID", count_include_pad=True):
    if not isinstance(count_include_pad, bool):
        raise TypeError(f"avg_pool2d: count_include_pad must be True or False, got {count_include_pad!r}")
    return (*pool_args("avg_pool2d", x, window, stride, padding), count_include_pad)


_AVG_POOL2D = custom_rule(
    avg_pool2d_twin, _avg_pool2d_fwd, _avg_pool2d_bwd, nondiff_argnums=(1, 2, 3, 4), prepare=_avg_pool2d_args
)


# --- the public wrappers ------------------------------------------------------------------


def pool_args(fn: str, x, window, stride, padding):
    """A pool's one place of validation: returns ``(x, window, stride, pads)``."""
    x = as_float_array(fn, "x", x)
    if x.ndim not in (3, 4):
        raise ValueError(f"{fn}: x must be NHWC (N, H, W, C) or one example (H, W, C), got shape {x.shape}")
    spatial = x.shape[-3:-1]
    window, stride, pads = pool_static(fn, spatial, window, stride, padding)
    if window[0] * window[1] > 255:
        raise ValueError(f"{fn}: window {window} has more than 255 elements; use a smaller window")
    for k, (lo, hi) in zip(window, pads):
        if lo >= k or hi >= k:
            raise ValueError(
                f"{fn}: padding {pads} must be smaller than the window {window} on every side, so that no "
                f"window holds only padding; use less padding"
            )
    check_fits(fn, "window", spatial, window, pads, x.shape)
    return x, window, stride, pads


def _batched(core, x, *static):
    if x.ndim == 3:
        return core(x[None], *static)[0]
    return core(x, *static)


@implements(_MAX_POOL2D)
def max_pool2d(x, window, stride=None, padding="VALID") -> jax.Array:
    """Max over each ``window``, NHWC; backward routes ḡ to the maximum.

    Ties: the first maximum of a window in row-major order takes the whole gradient;
    a NaN counts as the maximum (the output is NaN and the first NaN takes ḡ).
    Padding is −∞ (it never wins over a real input). Keeps one uint8 per output
    element (the offset of the maximum).

    Args:
      x: ``(N, H, W, C)`` or ``(H, W, C)``.
      window: an int or ``(kh, kw)``, static.
      stride: an int or ``(sh, sw)``; defaults to the window (non-overlapping).
      padding: ``"VALID"``, ``"SAME"``, an int, a pair of ints (symmetric per axis) or
        ``((top, bottom), (left, right))``; each side smaller than the window.

    Returns:
      ``(N, (H + top + bottom − kh) // sh + 1, (W + left + right − kw) // sw + 1, C)``.
    """
    return _batched(_MAX_POOL2D.core, *_MAX_POOL2D.prepare(x, window, stride, padding))


@implements(_AVG_POOL2D)
def avg_pool2d(x, window, stride=None, padding="VALID", count_include_pad=True) -> jax.Array:
    """Mean over each ``window``, NHWC; backward spreads ḡ / c evenly over the window.

    The padding is zeros. ``count_include_pad=True`` (the default, as in Flax and
    PyTorch) divides every window by c = kh·kw; ``False`` by the number of real inputs
    in the window. Keeps nothing but the input's shape. Other arguments as in
    :func:`max_pool2d`.
    """
    return _batched(_AVG_POOL2D.core, *_AVG_POOL2D.prepare(x, window, stride, padding, count_include_pad))
