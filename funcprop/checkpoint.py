"""Checkpoints of pytrees of arrays: written atomically, verified on every read.

A checkpoint holds the leaves of any pytree (parameter NamedTuples, optax states,
typed PRNG keys, Python ints such as an epoch) plus a JSON metadata dict. Loading
runs no code from the file: it is read with ``np.load(..., allow_pickle=False)``.

The file is an ordinary ``.npz`` (an uncompressed zip of ``.npy`` arrays), so NumPy
can open it, with two additions::

    __funcprop__.npy        a string: JSON with the format version, the metadata, and
                            per leaf its key path, dtype, shape and kind
    000 ['params'][0].omega.npy, 001 ...    one array per leaf, named by its index
                            and key path; a PRNG key is stored as its uint32 key data
    archive comment         the sha256 (64 hex digits) of every byte before it

The checksum covers the whole file but its last 64 bytes (the digest itself): every
leaf's key path, dtype, shape and bytes, the metadata, and the zip structure. Any
altered byte, and any truncation, is caught before the archive is parsed.

:func:`save` writes a temporary file beside the target, fsyncs it, reads it back and
compares it with the tree, and only then renames it over the target with
``os.replace`` (:mod:`funcprop.atomic`): a save that fails at any point leaves the
previous checkpoint intact, and a temporary left by a save that was killed is removed
by the next save or load of the same checkpoint once its writer is gone.
:func:`load` restores into the structure of a template (as flax/orbax restore with a
target) and checks key paths, shapes and dtypes against it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import re
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcprop import atomic

_VERSION = 1
_HEADER = "__funcprop__"
_DIGEST_HEX = 64
_PYTHON_SCALARS = (bool, int, float, complex)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same tree, the same bytes


class CheckpointError(ValueError):
    """A checkpoint is corrupted, truncated or altered, or does not fit its template."""


# --- leaves ----------------------------------------------------------------------


def _is_key(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _to_numpy(where: str, leaf) -> tuple[np.ndarray, dict]:
    """The leaf's bytes as a NumPy array, and the header entry describing it."""
    if _is_key(leaf):
        array, entry = np.asarray(jax.random.key_data(leaf)), {"kind": "key"}
        entry["impl"] = str(jax.random.key_impl(leaf))
    elif isinstance(leaf, _PYTHON_SCALARS):
        array, entry = np.asarray(leaf), {"kind": "python"}
    else:
        array, entry = np.asarray(leaf), {"kind": "array"}
    if not (array.dtype.kind in "biufc" or jnp.issubdtype(array.dtype, jnp.floating)):
        what = (
            f"the int {leaf}, which does not fit in 64 bits"
            if entry["kind"] == "python"
            else f"a {type(leaf).__name__} of dtype {array.dtype}"
        )
        raise TypeError(
            f"save: the leaf at {where} is {what}; checkpoints hold numeric arrays, "
            f"Python numbers of up to 64 bits and PRNG keys; put other values in metadata"
        )
    entry.update(path=where, dtype=array.dtype.name, shape=list(array.shape))
    return array, entry


def _storable(array: np.ndarray) -> np.ndarray:
    """``.npy`` has no bfloat16 or float8: store those as unsigned ints of their size."""
    if array.dtype.kind != "V":  # ml_dtypes types have kind "V"
        return array
    return np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")


def _json_default(value):
    """Let NumPy and JAX scalars (an epoch from ``np.int64``) into the metadata."""
    if isinstance(value, (np.generic, np.ndarray, jax.Array)) and np.ndim(value) == 0:
        return np.asarray(value).item()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")


# --- save ------------------------------------------------------------------------


