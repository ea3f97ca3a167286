"""Datasets as NumPy arrays: a 2-D toy problem, scikit-learn's digits, and MNIST.

Every loader returns a :class:`Dataset` of float32 inputs and int32 class ids, split
into train and test, and is deterministic: :func:`toy` for a JAX PRNG key,
:func:`digits` for a seed, :func:`mnist` always (its split is the official one).
Nothing here touches the network: digits ships inside scikit-learn, and MNIST is read
from IDX files already on disk (:func:`read_idx`, with :func:`write_idx` for making
small files).

The arrays are NumPy, not JAX: :func:`funcprop.train.train` moves each split to the
device once, and its jitted epoch gathers the shuffled minibatches there (``x[idx]``).
"""

from __future__ import annotations

import math
import numbers
import os
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcprop.idx import read_idx, write_idx  # noqa: F401  (re-exported)

DATASETS = ("toy", "digits", "mnist")
TOY_KINDS = ("moons", "spirals")


class Dataset(NamedTuple):
    """A classification dataset split into train and test.

    Attributes:
      x_train: ``(N_train, *example_shape)`` float32 inputs.
      y_train: ``(N_train,)`` int32 class ids in ``[0, num_classes)``.
      x_test: ``(N_test, *example_shape)`` float32 inputs.
      y_test: ``(N_test,)`` int32 class ids.
      num_classes: the number of classes C.
      name: a short description, e.g. ``"digits"`` or ``"toy-moons"``.
    """

    x_train: np.ndarray  # (N_train, *example_shape) float32
    y_train: np.ndarray  # (N_train,) int32
    x_test: np.ndarray  # (N_test, *example_shape) float32
    y_test: np.ndarray  # (N_test,) int32
    num_classes: int
    name: str

    @property
    def example_shape(self) -> tuple:
        """One example's shape, without the batch axis: ``(2,)``, ``(8, 8, 1)``..."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, x_train={self.x_train.dtype}"
            f"{self.x_train.shape}, y_train={self.y_train.dtype}{self.y_train.shape}, "
            f"x_test={self.x_test.dtype}{self.x_test.shape}, "
            f"y_test={self.y_test.dtype}{self.y_test.shape}, "
            f"num_classes={self.num_classes})"
        )


def _is_int(x) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_seed(fn: str, seed) -> None:
    if not (_is_int(seed) and 0 <= seed < 2**32):
        raise ValueError(f"{fn}: seed must be an int in [0, 2**32), got {seed!r}; e.g. seed=0")


def _check_fraction(fn: str, test_fraction) -> float:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real):
        raise TypeError(f"{fn}: test_fraction must be a float, got {test_fraction!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"{fn}: test_fraction must be in (0, 1), got {test_fraction}; "
            f"e.g. 0.25 keeps a quarter of each class for testing"
        )
    return float(test_fraction)


def _check_split(fn: str, train, test, test_fraction: float) -> None:
    if test.size == 0 or train.size == 0:
        empty = "test" if test.size == 0 else "train"
        raise ValueError(
            f"{fn}: test_fraction={test_fraction} leaves the {empty} set empty "
            f"({train.size + test.size} examples); use more examples or another fraction"
        )


# --- toy -------------------------------------------------------------------------


def _toy_points(key, n0: int, n1: int, kind: str, noise: float) -> jax.Array:
    """``(n0 + n1, 2)`` float32 points, class 0 first; every point independent."""
    k_t, k_noise = jax.random.split(key)
    n = n0 + n1
    t = jax.random.uniform(k_t, (n,), dtype=jnp.float32)
    is_one = jnp.arange(n) >= n0
    if kind == "moons":
        # Two interleaved half circles: the upper one, and the lower one shifted.
        angle = jnp.pi * t
        upper = jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
        lower = jnp.stack([1.0 - jnp.cos(angle), 0.5 - jnp.sin(angle)], axis=1)
        points = jnp.where(is_one[:, None], lower, upper)
    else:
        # Two arms of 1.5 turns each, the second rotated by π.
        angle = 3.0 * jnp.pi * t + jnp.where(is_one, jnp.pi, 0.0).astype(jnp.float32)
        points = t[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    return points + noise * jax.random.normal(k_noise, (n, 2), dtype=jnp.float32)


def toy(key, n: int = 1000, kind: str = "moons", noise: float = 0.1, test_fraction: float = 0.25) -> Dataset:
    """A 2-D, 2-class problem: two moons or two spirals, drawn from ``key``.

    Half the points (class 0 gets the odd one) lie on each curve, plus Gaussian noise
    of standard deviation ``noise``. Each class keeps ``round(test_fraction * n_c)``
    points for testing. Features are standardised with the training mean and
    standard deviation. The same key gives the same dataset.

    Args:
      key: a JAX PRNG key, e.g. ``jax.random.key(0)``.
      n: the total number of points, train and test.
      kind: ``"moons"`` or ``"spirals"``.
      noise: the standard deviation of the noise, before standardisation (finite, >= 0).
      test_fraction: the share of each class held out for testing, in (0, 1).

    Returns:
      A :class:`Dataset` with ``x``: ``(N, 2)`` float32 and ``y``: ``(N,)`` int32.

    Example:
      >>> ds = toy(jax.random.key(0), n=200)
      >>> ds.x_train.shape, ds.x_test.shape, ds.num_classes
      ((150, 2), (50, 2), 2)
    """
    try:
        k_points, k_train, k_test = jax.random.split(key, 3)
    except (TypeError, ValueError):  # not a key, or a batch of keys
        got = f"an array of {key.dtype}{key.shape}" if hasattr(key, "shape") else repr(key)
        raise TypeError(
            f"toy: key must be a JAX PRNG key (one, not a batch), got {got}; pass "
            f"jax.random.key({int(key) if _is_int(key) else 0})"
        ) from None
    if kind not in TOY_KINDS:
        raise ValueError(f"toy: unknown kind {kind!r}; choose one of {TOY_KINDS}")
    if not _is_int(n) or n < 2:
        raise ValueError(f"toy: n must be an int >= 2 (one point per class), got {n!r}")
    if (
        np.ndim(noise) or np.asarray(noise).dtype.kind not in "iuf" or not (0 <= noise < math.inf)
    ):  # a real scalar (NumPy or JAX too), finite
        raise ValueError(f"toy: noise must be a finite number >= 0, got {noise!r}; e.g. 0.1")
    test_fraction = _check_fraction("toy", test_fraction)

    n0, n1 = n - n // 2, n // 2
    x = np.asarray(_toy_points(k_points, n0, n1, kind, float(noise)), np.float64)
    # Points are independent, so the first points of each class are a random sample.
    t0, t1 = round(test_fraction * n0), round(test_fraction * n1)
    test = np.r_[0:t0, n0 : n0 + t1]
    train = np.r_[t0:n0, n0 + t1 : n]
    _check_split("toy", train, test, test_fraction)
    train = train[np.asarray(jax.random.permutation(k_train, train.size))]
    test = test[np.asarray(jax.random.permutation(k_test, test.size))]

    y = (np.arange(n) >= n0).astype(np.int32)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    x = ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    return Dataset(x[train], y[train], x[test], y[test], 2, f"toy-{kind}")


# --- digits ----------------------------------------------------------------------


def _stratified_split(y: np.ndarray, test_fraction: float, rng) -> tuple:
    """Indices ``(train, test)``: per class, ``round(test_fraction * n_c)`` to test.

    The classes are visited in increasing order; each is shuffled with ``rng``, and
    both index sets are shuffled once more at the end so that classes are mixed.
    """
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = round(test_fraction * idx.size)
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def digits(seed: int = 0, test_fraction: float = 0.25, image: bool = False, size: int = 8) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), split.

    Pixel values (0..16) are scaled to [0, 1]. The split is stratified: each class
    ``c`` with ``n_c`` images keeps ``round(test_fraction * n_c)`` for testing,
    chosen by ``np.random.default_rng(seed)``; the same seed gives the same split.
    The data ship with scikit-learn; nothing is downloaded.

    Args:
      seed: the seed of the split, an int in [0, 2**32).
      test_fraction: the share of each class held out for testing, in (0, 1).
      image: if True, inputs are NHWC images ``(N, size, size, 1)``; else flat
        ``(N, size²)``.
      size: the images' side: 8 as they ship, or larger by bilinear resizing
        (``size=28`` gives MNIST-sized images, for MNIST-shaped runs without MNIST).

    Returns:
      A :class:`Dataset` with float32 inputs and int32 labels in ``[0, 10)``.
    """
    _check_seed("digits", seed)
    test_fraction = _check_fraction("digits", test_fraction)
    if not _is_int(size) or size < 8:
        raise ValueError(f"digits: size must be an int >= 8 (the images ship as 8x8), got {size!r}")
    size = int(size)
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("digits: needs scikit-learn, which is not installed; run `pip install scikit-learn`") from err
    x, y = load_digits(return_X_y=True)
    x = (np.asarray(x, np.float64) / 16.0).astype(np.float32)
    y = np.asarray(y, np.int32)
    train, test = _stratified_split(y, test_fraction, np.random.default_rng(seed))
    _check_split("digits", train, test, test_fraction)
    x = x.reshape(-1, 8, 8, 1)
    if size != 8:
        x = np.asarray(jax.image.resize(x, (x.shape[0], size, size, 1), "linear"), np.float32)
    if not image:
        x = x.reshape(x.shape[0], -1)
    name = "digits" if size == 8 else f"digits {size}x{size}"
    return Dataset(x[train], y[train], x[test], y[test], 10, name)


