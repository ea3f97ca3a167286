"""Checking a rule in bfloat16 and float16: a trusted reference and a measured tolerance.

A rule and its reference both computed in bfloat16 agree to bfloat16's rounding, and a
fixed tolerance wide enough for that rounding (3e-2 on the scaled error) is wider than a
systematic bias: a gradient 5% too large everywhere scores 0.025. So for low-precision
leaves :func:`funcprop.check.check_vjp`

- computes the reference in float32 (float64 where enabled) on the same values: the
  inputs and cotangents upcast, not redrawn;
- measures how far the reference itself lands from that when it runs in the low dtype,
  ``e_low = max err(reference_low, reference_high)`` per leaf, and holds fn to
  ``tol = max(ROUNDING_FACTOR · e_low, ε)``, ε the dtype's machine epsilon (two units of rounding). Rounding passes
  (fn is about as far off as the reference), a bias of a few percent does not;
- replaces float64 finite differences, where float64 is off, by the Taylor remainder
  of fn's own forward in float32 (:func:`taylor_rows`), which needs no step size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from funcprop.check._report import CheckRow, max_scaled_error

LOW_DTYPES = ("bfloat16", "float16")
ROUNDING_FACTOR = 3.0
"""fn may be this many times further from the high-precision reference than the
reference run in the low dtype is. bfloat16 rounding scores about 0.001–0.005 on the
scaled error and a 2% bias about 0.01–0.016, so the factor must stay well below 7."""

TAYLOR_EPS = tuple(2.0**-k for k in range(1, 21))  # 0.5 down to 9.5e-7
TAYLOR_MIN_SLOPE = 1.5
TAYLOR_TAIL = 3  # slopes over the last pairs before the remainder reaches rounding
TAYLOR_RESOLVED = 32.0  # a remainder counts while above this many rounding errors


def is_low(dtype) -> bool:
    return jnp.dtype(dtype).name in LOW_DTYPES


def high_dtype() -> jnp.dtype:
    """float64 where enabled, else float32: the dtype the trusted reference runs in."""
    return jnp.dtype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)


def upcast(leaves, dtype) -> list:
    """Every floating leaf in ``dtype``, the same values; other leaves unchanged."""
    return [x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x for x in leaves]


def unit_roundoff(dtype) -> float:
    """Half the distance from 1 to the next value: 2⁻⁸ for bfloat16, 2⁻¹¹ for float16."""
    return float(jnp.finfo(dtype).eps) / 2


def measured_tolerance(reference_low, reference_high, dtype) -> float:
    """``max(ROUNDING_FACTOR · e_low, eps)`` for one leaf stacked over trials."""
    return max(ROUNDING_FACTOR * max_scaled_error(reference_low, reference_high), float(jnp.finfo(dtype).eps))


def _tail_slope(r: np.ndarray, noise: np.ndarray) -> float:
    """The steepest fall of log₂ r per halving of ε among the last TAYLOR_TAIL pairs
    before r reaches the rounding level (NaN if r never rises above it).

    A right gradient gives 2 (3 and more where fn is exactly quadratic, a drop to
    rounding where a kink stops being crossed); a wrong one 1, down to rounding.
    """
    resolved = r > TAYLOR_RESOLVED * noise
    if not resolved.any():
        return float("nan")
    if resolved.all():
        end = len(r) - 1
    else:  # the first unresolved point after the last resolved run begins
        first = int(np.argmax(resolved))
        later = np.nonzero(~resolved[first:])[0]
        end = first + int(later[0]) if later.size else len(r) - 1
    start = max(int(np.argmax(resolved)), end - TAYLOR_TAIL)
    if end <= start:
        return float("nan")
    floor = np.maximum(r, noise)
    slopes = np.log2(floor[start:end] / floor[start + 1 : end + 1])  # ε halves per step
    return float(slopes.max())


def taylor_rows(problem, fn, cts, key) -> tuple[list[CheckRow], list[str]]:
    """One row per float leaf: the Taylor remainder of fn in float32 falls as ε².

    For leaf k, trial t: φ(x) = ⟨c_t, fn(x)⟩, g = fn's VJP of c_t (its hand-written
    bwd), and a direction v in leaf k only (trial 0 along g itself, which exposes a
    uniform bias at any size; later trials random). Then

        r(ε) = |φ(x + εv) − φ(x) − ε ⟨g, v⟩| = O(ε²)   iff g is φ's gradient along v,

    for ε = 2⁻¹ … 2⁻²⁰. The row holds the worst trial's slope of log r against log ε
    in the tail, before r reaches float32 rounding; it fails below TAYLOR_MIN_SLOPE.
    Like finite differences, it needs fn smooth between x and x + εv: an input exactly
    at a kink (relu at 0) falls as ε.
    """
    f32 = jnp.float32
    diff, fixed = upcast(problem.diff, f32), problem.fixed
    cts32 = upcast(cts, f32)
    n_trials, eps = len(cts[0]), jnp.asarray(TAYLOR_EPS, f32)
    keys = jax.random.split(key, len(diff))
    results = _taylor_remainders(problem, fn, diff, fixed, cts32, eps, keys, n_trials)
    rows, notes = [], []
    for path, (r, noise) in zip(problem.paths, jax.device_get(results)):
        slopes = [_tail_slope(np.asarray(r[t], np.float64), np.asarray(noise[t], np.float64)) for t in range(n_trials)]
        finite = [s if np.isfinite(s) else np.inf for s in slopes]
        worst = int(np.argmin(finite))
        slope = slopes[worst]
        if not np.isfinite(slope):
            notes.append(f"taylor: the remainder for {path} stays at float32 rounding (fn is linear there)")
        deficit = 0.0 if not np.isfinite(slope) else max(0.0, 2.0 - slope)
        rows.append(
            CheckRow(
                "taylor",
                path,
                worst,
                (),
                2.0,
                slope,
                deficit,
                deficit,
                2.0 - TAYLOR_MIN_SLOPE,
                not (np.isfinite(slope) and slope < TAYLOR_MIN_SLOPE),
                f"slope of fn's float32 remainder, ε 2^-1…2^-{len(TAYLOR_EPS)}",
            )
        )
    return rows, notes


def _phi_and_norm(c, outs):
    """⟨c, f⟩ and ‖c ⊙ f‖₂ (the scale of φ's float32 rounding), summed over the outputs."""
    terms = [ci * oi for ci, oi in zip(c, outs)]
    return sum(jnp.sum(w) for w in terms), jnp.sqrt(sum(jnp.sum(w**2) for w in terms))


def _taylor_remainders(problem, fn, diff, fixed, cts, eps, keys, n_trials):
    """r(ε) and its rounding level, ``(n_trials, len(eps))`` each, for every float leaf."""

    @jax.jit
    def run(diff, fixed, cts, eps, keys):
        pullback = problem.pullback(fn)
        r, noise = [[] for _ in diff], [[] for _ in diff]
        for t in range(n_trials):
            c = [ct[t] for ct in cts]
            outs, grads = pullback(diff, fixed, c)  # once per trial, for every leaf
            phi0, norm0 = _phi_and_norm(c, outs)
            for k, (x_k, g) in enumerate(zip(diff, grads)):
                scale = jnp.sqrt(jnp.mean(x_k**2)) if x_k.size else 1.0
                scale = jnp.where(scale > 0, scale, 1.0)
                z = jax.random.normal(jax.random.fold_in(keys[k], t), x_k.shape, jnp.float32)
                g_rms = jnp.sqrt(jnp.mean(g**2)) if g.size else 0.0
                along_g = jnp.where(g_rms > 0, g / jnp.where(g_rms > 0, g_rms, 1.0), z)
                v = scale * (along_g if t == 0 else z)
                d = jnp.sum(g * v)

                def at(e, k=k, c=c, v=v):
                    moved = [x + e * v if j == k else x for j, x in enumerate(diff)]
                    return _phi_and_norm(c, problem.call(fn, moved, fixed))

                phis, norms = jax.vmap(at)(eps)
                r[k].append(jnp.abs(phis - phi0 - eps * d))
                noise[k].append(jnp.finfo(jnp.float32).eps * (norms + norm0 + jnp.abs(eps * d)))
        return [(jnp.stack(rk), jnp.stack(nk)) for rk, nk in zip(r, noise)]

    return run(diff, fixed, cts, eps, keys)
