"""Many devices and many processes: the rules under sharding, train(mesh=), and the CLI's
--data-parallel and --coordinator (jax.distributed over gloo, two processes on localhost).

A process's device count is fixed when JAX starts, so each check runs in a subprocess
with ``--xla_force_host_platform_device_count``; one subprocess runs many checks.
"""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from funcprop import checkpoint, cli, distributed

TIMEOUT_S = 300  # a bound on each subprocess: a hung collective fails the test, not CI


def _run(code: str, devices: int) -> str:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def _lines(stdout: str) -> dict:
    """``name value...`` lines as {name: [values]}."""
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines() if line.strip()}


RULES_SHARDED = """
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from jax.sharding import NamedSharding, PartitionSpec as P
import funcprop as fp
from funcprop import backprop, distributed, nn
from funcprop.check import check_vjp
from funcprop.rules.table import RULES

mesh = distributed.data_mesh()
assert mesh.size == 8
seen = set()
for case in RULES:
    if case.rule in seen:
        continue
    seen.add(case.rule)
    args = case.args(jax.random.key(0), jnp.float64)
    lead = args[0].shape[0]
    # eight times the batch: every leaf whose leading axis is the batch, tiled
    args = [np.concatenate([np.asarray(a)] * 8) if a.ndim and a.shape[0] == lead else np.asarray(a) for a in args]
    specs = [P("data") if a.ndim and a.shape[0] == 8 * lead else P() for a in args]
    diff = [i for i, a in enumerate(args) if np.issubdtype(a.dtype, np.floating)]

    def f(*d):
        full = list(args)
        for i, v in zip(diff, d):
            full[i] = v
        return case.rule(*full, **case.kwargs)

    primals = [jnp.asarray(args[i]) for i in diff]
    out, pullback = jax.vjp(f, *primals)
    ct = jnp.asarray(np.random.default_rng(1).normal(size=out.shape))
    want = pullback(ct)
    placed = [jax.device_put(p, NamedSharding(mesh, specs[i])) for i, p in zip(diff, primals)]
    got_out, got = jax.jit(lambda ps, c: (lambda o, pb: (o, pb(c)))(*jax.vjp(f, *ps)))(placed, ct)
    err = max(float(jnp.max(jnp.abs(g - w)) / (float(jnp.max(jnp.abs(w))) or 1.0)) for g, w in zip(got, want))
    err = max(err, float(jnp.max(jnp.abs(got_out - out))))
    if "key" in case.kwargs:  # inside shard_map each device draws its own mask: not the global one
        print(case.name, f"{err:.1e}", "random", 0, "random")
        continue
    if out.ndim == 0:  # a loss: a mean over the batch, which shard_map cannot shard (the steps below use them)
        print(case.name, f"{err:.1e}", True, 0, True)
        continue
    report = check_vjp(case.rule, *[jnp.asarray(a) for a in args], kwargs=case.kwargs, transforms=("shard_map",),
                       n_cotangents=2, finite_differences=False, raise_on_fail=False)
    rows = [r for r in report.rows if r.check == "shard_map"]
    print(case.name, f"{err:.1e}", report.passed, len(rows), all(r.passed for r in rows))

# a training step inside shard_map: the rules' jax.grad, and the written-out backprop + pmean
x = jax.random.normal(jax.random.key(1), (64, 5), jnp.float64)
y = jax.random.randint(jax.random.key(2), (64,), 0, 3)
model = nn.serial(nn.Dense(16, param_dtype=jnp.float64), nn.Tanh(), nn.LayerNorm(param_dtype=jnp.float64),
                  nn.Dense(3, param_dtype=jnp.float64))
_, params = model.init(jax.random.key(0), (5,))
loss = fp.softmax_cross_entropy
want = jax.grad(lambda p: loss(model.apply(p, x), y))(params)

def rules_step(p, xs, ys):  # x, y: this device's shard; the global mean loss by pmean
    return jax.grad(lambda p: jax.lax.pmean(loss(model.apply(p, xs), ys), "data"))(p)

def backprop_step(p, xs, ys):  # the local gradient of the local mean, then their mean
    return jax.lax.pmean(backprop.value_and_grad(model, loss)(p, xs, ys)[1], "data")

def compare(name, step, params, x, y, want):
    sharded = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P()))
    got = sharded(params, x, y)
    # relative to the largest gradient: some are 0 in exact arithmetic (the k bias's, as softmax
    # ignores a shift shared by every key), so their own scale is rounding noise
    scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want))
    err = max(float(jnp.max(jnp.abs(g - w))) for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want))) / scale
    print(name, f"{err:.1e}")

compare("shard_map_rules", rules_step, params, x, y, want)
compare("shard_map_backprop", backprop_step, params, x, y, want)

# a GPT and its LM head (attention's and the head's loops carry shard_map's types)
gpt, head = nn.gpt(256, 8, d_model=8, num_heads=2, num_layers=1, param_dtype=jnp.float64), nn.LinearCrossEntropy(256, param_dtype=jnp.float64)
shape, body = gpt.init(jax.random.key(3), (8,))
params = (body, head.init(jax.random.key(4), shape)[1])
ids = jax.random.randint(jax.random.key(5), (8, 8), 0, 256)
objective = lambda p, ids: head.apply(p[1], gpt.apply(p[0], ids), ids)
want = jax.grad(objective)(params, ids)
compare("shard_map_gpt", lambda p, xs, _: jax.grad(lambda p: jax.lax.pmean(objective(p, xs), "data"))(p), params, ids, ids, want)
"""