# --- MNIST -----------------------------------------------------------------------

_MNIST_FILES = (
    ("train images", "train-images-idx3-ubyte"),
    ("train labels", "train-labels-idx1-ubyte"),
    ("test images", "t10k-images-idx3-ubyte"),
    ("test labels", "t10k-labels-idx1-ubyte"),
)


def _find_mnist_file(directory: pathlib.Path, what: str, stem: str) -> pathlib.Path:
    dotted = stem.replace("-idx", ".idx")
    candidates = [name + gz for name in (stem, dotted) for gz in ("", ".gz")]
    for name in candidates:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"mnist: no {what} file in '{directory}'; looked for {', '.join(candidates)}. "
        f"Put the four standard MNIST files (raw or .gz) in that directory"
    )


def _mnist_split(images_file, labels_file, image: bool, limit):
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"mnist: '{images_file}' must hold uint8 images (N, rows, cols), got {images.dtype} of shape {images.shape}"
        )
    if images.size == 0:
        raise ValueError(
            f"mnist: '{images_file}' has no images (shape {images.shape}); each split "
            f"needs at least one image of at least one pixel; write or download it again"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(
            f"mnist: '{labels_file}' must hold uint8 labels (N,), got {labels.dtype} of shape {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"mnist: '{images_file}' has {images.shape[0]} images but '{labels_file}' "
            f"has {labels.shape[0]} labels; the files must come from the same split"
        )
    if labels.size and labels.max() >= 10:
        raise ValueError(f"mnist: '{labels_file}' has label {int(labels.max())}; MNIST labels must be in [0, 10)")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = images.astype(np.float32) / np.float32(255.0)
    x = x[..., None] if image else x.reshape(x.shape[0], -1)
    return x, labels.astype(np.int32)


def mnist(path, image: bool = False, limit: int | None = None) -> Dataset:
    """MNIST (or any dataset in its four-file IDX layout) from a local directory.

    The directory must hold ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each raw or with
    ``.gz``; the names with a dot (``train-images.idx3-ubyte``) are accepted too.
    Nothing is downloaded. The split is the official one (60000 / 10000).

    Args:
      path: the directory.
      image: if True, inputs are NHWC ``(N, 28, 28, 1)``; else flat ``(N, 784)``.
      limit: if given, keep only the first ``limit`` examples of each split (a quick
        run).

    Returns:
      A :class:`Dataset`: float32 pixels in [0, 1], int32 labels in ``[0, 10)``.

    Raises:
      FileNotFoundError: if the directory or one of the files is missing, listing
        the names looked for.
      ValueError: if a file is malformed, holds no images, or the files disagree.
    """
    directory = pathlib.Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"mnist: '{directory}' is not a directory; pass the directory that holds the four MNIST IDX files"
        )
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise ValueError(f"mnist: limit must be None or a positive int, got {limit!r}")
    found = [_find_mnist_file(directory, what, stem) for what, stem in _MNIST_FILES]
    x_train, y_train = _mnist_split(found[0], found[1], image, limit)
    x_test, y_test = _mnist_split(found[2], found[3], image, limit)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"mnist: train images are {x_train.shape[1:]} but test images are "
            f"{x_test.shape[1:]}; the files must come from the same dataset"
        )
    return Dataset(x_train, y_train, x_test, y_test, 10, "mnist")


