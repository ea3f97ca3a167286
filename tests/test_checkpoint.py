"""Checkpoints: bit-for-bit round trips, corruption caught, old files never lost."""

import errno
import hashlib
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcprop import atomic
from funcprop import checkpoint as ckpt
from funcprop.checkpoint import CheckpointError


class Params(NamedTuple):
    omega: jax.Array  # (n_out, n_in)
    beta: jax.Array  # (n_out,)


def make_state(seed=0, impl="threefry2x32"):
    """A training state as a script would save it: params, adam state, key, step."""
    k = jax.random.split(jax.random.key(seed), 3)
    params = [
        Params(jax.random.normal(k[0], (4, 2), jnp.float32), jnp.zeros(4, jnp.float32)),
        Params(jax.random.normal(k[1], (3, 4), jnp.float64), jnp.ones(3, jnp.float64)),
    ]
    opt_state = optax.adam(1e-3).init(params)
    return {
        "params": params,
        "opt_state": opt_state,
        "key": jax.random.key(seed + 1, impl=impl),
        "keys": jax.random.split(jax.random.key(seed + 2, impl=impl), 4),
        "epoch": 7,
        "best": 0.25,
        "done": False,
        "counts": np.arange(5, dtype=np.int16),
        "scale": np.float32(1.5),
        "half": jnp.linspace(-1, 1, 5, dtype=jnp.bfloat16),
        "none": None,
    }


def assert_same_tree(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert type(g) is type(w) or (isinstance(g, jax.Array) and isinstance(w, jax.Array))
        if ckpt._is_key(w):
            assert ckpt._is_key(g) and jax.random.key_impl(g) == jax.random.key_impl(w)
            g, w = jax.random.key_data(g), jax.random.key_data(w)
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape
        assert g.tobytes() == w.tobytes()  # bit for bit (NaN-safe)


# --- round trip ------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_round_trip_is_bit_for_bit(tmp_path, impl):
    state = make_state(impl=impl)
    state["params"][0] = Params(state["params"][0].omega.at[0, 0].set(jnp.nan), state["params"][0].beta)
    meta = {"epoch": np.int64(7), "seed": 0, "config": {"sizes": (2, 4, 3)}, "loss": math.nan}
    written = ckpt.save(tmp_path / "state.ckpt", state, metadata=meta)
    assert written == tmp_path / "state.ckpt"
    assert os.listdir(tmp_path) == ["state.ckpt"]  # no temporary file left behind

    restored, metadata = ckpt.load(written, like=make_state(seed=5, impl=impl))
    assert_same_tree(restored, state)
    assert isinstance(restored["epoch"], int) and restored["epoch"] == 7
    assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
    assert isinstance(restored["params"][1], Params)
    assert metadata["config"] == {"sizes": [2, 4, 3]} and metadata["epoch"] == 7
    assert math.isnan(metadata["loss"])
    # the restored key continues the same random stream
    np.testing.assert_array_equal(jax.random.normal(restored["key"], (3,)), jax.random.normal(state["key"], (3,)))


def test_template_may_be_shape_dtype_structs_and_load_flat_needs_none(tmp_path):
    state = {"params": make_state()["params"], "key": jax.random.key(1)}
    ckpt.save(tmp_path / "c", state, metadata={"epoch": 3})
    restored, meta = ckpt.load(tmp_path / "c", like=jax.eval_shape(lambda: state))
    assert_same_tree(restored, state)
    flat, meta = ckpt.load_flat(tmp_path / "c")
    assert meta == {"epoch": 3}
    assert list(flat) == [
        "['key']",
        "['params'][0].omega",
        "['params'][0].beta",
        "['params'][1].omega",
        "['params'][1].beta",
    ]
    np.testing.assert_array_equal(flat["['key']"], jax.random.key_data(state["key"]))


@pytest.mark.parametrize("x64", [False, True])
def test_a_template_from_eval_shape_of_the_saved_tree_loads_it(tmp_path, x64):
    # eval_shape makes a Python int int32 without x64 (the file holds int64), a float
    # float32: the Python numbers must still come back, as the numbers they were
    with jax.enable_x64(x64):
        state = {
            "epoch": 7,
            "best": 0.25,
            "done": False,
            "z": 1 + 2j,
            "w": jnp.arange(3.0, dtype=jnp.float32),
            "key": jax.random.key(0),
        }
        ckpt.save(tmp_path / "c", state)
        restored, _ = ckpt.load(tmp_path / "c", like=jax.eval_shape(lambda: state))
    assert_same_tree(restored, state)


def test_saving_again_replaces_the_checkpoint(tmp_path):
    ckpt.save(tmp_path / "c", {"step": 1})
    ckpt.save(tmp_path / "c", {"step": 2}, metadata={"note": "second"})
    assert ckpt.load(tmp_path / "c", like={"step": 0}) == ({"step": 2}, {"note": "second"})
    assert os.listdir(tmp_path) == ["c"]


# --- corruption ------------------------------------------------------------------


def small_state():
    return {"w": jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3), "step": 3, "key": jax.random.key(0)}


