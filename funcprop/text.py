"""Byte-level text for a small language model: this machine's Python standard library.

:func:`load_text` returns a :class:`TextData` of two uint8 arrays, ``train: (N_train,)``
and ``validation: (N_val,)``, read from the ``.py`` files of the standard library
(:func:`stdlib_files`, split by file with :func:`stdlib_split`) or from text files the
user names. Nothing is downloaded. :func:`windows` cuts them into next-byte examples, a
:class:`funcprop.data.Dataset` of int32 ``(M, T)`` inputs and targets shifted by one;
:func:`unigram_bits_per_byte` is the baseline a model must beat, :func:`bits_per_byte`
converts a mean cross-entropy in nats, and :func:`generate` samples bytes from a model's
next-byte logits (:func:`decode` turns them into a string).

The standard library differs between Python builds (version, platform, what the
distribution ships), so its bits per byte are comparable within one run, or between runs
on one interpreter, not across machines: :attr:`TextData.source` records which one.
"""

from __future__ import annotations

import math
import os
import pathlib
import sys
import sysconfig
import zlib
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcprop.data import Dataset, _is_int

VOCAB_SIZE = 256  # one symbol per byte value
VALIDATION_EVERY = 10  # a stdlib file is for validation iff crc32(relative path) % 10 == 0
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"})
PAD_BYTE = ord("\n")  # what generate() puts left of a prompt shorter than its context
MIN_SPLIT_BYTES = 2  # one next-byte example: one input byte and the byte after it


class TextData(NamedTuple):
    """A byte corpus split into train and validation.

    Attributes:
      train: ``(N_train,)`` uint8 bytes.
      validation: ``(N_val,)`` uint8 bytes.
      source: one line: where the bytes come from, how many files, how many bytes.
    """

    train: np.ndarray  # (N_train,) uint8
    validation: np.ndarray  # (N_val,) uint8
    source: str

    def __repr__(self) -> str:
        return f"TextData(train=uint8({self.train.size},), validation=uint8({self.validation.size},), source={self.source!r})"


# --- the standard library --------------------------------------------------------


def _stdlib_root() -> pathlib.Path:
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[pathlib.Path]:
    """The ``.py`` files of this interpreter's standard library, in a fixed order.

    They are the files under ``sysconfig.get_paths()["stdlib"]``, outside any directory
    named ``site-packages``, ``dist-packages``, ``test``, ``tests``, ``idlelib`` or
    ``__pycache__`` (installed packages and the test suites are left out, so the corpus is
    ordinary library code of bounded size), sorted by their relative POSIX path.
    Symbolic links to directories are not followed.

    Returns:
      Absolute paths.
    """
    root = _stdlib_root()
    found = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in EXCLUDED_DIRS]
        found.extend(pathlib.Path(directory, f) for f in files if f.endswith(".py"))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _is_validation(relative_posix: str) -> bool:
    return zlib.crc32(relative_posix.encode()) % VALIDATION_EVERY == 0


def stdlib_split() -> tuple[list[pathlib.Path], list[pathlib.Path]]:
    """:func:`stdlib_files` split into ``(train, validation)`` files.

    A file goes to validation iff ``zlib.crc32(relative_path.as_posix().encode()) % 10
    == 0`` (about 10% of the files): the split depends on each file's name alone, not on
    the listing, so a file added or removed by another build moves no other file.
    """
    root = _stdlib_root()
    train, validation = [], []
    for path in stdlib_files():
        (validation if _is_validation(path.relative_to(root).as_posix()) else train).append(path)
    return train, validation


def _read_until(files: list[pathlib.Path], cap: int | None) -> tuple[np.ndarray, int]:
    """The files concatenated, each followed by ``b"\\n"``, stopping after ``cap`` bytes."""
    chunks, size = [], 0
    for path in files:
        if cap is not None and size >= cap:
            break
        chunk = path.read_bytes() + b"\n"
        chunks.append(chunk)
        size += len(chunk)
    data = np.frombuffer(b"".join(chunks), np.uint8)
    return data[:cap].copy() if cap is not None else data.copy(), len(chunks)


# --- user files ------------------------------------------------------------------


