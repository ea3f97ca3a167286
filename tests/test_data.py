"""Datasets: toy, digits, IDX files and MNIST from a directory the tests write."""

import errno
import gzip
import os
import pathlib
import tracemalloc
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcprop import data

# --- toy -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", data.TOY_KINDS)
def test_toy_shapes_dtypes_balance_and_standardisation(kind):
    ds = data.toy(jax.random.key(0), n=201, kind=kind, test_fraction=0.2)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    assert ds.example_shape == (2,) and ds.num_classes == 2
    assert ds.name == f"toy-{kind}"
    assert len(ds.x_train) + len(ds.x_test) == 201
    # class 0 has 101 points, class 1 has 100; each keeps round(0.2 n_c) for test
    np.testing.assert_array_equal(np.bincount(ds.y_test), [20, 20])
    np.testing.assert_array_equal(np.bincount(ds.y_train), [81, 80])
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(axis=0), 1.0, atol=1e-5)
    assert np.all(np.isfinite(ds.x_test))
    # the splits are shuffled: labels are not sorted by class
    assert np.any(np.diff(ds.y_train) < 0) and np.any(np.diff(ds.y_test) < 0)


@pytest.mark.parametrize("kind", data.TOY_KINDS)
def test_toy_is_deterministic_per_key_and_differs_between_keys(kind):
    a = data.toy(jax.random.key(7), n=100, kind=kind)
    b = data.toy(jax.random.key(7), n=100, kind=kind)
    c = data.toy(jax.random.key(8), n=100, kind=kind)
    for x, y in zip(a[:4], b[:4]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.x_train, c.x_train)


def test_toy_classes_are_separable_by_their_curves():
    # without noise the two moons do not touch: a 1-nearest-neighbour classifier
    # built from the training points labels every test point correctly
    ds = data.toy(jax.random.key(0), n=400, noise=0.0)
    d = ((ds.x_test[:, None] - ds.x_train[None]) ** 2).sum(-1)
    predicted = ds.y_train[np.argmin(d, axis=1)]
    assert np.mean(predicted == ds.y_test) == 1.0


KEY = jax.random.key(0)
BAD_ARGUMENTS = [
    (
        "int-key",
        lambda: data.toy(0),
        TypeError,
        r"toy: key must be a JAX PRNG key.*, got 0; pass jax\.random\.key\(0\)",
    ),
    (
        "none-key",
        lambda: data.toy(None),
        TypeError,
        r"toy: key must be a JAX PRNG key \(one, not a batch\), got None; pass jax\.random\.key\(0\)",
    ),
    (
        "keys",
        lambda: data.toy(jax.random.split(KEY, 2)),
        TypeError,
        r"toy: key must be a JAX PRNG key \(one, not a batch\), got an array of key<fry>\(2,\)",
    ),
    ("kind", lambda: data.toy(KEY, kind="circles"), ValueError, r"toy: unknown kind 'circles'"),
    ("n", lambda: data.toy(KEY, n=1), ValueError, r"toy: n must be an int >= 2"),
    (
        "n-float",
        lambda: data.toy(KEY, n=100.0),
        ValueError,
        r"toy: n must be an int >= 2 \(one point per class\), got 100\.0",
    ),
    (
        "noise",
        lambda: data.toy(KEY, noise=-1.0),
        ValueError,
        r"toy: noise must be a finite number >= 0, got -1\.0; e\.g\. 0\.1",
    ),
    (
        "noise-nan",
        lambda: data.toy(KEY, noise=float("nan")),
        ValueError,
        r"toy: noise must be a finite number >= 0, got nan",
    ),
    ("noise-inf", lambda: data.toy(KEY, noise=np.inf), ValueError, r"toy: noise must be a finite number >= 0, got inf"),
    (
        "noise-str",
        lambda: data.toy(KEY, noise="0.1"),
        ValueError,
        r"toy: noise must be a finite number >= 0, got '0\.1'",
    ),
    ("noise-none", lambda: data.toy(KEY, noise=None), ValueError, r"toy: noise must be a finite number >= 0, got None"),
    ("fraction", lambda: data.toy(KEY, test_fraction=1.0), ValueError, r"toy: test_fraction must be in \(0, 1\)"),
    (
        "fraction-str",
        lambda: data.toy(KEY, test_fraction="0.25"),
        TypeError,
        r"toy: test_fraction must be a float, got '0\.25'",
    ),
    (
        "empty-test",
        lambda: data.toy(KEY, n=2, test_fraction=0.1),
        ValueError,
        r"toy: test_fraction=0.1 leaves the test set empty \(2 examples\)",
    ),
    (
        "digits-empty-test",
        lambda: data.digits(test_fraction=0.001),
        ValueError,
        r"digits: test_fraction=0.001 leaves the test set empty",
    ),
    (
        "digits-seed",
        lambda: data.digits(seed=-1),
        ValueError,
        r"digits: seed must be an int in \[0, 2\*\*32\), got -1; e\.g\. seed=0",
    ),
    (
        "digits-seed-str",
        lambda: data.digits(seed="0"),
        ValueError,
        r"digits: seed must be an int in \[0, 2\*\*32\), got '0'",
    ),
    (
        "digits-seed-none",
        lambda: data.digits(seed=None),
        ValueError,
        r"digits: seed must be an int in \[0, 2\*\*32\), got None",
    ),
    (
        "load-seed-float",
        lambda: data.load("toy", seed=1.5),
        ValueError,
        r"load: seed must be an int in \[0, 2\*\*32\), got 1\.5",
    ),
    (
        "load-seed-big",
        lambda: data.load("toy", seed=2**64),
        ValueError,
        r"load: seed must be an int in \[0, 2\*\*32\), got 18446744073709551616",
    ),
]