@pytest.mark.parametrize("keep", [0, 5, 20, 100, 0.5, -33, -1])
def test_truncated_file_is_reported_corrupted(tmp_path, keep):
    path = ckpt.save(tmp_path / "c", small_state(), metadata={"epoch": 1})
    raw = path.read_bytes()
    keep = int(keep * len(raw)) if isinstance(keep, float) else keep % len(raw)
    path.write_bytes(raw[:keep])
    with pytest.raises(CheckpointError, match=r"load: checkpoint '.*c' is corrupted: .*"):
        ckpt.load(path, like=small_state())


def test_every_single_flipped_byte_is_caught(tmp_path):
    path = ckpt.save(tmp_path / "c", small_state(), metadata={"epoch": 1})
    raw = path.read_bytes()
    for i in range(len(raw)):
        for flip in (0x01, 0x80):
            altered = bytearray(raw)
            altered[i] ^= flip
            path.write_bytes(bytes(altered))
            with pytest.raises(CheckpointError, match=r"is corrupted: "):
                ckpt.load(path, like=small_state())


def test_corruption_messages_say_what_failed(tmp_path):
    path = ckpt.save(tmp_path / "c", small_state())
    raw = path.read_bytes()
    middle = len(raw) // 2
    path.write_bytes(raw[:middle] + bytes([raw[middle] ^ 1]) + raw[middle + 1 :])
    with pytest.raises(CheckpointError, match=r"the sha256 checksum does not match \(bytes were altered"):
        ckpt.load(path, like=small_state())
    path.write_bytes(raw[:-10])
    with pytest.raises(CheckpointError, match=r"its last 64 bytes are not a sha256 digest \(the file is truncated"):
        ckpt.load(path, like=small_state())
    np.savez(path.with_suffix(".npz"), w=np.zeros(3))  # a plain npz has no digest
    with pytest.raises(CheckpointError, match=r"not written by funcprop.checkpoint.save"):
        ckpt.load(path.with_suffix(".npz"), like={"w": np.zeros(3)})
    body = b"not a zip archive"
    path.write_bytes(body + hashlib.sha256(body).hexdigest().encode())
    with pytest.raises(CheckpointError, match=r"is corrupted: it is not a readable archive"):
        ckpt.load(path, like=small_state())


def test_the_file_is_an_npz_that_numpy_reads_without_pickle(tmp_path):
    state = small_state()
    path = ckpt.save(tmp_path / "checkpoint.npz", state, metadata={"epoch": 4})
    with np.load(path, allow_pickle=False) as npz:
        assert npz.files == ["__funcprop__", "000 ['key']", "001 ['step']", "002 ['w']"]
        header = json.loads(str(npz["__funcprop__"]))
        np.testing.assert_array_equal(npz["002 ['w']"], state["w"])
        assert npz.zip.comment == path.read_bytes()[-64:]
    assert header["metadata"] == {"epoch": 4} and header["version"] == 1
    # the same tree gives the same bytes (no timestamps inside)
    again = ckpt.save(tmp_path / "again.npz", state, metadata={"epoch": 4})
    assert again.read_bytes() == path.read_bytes()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load: no checkpoint at '.*absent.ckpt'"):
        ckpt.load(tmp_path / "absent.ckpt", like=small_state())
    with pytest.raises(FileNotFoundError, match=r"save: the directory '.*no-dir' .* does not exist"):
        ckpt.save(tmp_path / "no-dir" / "c", small_state())


# --- the template ----------------------------------------------------------------

