"""Static arguments of the spatial rules (conv2d, the pools), normalized in one place.

Windows, strides and dilations are pairs of positive ints; padding is ``"VALID"``,
``"SAME"``, one int (every side), a pair of ints (symmetric per axis, as PyTorch's
``padding=(1, 2)``) or explicit pairs ``((top, bottom), (left, right))``, as Flax
accepts it. :func:`padding_spec` checks a padding once, where it is given (a rule's
wrapper, a layer's constructor); :func:`explicit_padding` turns it into pairs for one
input size.
"""

from __future__ import annotations

from funcprop.rules._core import is_int

Pair = tuple[int, int]
Padding = str | tuple[Pair, Pair]


def pair(fn: str, name: str, value) -> Pair:
    """``value`` as ``(h, w)`` of positive ints; an int means the same on both axes."""
    got = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else None
    if got is None or len(got) != 2 or not all(is_int(v, 1) for v in got):
        raise ValueError(f"{fn}: {name} must be a positive int or a pair of them, got {value!r}")
    return got


def window_and_stride(fn: str, window, stride) -> tuple[Pair, Pair]:
    """A pool's ``(window, stride)`` as pairs; ``stride=None`` means the window
    (non-overlapping windows)."""
    window = pair(fn, "window", window)
    return window, window if stride is None else pair(fn, "stride", stride)


def padding_spec(fn: str, padding) -> Padding:
    """``"VALID"``/``"SAME"`` (upper case) or ``((top, bottom), (left, right))`` of ints >= 0."""
    if isinstance(padding, str) and padding.upper() in ("VALID", "SAME"):
        return padding.upper()
    if is_int(padding, 0):
        return ((padding, padding), (padding, padding))
    if isinstance(padding, (tuple, list)) and len(padding) == 2:
        if all(is_int(p, 0) for p in padding):
            return ((padding[0], padding[0]), (padding[1], padding[1]))
        if all(isinstance(p, (tuple, list)) and len(p) == 2 and all(is_int(v, 0) for v in p) for p in padding):
            return (tuple(padding[0]), tuple(padding[1]))
    raise ValueError(
        f"{fn}: padding must be 'VALID', 'SAME', an int, a pair of ints (per axis) or "
        f"((top, bottom), (left, right)) of ints >= 0, got {padding!r}"
    )


def same_padding(size: int, k: int, s: int) -> Pair:
    """SAME: output ``ceil(size / s)``, the padding split low-first as in XLA/TensorFlow."""
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def explicit_padding(spec: Padding, spatial, window, stride) -> tuple[Pair, Pair]:
    """A :func:`padding_spec` as pairs for this input size; ``window`` is the effective
    (dilated) window."""
    if spec == "VALID":
        return ((0, 0), (0, 0))
    if spec == "SAME":
        return tuple(same_padding(n, k, s) for n, k, s in zip(spatial, window, stride))
    return spec


def out_size(size: int, k: int, s: int, pad: Pair) -> int:
    """Windows along one axis: ``(size + lo + hi − k) // s + 1``."""
    return (size + pad[0] + pad[1] - k) // s + 1


def check_fits(fn: str, what: str, spatial, window, pads, shape) -> None:
    """ValueError if the (padded) input is smaller than the window along an axis."""
    for axis, n, k, (lo, hi) in zip(("height", "width"), spatial, window, pads):
        if n + lo + hi < k:
            raise ValueError(
                f"{fn}: the {what} {tuple(window)} is larger than the padded input {tuple(spatial)} "
                f"(padding {pads}, x: {shape}) along the {axis}; use a smaller {what} or more padding"
            )
