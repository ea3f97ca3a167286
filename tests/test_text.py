"""Byte-level text: the standard library's split, windows, the unigram baseline, sampling."""

import math
import pathlib
import sysconfig
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcprop import text
from funcprop.data import Dataset

ROOT = pathlib.Path(sysconfig.get_paths()["stdlib"])

# --- the standard library --------------------------------------------------------


def test_stdlib_files_are_sorted_library_code_only():
    files = text.stdlib_files()
    rel = [p.relative_to(ROOT).as_posix() for p in files]
    assert rel == sorted(rel) and len(set(rel)) == len(rel)
    assert len(files) > 100 and all(p.suffix == ".py" and p.is_file() for p in files)
    for r in rel:
        assert not set(r.split("/")[:-1]) & text.EXCLUDED_DIRS, r
    assert "os.py" in rel and "json/decoder.py" in rel


def test_the_split_is_by_crc32_of_the_name_disjoint_and_about_a_tenth():
    train, validation = text.stdlib_split()
    assert text.stdlib_split() == (train, validation)  # deterministic
    assert not set(train) & set(validation)
    assert sorted(train + validation, key=lambda p: p.relative_to(ROOT).as_posix()) == text.stdlib_files()
    for p in train + validation:
        assert (zlib.crc32(p.relative_to(ROOT).as_posix().encode()) % 10 == 0) == (p in validation)
    assert 0.05 < len(validation) / (len(train) + len(validation)) < 0.15


def test_load_text_caps_by_reading_files_in_order_each_followed_by_a_newline():
    train_files, val_files = text.stdlib_split()
    data = text.load_text(max_bytes=1600)
    assert data.train.dtype == np.uint8 and data.validation.dtype == np.uint8
    assert data.train.shape == (1600,) and data.validation.shape == (160,)
    expected_train = b"".join(p.read_bytes() + b"\n" for p in train_files[:20])[:1600]
    expected_val = b"".join(p.read_bytes() + b"\n" for p in val_files[:20])[:160]
    assert data.train.tobytes() == expected_train and data.validation.tobytes() == expected_val
    assert "standard library" in data.source and "max_bytes=1600" in data.source
    again = text.load_text(max_bytes=1600)
    np.testing.assert_array_equal(again.train, data.train)


def test_the_whole_stdlib_has_a_unigram_baseline_below_8_bits():
    data = text.load_text()
    train_files, val_files = text.stdlib_split()
    assert data.validation.size == sum(p.stat().st_size + 1 for p in val_files)
    assert f"{data.train.size:,}" in data.source and f"{len(train_files)} files" in data.source
    assert 3.0 < text.unigram_bits_per_byte(data.train, data.validation) < 8.0


# --- user files ------------------------------------------------------------------


def test_user_files_and_a_directory_split_the_last_tenth(tmp_path):
    a = tmp_path / "a.txt"
    a.write_bytes(bytes(range(100)))
    data = text.load_text(a)
    assert data.train.tobytes() == bytes(range(90)) and data.validation.tobytes() == bytes(range(90, 100))
    assert str(a) in data.source

    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "b.txt").write_bytes(b"b" * 40)
    (d / "a.txt").write_bytes(b"a" * 40)
    (d / "empty.txt").write_bytes(b"")  # skipped inside a directory
    joined = b"a" * 40 + b"\n" + b"b" * 40  # sorted by relative path: a.txt, sub/b.txt
    for paths in (d, str(d), [d / "a.txt", d / "sub" / "b.txt"]):
        data = text.load_text(paths)
        assert data.train.tobytes() + data.validation.tobytes() == joined
        assert data.validation.size == len(joined) // 10
    capped = text.load_text([a, d], max_bytes=50)
    assert capped.train.tobytes() == bytes(range(50)) and capped.validation.size == 5


# --- windows and the baseline ----------------------------------------------------


def test_windows_are_next_byte_examples_shifted_by_one():
    data = text.TextData(np.arange(23, dtype=np.uint8), np.arange(100, 111, dtype=np.uint8), "test")
    ds = text.windows(data, 5)
    assert isinstance(ds, Dataset) and ds.num_classes == 256
    assert ds.x_train.dtype == np.int32 and ds.y_train.dtype == np.int32
    # starts 0, 5, 10, 15 (20 + 5 + 1 > 23 stops); validation (11 bytes): 0 and 5
    np.testing.assert_array_equal(ds.x_train, np.arange(20).reshape(4, 5))
    np.testing.assert_array_equal(ds.y_train, ds.x_train + 1)
    np.testing.assert_array_equal(ds.x_test, np.arange(100, 110).reshape(2, 5))
    np.testing.assert_array_equal(ds.y_test, ds.x_test + 1)
    overlapping = text.windows(data, 5, stride=1)
    assert overlapping.x_train.shape == (18, 5) and overlapping.x_test.shape == (6, 5)
    np.testing.assert_array_equal(overlapping.x_train[:, 0], np.arange(18))
    assert text.windows(data, 10).x_test.shape == (1, 10)  # 11 bytes: the longest context


