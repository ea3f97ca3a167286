"""Datasets: toy, digits, IDX files and MNIST from a directory the tests write."""

import gzip

import jax
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


@pytest.mark.parametrize("call, exception, pattern", [
    (lambda: data.toy(0), TypeError, r"toy: key must be a JAX PRNG key.*jax\.random\.key\(0\)"),
    (lambda: data.toy(jax.random.key(0), kind="circles"), ValueError, r"toy: unknown kind 'circles'"),
    (lambda: data.toy(jax.random.key(0), n=1), ValueError, r"toy: n must be an int >= 2"),
    (lambda: data.toy(jax.random.key(0), noise=-1.0), ValueError, r"toy: noise must be >= 0"),
    (lambda: data.toy(jax.random.key(0), test_fraction=1.0), ValueError, r"toy: test_fraction must be in \(0, 1\)"),
    (lambda: data.toy(jax.random.key(0), n=2, test_fraction=0.1), ValueError, r"toy: test_fraction=0.1 leaves the test set empty \(2 examples\)"),
    (lambda: data.digits(test_fraction=0.001), ValueError, r"digits: test_fraction=0.001 leaves the test set empty"),
], ids=["int-key", "kind", "n", "noise", "fraction", "empty-test", "digits-empty-test"])
def test_toy_and_digits_bad_arguments(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


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
        np.concatenate([ds.x_train, ds.x_test]), np.concatenate([ds.y_train, ds.y_test]))


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


@pytest.mark.parametrize("content, pattern", [
    (b"", r"is not an IDX file"),
    (b"\x01\x00\x08\x01", r"is not an IDX file: it must start with two zero bytes"),
    (bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 7]), r"unknown dtype code 0x0A"),
    (bytes([0, 0, 0x08, 3, 0, 0, 0, 2]), r"is truncated: its header declares 3 dimensions"),
    (_good_idx()[:-1], r"is truncated: shape \(2, 3\) of uint8 needs 6 data bytes but the file has 5"),
    (_good_idx() + b"\x00", r"is longer than its header says"),
    (gzip.compress(_good_idx())[:-6], r"is a damaged gzip file"),
], ids=["empty", "magic", "dtype-code", "header", "data", "extra", "gzip"])
def test_idx_malformed_files_raise_value_error_naming_the_file(tmp_path, content, pattern):
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"read_idx: '.*bad-idx' ") as err:
        data.read_idx(path)
    assert err.match(pattern)


def test_idx_missing_file_and_unsupported_dtype(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"read_idx: no file at '.*nothing-here'"):
        data.read_idx(tmp_path / "nothing-here")
    with pytest.raises(TypeError, match=r"write_idx: IDX has no code for dtype int64"):
        data.write_idx(tmp_path / "x", np.arange(3, dtype=np.int64))


# --- MNIST -----------------------------------------------------------------------

MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _write_mnist(directory, n_train=20, n_test=10, suffix="", dotted=False, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    arrays = (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              rng.integers(0, 10, n_train, dtype=np.uint8),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              rng.integers(0, 10, n_test, dtype=np.uint8))
    for name, array in zip(MNIST_NAMES, arrays):
        name = name.replace("-idx", ".idx") if dotted else name
        data.write_idx(directory / (name + suffix), array)
    return arrays


@pytest.mark.parametrize("suffix, dotted", [("", False), (".gz", False), ("", True)],
                         ids=["raw", "gz", "dotted"])
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
    with pytest.raises(FileNotFoundError, match=r"mnist: no test labels file in '.*'; looked for "
                       r"t10k-labels-idx1-ubyte, t10k-labels-idx1-ubyte\.gz, "
                       r"t10k-labels\.idx1-ubyte, t10k-labels\.idx1-ubyte\.gz"):
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


# --- load ------------------------------------------------------------------------


def test_load_dispatches_by_name(tmp_path):
    assert data.load("toy", seed=1).name == "toy-moons"
    np.testing.assert_array_equal(data.load("toy", seed=1).x_train,
                                  data.toy(jax.random.key(1)).x_train)
    assert data.load("digits", image=True).example_shape == (8, 8, 1)
    _write_mnist(tmp_path)
    assert data.load("mnist", path=tmp_path).x_train.shape == (20, 784)
    assert data.DATASETS == ("toy", "digits", "mnist")


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(name="cifar"), r"load: unknown dataset 'cifar'; choose one of \('toy', 'digits', 'mnist'\)"),
    (dict(name="mnist"), r"load: 'mnist' needs path"),
    (dict(name="digits", path="somewhere"), r"load: path is only used by 'mnist'"),
    (dict(name="toy", image=True), r"load: 'toy' has 2 features and no image form"),
], ids=["unknown", "mnist-no-path", "path-for-digits", "toy-image"])
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
