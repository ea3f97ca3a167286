"""``check_vjp``: a hand-written VJP against autodiff of a plain reference, leaf by leaf.

Rows, one per leaf (see :mod:`funcprop.check` for the list and the error measure):
``output`` and ``vjp`` always; ``finite-diff`` (float64 central differences) where
float64 is enabled, else ``taylor`` (the remainder of fn in float32 falls as ε²); and
one row per transform asked for (:mod:`funcprop.check.transforms`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from funcprop.check import precision
from funcprop.check._problem import Problem, name_of, normals, per_trial, resolve_reference
from funcprop.check._report import CheckReport, CheckRow, GradientCheckError, default_rtol, error_row, failure_message
from funcprop.check.transforms import TRANSFORMS, Skipped, copies_of, under, unused_output_pairs

FD_STEP = 1e-5  # relative step: h = 1e-5 · max(1, |x|)
FD_RTOL = 1e-6  # O(h²) truncation + O(eps/h) rounding, with headroom
_FD_CHUNK = 256  # elements perturbed per vmap in the finite differences (bounds memory)


def _stacked_pullbacks(problem: Problem, runs):
    """For each ``(f, diff, cts)`` of ``runs``, f's (outputs, cotangents) at ``diff``, each
    leaf stacked over the cotangents: one compiled program for all of them (compiling
    is most of a check's time, and one program compiles faster than three)."""
    fs = [f for f, _, _ in runs]

    def all_runs(fixed, inputs):
        return [per_trial(lambda c, f=f, d=d: problem.pullback(f)(d, fixed, c), c) for f, (d, c) in zip(fs, inputs)]

    return jax.jit(all_runs)(problem.fixed, [(d, c) for _, d, c in runs])


def _finite_difference_pairs(problem: Problem, fn, cts):
    """(fn's VJPs, central differences) in float64, stacked over the cotangents.

    ∂φ_t/∂xᵢ ≈ (φ_t(x + h eᵢ) − φ_t(x − h eᵢ)) / 2h, φ_t(x) = ⟨c_t, fn(x)⟩,
    h = 1e-5 · max(1, |xᵢ|), for every element i of every float leaf: two calls of
    fn per element, all cotangents t at once.
    """

    @jax.jit
    def run(diff, fixed, cts):
        diff = [x.astype(jnp.float64) for x in diff]
        cts = [c.astype(jnp.float64) for c in cts]  # (T, *out.shape)
        flat, unravel = ravel_pytree(diff)

        def phi(x):  # (T,)
            outs = problem.call(fn, unravel(x), fixed)
            return sum(jnp.sum((c * o.astype(c.dtype)).reshape(len(c), -1), axis=1) for c, o in zip(cts, outs))

        steps = FD_STEP * jnp.maximum(1.0, jnp.abs(flat))

        def one(i):
            e = jnp.zeros_like(flat).at[i].set(steps[i])
            plus, minus = flat + e, flat - e  # divide by the step actually taken
            return (phi(plus) - phi(minus)) / (plus[i] - minus[i])

        idx = jnp.arange(flat.size)
        big = flat.size > _FD_CHUNK
        fd = jax.lax.map(one, idx, batch_size=_FD_CHUNK) if big else jax.vmap(one)(idx)
        vjps = per_trial(lambda c: problem.pullback(fn)(diff, fixed, c)[1], cts)
        return vjps, jax.vmap(unravel)(fd.T)

    return run(problem.diff, problem.fixed, cts)


def _second_order_pairs(problem: Problem, fn, reference, cts, key):
    """(fn's, reference's) ∇ψ, ψ(x) = ⟨v, ∇φ(x)⟩, φ(x) = ⟨c, f(x)⟩, v random."""
    acc = max((x.dtype for x in problem.diff), key=lambda d: jnp.finfo(d).bits)

    def grad_psi(f):
        def psi(diff, fixed, ct, v):
            grads = problem.pullback(f)(diff, fixed, ct)[1]
            return sum(jnp.sum(vk * gk).astype(acc) for vk, gk in zip(v, grads))

        return jax.grad(psi)

    @jax.jit
    def run(diff, fixed, cts, vs):
        fn_h, ref_h = grad_psi(fn), grad_psi(reference)
        return per_trial(lambda c, v: (fn_h(diff, fixed, c, v), ref_h(diff, fixed, c, v)), cts, vs)

    vs = normals(key, len(cts[0]), problem.diff)
    return run(problem.diff, problem.fixed, cts, vs)


def _transform_list(transforms, vmap: bool, second_order: bool) -> tuple[str, ...]:
    if isinstance(transforms, str):
        transforms = (transforms,)
    chosen = list(transforms) + (["vmap"] if vmap else []) + (["second-order"] if second_order else [])
    unknown = [t for t in chosen if t not in TRANSFORMS]
    if unknown:
        raise ValueError(f"check_vjp: unknown transforms {unknown}; choose from {list(TRANSFORMS)}")
    return tuple(dict.fromkeys(chosen))  # in order, once each


def _dtype_name(x) -> str:
    return jnp.dtype(x.dtype).name


def check_vjp(
    fn: Callable[..., Any],
    *args,
    reference: Callable[..., Any] | None = None,
    kwargs: dict | None = None,
    n_cotangents: int = 3,
    key=None,
    finite_differences: bool = True,
    transforms=(),
    vmap: bool = False,
    second_order: bool = False,
    rtol: float | None = None,
    fd_rtol: float = FD_RTOL,
    raise_on_fail: bool = True,
) -> CheckReport:
    """Check fn's VJP (a ``jax.custom_vjp``) against autodiff of a plain reference.

    Every float leaf of ``args`` is differentiated, every integer leaf held fixed.
    The VJPs are computed under ``jax.jit``; each check gives one row per leaf, its
    worst element judged by the scaled relative error ``|a − b| / (|b| + max|b|)``.

    For bfloat16 and float16 leaves the reference runs in float32 (float64 where
    enabled) on the same values, and the tolerance is measured: 3 times the error of the
    reference itself run in the low dtype, at least the dtype's unit roundoff
    (:mod:`funcprop.check.precision`). The ``compared`` column says which dtypes met.

    Args:
      fn: the function under test, ``fn(*args, **kwargs) -> pytree of float arrays``.
      *args: arrays or pytrees of arrays (a params NamedTuple, a dict), any shapes.
      reference: the same function in plain jnp, differentiated by ``jax.vjp``.
        Defaults to the plain twin for a funcprop rule.
      kwargs: static keyword arguments (an axis, a slope) for fn and reference.
      n_cotangents: number of random normal cotangents (trials) per check.
      key: PRNG key for cotangents and perturbations; ``jax.random.key(0)`` if None.
      finite_differences: also check fn's VJP against fn's own forward: float64
        central differences (2 calls of fn per element) where ``jax_enable_x64`` is on,
        else the float32 Taylor remainder (``taylor`` rows, 20 calls per leaf and trial).
      transforms: names from ``TRANSFORMS``, each a row set computed under that
        transform: ``"jit"``, ``"vmap"``, ``"remat"``, ``"scan"``, ``"shard_map"``,
        ``"symbolic-zeros"``, ``"second-order"``. None by default.
      vmap, second_order: the same as listing ``"vmap"``, ``"second-order"``.
      rtol: tolerance for every check but finite-diff and taylor; default per dtype,
        :func:`default_rtol` (float32, float64) or measured (bfloat16, float16).
      fd_rtol: tolerance of the finite-diff check.
      raise_on_fail: raise :class:`GradientCheckError` if any row fails.

    Returns:
      The :class:`CheckReport`; ``print`` it for the table.

    Raises:
      GradientCheckError: a check failed (and ``raise_on_fail``). The message names
        the check, the leaf's key path, the worst index, both values and the error.
      TypeError, ValueError: fn or reference not callable, no args, no reference for
        a function that is not a funcprop rule, reference output unlike fn's.

    Example:
      >>> import funcprop
      >>> check_vjp(funcprop.tanh, jnp.linspace(-2.0, 2.0, 5)).passed   # against its twin
      True
      >>> @jax.custom_vjp
      ... def cube(x):
      ...     return x**3
      >>> cube.defvjp(lambda x: (x**3, x), lambda x, g: (2 * x**2 * g,))  # wrong: 3x²
      >>> report = check_vjp(cube, jnp.linspace(-2.0, 2.0, 5), reference=lambda x: x**3, raise_on_fail=False)
      >>> report.passed, sorted({row.check for row in report.failures})
      (False, ['finite-diff', 'vjp'])
    """
    reference = resolve_reference(fn, reference, args)
    if isinstance(n_cotangents, bool) or not isinstance(n_cotangents, int) or n_cotangents < 1:
        raise ValueError(f"check_vjp: n_cotangents must be a positive int, got {n_cotangents!r}; pass e.g. 3")
    chosen = _transform_list(transforms, vmap, second_order)
    problem = Problem(fn, reference, args, dict(kwargs or {}))
    key = jax.random.key(0) if key is None else key
    k_ct, k_copies, k_second, k_taylor = jax.random.split(key, 4)
    cts = normals(k_ct, n_cotangents, problem.out_shapes)

    low = any(precision.is_low(x.dtype) for x in [*problem.diff, *problem.out_shapes])
    high = precision.high_dtype()

    def trusted(leaves):  # the reference's inputs: upcast where fn runs in low precision
        return precision.upcast(leaves, high) if low else leaves

    runs = [(fn, problem.diff, cts), (reference, trusted(problem.diff), trusted(cts))]
    if low and rtol is None:  # the reference in fn's dtype too: its rounding sets the tolerance
        runs.append((reference, problem.diff, cts))
    fn_pair, ref_pair, *low_pair = _stacked_pullbacks(problem, runs)
    low_pair = low_pair[0] if low_pair else None
    groups = [(problem.out_paths, problem.out_shapes), (problem.paths, problem.diff)]
    tols = [[], []]
    for part in (0, 1):
        for k, like in enumerate(groups[part][1]):
            if rtol is not None:
                tols[part].append(rtol)
            elif precision.is_low(like.dtype):
                tols[part].append(precision.measured_tolerance(low_pair[part][k], ref_pair[part][k], like.dtype))
            else:
                tols[part].append(default_rtol(like.dtype))
    ref_name = name_of(reference)
    rows: list[CheckRow] = []
    notes: list[str] = []

    def compared(part, k, what="fn"):
        dtype = _dtype_name(groups[part][1][k])
        return f"{dtype} {what} vs {high.name if low else dtype} reference"

    def add(check, received, expected, parts=(0, 1), what="fn"):
        received, expected = jax.device_get((received, expected))
        for part in parts:
            for k, path in enumerate(groups[part][0]):
                rows.append(
                    error_row(check, path, received[part][k], expected[part][k], tols[part][k], compared(part, k, what))
                )

    add("output", fn_pair, ref_pair, parts=(0,))
    add("vjp", fn_pair, ref_pair, parts=(1,))
    if finite_differences and jax.config.jax_enable_x64:
        fn_vjps, fd = jax.device_get(_finite_difference_pairs(problem, fn, cts))
        for k, path in enumerate(problem.paths):
            rows.append(
                error_row("finite-diff", path, fn_vjps[k], fd[k], fd_rtol, "float64 fn vs float64 central differences")
            )
    elif finite_differences:
        taylor, taylor_notes = precision.taylor_rows(problem, fn, cts, k_taylor)
        rows += taylor
        notes += taylor_notes

    copies = copies_of(problem, k_copies) if {"vmap", "scan"} & set(chosen) else None
    for name in chosen:
        try:
            _transform_rows(name, problem, fn, reference, cts, copies, trusted, k_second, add, rows, ref_pair)
        except Skipped as e:
            notes.append(f"{name} skipped: {e}")
        except Exception as e:  # fn fails under the transform: a failed row, the error in a note
            first = (str(e).strip().splitlines() or [""])[0]
            rows.append(
                CheckRow(
                    name, "(all)", 0, (), float("nan"), float("nan"), float("inf"), float("inf"), 0.0, False, "raised"
                )
            )
            notes.append(f"{name}: fn raised {type(e).__name__}: {first}")

    report = CheckReport(name_of(fn), ref_name, rows, notes)
    if raise_on_fail and not report.passed:
        raise GradientCheckError(failure_message(report), report)
    return report


def _transform_rows(name, problem, fn, reference, cts, copies, trusted, key, add, rows, ref_pair):
    if name == "second-order":
        got, want = _second_order_pairs(problem, fn, reference, cts, key)
        for k, path in enumerate(problem.paths):
            tol = default_rtol(problem.diff[k].dtype)
            compared = f"{problem.diff[k].dtype} fn vs {problem.diff[k].dtype} reference, reverse over reverse"
            rows.append(error_row(name, path, jax.device_get(got[k]), jax.device_get(want[k]), tol, compared))
        return
    if name == "symbolic-zeros":
        pullback = problem.pullback(reference)
        for j, got, want in unused_output_pairs(problem, fn, pullback, trusted(problem.diff), cts, trusted):
            add(name, (None, got), (None, want), parts=(1,), what=f"fn with out {j} unused")
        return
    if name in ("vmap", "scan"):
        xs, cs = copies
        want = jax.jit(lambda x, f, c: per_trial(lambda xi, ci: problem.pullback(reference)(xi, f, ci), x, c))(
            trusted(list(xs)), problem.fixed, trusted(cs)
        )
        add(name, under(name, problem, fn, cts, copies), want, what=f"fn under {name}")
        return
    add(name, under(name, problem, fn, cts, copies), ref_pair, what=f"fn under {name}")  # the reference at the args