@pytest.mark.parametrize("call, exception, pattern", [t[1:] for t in BAD_ARGUMENTS], ids=[t[0] for t in BAD_ARGUMENTS])
def test_toy_and_digits_bad_arguments(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


def test_numpy_and_jax_scalars_are_accepted_where_python_numbers_are():
    want = data.toy(KEY, n=100, noise=0.1, test_fraction=0.25)
    got = data.toy(KEY, n=np.int64(100), noise=jnp.float32(0.1), test_fraction=np.float32(0.25))
    np.testing.assert_array_equal(got.y_train, want.y_train)
    assert data.digits(seed=np.int64(3), size=np.int64(16)).example_shape == (256,)


# --- digits ----------------------------------------------------------------------


def test_digits_shapes_range_and_stratification():
    ds = data.digits(seed=0, test_fraction=0.25)
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert ds.x_train.shape[1:] == (64,) and ds.example_shape == (64,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.num_classes == 10 and ds.name == "digits"
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() == 1.0
    counts = np.bincount(np.concatenate([ds.y_train, ds.y_test]), minlength=10)
    test_counts = np.bincount(ds.y_test, minlength=10)
    assert np.all(np.abs(test_counts - 0.25 * counts) <= 1)
    # train and test together are the whole dataset, each example exactly once
    from sklearn.datasets import load_digits

    def rows(x, y):
        return sorted(xi.tobytes() + bytes([int(yi)]) for xi, yi in zip(x, y))

    full_x, full_y = load_digits(return_X_y=True)
    assert rows((full_x / 16).astype(np.float32), full_y) == rows(
        np.concatenate([ds.x_train, ds.x_test]), np.concatenate([ds.y_train, ds.y_test])
    )


def test_digits_is_deterministic_per_seed_and_image_layout():
    a, b, c = data.digits(seed=3), data.digits(seed=3), data.digits(seed=4)
    for x, y in zip(a[:4], b[:4]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.y_train, c.y_train)
    img = data.digits(seed=3, image=True)
    assert img.x_train.shape == (len(a.x_train), 8, 8, 1) and img.example_shape == (8, 8, 1)
    np.testing.assert_array_equal(img.x_train.reshape(len(a.x_train), 64), a.x_train)
    np.testing.assert_array_equal(img.y_test, a.y_test)


# --- IDX -------------------------------------------------------------------------

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", IDX_DTYPES, ids=lambda d: np.dtype(d).name)
def test_idx_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    data.write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = data.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_big_endian_and_gzip_is_detected_by_content(tmp_path):
    data.write_idx(tmp_path / "a", np.array([[1, 2, 3]], np.int16))
    raw = (tmp_path / "a").read_bytes()
    assert raw == bytes([0, 0, 0x0B, 2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 1, 0, 2, 0, 3])
    (tmp_path / "gzipped-without-suffix").write_bytes(gzip.compress(raw))
    (tmp_path / "raw-with-suffix.gz").write_bytes(raw)
    for name in ("gzipped-without-suffix", "raw-with-suffix.gz"):
        np.testing.assert_array_equal(data.read_idx(tmp_path / name), [[1, 2, 3]])


def _good_idx() -> bytes:
    return bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"", r"is not an IDX file"),
        (b"\x01\x00\x08\x01", r"is not an IDX file: it must start with two zero bytes"),
        (bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 7]), r"unknown dtype code 0x0A"),
        (bytes([0, 0, 0x08, 3, 0, 0, 0, 2]), r"is truncated: its header declares 3 dimensions"),
        (_good_idx()[:-1], r"is truncated: shape \(2, 3\) of uint8 needs 6 data bytes but the file has 5"),
        (_good_idx() + b"\x00", r"is longer than its header says"),
        (gzip.compress(_good_idx())[:-6], r"is a damaged gzip file"),
    ],
    ids=["empty", "magic", "dtype-code", "header", "data", "extra", "gzip"],
)
def test_idx_malformed_files_raise_value_error_naming_the_file(tmp_path, content, pattern):
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"read_idx: '.*bad-idx' ") as err:
        data.read_idx(path)
    assert err.match(pattern)


