"""Training: the three gradient sources agree, runs are deterministic, resume is exact."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcprop as fp
from funcprop import data, nn, train

pytestmark = pytest.mark.usefixtures("standard_promotion")


@pytest.fixture(scope="module")
def toy_data():
    return data.toy(jax.random.key(0), n=200)


def _setup(ds, activation="tanh"):
    model = nn.mlp([2, 8, 8, 2], activation=activation)
    _, params = model.init(jax.random.key(1), (2,))
    return model, params


def _run(ds, epochs=3, **kw):
    model, params = _setup(ds)
    return train.train(
        model, params, optax.adam(1e-2), ds, epochs=epochs, batch_size=16, key=jax.random.key(2), progress=False, **kw
    )


def test_three_gradient_sources_reach_the_same_parameters(toy_data):
    results = {g: _run(toy_data, gradient=g) for g in train.GRADIENTS}
    ref = jax.tree.leaves(results["twins"].params)
    for g in ("rules", "backprop"):
        for a, b in zip(jax.tree.leaves(results[g].params), ref):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=g)


def test_training_is_deterministic_and_learns(toy_data):
    a, b = _run(toy_data, epochs=15), _run(toy_data, epochs=15)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert a.history[-1]["train_loss"] < 0.5 * a.history[0]["train_loss"]
    assert a.history[-1]["test_accuracy"] > 0.8


def test_resume_ends_bit_for_bit_where_an_uninterrupted_run_ends(toy_data, tmp_path):
    straight = _run(toy_data, epochs=4)
    path = tmp_path / "state.npz"
    _run(toy_data, epochs=2, checkpoint_path=path)
    resumed = _run(toy_data, epochs=4, checkpoint_path=path, resume=True)
    for x, y in zip(
        jax.tree.leaves((straight.params, straight.opt_state)), jax.tree.leaves((resumed.params, resumed.opt_state))
    ):
        np.testing.assert_array_equal(x, y)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]


def test_history_is_written_as_json_and_csv(toy_data, tmp_path):
    result = _run(toy_data, epochs=2, out_dir=tmp_path, target_accuracy=0.0)
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert rows == result.history
    assert set(rows[0]) >= {"epoch", "train_loss", "test_loss", "test_accuracy", "epoch_time_s", "elapsed_s"}
    assert rows[0]["time_to_target_s"] == rows[0]["elapsed_s"]  # accuracy ≥ 0 at once
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,train_loss") and len(csv_lines) == 3


def test_train_accepts_an_apply_function(toy_data):
    model, params = _setup(toy_data)
    result = train.train(
        model.apply, params, optax.sgd(0.1), toy_data, epochs=1, batch_size=32, key=jax.random.key(0), progress=False
    )
    assert np.isfinite(result.history[0]["train_loss"])
    with pytest.raises(TypeError, match=r"gradient='backprop' needs a funcprop.nn Layer"):
        train.loss_and_grad(model.apply, gradient="backprop")


@pytest.mark.parametrize(
    "kwargs, exception, pattern",
    [
        ({"batch_size": 10_000}, ValueError, r"train: batch_size must be an int in \[1, 150\]"),
        ({"epochs": -1}, ValueError, r"train: epochs must be an int >= 0"),
        ({"key": 0}, TypeError, r"train: key must be a typed PRNG key"),
        ({"gradient": "finite"}, ValueError, r"gradient must be one of"),
    ],
)
def test_bad_arguments(toy_data, kwargs, exception, pattern):
    model, params = _setup(toy_data)
    args = {"epochs": 1, "batch_size": 16, "key": jax.random.key(0), "progress": False, **kwargs}
    with pytest.raises(exception, match=pattern):
        train.train(model, params, optax.sgd(0.1), toy_data, **args)


def test_divergence_is_reported(toy_data):
    model, params = _setup(toy_data, activation="relu")
    with pytest.raises(FloatingPointError, match=r"train: the train loss became nan at epoch 1"):
        train.train(
            model,
            jax.tree.map(lambda p: p * 1e30, params),
            optax.sgd(1e30),
            toy_data,
            epochs=3,
            batch_size=16,
            key=jax.random.key(0),
            progress=False,
        )


def test_params_and_key_survive_training(toy_data):
    """The epoch donates its state; train copies first, so the caller can train twice."""
    model, params = _setup(toy_data)
    key = jax.random.key(2)
    runs = [
        train.train(model, params, optax.adam(1e-2), toy_data, epochs=2, batch_size=16, key=key, progress=False)
        for _ in range(2)
    ]
    for a, b in zip(jax.tree.leaves(runs[0].params), jax.tree.leaves(runs[1].params)):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(np.asarray(jax.tree.leaves(params)[0])).all()


def test_resume_with_other_settings_is_refused(toy_data, tmp_path):
    path = tmp_path / "state.npz"
    _run(toy_data, epochs=1, checkpoint_path=path, config={"lr": 0.01})
    with pytest.raises(
        ValueError, match=r"train: the checkpoint .* was written with other settings \(lr: 0.01 then, 5.0 now\)"
    ):
        _run(toy_data, epochs=2, checkpoint_path=path, resume=True, config={"lr": 5.0})


# --- evaluation in chunks; accuracy only where the loss defines one ---------------------


@pytest.mark.parametrize("batch_size", [1024, 7, 50])  # one remainder chunk; full chunks and a rest; exact
def test_evaluate_in_chunks_equals_one_pass(batch_size):
    model = nn.mlp([3, 5, 4])
    _, params = model.init(jax.random.key(0), (3,))
    x = jax.random.normal(jax.random.key(1), (50, 3), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (50,), 0, 4)
    loss, acc = train.make_evaluate(model.apply, fp.softmax_cross_entropy, batch_size=batch_size)(params, x, y)
    out = model.apply(params, x)
    np.testing.assert_allclose(loss, fp.softmax_cross_entropy(out, y), rtol=1e-6)
    np.testing.assert_allclose(acc, np.mean(np.argmax(out, -1) == y), rtol=1e-6)


def test_accuracy_only_where_the_loss_defines_one():
    ids, probs = jnp.array([0, 2]), jnp.array([[0.9, 0.1], [0.2, 0.8]])
    assert train.accuracy_kind(fp.softmax_cross_entropy, ids) == "class-ids"
    assert train.accuracy_kind(fp.softmax_cross_entropy, probs) == "argmax"
    assert train.accuracy_kind(fp.sigmoid_binary_cross_entropy, jnp.array([[0.0, 1.0]])) == "binary"
    assert train.accuracy_kind(fp.sigmoid_binary_cross_entropy, jnp.array([[0.3, 1.0]])) is None
    assert train.accuracy_kind(fp.mse, jnp.zeros((2, 3))) is None
    model = nn.mlp([3, 4, 2])
    _, params = model.init(jax.random.key(0), (3,))
    x = jax.random.normal(jax.random.key(1), (9, 3), jnp.float32)
    target = jax.random.normal(jax.random.key(2), (9, 2), jnp.float32)
    loss, acc = train.make_evaluate(model.apply, fp.mse, accuracy=None, batch_size=4)(params, x, target)
    assert acc is None
    np.testing.assert_allclose(loss, fp.mse(model.apply(params, x), target), rtol=1e-6)
    bits = (target > 0).astype(jnp.float32)
    _, acc = train.make_evaluate(model.apply, fp.sigmoid_binary_cross_entropy, accuracy="binary")(params, x, bits)
    np.testing.assert_allclose(acc, np.mean((model.apply(params, x) > 0) == (bits > 0.5)), rtol=1e-6)


def test_mse_training_records_no_accuracy(tmp_path):
    model = nn.mlp([2, 8, 2])
    _, params = model.init(jax.random.key(0), (2,))
    x = np.asarray(jax.random.normal(jax.random.key(1), (64, 2), jnp.float32))
    ds = data.Dataset(x[:48], np.sin(x[:48]), x[48:], np.sin(x[48:]), 2, "regression")
    result = train.train(
        model,
        params,
        optax.adam(1e-2),
        ds,
        epochs=2,
        batch_size=16,
        key=jax.random.key(2),
        loss=fp.mse,
        progress=False,
        out_dir=tmp_path,
    )
    assert [r["test_accuracy"] for r in result.history] == [None, None]
    with pytest.raises(ValueError, match="train: target_accuracy needs an accuracy"):
        train.train(
            model,
            params,
            optax.adam(1e-2),
            ds,
            epochs=1,
            batch_size=16,
            key=jax.random.key(2),
            loss=fp.mse,
            progress=False,
            target_accuracy=0.9,
        )


def test_a_residual_network_with_dropout_trains_to_the_same_parameters_three_ways(toy_data):
    """Branches, a residual around LayerNorm, and dropout fed a fresh key each step:
    the rules, the twins and the written-out backprop reach one set of parameters."""
    block = nn.residual(nn.serial(nn.LayerNorm(), nn.Dense(8), nn.Tanh(), nn.Dense(8)))
    model = nn.serial(
        nn.Dense(8),
        block,
        nn.Dropout(0.3),
        nn.FanOut(2),
        nn.parallel(nn.serial(nn.Dense(8), nn.Tanh()), nn.Identity()),
        nn.FanInSum(),
        nn.Dense(2),
    )
    _, params = model.init(jax.random.key(1), (2,))
    runs = {
        g: train.train(
            model,
            params,
            optax.adam(1e-2),
            toy_data,
            epochs=3,
            batch_size=16,
            key=jax.random.key(2),
            gradient=g,
            progress=False,
        )
        for g in train.GRADIENTS
    }
    for g in ("twins", "backprop"):
        for a, b in zip(jax.tree.leaves(runs[g].params), jax.tree.leaves(runs["rules"].params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert runs["rules"].history[-1]["train_loss"] < runs["rules"].history[0]["train_loss"]


def test_dropout_gets_a_fresh_key_every_step(toy_data):
    """The same data and params but another step key: another dropout mask, another loss."""
    model = nn.serial(nn.Dense(16), nn.Dropout(0.5), nn.Dense(2))
    _, params = model.init(jax.random.key(1), (2,))
    grad_fn = train.loss_and_grad(model, fp.softmax_cross_entropy)
    x, y = jnp.asarray(toy_data.x_train[:32]), jnp.asarray(toy_data.y_train[:32])
    values = {float(grad_fn(params, x, y, key=jax.random.key(k))[0]) for k in range(4)}
    assert len(values) == 4
    assert grad_fn(params, x, y)[0] == grad_fn(params, x, y, key=None)[0]  # no key: no dropout


def test_resume_without_a_checkpoint_path_is_refused(toy_data):
    model, params = _setup(toy_data)
    with pytest.raises(ValueError, match=r"train: resume=True needs checkpoint_path"):
        train.train(
            model, params, optax.adam(1e-2), toy_data, epochs=1, key=jax.random.key(0), resume=True, progress=False
        )


def _with(ds, **arrays):
    return ds._replace(**{k: jnp.asarray(v) for k, v in arrays.items()})


def _on_device(ds):
    return _with(ds, **{k: getattr(ds, k) for k in ("x_train", "y_train", "x_test", "y_test")})


@pytest.mark.parametrize(
    "change, pattern",
    [
        (
            lambda d: {"y_train": d.y_train.at[3].set(7)},
            r"train: y_train must hold class ids in \[0, 2\); 1 entries do not, the first 7 at index \(3,\); the model has 2",
        ),
        (lambda d: {"y_train": -jnp.ones_like(d.y_train)}, r"y_train must hold class ids in \[0, 2\); 150 entries"),
        (lambda d: {"y_test": d.y_test.at[0].set(2)}, r"y_test must hold class ids in \[0, 2\)"),
        (
            lambda d: {"x_train": d.x_train.at[5, 1].set(jnp.nan)},
            r"x_train must hold finite values; 1 entries do not, the first nan at index \(5, 1\)",
        ),
        (lambda d: {"x_test": d.x_test.at[0, 0].set(jnp.inf)}, r"x_test must hold finite values"),
        (
            lambda d: {"y_train": jax.nn.one_hot(d.y_train, 2).at[0, 0].set(-0.5)},
            r"y_train must hold finite values in \[0, inf\]; 1 entries do not, the first -0.5",
        ),
        (lambda d: {"y_train": d.y_train[:-1]}, r"x_train has \(150,\) examples but y_train has \(149,\)"),
        (lambda d: {"x_train": d.x_train[:0], "y_train": d.y_train[:0]}, r"the training set is empty"),
    ],
    ids=["label-7", "labels--1", "test-label", "nan-x", "inf-x-test", "negative-probability", "lengths", "empty"],
)
def test_the_data_is_checked_once_before_training(toy_data, change, pattern):
    model, params = _setup(toy_data)
    bad = _with(toy_data, **change(_on_device(toy_data)))
    with pytest.raises(ValueError, match=pattern):
        train.train(model, params, optax.sgd(0.1), bad, epochs=1, batch_size=1, key=jax.random.key(0), progress=False)


def test_binary_targets_outside_0_1_are_refused(toy_data):
    model = nn.mlp([2, 4, 1])
    _, params = model.init(jax.random.key(0), (2,))
    toy_data = _on_device(toy_data)
    y = toy_data.y_train.astype(jnp.float32)[:, None].at[2, 0].set(2.0)
    ds = _with(toy_data, y_train=y, y_test=toy_data.y_test.astype(jnp.float32)[:, None])
    with pytest.raises(ValueError, match=r"y_train must hold finite values in \[0, 1\]; 1 entries do not, the first 2"):
        train.train(
            model,
            params,
            optax.sgd(0.1),
            ds,
            epochs=1,
            key=jax.random.key(0),
            progress=False,
            loss=fp.sigmoid_binary_cross_entropy,
        )


def test_an_empty_test_set_trains_and_records_no_test_metrics(toy_data):
    ds = _with(toy_data, x_test=toy_data.x_test[:0], y_test=toy_data.y_test[:0])
    result = _run(ds, epochs=2)
    assert [r["test_loss"] for r in result.history] == [None, None]
    assert all(np.isfinite(r["train_loss"]) for r in result.history)
    with pytest.raises(ValueError, match=r"target_accuracy needs an accuracy on a test set"):
        _run(ds, epochs=1, target_accuracy=0.9)


def test_a_non_finite_test_loss_is_named_as_the_test_loss(toy_data):
    model, params = _setup(toy_data)
    epoch = train.make_epoch(train.loss_and_grad(model), optax.sgd(0.1), 150, 50)
    state = train.init_state(params, optax.sgd(0.1), jax.random.key(0))
    with pytest.raises(FloatingPointError, match=r"train: the test loss became nan at epoch 1"):
        next(train.run_epochs(epoch, lambda p, x, y: (jnp.nan, None), state, toy_data, 3))


def test_float64_data_for_float32_params_is_refused_by_every_gradient(toy_data):
    ds = _with(toy_data, x_train=toy_data.x_train.astype(jnp.float64), x_test=toy_data.x_test.astype(jnp.float64))
    for gradient in train.GRADIENTS:
        with pytest.raises(TypeError, match=r"Dense\(8\): input is float64 but the parameters are float32"):
            _run(ds, epochs=1, gradient=gradient)


def test_the_parts_of_train_used_alone_reach_train_s_parameters(toy_data, tmp_path):
    whole = _run(toy_data, epochs=3)
    model, params = _setup(toy_data)
    optimizer = optax.adam(1e-2)
    epoch = train.make_epoch(train.loss_and_grad(model), optimizer, 150, 16)
    evaluate = train.make_evaluate(model.apply, accuracy="class-ids")
    saver = train.Checkpointer(tmp_path / "state.npz", {"lr": 1e-2})
    state, log = train.init_state(params, optimizer, jax.random.key(2)), train.MetricsLog(progress=False)
    for state, row in train.run_epochs(epoch, evaluate, state, toy_data, 2):
        saver.save(state, [log.record(row)])
    state, history = saver.restore(train.init_state(params, optimizer, jax.random.key(9)))
    assert int(state.epoch) == 2 and [r["epoch"] for r in history] == [2]
    for state, row in train.run_epochs(epoch, evaluate, state, toy_data, 3):  # noqa: B007  (state is read after the loop)
        assert row["train_loss"] == whole.history[2]["train_loss"]
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(whole.params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.01 then, 0.1 now\)"):
        train.Checkpointer(saver.path, {"lr": 0.1}).restore(state)