def test_every_rule_is_right_under_jit_with_sharded_inputs_and_inside_shard_map_on_eight_devices():
    lines = _lines(_run(RULES_SHARDED, devices=8))
    from funcprop.rules.table import RULES

    rules = {k: v for k, v in lines.items() if not k.startswith("shard_map_")}
    assert len(rules) == len({c.rule for c in RULES})  # one line per rule
    for name, (err, passed, _, rows_passed) in rules.items():
        assert float(err) < 1e-12, (name, err)  # float64: the sharded and unsharded sums agree to rounding
        assert (passed, rows_passed) == (("random",) * 2 if name == "dropout" else ("True",) * 2), name
    # shard_map needs an output with the batch axis; a loss (a scalar mean) is not one
    assert int(rules["dense"][2]) > 0 and int(rules["conv2d"][2]) > 0 and int(rules["attention"][2]) > 0
    assert int(rules["mse"][2]) == 0
    for name in ("shard_map_rules", "shard_map_backprop", "shard_map_gpt"):
        assert float(lines[name][0]) < 1e-12, (name, lines[name])


TRAIN_ON_MESH = """
import jax, jax.numpy as jnp, numpy as np, optax
from funcprop import data, distributed, nn, train

ds = data.load("digits", seed=0, image=True)
ds = ds._replace(x_train=ds.x_train[:512], y_train=ds.y_train[:512])
mesh = distributed.data_mesh()
for name, model in (("mlp", nn.serial(nn.Flatten(), nn.Dense(32), nn.Relu(), nn.Dropout(0.2), nn.Dense(10))),
                    ("cnn", nn.cnn(10, channels=(8,), hidden=32))):
    _, params = model.init(jax.random.key(0), ds.example_shape)
    runs = [train.train(model, params, optax.sgd(0.05), ds, epochs=2, batch_size=64, key=jax.random.key(1),
                        progress=False, mesh=m) for m in (None, mesh)]
    one, many = runs
    err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
              for a, b in zip(jax.tree.leaves(many.params), jax.tree.leaves(one.params)))
    loss_err = max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(many.history, one.history))
    specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(many.params)}
    devices = {len(leaf.sharding.device_set) for leaf in jax.tree.leaves(many.params)}
    print(name, f"{err:.1e}", f"{loss_err:.1e}", "|".join(sorted(specs)), *sorted(devices))

# the epoch is one program over the mesh, its gradient summed across the devices
model = nn.serial(nn.Flatten(), nn.Dense(10))
_, params = model.init(jax.random.key(0), ds.example_shape)
epoch = train.make_epoch(train.loss_and_grad(model), optax.sgd(0.1), 512, 64, mesh=mesh)
state = distributed.replicate(train.init_state(params, optax.sgd(0.1), jax.random.key(1)), mesh)
x, y = distributed.replicate((ds.x_train, ds.y_train), mesh)
hlo = epoch.lower(state, x, y).compile().as_text()
single = train.make_epoch(train.loss_and_grad(model), optax.sgd(0.1), 512, 64)
state1 = train.init_state(params, optax.sgd(0.1), jax.random.key(1))
hlo1 = single.lower(state1, ds.x_train, ds.y_train).compile().as_text()
print("hlo", "all-reduce" in hlo, "all-reduce" in hlo1, hlo.count(" while(") == hlo1.count(" while("))

# an Explicit-axes mesh is taken as the same devices with Auto axes
explicit = jax.make_mesh((8,), ("data",))
r = train.train(model, params, optax.sgd(0.1), ds, epochs=1, batch_size=64, key=jax.random.key(1),
                progress=False, mesh=explicit)
print("explicit", r.history[-1]["train_loss"] > 0)
for bad, kw in (("batch", dict(batch_size=60, mesh=mesh)), ("axis", dict(batch_size=64, mesh=jax.make_mesh((8,), ("x",))))):
    try:
        train.train(model, params, optax.sgd(0.1), ds, epochs=1, key=jax.random.key(1), progress=False, **kw)
    except ValueError as err:
        print(bad, str(err).replace(" ", "_"))
"""