def test_idx_whose_header_overflows_int64_is_truncated_not_miscounted(tmp_path):
    path = tmp_path / "huge"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + np.full(3, 2**31 - 1, ">i4").tobytes())
    with pytest.raises(
        ValueError,
        match=rf"read_idx: '.*huge' is truncated: shape \(2147483647, "
        rf"2147483647, 2147483647\) of uint8 needs {(2**31 - 1) ** 3} data bytes "
        r"but the file has 0",
    ):
        data.read_idx(path)


def test_a_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    # a header for 10 bytes, then 50 MB of zeros: 50 KB on disk
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    chunks = [squeeze.compress(bytes([0, 0, 0x08, 1, 0, 0, 0, 10]))]
    chunks += [squeeze.compress(bytes(1 << 20)) for _ in range(50)] + [squeeze.flush()]
    path = tmp_path / "bomb.gz"
    path.write_bytes(b"".join(chunks))
    assert path.stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(
            ValueError,
            match=r"read_idx: '.*bomb\.gz' is longer than its header "
            r"says: shape \(10,\) of uint8 needs 10 data bytes but the file has more",
        ):
            data.read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 << 20  # the 50 MB were never inflated


@pytest.mark.parametrize(
    "content, pattern",
    [
        (
            gzip.compress(_good_idx()[:-1]),
            r"is truncated: shape \(2, 3\) of uint8 needs 6 data bytes but the file has 5",
        ),
        (gzip.compress(_good_idx() + b"\x00"), r"is longer than its header says: .* but the file has more"),
        (
            gzip.compress(bytes([0, 0, 0x08, 3, 0, 0, 0, 2])),
            r"is truncated: its header declares 3 dimensions \(16 header bytes\) but the file has 8 bytes",
        ),
    ],
    ids=["data", "extra", "header"],
)
def test_gzipped_idx_of_the_wrong_length(tmp_path, content, pattern):
    path = tmp_path / "bad.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"read_idx: '.*bad\.gz' " + pattern):
        data.read_idx(path)


def test_idx_paths_that_are_no_files_are_named(tmp_path, monkeypatch):
    with pytest.raises(
        IsADirectoryError,
        match=r"^read_idx: '.*' is a directory; pass one IDX file "
        r"in it, such as '.*train-images-idx3-ubyte'$",
    ):
        data.read_idx(tmp_path)
    with pytest.raises(
        IsADirectoryError,
        match=r"^write_idx: '.*' is a directory, not an IDX file; "
        r"pass a file path such as '.*images.idx'$",
    ):
        data.write_idx(tmp_path, np.zeros(3, np.uint8))
    with pytest.raises(
        FileNotFoundError,
        match=r"^write_idx: the directory '.*no-folder' of '.*no-folder.x' "
        r"does not exist; create it first$",
    ):
        data.write_idx(tmp_path / "no-folder" / "x", np.zeros(3, np.uint8))
    path = tmp_path / "locked"
    data.write_idx(path, np.zeros(3, np.uint8))
    path.chmod(0)
    if os.geteuid() == 0:  # root reads any file: fail the open as the kernel does for a user
        real = pathlib.Path.open

        def open_as_user(self, *args, **kwargs):
            if self == path:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "open", open_as_user)
    with pytest.raises(
        PermissionError,
        match=r"^read_idx: cannot read '.*locked': permission "
        r"denied; make it readable \(chmod u\+r\) or copy it$",
    ):
        data.read_idx(path)


def test_idx_missing_file_and_unsupported_dtype(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"read_idx: no file at '.*nothing-here'"):
        data.read_idx(tmp_path / "nothing-here")
    with pytest.raises(TypeError, match=r"write_idx: IDX has no code for dtype int64"):
        data.write_idx(tmp_path / "x", np.arange(3, dtype=np.int64))


# --- MNIST -----------------------------------------------------------------------

MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _write_mnist(directory, n_train=20, n_test=10, suffix="", dotted=False, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    )
    for name, array in zip(MNIST_NAMES, arrays):
        name = name.replace("-idx", ".idx") if dotted else name
        data.write_idx(directory / (name + suffix), array)
    return arrays