def save(path, tree, *, metadata: dict | None = None) -> pathlib.Path:
    """Write ``tree`` and ``metadata`` to ``path`` atomically, and verify it.

    The file is written to a temporary name in the same directory, flushed and
    fsynced, read back and compared leaf by leaf with ``tree``, then renamed over
    ``path``. If anything fails, ``path`` keeps its previous content and the
    temporary file is removed.

    Args:
      path: the checkpoint file; its directory must exist.
      tree: a pytree whose leaves are arrays (JAX or NumPy), Python numbers, or
        typed PRNG keys (``jax.random.key``), stored as their raw key data.
      metadata: a JSON-serialisable dict (epoch, seed, config). NumPy scalars are
        stored as Python numbers; tuples come back as lists, and keys as strings.

    Returns:
      The path written.

    Raises:
      TypeError: if a leaf is not numeric or metadata is not JSON-serialisable.
      FileNotFoundError: if the directory does not exist.
      IsADirectoryError: if ``path`` is a directory.
      PermissionError: if ``path`` is read-only (it is kept), or its directory is.
      OSError: if writing fails (a full disk: errno ENOSPC); ``path`` is intact.
      CheckpointError: if the file read back differs from ``tree``.
    """
    path = pathlib.Path(path)
    atomic.check_target("save", path, "checkpoint.npz", "a checkpoint file")  # before any work
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise TypeError(f"save: metadata must be a dict, got {type(metadata).__name__}")
    try:
        meta_json = json.dumps(metadata, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"save: metadata must be JSON-serialisable ({err}); store numbers, "
            f"strings, lists and dicts, or convert first"
        ) from None

    leaves, entries = [], []
    for i, (key_path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(tree)[0]):
        array, entry = _to_numpy(jax.tree_util.keystr(key_path), leaf)
        entry["name"] = f"{i:03d} {entry['path']}"
        leaves.append(array)
        entries.append(entry)
    header = json.dumps(
        {"format": "funcprop-checkpoint", "version": _VERSION, "metadata": json.loads(meta_json), "leaves": entries},
        sort_keys=True,
    )

    names = [e["name"] for e in entries]
    return atomic.write(
        "save",
        path,
        lambda f: _write(f, header, names, leaves),
        verify=lambda tmp: _verify(tmp, leaves, entries, meta_json),
        example="checkpoint.npz",
        what="a checkpoint file",
    )


