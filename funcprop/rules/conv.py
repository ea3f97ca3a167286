"""2-D convolution (NHWC input, HWIO kernel) and its hand-derived backward.

Forward, per output position (y, x) and output channel o, with stride s and the input
zero-padded by (p_lo, p_hi) on each spatial axis:

    F[n, y, x, o] = β_o + Σ_{i, j, c} X_pad[n, s·y + i, s·x + j, c] K[i, j, c, o]

Backward, with Δ = ∂L/∂F, each part one ``lax`` convolution:

    X̄ = Δ (dilated by s) ⋆ flip(K)ᵀ        a transposed convolution: Δ with s − 1 zeros
                                             between its entries, correlated with the
                                             spatially flipped kernel, in/out swapped,
                                             padded by k − 1 − p_lo and k − 1 − p_hi + r
    K̄ = X_pad ⋆ Δ (as a dilated kernel)     a correlation of the input with Δ, the batch
                                             axis contracted
    β̄ = Σ_{n, y, x} Δ

where r = (H + p_lo + p_hi − k) mod s counts the input rows that no window reaches
(they get zero gradient). No ``jax.vjp``: these are the formulas, written with
``lax.conv_general_dilated``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from funcprop.rules._core import as_float_array, custom_rule, implements, require_same_dtype

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv2d_twin(x, kernel, bias, stride=1, padding="VALID"):
    """Plain twin of :func:`conv2d`: ``lax.conv_general_dilated`` plus the bias."""
    if x.ndim == 3:
        return conv2d_twin(x[None], kernel, bias, stride, padding)[0]
    stride = _pair("conv2d", "stride", stride)
    pads = resolve_padding("conv2d", padding, x.shape[1:3], kernel.shape[:2], stride)
    return lax.conv_general_dilated(x, kernel, stride, pads, dimension_numbers=_NHWC) + bias


def _conv2d_fwd(x, kernel, bias, stride, padding):
    return conv2d_twin(x, kernel, bias, stride, padding), (x, kernel)


def _uncovered(size, k, s, pad) -> int:
    """r: input rows past the last window, (H + p_lo + p_hi − k) mod s."""
    return (size + pad[0] + pad[1] - k) % s


def _conv2d_bwd(stride, padding, res, delta):
    """X̄ = dilate(Δ, s) ⋆ flip(K)ᵀ,  K̄ = X_pad ⋆ dilate(Δ, s),  β̄ = Σ Δ."""
    x, kernel = res
    kh, kw = kernel.shape[:2]
    r = [_uncovered(n, k, s, p) for n, k, s, p in zip(x.shape[1:3], (kh, kw), stride, padding)]
    # input: correlate the s-dilated Δ with the flipped kernel, I and O swapped
    flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)  # (kh, kw, c_out, c_in)
    x_pad = [(k - 1 - p[0], k - 1 - p[1] + ri) for k, p, ri in zip((kh, kw), padding, r)]
    x_bar = lax.conv_general_dilated(delta, flipped, (1, 1), x_pad, lhs_dilation=stride, dimension_numbers=_NHWC)
    # kernel: batch becomes the contracted axis, c_in the batch, Δ a kernel dilated by s
    k_pad = [(p[0], p[1] - ri) for p, ri in zip(padding, r)]
    k_bar = lax.conv_general_dilated(
        x, delta, (1, 1), k_pad, rhs_dilation=stride, dimension_numbers=("CHWN", "IHWO", "HWNC")
    )
    return x_bar, k_bar, jnp.sum(delta, axis=(0, 1, 2))


_CONV2D = custom_rule(conv2d_twin, _conv2d_fwd, _conv2d_bwd, nondiff_argnums=(3, 4))


def _pair(fn: str, name: str, value) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise ValueError(f"{fn}: {name} must be a positive int or a pair of them, got {value!r}")
    return pair


def same_padding(size: int, k: int, s: int) -> tuple[int, int]:
    """SAME: output ceil(size / s), the padding split low-first as in XLA/TensorFlow."""
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def resolve_padding(fn: str, padding, spatial, window, stride) -> tuple:
    """``"VALID"``, ``"SAME"`` or ``((top, bottom), (left, right))`` as explicit pairs."""
    if isinstance(padding, str) and padding.upper() in ("VALID", "SAME"):
        if padding.upper() == "VALID":
            return ((0, 0), (0, 0))
        return tuple(same_padding(n, k, s) for n, k, s in zip(spatial, window, stride))
    try:
        pads = tuple(tuple(pair) for pair in padding)
    except TypeError:
        pads = ()
    ok = len(pads) == 2 and all(
        len(pair) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pair) for pair in pads
    )
    if not ok:
        raise ValueError(
            f"{fn}: padding must be 'VALID', 'SAME' or ((top, bottom), (left, right)) of ints >= 0, "
            f"got {padding!r}"
        )
    return pads


@implements(_CONV2D)
def conv2d(x, kernel, bias, stride=1, padding="VALID") -> jax.Array:
    """2-D convolution (cross-correlation, as in every deep-learning library) plus bias.

    Backward (see the module docstring): the input cotangent is a transposed
    convolution of Δ, dilated by the stride, with the flipped kernel; the kernel
    cotangent a correlation of the padded input with Δ; the bias cotangent Σ Δ over
    batch and space. Keeps x and the kernel.

    Args:
      x: ``(N, H, W, C_in)``, NHWC; or ``(H, W, C_in)`` for one example.
      kernel: ``(kh, kw, C_in, C_out)``, HWIO.
      bias: ``(C_out,)``.
      stride: an int or ``(sh, sw)``, static.
      padding: ``"VALID"``, ``"SAME"`` or ``((top, bottom), (left, right))``, static.

    Returns:
      ``(N, H_out, W_out, C_out)`` with ``H_out = (H + top + bottom − kh) // sh + 1``.
    """
    fn = "conv2d"
    x = as_float_array(fn, "x", x)
    kernel = as_float_array(fn, "kernel", kernel)
    bias = as_float_array(fn, "bias", bias)
    if x.ndim not in (3, 4):
        raise ValueError(f"{fn}: x must be NHWC (N, H, W, C_in) or one example (H, W, C_in), got shape {x.shape}")
    if kernel.ndim != 4:
        raise ValueError(f"{fn}: kernel must be HWIO (kh, kw, C_in, C_out), got shape {kernel.shape}")
    if kernel.shape[2] != x.shape[-1]:
        raise ValueError(
            f"{fn}: x has {x.shape[-1]} channels (shape {x.shape}) but kernel has shape {kernel.shape}; "
            f"the kernel must be (kh, kw, {x.shape[-1]}, C_out)"
        )
    if bias.shape != (kernel.shape[3],):
        raise ValueError(f"{fn}: bias has shape {bias.shape} but kernel has shape {kernel.shape}; bias must be ({kernel.shape[3]},)")
    require_same_dtype(fn, x=x, kernel=kernel, bias=bias)
    stride = _pair(fn, "stride", stride)
    spatial, window = x.shape[-3:-1], kernel.shape[:2]
    pads = resolve_padding(fn, padding, spatial, window, stride)
    for axis, n, k, (lo, hi) in zip(("height", "width"), spatial, window, pads):
        if n + lo + hi < k:
            raise ValueError(
                f"{fn}: the kernel {kernel.shape[:2]} is larger than the padded input {spatial} "
                f"(padding {pads}) along the {axis}; use a smaller kernel or more padding"
            )
    if x.ndim == 3:
        return _CONV2D.core(x[None], kernel, bias, stride, pads)[0]
    return _CONV2D.core(x, kernel, bias, stride, pads)