@pytest.mark.parametrize("suffix, dotted", [("", False), (".gz", False), ("", True)], ids=["raw", "gz", "dotted"])
def test_mnist_from_a_directory(tmp_path, suffix, dotted):
    images, labels, t_images, t_labels = _write_mnist(tmp_path, suffix=suffix, dotted=dotted)
    ds = data.mnist(tmp_path)
    assert ds.x_train.shape == (20, 784) and ds.x_test.shape == (10, 784)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.num_classes == 10 and ds.name == "mnist"
    np.testing.assert_array_equal(ds.x_train, images.reshape(20, 784) / np.float32(255))
    np.testing.assert_array_equal(ds.y_train, labels)
    np.testing.assert_array_equal(ds.y_test, t_labels)
    img = data.mnist(tmp_path, image=True, limit=5)
    assert img.x_train.shape == (5, 28, 28, 1) and img.x_test.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(img.x_test[..., 0], t_images[:5] / np.float32(255))
    assert img.x_train.max() <= 1.0 and img.x_train.min() >= 0.0


def test_mnist_missing_file_lists_what_was_looked_for(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"mnist: no test labels file in '.*'; looked for "
        r"t10k-labels-idx1-ubyte, t10k-labels-idx1-ubyte\.gz, "
        r"t10k-labels\.idx1-ubyte, t10k-labels\.idx1-ubyte\.gz",
    ):
        data.mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"mnist: '.*nowhere' is not a directory"):
        data.mnist(tmp_path / "nowhere")


def test_mnist_inconsistent_files(tmp_path):
    _write_mnist(tmp_path)
    data.write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(19, np.uint8))
    with pytest.raises(ValueError, match=r"has 20 images but '.*train-labels-idx1-ubyte' has 19 labels"):
        data.mnist(tmp_path)
    data.write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(20, 10, np.uint8))
    with pytest.raises(ValueError, match=r"has label 10; MNIST labels must be in \[0, 10\)"):
        data.mnist(tmp_path)


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_mnist_without_images_names_the_file(tmp_path, split):
    _write_mnist(tmp_path)
    data.write_idx(tmp_path / f"{split}-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    data.write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.zeros(0, np.uint8))
    with pytest.raises(
        ValueError,
        match=rf"^mnist: '.*{split}-images-idx3-ubyte' has no images "
        r"\(shape \(0, 28, 28\)\); each split needs at least one image of at "
        r"least one pixel; write or download it again$",
    ):
        data.mnist(tmp_path)


# --- load ------------------------------------------------------------------------


def test_load_dispatches_by_name(tmp_path):
    assert data.load("toy", seed=1).name == "toy-moons"
    np.testing.assert_array_equal(data.load("toy", seed=1).x_train, data.toy(jax.random.key(1)).x_train)
    assert data.load("digits", image=True).example_shape == (8, 8, 1)
    _write_mnist(tmp_path)
    assert data.load("mnist", path=tmp_path).x_train.shape == (20, 784)
    assert data.DATASETS == ("toy", "digits", "mnist")


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(name="cifar"), r"load: unknown dataset 'cifar'; choose one of \('toy', 'digits', 'mnist'\)"),
        (dict(name="mnist"), r"load: 'mnist' needs path"),
        (dict(name="digits", path="somewhere"), r"load: path is only used by 'mnist'"),
        (dict(name="toy", image=True), r"load: 'toy' has 2 features and no image form"),
    ],
    ids=["unknown", "mnist-no-path", "path-for-digits", "toy-image"],
)
def test_load_bad_arguments(kwargs, pattern):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=pattern):
        data.load(name, **kwargs)


def test_digits_resized_to_mnist_shape_keep_the_split_and_the_pixels():
    small, big = data.digits(seed=3, image=True), data.digits(seed=3, image=True, size=28)
    assert big.x_train.shape == (len(small.x_train), 28, 28, 1) and big.name == "digits 28x28"
    np.testing.assert_array_equal(big.y_train, small.y_train)
    assert big.x_train.dtype == np.float32 and 0.0 <= big.x_train.min() and big.x_train.max() <= 1.0
    # bilinear resizing keeps each image's mean brightness
    np.testing.assert_allclose(big.x_test.mean(axis=(1, 2, 3)), small.x_test.mean(axis=(1, 2, 3)), atol=0.02)
    assert data.digits(size=16).example_shape == (256,)
    with pytest.raises(ValueError, match=r"digits: size must be an int >= 8 \(the images ship as 8x8\), got 4"):
        data.digits(size=4)