WRONG_TEMPLATES = [
    (
        "missing-leaf",
        lambda s: {k: v for k, v in s.items() if k != "step"},
        r"leaf #1: the checkpoint has leaf \['step'\] where the template has leaf \['w'\]",
    ),
    (
        "extra-leaf",
        lambda s: {**s, "z": 1},
        r"\(3 leaves in the checkpoint, 4 in the template\); the first difference is leaf #3: "
        r"the checkpoint has no more leaves where the template has leaf \['z'\]",
    ),
    (
        "renamed",
        lambda s: {**{k: v for k, v in s.items() if k != "w"}, "v": s["w"]},
        r"leaf #2: the checkpoint has leaf \['w'\] where the template has leaf \['v'\]",
    ),
    (
        "shape",
        lambda s: {**s, "w": jnp.zeros((3, 2), jnp.float32)},
        r"at \['w'\]: the checkpoint has float32\(2, 3\) but the template has float32\(3, 2\)",
    ),
    (
        "dtype",
        lambda s: {**s, "w": jnp.zeros((2, 3), jnp.float64)},
        r"at \['w'\]: the checkpoint has float32\(2, 3\) but the template has float64\(2, 3\)",
    ),
    (
        "python-type",
        lambda s: {**s, "step": 3.0},
        r"at \['step'\]: the checkpoint has int64\(\) but the template has float64\(\)",
    ),
    (
        "abstract-python-type",
        lambda s: {**s, "step": jax.ShapeDtypeStruct((), jnp.float32)},
        r"at \['step'\]: the checkpoint has int64\(\) but the template has float32\(\)",
    ),
    (
        "key-vs-array",
        lambda s: {**s, "key": jnp.zeros(2, jnp.uint32)},
        r"at \['key'\]: the checkpoint has key<fry>\(\) but the template has uint32\(2,\)",
    ),
    (
        "key-impl",
        lambda s: {**s, "key": jax.random.key(0, impl="rbg")},
        r"at \['key'\]: the checkpoint has key<fry>\(\) but the template has key<rbg>\(\)",
    ),
    (
        "key-shape",
        lambda s: {**s, "key": jax.random.split(jax.random.key(0), 2)},
        r"at \['key'\]: the checkpoint has key<fry>\(\) but the template has key<fry>\(2,\)",
    ),
    (
        "array-vs-key",
        lambda s: {**s, "w": jax.random.split(jax.random.key(0), 2)},
        r"at \['w'\]: the checkpoint has float32\(2, 3\) but the template has key<fry>\(2,\)",
    ),
]


@pytest.mark.parametrize("change, pattern", [t[1:] for t in WRONG_TEMPLATES], ids=[t[0] for t in WRONG_TEMPLATES])
def test_wrong_template_names_the_first_difference(tmp_path, change, pattern):
    path = ckpt.save(tmp_path / "c", small_state())
    with pytest.raises(CheckpointError, match=r"load: checkpoint '.*c' .*" + pattern):
        ckpt.load(path, like=change(small_state()))


def test_bad_leaves_and_metadata_are_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"save: the leaf at \['name'\] is a str of dtype <U3"):
        ckpt.save(tmp_path / "c", {"name": "abc"})
    with pytest.raises(TypeError, match=r"save: metadata must be JSON-serialisable"):
        ckpt.save(tmp_path / "c", {}, metadata={"f": print})
    with pytest.raises(
        TypeError,
        match=rf"save: the leaf at \['n'\] is the int {2**70}, "
        r"which does not fit in 64 bits",
    ):
        ckpt.save(tmp_path / "c", {"n": 2**70})
    assert os.listdir(tmp_path) == []


# --- bad paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [lambda p: ckpt.save(p, {"step": 1}), lambda p: ckpt.load(p, like={"step": 0}), ckpt.load_flat],
    ids=["save", "load", "load_flat"],
)
def test_a_directory_is_refused_by_name(tmp_path, call):
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(
        IsADirectoryError,
        match=rf"^(save|load): '{re.escape(str(folder))}' is a "
        r"directory, not a checkpoint file; pass a file path such as "
        rf"'{re.escape(str(folder / 'checkpoint.npz'))}'$",
    ):
        call(folder)
    assert os.listdir(tmp_path) == ["run"] and os.listdir(folder) == []


