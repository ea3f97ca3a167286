"""2-D convolution (NHWC input, HWIO kernel) and its hand-derived backward.

Forward, per output position (y, x) and output channel o, with stride s, kernel
dilation d and the input zero-padded by (p_lo, p_hi) on each spatial axis:

    F[n, y, x, o] = β_o + Σ_{i, j, c} X_pad[n, s·y + d·i, s·x + d·j, c] K[i, j, c, o]

Backward, with Δ = ∂L/∂F, each part one ``lax`` convolution:

    X̄ = dilate(Δ, s) ⋆ flip(K)ᵀ        a transposed convolution: Δ with s − 1 zeros
                                        between its entries, correlated with the
                                        spatially flipped kernel (dilated by d), in/out
                                        swapped, padded by k' − 1 − p_lo and
                                        k' − 1 − p_hi + r
    K̄[i, j] = Σ_{n, y, x} X_pad[n, s·y + d·i, s·x + d·j] ⊗ Δ[n, y, x]
                                        a correlation of the input with Δ, the batch
                                        axis contracted
    β̄ = Σ_{n, y, x} Δ

where k' = d·(k − 1) + 1 is the dilated kernel's extent and
r = (H + p_lo + p_hi − k') mod s counts the input rows that no window reaches (they
get zero gradient). No ``jax.vjp``: these are the formulas, written with
``lax.conv_general_dilated``.

Every convolution here is in the canonical NHWC/HWIO layout; the kernel gradient
transposes its operands to get there (c_in becomes the batch, n the features).
XLA:CPU brings other dimension numbers to its fast kernels only in the entry
computation, not inside a loop body such as a training epoch's ``lax.scan``, where a
non-canonical convolution runs as a naive loop nest 5 to 24 times slower
(jax-ml/jax#12868; measured in ``experiments/conv_budget.py``).

Dtypes (DESIGN §7): every convolution accumulates in float32 at least
(``preferred_element_type``; bfloat16 and float16 go through float32, float32 and
float64 stay as they are), the bias is added and summed in that dtype, the output comes
back in x's dtype and each cotangent in its own primal's dtype. The twin makes the same
casts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from funcprop.rules._core import accumulation_dtype, as_float_array, custom_rule, implements, require_same_dtype
from funcprop.rules._spatial import check_fits, explicit_padding, padding_spec, pair

_NHWC = ("NHWC", "HWIO", "NHWC")


def extent(k: int, d: int) -> int:
    """k' = d·(k − 1) + 1: the span of a k-tap kernel dilated by d."""
    return d * (k - 1) + 1


def conv_static(fn: str, spatial, window, stride, padding, dilation):
    """Normalize conv2d's static arguments: (stride, explicit pads, dilation) pairs."""
    stride, dilation = pair(fn, "stride", stride), pair(fn, "dilation", dilation)
    span = tuple(extent(k, d) for k, d in zip(window, dilation))
    return stride, explicit_padding(padding_spec(fn, padding), spatial, span, stride), dilation


def conv2d_twin(x, kernel, bias, stride=1, padding="VALID", dilation=1):
    """Plain twin of :func:`conv2d`: ``lax.conv_general_dilated`` plus the bias."""
    if x.ndim == 3:
        return conv2d_twin(x[None], kernel, bias, stride, padding, dilation)[0]
    stride, pads, dilation = conv_static("conv2d", x.shape[1:3], kernel.shape[:2], stride, padding, dilation)
    acc = accumulation_dtype(x.dtype)
    out = lax.conv_general_dilated(
        x, kernel, stride, pads, rhs_dilation=dilation, dimension_numbers=_NHWC, preferred_element_type=acc
    )
    return (out + bias.astype(acc)).astype(x.dtype)


def _conv2d_fwd(x, kernel, bias, stride, padding, dilation):
    return conv2d_twin(x, kernel, bias, stride, padding, dilation), (x, kernel)