def _user_files(paths) -> list[pathlib.Path]:
    """The files ``paths`` names: a file, or a directory's non-empty files, in order."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    try:
        items = list(items)
    except TypeError:
        raise TypeError(
            f"load_text: paths must be None, a path or a list of paths, got {paths!r}; "
            f"e.g. load_text('notes.txt') or load_text(['a.txt', 'docs/'])"
        ) from None
    if not items:
        raise ValueError("load_text: paths is an empty list; name at least one text file or directory, or pass None")
    files = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"load_text: each path must be a str or os.PathLike, got {item!r}")
        path = pathlib.Path(item)
        if path.is_dir():
            inside = sorted(
                (p for p in path.rglob("*") if p.is_file() and p.stat().st_size > 0),
                key=lambda p: p.relative_to(path).as_posix(),
            )
            if not inside:
                raise ValueError(
                    f"load_text: directory '{path}' holds no non-empty files; put text files in it or name other paths"
                )
            files.extend(inside)
        elif path.is_file():
            if path.stat().st_size == 0:
                raise ValueError(f"load_text: '{path}' is empty (0 bytes); name a file with text in it, or drop it")
            files.append(path)
        else:
            raise FileNotFoundError(
                f"load_text: '{path}' does not exist (or is not a regular file or directory); pass a "
                f"text file, a directory of text files or a list of them, or paths=None for the standard library"
            )
    return files


def _check_lengths(train: np.ndarray, validation: np.ndarray, fix: str) -> None:
    for name, split in (("train", train), ("validation", validation)):
        if split.size < MIN_SPLIT_BYTES:
            raise ValueError(
                f"load_text: the corpus is too short: {name} has {split.size} byte(s) (train {train.size}, "
                f"validation {validation.size}), but each split needs at least {MIN_SPLIT_BYTES} (one input "
                f"byte and the next); {fix}"
            )


def load_text(paths=None, *, max_bytes: int | None = None) -> TextData:
    """Bytes to train a byte-level language model on, split into train and validation.

    With ``paths=None``, the standard library's ``.py`` files (:func:`stdlib_split`):
    the train files concatenated in order, each followed by ``b"\\n"``, and likewise the
    validation files. With ``paths``, the bytes of those files concatenated in order with
    ``b"\\n"`` between them (one file is read as it is); a directory stands for its
    non-empty files, recursively, sorted by relative path; every file is read as raw
    bytes. The last 10% of those bytes (``N // 10``) are the validation text.

    With ``max_bytes``, train keeps its first ``max_bytes`` bytes and validation its first
    ``max_bytes // 10``; the standard library's files are then read only as far as needed.
    Everything is deterministic, but the standard library differs between Python builds:
    compare bits per byte within one run (or one interpreter), not across machines.

    Args:
      paths: None, a path (file or directory), or a list of paths.
      max_bytes: None, or a positive int capping the train bytes (validation gets a
        tenth); each split needs at least 2 bytes, so at least 20.

    Returns:
      A :class:`TextData`; ``source`` says where the bytes came from.

    Raises:
      FileNotFoundError: a path that does not exist.
      ValueError: an empty file, an empty directory, a corpus too short to split, or a
        ``max_bytes`` that is not a positive int (a bool is not an int).
    """
    if max_bytes is not None and not (_is_int(max_bytes) and max_bytes > 0):
        raise ValueError(
            f"load_text: max_bytes must be None or a positive int, got {max_bytes!r}; e.g. max_bytes=1_000_000"
        )
    cap_val = None if max_bytes is None else int(max_bytes) // 10
    capped = "" if max_bytes is None else f" (max_bytes={int(max_bytes)})"
    if paths is None:
        train_files, val_files = stdlib_split()
        train, n_train = _read_until(train_files, max_bytes)
        validation, n_val = _read_until(val_files, cap_val)
        _check_lengths(
            train,
            validation,
            "pass max_bytes >= 20" if max_bytes is not None else "this standard library is too small; name text files",
        )
        v = sys.version_info
        source = (
            f"Python {v.major}.{v.minor}.{v.micro} standard library at {_stdlib_root()}: train {train.size:,} bytes "
            f"from {n_train} of {len(train_files)} files, validation {validation.size:,} bytes from {n_val} of "
            f"{len(val_files)} files (crc32 split){capped}"
        )
        return TextData(train, validation, source)

    files = _user_files(paths)
    data = np.frombuffer(b"\n".join(p.read_bytes() for p in files), np.uint8)
    n_val = data.size // 10
    train, validation = data[: data.size - n_val], data[data.size - n_val :]
    if max_bytes is not None:
        train, validation = train[:max_bytes], validation[:cap_val]
    _check_lengths(
        train, validation, "name more text (at least 20 bytes in all)" + (", or a larger max_bytes" if capped else "")
    )
    where = f"'{files[0]}'" if len(files) == 1 else f"{len(files)} files ('{files[0]}', ...)"
    source = (
        f"{where}: {data.size:,} bytes; train {train.size:,} bytes, validation {validation.size:,} bytes "
        f"(the last 10%){capped}"
    )
    return TextData(train.copy(), validation.copy(), source)


# --- next-byte examples and the baseline -----------------------------------------


def _windows(text: np.ndarray, context: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    w = np.lib.stride_tricks.sliding_window_view(text, context + 1)[::stride].astype(np.int32)
    return np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])


def windows(data: TextData, context: int, *, stride: int | None = None) -> Dataset:
    """Next-byte prediction examples: ``x = text[i : i+T]``, ``y = text[i+1 : i+T+1]``.

    The starts are ``i = 0, stride, 2·stride, ...`` while ``i + T + 1 <= N``; the default
    stride T gives non-overlapping windows (each byte is a target once). A smaller stride
    copies each byte ``T / stride`` times: the full standard library at stride 1 and
    T = 256 would be about 10 GB.

    Args:
      data: a :class:`TextData`.
      context: T, the window's length, a positive int below both splits' lengths.
      stride: the step between windows' starts, a positive int; None means T.

    Returns:
      A :class:`funcprop.data.Dataset`: ``x_train``, ``y_train``: ``(M_train, T)``
      int32 byte values (not float32 inputs, unlike the image datasets), ``x_test``,
      ``y_test``: ``(M_val, T)`` int32 from the validation text; ``num_classes`` 256.
    """
    if not isinstance(data, TextData):
        raise TypeError(f"windows: data must be a TextData (from load_text), got {type(data).__name__}")
    if not (_is_int(context) and context > 0):
        raise ValueError(f"windows: context must be a positive int, got {context!r}; e.g. context=64")
    context = int(context)
    if stride is None:
        stride = context
    if not (_is_int(stride) and stride > 0):
        raise ValueError(f"windows: stride must be None or a positive int, got {stride!r}")
    shortest = min(data.train.size, data.validation.size)
    if context + 1 > shortest:
        raise ValueError(
            f"windows: context={context} needs at least {context + 1} bytes per split (T inputs and the "
            f"byte after them), but train has {data.train.size} and validation {data.validation.size}; use "
            f"context <= {max(shortest - 1, 0)}, or more text (a larger max_bytes)"
        )
    x_train, y_train = _windows(data.train, context, int(stride))
    x_test, y_test = _windows(data.validation, context, int(stride))
    return Dataset(x_train, y_train, x_test, y_test, VOCAB_SIZE, f"text bytes, context {context}")


def _as_bytes(fn: str, name: str, x) -> np.ndarray:
    """``x`` (bytes, str, or integers in [0, 256)) as a 1-D uint8 array."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(x), np.uint8).copy()
    if isinstance(x, str):
        return np.frombuffer(x.encode("utf-8"), np.uint8).copy()
    a = np.asarray(x)
    if a.ndim == 1 and a.size == 0:
        return np.zeros(0, np.uint8)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise ValueError(f"{fn}: {name} must be bytes or a 1-D array of integers, got {a.dtype}{a.shape}")
    if a.size and (a.min() < 0 or a.max() >= VOCAB_SIZE):
        raise ValueError(
            f"{fn}: {name} must hold byte values in [0, 256), got values in [{a.min()}, {a.max()}]; "
            f"it is not a byte sequence"
        )
    return a.astype(np.uint8)


def unigram_bits_per_byte(train, validation) -> float:
    """Bits per byte of ``validation`` under ``train``'s byte frequencies (a baseline).

    With add-one (Laplace) smoothing over the 256 byte values,
    ``p(b) = (count_train(b) + 1) / (N_train + 256)``, and the result is
    ``−(1/N_val) Σ_i log2 p(validation_i)``. A model that ignores context can reach it;
    8 is a uniform guess.

    Args:
      train: ``(N_train,)`` bytes (uint8, ``bytes``, or integers in [0, 256)).
      validation: ``(N_val,)`` bytes, at least one.
    """
    train = _as_bytes("unigram_bits_per_byte", "train", train)
    validation = _as_bytes("unigram_bits_per_byte", "validation", validation)
    if validation.size == 0:
        raise ValueError("unigram_bits_per_byte: validation is empty; pass at least one byte to score")
    counts = np.bincount(train, minlength=VOCAB_SIZE).astype(np.float64) + 1.0
    log2_p = np.log2(counts / counts.sum())
    return float(-(np.bincount(validation, minlength=VOCAB_SIZE) @ log2_p) / validation.size)


def bits_per_byte(mean_nats: float) -> float:
    """``mean_nats / ln 2``: a mean cross-entropy per byte in nats, in bits per byte."""
    if isinstance(mean_nats, bool) or np.ndim(mean_nats) or np.asarray(mean_nats).dtype.kind not in "iuf":
        raise TypeError(f"bits_per_byte: mean_nats must be a real scalar (a mean loss in nats), got {mean_nats!r}")
    return float(mean_nats) / math.log(2.0)


# --- sampling --------------------------------------------------------------------


def _check_key(fn: str, key) -> None:
    ok = False
    if isinstance(key, (jax.Array, np.ndarray)):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            ok = key.shape == ()
        else:
            ok = key.dtype == np.uint32 and key.shape == (2,)
    if not ok:
        got = f"an array of {key.dtype}{key.shape}" if hasattr(key, "shape") else repr(key)
        raise TypeError(
            f"{fn}: key must be one JAX PRNG key (typed, or a raw uint32 (2,) key), got {got}; "
            f"pass jax.random.key({int(key) if _is_int(key) else 0})"
        )


@jax.jit
def _sample(key, logits, temperature):
    return jax.random.categorical(key, logits / temperature)


def generate(
    next_logits: Callable, prompt, steps: int, *, key, temperature: float = 1.0, context: int | None = None
) -> np.ndarray:
    """Sample ``steps`` bytes after ``prompt``, one at a time, recomputing each window.

    The window is always T bytes long (``T = context``, or the prompt's length), so a
    jitted ``next_logits`` compiles once: a prompt shorter than T is left-padded with
    ``b"\\n"`` (:data:`PAD_BYTE`, as at the start of a file), and the window then slides
    over the prompt and the bytes generated so far. Step i draws
    ``jax.random.categorical(keys[i], logits / temperature)`` with
    ``keys = jax.random.split(key, steps)``; temperature 0 takes the argmax instead (the
    key is then unused, but still checked).

    Args:
      next_logits: maps an int32 window ``(1, T)`` to the ``(256,)`` logits of the byte
        that follows it.
      prompt: the bytes to continue: ``bytes``, ``str`` (encoded as UTF-8) or integers in
        [0, 256); may be empty when ``context`` is given.
      steps: how many bytes to generate, an int >= 0.
      key: a JAX PRNG key, typed (``jax.random.key(0)``) or raw (``jax.random.PRNGKey(0)``).
      temperature: a finite number >= 0.
      context: T, a positive int; None means the prompt's length.

    Returns:
      ``(len(prompt) + steps,)`` uint8: the prompt, then the generated bytes.
    """
    if not callable(next_logits):
        raise TypeError(f"generate: next_logits must be a function of an int32 (1, T) window, got {next_logits!r}")
    prompt = _as_bytes("generate", "prompt", prompt)
    if not (_is_int(steps) and steps >= 0):
        raise ValueError(f"generate: steps must be an int >= 0, got {steps!r}; e.g. steps=200")
    _check_key("generate", key)
    if isinstance(temperature, bool) or np.ndim(temperature) or np.asarray(temperature).dtype.kind not in "iuf":
        raise TypeError(f"generate: temperature must be a real number, got {temperature!r}; e.g. temperature=1.0")
    if not 0.0 <= float(temperature) < math.inf:
        raise ValueError(
            f"generate: temperature must be finite and >= 0, got {temperature!r}; 0 is greedy, 1 samples the model"
        )
    temperature = float(temperature)
    if context is None:
        if prompt.size == 0:
            raise ValueError("generate: the prompt is empty and context is None; give a prompt or context=T")
        context = prompt.size
    elif not (_is_int(context) and context > 0):
        raise ValueError(f"generate: context must be None or a positive int, got {context!r}")
    context = int(context)
    steps = int(steps)

    buf = np.concatenate([np.full(context, PAD_BYTE, np.uint8), prompt, np.zeros(steps, np.uint8)])
    keys = jax.random.split(key, steps) if steps and temperature > 0 else None
    for i in range(steps):
        end = context + prompt.size + i
        logits = next_logits(jnp.asarray(buf[end - context : end][None], jnp.int32))
        if np.shape(logits) != (VOCAB_SIZE,):
            raise ValueError(
                f"generate: next_logits returned shape {np.shape(logits)} for a (1, {context}) window; it must "
                f"return the ({VOCAB_SIZE},) logits of the next byte (e.g. index the last position: [0, -1])"
            )
        if temperature == 0.0:
            buf[end] = int(jnp.argmax(logits))
        else:
            logits = jnp.asarray(logits)
            if not jnp.issubdtype(logits.dtype, jnp.floating):
                logits = logits.astype(jnp.float32)
            buf[end] = int(_sample(keys[i], logits, jnp.asarray(temperature, logits.dtype)))
    return buf[context:].copy()


def decode(data) -> str:
    """Bytes (uint8, ``bytes``, or integers in [0, 256)) as text: UTF-8, errors replaced."""
    return _as_bytes("decode", "data", data).tobytes().decode("utf-8", errors="replace")
