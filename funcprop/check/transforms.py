"""fn's VJP under the transforms a rule meets in practice, each a row of the report.

Every transform row is the ``vjp`` row computed again under one transform: fn's
outputs and cotangents there against the reference's at the same points, to the same
tolerance. Transforms at the base point (``jit`` runs eagerly instead, ``remat``,
``shard_map``, ``symbolic-zeros``) reuse the check's cotangents; ``vmap`` and ``scan``
run over copies of the args (x, then x · (1 + 0.05 z)), so a bwd that reads a
closed-over array instead of its residuals is caught there too.

- ``jit``: eager (op by op) against jit.
- ``vmap``: per-example VJPs, ``vmap`` of the pullback over the copies.
- ``remat``: the VJP of ``jax.checkpoint(fn)``: fwd runs again in the backward pass.
- ``scan``: ``lax.scan`` of fn over the copies, differentiated: fwd inside the scan,
  bwd inside its transpose.
- ``shard_map``: fn under ``jax.shard_map`` over every device (``check_vma`` on),
  leaves whose leading axis is the batch sharded, the rest replicated, differentiated
  from outside; against the unsharded reference (a local gradient on one device equals
  the global one, so this needs two devices or more).
- ``symbolic-zeros``: one output of a multi-output fn left unused, so its cotangent is
  zero; against the reference with that cotangent 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from funcprop.check._problem import normals, per_trial

TRANSFORMS = ("jit", "vmap", "remat", "scan", "shard_map", "symbolic-zeros", "second-order")
COPIES = 3  # vmap and scan: the args and two perturbed copies


class Skipped(Exception):
    """A transform that does not apply to this fn (the reason is the message)."""


def copies_of(problem, key) -> tuple[list, list]:
    """(copies, cotangents), each leaf stacked over COPIES: x, then x · (1 + 0.05 z)."""
    k_args, k_cts = jax.random.split(key)
    z = normals(k_args, COPIES - 1, problem.diff)
    copies = [
        np.concatenate([x[None], x * (1 + 0.05 * np.clip(zx, -2, 2)).astype(x.dtype)])
        for x, zx in zip(map(np.asarray, problem.diff), z)
    ]
    return copies, normals(k_cts, COPIES, problem.out_shapes)


def under(name: str, problem, fn, cts, copies):
    """fn's (outputs, cotangents) under transform ``name``, stacked over trials or copies.

    Raises :class:`Skipped` where the transform does not apply; any other exception is
    fn failing under it.
    """
    fixed = problem.fixed
    if name == "jit":  # eager, op by op
        return per_trial(lambda c: problem.pullback(fn)(problem.diff, fixed, c), cts)
    if name == "remat":

        def remat(*args, **kwargs):
            return jax.checkpoint(functools.partial(fn, **kwargs))(*args)

        return jax.jit(lambda d, f, c: per_trial(lambda ci: problem.pullback(remat)(d, f, ci), c))(
            problem.diff, fixed, cts
        )
    if name == "vmap":
        xs, cs = copies
        return jax.jit(lambda x, f, c: jax.vmap(problem.pullback(fn), in_axes=(0, None, 0))(x, f, c))(xs, fixed, cs)
    if name == "scan":
        xs, cs = copies

        @jax.jit
        def scanned(xs, fixed, cs):
            def run(xs):
                return jax.lax.scan(lambda carry, x: (carry, problem.call(fn, x, fixed)), None, xs)[1]

            outs, vjp_fn = jax.vjp(run, xs)
            return outs, vjp_fn(cs)[0]

        return scanned(xs, fixed, cs)
    if name == "shard_map":
        return _sharded(problem, fn, cts)
    raise ValueError(f"unknown transform {name!r}")


def _sharded(problem, fn, cts):
    devices = jax.devices()
    if len(devices) < 2:
        raise Skipped(
            "one device only, where a local gradient equals the global one; run with "
            "XLA_FLAGS=--xla_force_host_platform_device_count=4 (CPU) to check it"
        )
    leaves = problem.diff + problem.fixed
    lead = leaves[0].shape[0] if leaves[0].ndim else None
    n = max((k for k in range(2, len(devices) + 1) if lead and lead % k == 0), default=None)
    if n is None:
        raise Skipped(f"args[0]'s leading axis ({lead}) does not split over 2 to {len(devices)} devices")
    if any(s.ndim == 0 or s.shape[0] != lead for s in problem.out_shapes):
        raise Skipped(f"an output has no leading batch axis of size {lead} to shard")
    mesh = jax.sharding.Mesh(np.array(devices[:n]), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))

    def spec(x):
        return P("batch") if x.ndim and x.shape[0] == lead else P()

    def sharded(diff, fixed, ct):
        def local(diff, fixed):
            return problem.call(fn, diff, fixed)

        specs = ([spec(x) for x in diff], [spec(x) for x in fixed])
        mapped = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P("batch"))
        out, vjp_fn = jax.vjp(lambda d: mapped(d, fixed), diff)
        return out, vjp_fn(ct)[0]

    return jax.jit(lambda d, f, c: per_trial(lambda ci: sharded(d, f, ci), c))(problem.diff, problem.fixed, cts)


def unused_output_pairs(problem, fn, reference_pullback, diff_ref, cts, cast):
    """For each output leaf j: fn's cotangents with output j unused, and the reference's
    with its cotangent set to 0. Raises :class:`Skipped` for a one-output fn."""
    n_out = len(problem.out_shapes)
    if n_out < 2:
        raise Skipped("fn has one output leaf; a zero cotangent needs two or more")
    pairs = []
    for j in range(n_out):

        def dropped(diff, fixed, c, j=j):
            kept = [ci for i, ci in enumerate(c) if i != j]
            _, vjp_fn = jax.vjp(lambda d: [o for i, o in enumerate(problem.call(fn, d, fixed)) if i != j], diff)
            return vjp_fn(kept)[0]

        got = jax.jit(lambda d, f, c: per_trial(lambda ci: dropped(d, f, ci), c))(problem.diff, problem.fixed, cts)
        zeroed = [jnp.zeros_like(c) if i == j else c for i, c in enumerate(cts)]
        want = jax.jit(lambda d, f, c: per_trial(lambda ci: reference_pullback(d, f, ci)[1], c))(
            diff_ref, problem.fixed, cast(zeroed)
        )
        pairs.append((j, got, want))
    return pairs