def _conv2d_bwd(stride, padding, dilation, res, delta):
    """X̄ = dilate(Δ, s) ⋆ flip(K)ᵀ,  K̄ = X_pad ⋆ dilate(Δ, s),  β̄ = Σ Δ."""
    x, kernel = res
    acc = accumulation_dtype(x.dtype)
    span = [extent(k, d) for k, d in zip(kernel.shape[:2], dilation)]
    r = [(n + p[0] + p[1] - k) % s for n, k, s, p in zip(x.shape[1:3], span, stride, padding)]
    # input: correlate the s-dilated Δ with the flipped kernel, I and O swapped
    flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)  # (kh, kw, c_out, c_in)
    x_pad = [(k - 1 - p[0], k - 1 - p[1] + ri) for k, p, ri in zip(span, padding, r)]
    x_bar = lax.conv_general_dilated(
        delta,
        flipped,
        (1, 1),
        x_pad,
        lhs_dilation=stride,
        rhs_dilation=dilation,
        dimension_numbers=_NHWC,
        preferred_element_type=acc,
    )
    # kernel: c_in becomes the batch, n the contracted features, Δ a kernel dilated by s
    k_pad = [(p[0], p[1] - ri) for p, ri in zip(padding, r)]
    k_bar = lax.conv_general_dilated(
        jnp.transpose(x, (3, 1, 2, 0)),  # (c_in, H, W, N)
        jnp.transpose(delta, (1, 2, 0, 3)),  # (H_out, W_out, N, c_out)
        dilation,
        k_pad,
        rhs_dilation=stride,
        dimension_numbers=_NHWC,
        preferred_element_type=acc,
    )  # (c_in, kh, kw, c_out)
    k_bar = jnp.transpose(k_bar, (1, 2, 0, 3))
    b_bar = jnp.sum(delta, axis=(0, 1, 2), dtype=acc)
    # bias has the kernel's dtype: conv2d's prepare requires one dtype
    return x_bar.astype(x.dtype), k_bar.astype(kernel.dtype), b_bar.astype(kernel.dtype)


def conv2d_args(x, kernel, bias, stride=1, padding="VALID", dilation=1):
    """conv2d's one place of validation: arrays, shapes, dtypes and static arguments.

    Returns ``(x, kernel, bias, stride, pads, dilation)`` with explicit pads, ready for
    the rule's core, its fwd and its twin.
    """
    fn = "conv2d"
    x = as_float_array(fn, "x", x)
    kernel = as_float_array(fn, "kernel", kernel)
    bias = as_float_array(fn, "bias", bias)
    if x.ndim not in (3, 4):
        raise ValueError(f"{fn}: x must be NHWC (N, H, W, C_in) or one example (H, W, C_in), got shape {x.shape}")
    if kernel.ndim != 4 or 0 in kernel.shape[:2]:
        raise ValueError(f"{fn}: kernel must be HWIO (kh, kw, C_in, C_out) with kh, kw >= 1, got shape {kernel.shape}")
    if kernel.shape[2] != x.shape[-1]:
        raise ValueError(
            f"{fn}: x has {x.shape[-1]} channels (shape {x.shape}) but kernel has shape {kernel.shape}; "
            f"the kernel must be (kh, kw, {x.shape[-1]}, C_out)"
        )
    if bias.shape != (kernel.shape[3],):
        raise ValueError(
            f"{fn}: bias has shape {bias.shape} but kernel has shape {kernel.shape}; bias must be ({kernel.shape[3]},)"
        )
    require_same_dtype(fn, x=x, kernel=kernel, bias=bias)
    spatial = x.shape[-3:-1]
    stride, pads, dilation = conv_static(fn, spatial, kernel.shape[:2], stride, padding, dilation)
    span = tuple(extent(k, d) for k, d in zip(kernel.shape[:2], dilation))
    check_fits(fn, "kernel" if span == kernel.shape[:2] else "dilated kernel", spatial, span, pads, x.shape)
    return x, kernel, bias, stride, pads, dilation


_CONV2D = custom_rule(conv2d_twin, _conv2d_fwd, _conv2d_bwd, prepare=conv2d_args, nondiff_argnums=(3, 4, 5))


@implements(_CONV2D)
def conv2d(x, kernel, bias, stride=1, padding="VALID", dilation=1) -> jax.Array:
    """2-D convolution (cross-correlation, as in every deep-learning library) plus bias.

    Backward (see the module docstring): the input cotangent is a transposed
    convolution of Δ, dilated by the stride, with the flipped kernel; the kernel
    cotangent a correlation of the padded input with Δ; the bias cotangent Σ Δ over
    batch and space. Keeps x and the kernel. bfloat16 and float16 accumulate in
    float32 and return their own dtype.

    Args:
      x: ``(N, H, W, C_in)``, NHWC; or ``(H, W, C_in)`` for one example.
      kernel: ``(kh, kw, C_in, C_out)``, HWIO.
      bias: ``(C_out,)``.
      stride: an int or ``(sh, sw)``, static.
      padding: ``"VALID"``, ``"SAME"``, an int, a pair of ints (symmetric per axis) or
        ``((top, bottom), (left, right))``, static.
      dilation: an int or ``(dh, dw)``: gaps between the kernel's taps
        (``rhs_dilation``), static.

    Returns:
      ``(N, H_out, W_out, C_out)`` with ``H_out = (H + top + bottom − k') // sh + 1``
      and ``k' = dh·(kh − 1) + 1``.
    """
    x, kernel, bias, stride, pads, dilation = conv2d_args(x, kernel, bias, stride, padding, dilation)
    if x.ndim == 3:
        return _CONV2D.core(x[None], kernel, bias, stride, pads, dilation)[0]
    return _CONV2D.core(x, kernel, bias, stride, pads, dilation)