def _write(f, header: str, names: list, leaves: list) -> None:
    """Write the archive to the open file ``f``, then sign it in its comment."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.comment = b"0" * _DIGEST_HEX  # a placeholder of the digest's length
        for name, array in zip([_HEADER, *names], [np.array(header), *leaves]):
            info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_EPOCH)
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, _storable(array), allow_pickle=False)
    f.flush()
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    digest, left = hashlib.sha256(), size - _DIGEST_HEX
    while left > 0:
        chunk = f.read(min(left, 1 << 24))
        digest.update(chunk)
        left -= len(chunk)
    f.seek(size - _DIGEST_HEX)
    f.write(digest.hexdigest().encode("ascii"))
    f.flush()


def _verify(tmp: pathlib.Path, leaves, entries, meta_json: str) -> None:
    """Read the just-written file back; CheckpointError unless it equals the tree."""
    try:
        stored, stored_meta = _read(tmp)
    except CheckpointError as err:
        raise CheckpointError(
            f"save: reading back '{tmp}' failed ({err}); the previous checkpoint is kept. Check the disk and try again"
        ) from None
    problem = None
    if len(stored) != len(leaves):
        problem = f"it has {len(stored)} leaves instead of {len(leaves)}"
    elif json.dumps(stored_meta, sort_keys=True) != meta_json:  # NaN-safe
        problem = "the metadata differs"
    for array, entry, (got, got_entry) in zip(leaves, entries, stored):
        if got_entry != entry or got.tobytes() != np.ascontiguousarray(array).tobytes():
            problem = problem or f"the leaf at {entry['path']} differs"
    if problem is not None:
        raise CheckpointError(
            f"save: reading back '{tmp}' failed: {problem}; the previous checkpoint "
            f"is kept. Check the disk and try again"
        )


# --- load ------------------------------------------------------------------------


def _corrupted(path, what: str) -> CheckpointError:
    return CheckpointError(f"load: checkpoint '{path}' is corrupted: {what}; restore it from another copy")


def _read(path: pathlib.Path) -> tuple[list, dict]:
    """The verified ``[(array, header entry), ...]`` and the metadata of a file."""
    atomic.refuse_directory("load", path, "checkpoint.npz", "a checkpoint file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"load: no checkpoint at '{path}'") from None
    except PermissionError as err:
        raise atomic.os_error(
            err, (f"load: cannot read '{path}': permission denied; make it readable (chmod u+r) or load a copy")
        ) from None
    body, digest = raw[:-_DIGEST_HEX], raw[-_DIGEST_HEX:]
    if len(raw) <= _DIGEST_HEX or not re.fullmatch(rb"[0-9a-f]{64}", digest):
        raise _corrupted(
            path,
            f"its last {_DIGEST_HEX} bytes are not a sha256 digest "
            f"(the file is truncated, or was not written by "
            f"funcprop.checkpoint.save)",
        )
    if hashlib.sha256(body).hexdigest().encode("ascii") != digest:
        raise _corrupted(path, "the sha256 checksum does not match (bytes were altered or the file is truncated)")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            if npz.zip.comment != digest:
                raise ValueError("the digest is not the archive's comment")
            header = json.loads(str(npz[_HEADER]))
            if header.get("version") != _VERSION:
                raise CheckpointError(
                    f"load: checkpoint '{path}' has format version "
                    f"{header.get('version')}, but this funcprop reads version "
                    f"{_VERSION}; upgrade funcprop"
                )
            leaves = []
            for entry in header["leaves"]:
                dtype, shape = jnp.dtype(entry["dtype"]), tuple(entry["shape"])
                array = npz[entry["name"]]
                if (
                    array.dtype != dtype and array.dtype == _storable(np.empty(0, dtype)).dtype
                ):  # bfloat16 stored as uint16
                    array = array.view(dtype)
                if array.dtype != dtype:
                    raise ValueError(f"{entry['path']} is {array.dtype}, not {dtype}")
                if array.shape != shape:
                    raise ValueError(f"{entry['path']} is {array.shape}, not {shape}")
                leaves.append((array, entry))
            return leaves, header["metadata"]
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise _corrupted(path, f"it is not a readable archive ({err})") from None


def load_flat(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint without a template: ``({key path: array}, metadata)``.

    For looking inside a checkpoint, or for reading its metadata (say, the config a
    model was built with) before building the template :func:`load` needs. PRNG keys
    come back as their raw uint32 key data. The checksum is verified.

    Raises:
      FileNotFoundError: if there is no file at ``path``.
      CheckpointError: if the file is corrupted.
    """
    path = pathlib.Path(path)
    atomic.remove_stale_temporaries(path)
    leaves, metadata = _read(path)
    return {entry["path"]: array for array, entry in leaves}, metadata


def _describe(dtype, shape) -> str:
    return f"{dtype}{tuple(shape)}"


def _restore_leaf(path, where: str, array: np.ndarray, entry: dict, like) -> Any:
    """``array`` in the kind of the template leaf ``like``, after checking it fits."""
    if (
        entry["kind"] == "python"
        and isinstance(like, jax.ShapeDtypeStruct)
        and like.shape == ()
        and like.dtype.kind == array.dtype.kind
    ):
        # jax.eval_shape of a Python number: 32 or 64 bits by the x64 flag, so the
        # kind (int, float...) is what must match; the number comes back as it was.
        return array.item()
    got = array
    if entry["kind"] == "key":  # compare the key array (key<fry>(3,)), not its data
        got = jax.eval_shape(lambda: jax.random.wrap_key_data(jnp.zeros(array.shape, array.dtype), impl=entry["impl"]))
    want = like if hasattr(like, "dtype") else np.asarray(like)
    if got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape):
        raise CheckpointError(
            f"load: checkpoint '{path}' does not fit the template at {where}: the "
            f"checkpoint has {_describe(got.dtype, got.shape)} but the template has "
            f"{_describe(want.dtype, want.shape)}; pass a template built like the "
            f"tree that was saved"
        )
    if isinstance(like, _PYTHON_SCALARS):
        return type(like)(array.item())
    if isinstance(like, np.generic):
        return array[()]
    if isinstance(like, np.ndarray):
        return array
    if _is_key(like):
        out = jax.random.wrap_key_data(jnp.asarray(array), impl=entry["impl"])
    else:
        out = jnp.asarray(array)
    sharding = _target_sharding(like)
    return out if sharding is None else jax.device_put(out, sharding)