def test_a_read_only_checkpoint_is_not_replaced(tmp_path):
    path = ckpt.save(tmp_path / "c", {"step": 1})
    before = path.read_bytes()
    path.chmod(0o444)
    with pytest.raises(
        PermissionError,
        match=r"save: '.*c' is read-only, so it was not replaced "
        r"\(it is kept as it is\); make it writable \(chmod u\+w\) or choose "
        r"another path",
    ):
        ckpt.save(path, {"step": 2})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c"]
    assert ckpt.load(path, like={"step": 0})[0] == {"step": 1}


def _as_a_user(monkeypatch, module, name, denied):
    """Root opens any file: make ``module.name`` (an open) fail as the kernel would
    for a user when ``denied(file, *args)``; nothing changes for a user."""
    if os.geteuid() != 0:
        return
    real = getattr(module, name)

    def opener(file, *args, **kwargs):
        if denied(pathlib.Path(file), *args):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(module, name, opener)


def test_a_read_only_folder_names_the_target_and_the_folder(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    _as_a_user(monkeypatch, os, "open", lambda file, flags, *_: flags & os.O_CREAT and file.parent == folder)
    try:
        with pytest.raises(
            PermissionError,
            match=r"save: cannot write '.*ro/c\.npz': creating a "
            r"file in its folder '.*ro' failed \(Permission denied\); make the "
            r"folder writable or choose another path",
        ) as err:
            ckpt.save(folder / "c.npz", {"step": 1})
    finally:
        folder.chmod(0o755)
    assert err.value.errno == errno.EACCES and ".tmp" not in str(err.value)
    assert os.listdir(folder) == []


def test_an_unreadable_checkpoint_is_named(tmp_path, monkeypatch):
    path = ckpt.save(tmp_path / "c", {"step": 1})
    path.chmod(0)
    _as_a_user(monkeypatch, pathlib.Path, "open", lambda file, *_: file == path)
    with pytest.raises(
        PermissionError,
        match=r"load: cannot read '.*c': permission denied; make "
        r"it readable \(chmod u\+r\) or load a copy",
    ):
        ckpt.load(path, like={"step": 0})


# --- nothing is lost -------------------------------------------------------------


class _FailingFile:
    """Wraps a real file; the write that would pass ``limit`` bytes fails (disk full)."""

    def __init__(self, f, limit):
        self.f, self.left = f, limit

    def write(self, chunk):
        if len(chunk) > self.left:
            self.f.write(chunk[: self.left])
            raise OSError(errno.ENOSPC, "No space left on device")
        self.left -= len(chunk)
        return self.f.write(chunk)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _fail_midway(monkeypatch):
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FailingFile(real(fd, mode), 100))
    return OSError, "No space left"


def _fail_fsync(monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("fsync failed")))
    return OSError, "fsync failed"


def _fail_replace(monkeypatch):
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError("rename failed")))
    return OSError, "rename failed"


def _fail_verification(monkeypatch):
    real = ckpt._read

    def read_back_wrong(path):  # as if the disk returned other bytes than written
        leaves, meta = real(path)
        leaves[0][0].flat[0] += 1
        return leaves, meta

    monkeypatch.setattr(ckpt, "_read", read_back_wrong)
    return CheckpointError, r"reading back '.*' failed: the leaf at \['a'\] differs"


