"""Data parallelism over a mesh of devices, in one process or many (``jax.distributed``).

Training on many devices is plain JAX: the rules need nothing of their own. Under
``jit`` with sharded inputs on a mesh of Auto axes, XLA's partitioner splits every
rule's forward and backward by the batch, and the weight contraction of a backward
(Δᵀ H summed over the batch) becomes a local contraction followed by an all-reduce,
which is the global gradient. So :func:`funcprop.train.train` with ``mesh=`` keeps
one compiled program and places the data:

- the dataset and the training state are replicated on every device (each process
  loads the whole dataset and contributes its copy: the datasets funcprop trains on
  fit in any device's memory);
- each minibatch's example indices, and the minibatch, are sharded over the mesh axis
  ``"data"``: each device gathers and computes its own shard of every batch.

The result is the one-device run's, up to the order of the floating-point sums.

Many processes (one per host, or several on one machine to test): every process calls
:func:`initialize` before anything else touches JAX, then builds the same mesh over
all global devices (:func:`data_mesh`). Process 0 writes (:func:`is_writer`); the
others compute and write nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"  # the mesh axis batches are sharded over


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join ``num_processes`` processes through ``jax.distributed`` (call it first).

    ``coordinator`` is ``HOST:PORT`` of process 0, the same in every process;
    ``process_id`` is this process's number in ``[0, num_processes)``. On CPU the
    collectives between processes go through gloo.
    """
    if not isinstance(coordinator, str) or coordinator.rpartition(":")[0] == "":
        raise ValueError(f"initialize: coordinator must be 'HOST:PORT', got {coordinator!r}")
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"initialize: num_processes must be an int >= 1, got {num_processes!r}")
    if isinstance(process_id, bool) or not isinstance(process_id, int) or not 0 <= process_id < num_processes:
        raise ValueError(
            f"initialize: process_id must be in [0, {num_processes}) for {num_processes} processes, got {process_id}"
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def data_mesh(devices=None) -> Mesh:
    """A one-axis mesh named ``"data"`` over ``devices`` (default: every global device).

    Its axis type is Auto: the partitioner places the backward's all-reduce itself.
    """
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def check_mesh(fn: str, mesh, batch_size: int) -> Mesh:
    """``mesh`` as an Auto-axes mesh over the same devices, after checking that it has
    an axis ``"data"`` whose size divides ``batch_size``; raise a clear error if not."""
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"{fn}: mesh must be a jax.sharding.Mesh with an axis named 'data', got {type(mesh).__name__}; "
            f"build one with funcprop.distributed.data_mesh()"
        )
    if AXIS not in mesh.axis_names:
        raise ValueError(
            f"{fn}: mesh must have an axis named 'data' to shard batches over, got axes {mesh.axis_names}; "
            f"e.g. jax.make_mesh((n,), ('data',))"
        )
    n = mesh.shape[AXIS]
    if batch_size % n:
        raise ValueError(
            f"{fn}: batch_size {batch_size} must be divisible by the mesh's 'data' axis of {n} devices, "
            f"so that every device gets the same share; use a batch size that is a multiple of {n}"
        )
    # the same devices with Auto axes: train places every array itself, so an Explicit
    # mesh's sharding-in-types would only ask each rule for out_sharding arguments
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array: parameters, optimizer state, the dataset."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading axis split over ``"data"``, the other axes whole."""
    return NamedSharding(mesh, P(AXIS))


def _is_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _host(leaf) -> np.ndarray:
    """A leaf as a host array; a typed PRNG key as its key data."""
    return np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)


def _like(value, leaf):
    """``value`` (from :func:`_host`) as a key again where ``leaf`` was one."""
    return jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf)) if _is_key(leaf) else value


def replicate(tree, mesh: Mesh):
    """Every leaf of ``tree`` (the same in every process) as a global array replicated on
    ``mesh``."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda leaf: _like(jax.make_array_from_process_local_data(sharding, _host(leaf)), leaf), tree)


def from_writer(tree):
    """``tree`` as process 0 holds it, in every process (as host arrays). The identity in
    one process."""
    if jax.process_count() == 1:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    got = multihost_utils.broadcast_one_to_all([_host(leaf) for leaf in leaves])
    return jax.tree.unflatten(treedef, [_like(g, leaf) for g, leaf in zip(got, leaves)])


def on_writer(work, what: str, default=None):
    """``work()`` on process 0, and its failure on every process.

    Process 0 alone reads and writes the run's files; were its error its own, the other
    processes would wait in their next collective until a timeout aborts them. So the
    outcome is shared first (one flag): process 0 raises its error, the others an error
    that points to it. Returns ``work()``'s value on process 0, ``default`` on the
    others; in one process, simply ``work()``.
    """
    if jax.process_count() == 1:
        return work()
    value, failed = default, None
    if is_writer():
        try:
            value = work()
        except Exception as err:  # shared first, then raised again
            failed = err
    if not from_writer(np.asarray(failed is None)):
        raise failed or RuntimeError(
            f"process {jax.process_index()}: process 0 could not {what} (its own error says why); "
            f"fix that and start every process again"
        )
    return value


def is_writer() -> bool:
    """Whether this process writes the run's files: process 0 (the only one, in one process)."""
    return jax.process_index() == 0