def _target_sharding(like):
    """The template leaf's sharding, or None to leave the array on the default device.

    None for an uncommitted single-device array (what ``jnp`` makes) and for the
    abstract shardings of ``jax.eval_shape``.
    """
    sharding = getattr(like, "sharding", None)
    if sharding is None:
        return None
    try:
        devices = sharding.device_set
    except ValueError:  # a sharding over an AbstractMesh names no devices
        return None
    if isinstance(like, jax.Array) and not like.committed and len(devices) == 1:
        return None
    return sharding


def load(path, like) -> tuple[Any, dict]:
    """Read a checkpoint into the structure of the template ``like``.

    ``like`` is a pytree of the same structure as the one saved (the initial
    parameters and optimizer state, say); its leaves may be arrays or
    ``jax.ShapeDtypeStruct``. Every key path, shape and dtype is checked against it,
    and the sha256 checksum of the whole file is verified. Each leaf comes back in
    the template's kind: a JAX array (on the template's sharding), a NumPy array, a
    Python number, or a typed PRNG key rebuilt with ``jax.random.wrap_key_data``.
    ``jax.eval_shape(lambda: tree)`` of the saved tree is a template too: a Python
    number saved (an epoch) comes back as that number, with x64 on or off.

    Args:
      path: the checkpoint file.
      like: the template pytree.

    Returns:
      ``(tree, metadata)``: the restored tree in the structure of ``like``, and the
      metadata dict given to :func:`save`.

    Raises:
      FileNotFoundError: if there is no file at ``path``.
      IsADirectoryError, PermissionError: if ``path`` is a directory or unreadable.
      CheckpointError: if the file is corrupted, truncated or altered, or its
        structure, shapes or dtypes differ from ``like`` (naming the first key path
        that differs).

    Example:
      >>> import pathlib, tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "params.ckpt"
      >>> params = {"omega": jnp.ones((4, 2), jnp.float32), "beta": jnp.zeros(4, jnp.float32)}
      >>> _ = save(path, params, metadata={"epoch": 3})
      >>> restored, meta = load(path, params)
      >>> meta["epoch"], restored["omega"].shape, restored["omega"].dtype
      (3, (4, 2), dtype('float32'))
    """
    path = pathlib.Path(path)
    atomic.remove_stale_temporaries(path)
    stored, metadata = _read(path)
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    wanted = [jax.tree_util.keystr(key_path) for key_path, _ in flat]
    saved = [entry["path"] for _, entry in stored]
    if wanted != saved:
        i = next((i for i, (w, s) in enumerate(zip(wanted, saved)) if w != s), min(len(wanted), len(saved)))
        got = f"leaf {saved[i]}" if i < len(saved) else "no more leaves"
        want = f"leaf {wanted[i]}" if i < len(wanted) else "no more leaves"
        raise CheckpointError(
            f"load: checkpoint '{path}' has a different structure from the template "
            f"({len(saved)} leaves in the checkpoint, {len(wanted)} in the template); "
            f"the first difference is leaf #{i}: the checkpoint has {got} where the "
            f"template has {want}; pass a template built like the tree that was saved"
        )
    leaves = [
        _restore_leaf(path, where, array, entry, leaf) for where, (array, entry), (_, leaf) in zip(wanted, stored, flat)
    ]
    return jax.tree_util.tree_unflatten(treedef, leaves), metadata