# --- by name ---------------------------------------------------------------------


def load(name: str, *, seed: int = 0, path: str | os.PathLike | None = None, image: bool = False) -> Dataset:
    """Load a dataset by name: ``"toy"``, ``"digits"`` or ``"mnist"``.

    Args:
      name: one of :data:`DATASETS`.
      seed: ``toy`` draws from ``jax.random.key(seed)``; ``digits`` splits with
        ``seed``; ``mnist`` has a fixed split and does not use it.
      path: the directory of the MNIST files; required for ``mnist``, and only
        accepted for it.
      image: NHWC images instead of flat vectors (``digits`` and ``mnist``).

    Returns:
      The :class:`Dataset`.
    """
    if name not in DATASETS:
        raise ValueError(f"load: unknown dataset {name!r}; choose one of {DATASETS}")
    _check_seed("load", seed)
    if path is not None and name != "mnist":
        raise ValueError(f"load: path is only used by 'mnist', but name is {name!r}; drop path")
    if name == "toy":
        if image:
            raise ValueError(
                "load: 'toy' has 2 features and no image form; use image=False, or 'digits' or 'mnist' for images"
            )
        return toy(jax.random.key(seed))
    if name == "digits":
        return digits(seed, image=image)
    if path is None:
        raise ValueError(
            "load: 'mnist' needs path, the directory holding the four MNIST IDX files "
            "(train-images-idx3-ubyte, ...); nothing is downloaded"
        )
    return mnist(path, image=image)
