"""Hypothesis strategies for adversarial arrays: shapes, dtypes and values.

For fuzzing rules, layers and gradient checks with the inputs that break numerical
code: ranks 0 to 5, empty axes, shapes one edit away from the expected one, every dtype
family (float16, bfloat16, float32, float64, integers, bool, complex), and NaN, ±Inf,
±1e30, the dtype's extremes and subnormals::

    from hypothesis import given
    from funcprop.testing import strategies as fst

    @given(fst.arrays(dtype=fst.float_dtypes(), shape=fst.shapes(0, 3), elements="adversarial"))
    def test_relu_keeps_nan(x): ...

``elements`` selects the values, for every dtype family alike:

- ``"normal"``: standard normal draws from a seed Hypothesis picks (cheap for any size;
  small ints for integer dtypes, fair coins for bool);
- ``"moderate"``: every element drawn by Hypothesis from [-4, 4] (it shrinks them);
- ``"finite"``: any finite value of the dtype, its extremes and subnormals included;
- ``"adversarial"``: normal values with a few positions set to :func:`special_values`
  (NaN, ±Inf, ±1e30 or the dtype's largest finite value, subnormals, ±0);
- or any strategy of Python scalars.

Arrays come back as ``jax.Array`` of exactly the drawn dtype. 64-bit dtypes are offered
only while ``jax_enable_x64`` is on (without it JAX would silently make them 32-bit).

Hypothesis is a test dependency (the ``test`` extra): this module imports it, and
nothing else in funcprop imports this module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "funcprop.testing.strategies needs hypothesis, a test dependency: "
        "pip install 'funcprop[test]' (or pip install hypothesis)"
    ) from e

__all__ = [
    "DTYPE_KINDS",
    "arrays",
    "dtypes",
    "elements",
    "float_dtypes",
    "mismatched_shapes",
    "shapes",
    "special_values",
]

DTYPE_KINDS: dict[str, tuple[np.dtype, ...]] = {
    "float": tuple(np.dtype(d) for d in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)),
    "int": tuple(np.dtype(d) for d in (np.int8, np.uint8, np.int16, np.int32, np.int64)),
    "bool": (np.dtype(bool),),
    "complex": (np.dtype(np.complex64), np.dtype(np.complex128)),
}
"""The dtypes :func:`dtypes` draws from, by family."""

HUGE = 1e30
"""The "huge but finite" magnitude of :func:`special_values` (the dtype's largest finite
value where that is smaller, as for float16)."""


def _available(dtype: np.dtype) -> bool:
    """False for a 64-bit dtype (float64, int64, complex128) while x64 is off."""
    wide = dtype.itemsize == 16 if dtype.kind == "c" else dtype.itemsize == 8
    return not wide or bool(jax.config.jax_enable_x64)


def dtypes(*kinds: str) -> st.SearchStrategy[np.dtype]:
    """NumPy dtypes of the given families (``"float"``, ``"int"``, ``"bool"``,
    ``"complex"``; all of them by default). Shrinks towards float16, the first.

    64-bit dtypes (float64, int64, complex128) only with ``jax_enable_x64`` on.
    """
    unknown = set(kinds) - set(DTYPE_KINDS)
    if unknown:
        raise ValueError(f"dtypes: unknown kinds {sorted(unknown)}; use some of {list(DTYPE_KINDS)}")
    chosen = [d for kind in (kinds or DTYPE_KINDS) for d in DTYPE_KINDS[kind] if _available(d)]
    return st.sampled_from(chosen)


def float_dtypes() -> st.SearchStrategy[np.dtype]:
    """float16, bfloat16, float32 and (with x64) float64."""
    return dtypes("float")


def shapes(
    min_rank: int = 0, max_rank: int = 5, *, allow_empty: bool = True, min_side: int = 1, max_side: int = 4
) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes of rank ``min_rank`` to ``max_rank`` with sides up to ``max_side``.

    With ``allow_empty`` (the default) any side may be 0, so an empty batch, feature or
    class axis turns up; otherwise sides are at least ``min_side``. Shrinks towards the
    lowest rank and the smallest sides.
    """
    if not 0 <= min_rank <= max_rank:
        raise ValueError(f"shapes: need 0 <= min_rank <= max_rank, got {min_rank}, {max_rank}")
    sides = st.integers(0 if allow_empty else min_side, max_side)
    return st.lists(sides, min_size=min_rank, max_size=max_rank).map(tuple)