def test_unigram_bits_per_byte_is_laplace_smoothed_cross_entropy():
    train, validation = np.array([1, 1, 2, 7], np.uint8), np.array([1, 2, 3], np.uint8)
    p = np.ones(256)
    np.add.at(p, train, 1)
    p /= p.sum()  # (count + 1) / (4 + 256)
    expected = -np.mean(np.log2(p[validation]))
    assert text.unigram_bits_per_byte(train, validation) == pytest.approx(expected, rel=1e-12)
    assert text.unigram_bits_per_byte(b"\x01\x01\x02\x07", b"\x01\x02\x03") == pytest.approx(expected, rel=1e-12)
    assert text.unigram_bits_per_byte(b"", b"xyz") == pytest.approx(8.0)  # no data: uniform
    assert text.bits_per_byte(math.log(2.0)) == pytest.approx(1.0)
    assert text.bits_per_byte(jnp.float32(math.log(256.0))) == pytest.approx(8.0, rel=1e-6)


# --- sampling --------------------------------------------------------------------


def _next_is_plus_one(seen):
    def next_logits(window):
        seen.append(window.shape)
        return jnp.where(jnp.arange(256, dtype=jnp.int32) == (window[0, -1] + 1) % 256, 0.0, -jnp.inf).astype(
            jnp.float32
        )

    return next_logits


def _soft(window):
    # mass spread over the last byte's three successors, so samples differ between keys
    d = (jnp.arange(256, dtype=jnp.int32) - window[0, -1]) % 256
    return jnp.where((d >= 1) & (d <= 3), 0.0, -30.0).astype(jnp.float32)


@pytest.mark.parametrize("key", [jax.random.key(0), jax.random.PRNGKey(0)], ids=["typed", "raw"])
def test_generate_greedy_follows_the_model_with_a_fixed_window(key):
    seen = []
    out = text.generate(_next_is_plus_one(seen), b"ab", 5, key=key, temperature=0.0, context=4)
    assert out.dtype == np.uint8 and out.tobytes() == b"abcdefg"
    assert seen == [(1, 4)] * 5  # left-padded: one shape, one compilation
    wrapped = text.generate(_next_is_plus_one([]), [254], 3, key=key, temperature=0)
    np.testing.assert_array_equal(wrapped, [254, 255, 0, 1])
    # a one-hot model samples its byte at any temperature
    assert text.generate(_next_is_plus_one([]), "ab", 5, key=key, temperature=2.5).tobytes() == b"abcdefg"
    assert text.generate(_next_is_plus_one([]), "ab", 0, key=key).tobytes() == b"ab"


def test_generate_samples_reproducibly_from_the_key():
    key = jax.random.key(3)
    out = text.generate(jax.jit(_soft), b"x", 16, key=key, temperature=0.7)
    np.testing.assert_array_equal(out, text.generate(jax.jit(_soft), b"x", 16, key=key, temperature=0.7))
    assert not np.array_equal(out, text.generate(_soft, b"x", 16, key=jax.random.key(4), temperature=0.7))
    # the written-out recipe: step i draws categorical(split(key, steps)[i], logits / T)
    buf, keys = [ord("x")], jax.random.split(key, 16)
    for i in range(16):
        logits = _soft(jnp.asarray([buf[-1:]], jnp.int32))
        buf.append(int(jax.random.categorical(keys[i], logits / jnp.float32(0.7))))
    np.testing.assert_array_equal(out, buf)
    assert np.all(np.isin((out[1:].astype(int) - out[:-1]) % 256, [1, 2, 3]))


def test_decode_replaces_invalid_utf8():
    assert text.decode(np.frombuffer("héllo".encode(), np.uint8)) == "héllo"
    assert text.decode(b"a\xffb") == "a\ufffdb"


# --- errors ----------------------------------------------------------------------

ONE = text.TextData(np.zeros(50, np.uint8), np.zeros(5, np.uint8), "zeros")
KEY = jax.random.key(0)
G = lambda **kw: text.generate(_next_is_plus_one([]), **{"prompt": b"ab", "steps": 2, "key": KEY, **kw})