@pytest.mark.parametrize(
    "fail",
    [_fail_midway, _fail_fsync, _fail_replace, _fail_verification],
    ids=["disk-full-midway", "fsync", "rename", "read-back"],
)
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fail):
    old = {"a": np.arange(100.0), "step": 1}
    new = {"a": np.arange(100.0) * 2, "step": 2}
    path = ckpt.save(tmp_path / "c", old, metadata={"epoch": 1})
    before = path.read_bytes()
    with monkeypatch.context() as patch:
        exception, pattern = fail(patch)
        with pytest.raises(exception, match=pattern):
            ckpt.save(path, new, metadata={"epoch": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c"]  # the temporary file is gone
    restored, meta = ckpt.load(path, like=new)
    assert_same_tree(restored, old) and meta == {"epoch": 1}


def test_a_full_disk_says_so_and_that_the_checkpoint_is_intact(tmp_path, monkeypatch):
    path = ckpt.save(tmp_path / "c", {"a": np.arange(100.0)})
    before = path.read_bytes()
    with monkeypatch.context() as patch:
        _fail_midway(patch)
        with pytest.raises(
            OSError,
            match=r"^save: writing '.*c' failed: the disk is full "
            r"\(\[Errno 28\] No space left on device\); the previous file "
            r"\(if any\) is intact and the temporary file was removed; free some "
            r"space or choose another path$",
        ) as err:
            ckpt.save(path, {"a": np.zeros(100)})
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c"]


# --- temporaries of killed saves --------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()  # reaped: no process has this id now
    return child.pid


@pytest.mark.parametrize(
    "then", [lambda p: ckpt.save(p, {"step": 2}), lambda p: ckpt.load(p, like={"step": 0})], ids=["save", "load"]
)
def test_stale_temporaries_are_removed_and_a_live_writers_is_kept(tmp_path, then):
    path = ckpt.save(tmp_path / "c", {"step": 1})
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host, other = atomic.HOST, "%08x" % (int(atomic.HOST, 16) ^ 1)
        names = {  # name: (hours since it was last written, removed?)
            f".c.{host}-{_dead_pid()}.{'1' * 12}.tmp": (0, True),  # its writer is gone
            f".c.{host}-{writer.pid}.{'2' * 12}.tmp": (2, False),  # its writer is alive
            f".c.{other}-{_dead_pid()}.{'3' * 12}.tmp": (0, False),  # another host's: by age
            f".c.{other}-{writer.pid}.{'4' * 12}.tmp": (2, True),
            f".c.{'5' * 12}.tmp": (0, False),  # the old naming, without a writer: by age
            f".c.{'6' * 12}.tmp": (2, True),
            f".d.{host}-{_dead_pid()}.{'7' * 12}.tmp": (2, False),  # another checkpoint's
            f".c.{host}-{_dead_pid()}.tmp": (2, False),  # not a temporary of save
        }
        for name, (hours, _) in names.items():
            (tmp_path / name).write_bytes(b"x" * 1000)
            then_s = time.time() - hours * 3600
            os.utime(tmp_path / name, (then_s, then_s))
        then(path)
        kept = {name for name, (_, removed) in names.items() if not removed}
        assert set(os.listdir(tmp_path)) == {"c"} | kept
    finally:
        writer.kill()
        writer.wait()


_KILLED_MID_SAVE = """
import sys, time
import numpy as np
from funcprop import checkpoint as ckpt
def hang(*args):  # the file is written and fsynced, not yet renamed
    print("written", flush=True)
    time.sleep(60)
ckpt._verify = hang
ckpt.save(sys.argv[1], {"a": np.ones(1_000_000)})
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_save_killed_mid_write_leaves_a_temporary_the_next_save_removes(tmp_path):
    path = ckpt.save(tmp_path / "c", {"a": np.zeros(1_000_000)})
    before = path.read_bytes()
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_MID_SAVE, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = child.stdout.readline()
    finally:
        child.kill()  # SIGKILL: no finally clause, no cleanup in the child
        _, stderr = child.communicate(timeout=60)
    assert line == "written\n", stderr
    (left,) = set(os.listdir(tmp_path)) - {"c"}
    assert left.startswith(f".c.{atomic.HOST}-{child.pid}.") and (tmp_path / left).stat().st_size > 8e6
    assert path.read_bytes() == before  # the old checkpoint is intact
    ckpt.save(path, {"a": np.ones(3)})
    assert os.listdir(tmp_path) == ["c"]


_SHARDED = """
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from funcprop import checkpoint as ckpt
mesh = jax.make_mesh((4,), ("data",))
tree = {"w": jax.device_put(jnp.arange(8.0).reshape(4, 2), NamedSharding(mesh, P("data"))),
        "b": jax.device_put(jnp.ones(3), NamedSharding(mesh, P())),
        "keys": jax.device_put(jax.random.split(jax.random.key(0), 4), NamedSharding(mesh, P("data")))}
ckpt.save(PATH, tree)
back, _ = ckpt.load(PATH, like=tree)
for name in tree:
    assert back[name].sharding == tree[name].sharding, name
print("ok")
"""


def test_restore_onto_the_template_sharding(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    code = f"PATH = {str(tmp_path / 'c')!r}\n" + _SHARDED
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