def mismatched_shapes(shape, *, max_rank: int = 5, max_side: int = 4) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes one edit away from ``shape``, never ``shape`` itself: one axis resized (to
    0, 1, or one more or less), one axis inserted, or one axis removed. The near misses a
    shape check must catch, such as ``(B, 1)`` against ``(B,)``."""
    shape = tuple(shape)

    @st.composite
    def edit(draw):
        edits = ["insert"] if len(shape) < max_rank else []
        if shape:
            edits += ["resize", "remove"]
        kind = draw(st.sampled_from(edits))
        if kind == "insert":
            at, side = draw(st.integers(0, len(shape))), draw(st.integers(0, max_side))
            return shape[:at] + (side,) + shape[at:]
        at = draw(st.integers(0, len(shape) - 1))
        if kind == "remove":
            return shape[:at] + shape[at + 1 :]
        n = shape[at]
        side = draw(st.sampled_from(sorted({0, 1, n + 1, max(n - 1, 0)} - {n})))
        return shape[:at] + (side,) + shape[at + 1 :]

    return edit()


def special_values(dtype) -> tuple:
    """The values of ``dtype`` that numerical code gets wrong, simplest first.

    Floats: ±0, ±1, ±1e30 (or the dtype's largest finite value, if smaller), ± the
    largest finite value, the smallest normal, ± the smallest subnormal, ±Inf, NaN.
    Integers: 0, 1, −1, the extremes. Bool: False, True. Complex: the float values on
    the real and on the imaginary axis, and NaN + NaN·j.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return (False, True)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return tuple(sorted({0, 1, info.min, info.max} | ({-1} if info.min < 0 else set()), key=abs))
    if dtype.kind == "c":
        real = special_values(np.dtype(f"float{dtype.itemsize * 4}"))
        return tuple(complex(v, 0) for v in real) + tuple(complex(0, v) for v in real[2:]) + (complex("nan+nanj"),)
    info = jnp.finfo(dtype)
    biggest, huge = float(info.max), min(HUGE, float(info.max))
    return (
        0.0,
        -0.0,
        1.0,
        -1.0,
        huge,
        -huge,
        biggest,
        -biggest,
        float(info.tiny),
        float(info.smallest_subnormal),
        -float(info.smallest_subnormal),
        np.inf,
        -np.inf,
        np.nan,
    )


def elements(dtype, kind: str = "adversarial") -> st.SearchStrategy:
    """A strategy of Python scalars that ``dtype`` holds, elementwise (see the module
    docstring for ``kind``: ``"moderate"``, ``"finite"``, ``"adversarial"``).

    ``"adversarial"`` here is an even mixture of :func:`special_values` and finite
    values, one draw per element; :func:`arrays` with ``elements="adversarial"`` places a
    few specials among normal values instead, which keeps most of an array meaningful.
    """
    dtype = np.dtype(dtype)
    if kind not in ("moderate", "finite", "adversarial"):
        raise ValueError(f"elements: kind must be 'moderate', 'finite' or 'adversarial', got {kind!r}")
    if dtype.kind == "b":
        return st.booleans()
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if kind == "moderate":
            return st.integers(max(info.min, -3), min(info.max, 8))
        finite = st.integers(int(info.min), int(info.max))
    elif dtype.kind == "c":
        part = elements(np.dtype(f"float{dtype.itemsize * 4}"), "moderate" if kind == "moderate" else "finite")
        finite = st.builds(complex, part, part)
        if kind == "moderate":
            return finite
    else:
        if kind == "moderate":
            return st.floats(-4, 4, allow_subnormal=False)
        biggest = float(jnp.finfo(dtype).max)
        finite = st.floats(-biggest, biggest, allow_nan=False, allow_infinity=False)
    if kind == "finite":
        return finite
    return st.one_of(st.sampled_from(special_values(dtype)), finite)


def _carrier(dtype: np.dtype) -> np.dtype:
    """The NumPy dtype Hypothesis fills an array in before the cast to ``dtype``
    (bfloat16 is not a dtype Hypothesis knows)."""
    return {"b": np.dtype(bool), "i": np.dtype(np.int64), "u": np.dtype(np.int64), "c": np.dtype(np.complex128)}.get(
        dtype.kind, np.dtype(np.float64)
    )


def _normal(rng: np.random.Generator, dtype: np.dtype, shape) -> np.ndarray:
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(0 if dtype.kind == "u" else -3, 8, shape)
    if dtype.kind == "c":
        return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return rng.standard_normal(shape)


@st.composite
def _values(draw, dtype: np.dtype, shape, how):
    shape = tuple(shape)
    if isinstance(how, st.SearchStrategy) or how in ("moderate", "finite"):
        strategy = how if isinstance(how, st.SearchStrategy) else elements(dtype, how)
        return draw(hnp.arrays(_carrier(dtype), shape, elements=strategy))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = _normal(rng, dtype, shape).astype(_carrier(dtype))
    if how == "adversarial" and values.size:
        flat = values.reshape(-1)  # a view: setting flat sets values
        places = st.tuples(st.integers(0, flat.size - 1), st.sampled_from(special_values(dtype)))
        for i, v in draw(st.lists(places, min_size=1, max_size=min(4, flat.size))):
            flat[i] = v
    return values


def arrays(dtype=None, shape=None, *, elements="normal") -> st.SearchStrategy[jax.Array]:
    """``jax.Array`` s of ``dtype`` and ``shape``, with values chosen by ``elements``.

    Args:
      dtype: a dtype, or a strategy of them; by default :func:`dtypes` (every family).
      shape: a tuple, or a strategy of them; by default :func:`shapes` (rank 0 to 5,
        empty axes included).
      elements: ``"normal"``, ``"moderate"``, ``"finite"``, ``"adversarial"`` (see the
        module docstring) or a strategy of Python scalars.

    The values are drawn in float64 (int64, complex128, bool) and then cast to
    ``dtype``, so bfloat16 works and each value is rounded once.
    """
    if not isinstance(elements, st.SearchStrategy) and elements not in ("normal", "moderate", "finite", "adversarial"):
        raise ValueError(
            f"arrays: elements must be 'normal', 'moderate', 'finite', 'adversarial' or a strategy, got {elements!r}"
        )
    dtype_st = (
        dtype if isinstance(dtype, st.SearchStrategy) else dtypes() if dtype is None else st.just(np.dtype(dtype))
    )
    shape_st = shape if isinstance(shape, st.SearchStrategy) else shapes() if shape is None else st.just(tuple(shape))

    @st.composite
    def draw_array(draw):
        d, s = np.dtype(draw(dtype_st)), draw(shape_st)
        if not _available(d):
            raise ValueError(f"arrays: dtype {d} needs jax_enable_x64; without it JAX makes it 32-bit")
        with np.errstate(over="ignore", invalid="ignore"):  # ±1e30 cast to float16 is ±inf, as intended
            values = draw(_values(d, s, elements)).astype(d)
        return jnp.asarray(values, d)

    return draw_array()