BAD_ARGUMENTS = [
    (
        "max_bytes-zero",
        lambda: text.load_text(max_bytes=0),
        ValueError,
        r"load_text: max_bytes must be None or a positive int, got 0",
    ),
    ("max_bytes-bool", lambda: text.load_text(max_bytes=True), ValueError, r"load_text: max_bytes .* got True"),
    ("max_bytes-float", lambda: text.load_text(max_bytes=1e6), ValueError, r"load_text: max_bytes .* got 1000000\.0"),
    (
        "max_bytes-small",
        lambda: text.load_text(max_bytes=15),
        ValueError,
        r"load_text: the corpus is too short: validation has 1 byte.*max_bytes >= 20",
    ),
    ("paths-empty-list", lambda: text.load_text([]), ValueError, r"load_text: paths is an empty list"),
    (
        "paths-int",
        lambda: text.load_text(3),
        TypeError,
        r"load_text: paths must be None, a path or a list of paths, got 3",
    ),
    ("context-zero", lambda: text.windows(ONE, 0), ValueError, r"windows: context must be a positive int, got 0"),
    ("context-bool", lambda: text.windows(ONE, True), ValueError, r"windows: context must be a positive int, got True"),
    (
        "context-long",
        lambda: text.windows(ONE, 5),
        ValueError,
        r"windows: context=5 needs at least 6 bytes .* train has 50 and validation 5; use context <= 4",
    ),
    (
        "stride",
        lambda: text.windows(ONE, 2, stride=0),
        ValueError,
        r"windows: stride must be None or a positive int, got 0",
    ),
    ("data", lambda: text.windows(np.zeros(9, np.uint8), 2), TypeError, r"windows: data must be a TextData"),
    (
        "unigram-range",
        lambda: text.unigram_bits_per_byte([0, 256], [1]),
        ValueError,
        r"unigram_bits_per_byte: train must hold byte values in \[0, 256\), got values in \[0, 256\]",
    ),
    (
        "unigram-empty",
        lambda: text.unigram_bits_per_byte([1], []),
        ValueError,
        r"unigram_bits_per_byte: validation is empty",
    ),
    ("bpb", lambda: text.bits_per_byte("2.0"), TypeError, r"bits_per_byte: mean_nats must be a real scalar"),
    (
        "key-int",
        lambda: G(key=0),
        TypeError,
        r"generate: key must be one JAX PRNG key .*got 0; pass jax\.random\.key\(0\)",
    ),
    (
        "key-batch",
        lambda: G(key=jax.random.split(KEY, 2)),
        TypeError,
        r"generate: key must be one JAX PRNG key .*got an array of key<fry>\(2,\)",
    ),
    (
        "temperature-neg",
        lambda: G(temperature=-1.0),
        ValueError,
        r"generate: temperature must be finite and >= 0, got -1\.0",
    ),
    (
        "temperature-inf",
        lambda: G(temperature=math.inf),
        ValueError,
        r"generate: temperature must be finite and >= 0, got inf",
    ),
    (
        "temperature-nan",
        lambda: G(temperature=math.nan),
        ValueError,
        r"generate: temperature must be finite and >= 0, got nan",
    ),
    (
        "temperature-bool",
        lambda: G(temperature=True),
        TypeError,
        r"generate: temperature must be a real number, got True",
    ),
    ("steps-neg", lambda: G(steps=-1), ValueError, r"generate: steps must be an int >= 0, got -1"),
    ("steps-float", lambda: G(steps=2.0), ValueError, r"generate: steps must be an int >= 0, got 2\.0"),
    ("context", lambda: G(context=0), ValueError, r"generate: context must be None or a positive int, got 0"),
    ("prompt-empty", lambda: G(prompt=b""), ValueError, r"generate: the prompt is empty and context is None"),
    ("prompt-range", lambda: G(prompt=[300]), ValueError, r"generate: prompt must hold byte values in \[0, 256\)"),
    (
        "logits-shape",
        lambda: text.generate(lambda w: jnp.zeros((1, 256)), b"a", 1, key=KEY),
        ValueError,
        r"generate: next_logits returned shape \(1, 256\) for a \(1, 1\) window",
    ),
    (
        "not-callable",
        lambda: text.generate(None, b"a", 1, key=KEY),
        TypeError,
        r"generate: next_logits must be a function",
    ),
]


@pytest.mark.parametrize("make, error, match", [c[1:] for c in BAD_ARGUMENTS], ids=[c[0] for c in BAD_ARGUMENTS])
def test_bad_arguments_are_named(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load_text: '.*missing\.txt' does not exist.*paths=None"):
        text.load_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"load_text: '.*empty\.txt' is empty \(0 bytes\)"):
        text.load_text(tmp_path / "empty.txt")
    (tmp_path / "hollow").mkdir()
    with pytest.raises(ValueError, match=r"load_text: directory '.*hollow' holds no non-empty files"):
        text.load_text(tmp_path / "hollow")
    (tmp_path / "short.txt").write_bytes(b"x" * 19)  # 1 validation byte
    with pytest.raises(ValueError, match=r"load_text: the corpus is too short: validation has 1 byte.*at least 20"):
        text.load_text(tmp_path / "short.txt")