def test_train_on_eight_devices_equals_one_device_and_stays_one_program():
    lines = _lines(_run(TRAIN_ON_MESH, devices=8))
    for name in ("mlp", "cnn"):  # dropout in the mlp: the keys do not depend on the sharding
        err, loss_err, specs, devices = lines[name]
        assert float(err) < 1e-5 and float(loss_err) < 1e-5, (name, err, loss_err)  # float32 rounding
        assert specs == "P()" and devices == "8", (name, specs, devices)  # replicated on all 8
    assert lines["hlo"] == ["True", "False", "True"]  # the one-device epoch's loops, and the gradient's all-reduce
    assert lines["explicit"] == ["True"]
    assert "train:_batch_size_60_must_be_divisible_by_the_mesh's_'data'_axis_of_8_devices" in lines["batch"][0]
    assert "train:_mesh_must_have_an_axis_named_'data'" in lines["axis"][0]


def test_a_mesh_of_the_wrong_type_is_refused_by_name():
    with pytest.raises(TypeError, match=r"train: mesh must be a jax.sharding.Mesh .* got str"):
        distributed.check_mesh("train", "data", 8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out, n_processes: int, epochs: int, *extra) -> list:
    """``funcprop train`` in n processes of 2 CPU devices each, joined on a free localhost port."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    address = f"127.0.0.1:{_free_port()}"
    argv = [sys.executable, "-m", "funcprop.cli", "train", "--hidden", "32", "--epochs", str(epochs)]
    argv += ["--batch-size", "32", "--optimizer", "sgd", "--lr", "0.05", "--no-progress", "--no-cache"]
    argv += ["--out", str(out), "--coordinator", address, "--num-processes", str(n_processes), *extra]
    procs = [
        subprocess.Popen([*argv, "--process-id", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(n_processes)
    ]
    try:
        done = [p.communicate(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, o.decode(), e.decode()) for p, (o, e) in zip(procs, done)]


def _launch_ok(out, n_processes: int, epochs: int, *extra) -> list:
    runs = _launch(out, n_processes, epochs, *extra)
    for code, _, err in runs:
        assert code == 0, err[-3000:]
    return [o for _, o, _ in runs]


def _params(path):
    arrays, _ = checkpoint.load_flat(path)
    return {k: v for k, v in arrays.items() if "params" in k}


@pytest.mark.usefixtures("standard_promotion")
def test_two_processes_reach_the_one_process_parameters_and_resume_onto_the_mesh(tmp_path, capsys):
    outs = _launch_ok(tmp_path / "two", 2, 2)
    assert "test accuracy" in outs[0] and "test accuracy" not in outs[1]  # process 0 reports (gloo talks in both)
    files = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert files == ["checkpoint.npz", "config.json", "curves.png", "metrics.csv", "metrics.json"]

    argv = ["train", "--hidden", "32", "--batch-size", "32", "--optimizer", "sgd", "--lr", "0.05"]
    argv += ["--no-progress", "--no-cache"]
    assert cli.main([*argv, "--epochs", "3", "--out", str(tmp_path / "one")]) == 0  # one process, one device
    capsys.readouterr()

    # process 0 alone reads the checkpoint: its refusal of other settings reaches process 1 at once
    (code0, _, err0), (code1, _, err1) = _launch(tmp_path / "two", 2, 3, "--resume", "--lr", "0.1")
    assert code0 == 1 and "other settings (lr: 0.05 then, 0.1 now)" in err0.splitlines()[-1]
    assert code1 == 1 and "process 0 could not resume from the checkpoint" in err1.splitlines()[-1]

    _launch_ok(tmp_path / "two", 2, 3, "--resume")  # process 0 reads the checkpoint; both go on from epoch 2
    history = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    one, two = _params(tmp_path / "one" / "checkpoint.npz"), _params(tmp_path / "two" / "checkpoint.npz")
    assert one.keys() == two.keys() and one
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--coordinator", "127.0.0.1:1234"], "go together .* add --num-processes and --process-id"),
        (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], "must be below"),
        (["--coordinator", "nohost"], "expected HOST:PORT"),
    ],
)
def test_process_flags_are_checked_before_any_work(flags, said, tmp_path, capsys):
    try:
        code = cli.main(["train", "--out", str(tmp_path / "r"), *flags])
    except SystemExit as exit:  # argparse's own refusal of a value
        code = exit.code
    assert code == 2
    assert re.search(said, capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


def test_data_parallel_needs_a_batch_that_the_devices_share(tmp_path):
    code = f"""
    import sys
    from funcprop import cli
    sys.exit(cli.main(["train", "--data-parallel", "--batch-size", "30", "--out", {str(tmp_path / "r")!r}]))
    """
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert "--batch-size 30 must be a multiple of the 4 devices" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_one_process_is_the_writer():
    assert distributed.is_writer() and jax.process_count() == 1
