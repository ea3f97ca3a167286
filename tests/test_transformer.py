"""The GPT model and the loss-layer head: the written-out backprop through a whole
transformer equals jax.grad through the rules and through the twins; training with a
loss layer; its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close, numpy_rng

from funcprop import backprop, data, nn, train

V, T = 11, 6


def _model(**kw):
    model = nn.gpt(V, T, d_model=8, num_heads=2, num_layers=2, num_kv_heads=1, param_dtype=jnp.float64, **kw)
    head = nn.LinearCrossEntropy(V, param_dtype=jnp.float64)
    shape, model_params = model.init(jax.random.key(0), (T,))
    _, head_params = head.init(jax.random.key(1), shape)
    # move the params off their init (LayerNorm's γ = 1, β = 0, zero biases)
    rng = numpy_rng(jax.random.key(2))
    params = jax.tree.map(
        lambda p: p + 0.3 * jnp.asarray(rng.standard_normal(p.shape), p.dtype), (model_params, head_params)
    )
    return model, head, params


def _batch(seed=3, ignore=True):
    rng = numpy_rng(jax.random.key(seed))
    x = jnp.asarray(rng.integers(0, V, (3, T)), jnp.int32)
    y = jnp.asarray(rng.integers(0, V, (3, T)), jnp.int32)
    return x, (y.at[0, 1].set(-100) if ignore else y)


def _key_bias_paths(grads) -> set:
    """The key projections' biases: q·(k_s + b) shifts every score of a row by q·b, which
    the softmax cancels, so their gradient is 0 in exact arithmetic (rounding noise here)."""
    paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(grads)}
    return {p for p in paths if p.endswith("[1][1][1].beta")}


def test_backprop_through_the_transformer_equals_autodiff_through_rules_and_twins():
    """Cotangents add at each residual, at the q/k/v fan-out and at the positions'
    fan-out; the loss layer's Ω̄ is the head's. float64, 1e-10 relative."""
    model, head, params = _model()
    x, y = _batch()
    twin = nn.twin(model)

    @jax.jit
    def three(params):
        return {
            "backprop": backprop.value_and_grad(model, head)(params, x, y),
            "rules": jax.value_and_grad(lambda p: head.apply(p[1], model.apply(p[0], x), y))(params),
            "twins": jax.value_and_grad(lambda p: head.node.rule.twin(p[1], twin(p[0], x), y))(params),
        }

    got = three(params)
    value, grads = got["twins"]
    zero = _key_bias_paths(grads)
    assert len(zero) == 2  # one per block
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads))
    for way in ("backprop", "rules"):
        v, g = got[way]
        assert jax.tree.structure(g) == jax.tree.structure(params)
        np.testing.assert_allclose(v, value, rtol=1e-12)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(grads)):
            where = f"{way} {jax.tree_util.keystr(path)}"
            if jax.tree_util.keystr(path) in zero:
                assert float(jnp.max(jnp.abs(a))) < 1e-12 * scale, where
            else:
                assert_close(a, b, 1e-10, where)


def test_the_head_can_be_trained_alone_and_its_params_are_checked():
    model, head, params = _model()
    x, y = _batch()
    with pytest.raises(ValueError, match=r"value_and_grad: with a loss layer, params must be the pair"):
        backprop.value_and_grad(model, head)(params[0], x, y)
    with pytest.raises(TypeError, match=r"LinearCrossEntropy\(11\): params must be LinearCrossEntropyParams"):
        head.apply((), jnp.zeros((3, T, 8)), y)
    assert nn.is_loss_layer(head) and not nn.is_loss_layer(model)


def _text_data(n_train=48, n_test=8, seed=0):
    """Sequences of a noisy counter, mod V: learnable by a tiny model in a few steps."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, V, (n_train + n_test, 1))
    seq = (start + np.arange(T + 1)) % V
    x, y = seq[:, :-1].astype(np.int32), seq[:, 1:].astype(np.int32)
    return data.Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], V, "counter")


@pytest.mark.usefixtures("standard_promotion")
def test_train_with_a_loss_layer_learns_and_rules_equal_twins():
    model = nn.gpt(V, T, d_model=16, num_heads=2, num_layers=1)
    head = nn.LinearCrossEntropy(V)
    shape, mp = model.init(jax.random.key(0), (T,))
    params = (mp, head.init(jax.random.key(1), shape)[1])
    ds = _text_data()
    runs = {
        g: train.train(
            model,
            params,
            optax.adam(1e-2),
            ds,
            epochs=4,
            batch_size=16,
            key=jax.random.key(2),
            loss=head,
            gradient=g,
            progress=False,
        )
        for g in ("rules", "twins", "backprop")
    }
    hist = runs["rules"].history
    assert hist[-1]["test_loss"] < 0.5 * hist[0]["train_loss"]  # log(11) = 2.4 at the start
    assert hist[-1]["test_accuracy"] is None
    for g in ("twins", "backprop"):
        for a, b in zip(runs[g].history, hist):
            np.testing.assert_allclose(a["test_loss"], b["test_loss"], rtol=1e-4)


@pytest.mark.usefixtures("standard_promotion")
def test_train_checks_the_loss_layers_targets_once():
    model = nn.gpt(V, T, d_model=8, num_heads=2, num_layers=1)
    head = nn.LinearCrossEntropy(V)
    shape, mp = model.init(jax.random.key(0), (T,))
    params = (mp, head.init(jax.random.key(1), shape)[1])
    ds = _text_data()
    bad = ds._replace(y_train=ds.y_train.copy())
    bad.y_train[3, 2] = V
    with pytest.raises(ValueError, match=r"train: y_train must hold class ids in \[0, 11\) or the ignored id -100"):
        train.train(
            model,
            params,
            optax.adam(1e-2),
            bad,
            epochs=1,
            batch_size=16,
            key=jax.random.key(0),
            loss=head,
            progress=False,
        )
    ignored = ds._replace(y_train=np.where(ds.y_train == 0, -100, ds.y_train).astype(np.int32))
    res = train.train(
        model,
        params,
        optax.adam(1e-2),
        ignored,
        epochs=1,
        batch_size=16,
        key=jax.random.key(0),
        loss=head,
        progress=False,
    )
    assert np.isfinite(res.history[-1]["train_loss"])
    with pytest.raises(ValueError, match="train: with a loss layer, params must be the pair"):
        train.train(
            model, mp, optax.adam(1e-2), ds, epochs=1, batch_size=16, key=jax.random.key(0), loss=head, progress=False
        )


def test_gpt_is_causal_and_refuses_a_longer_sequence():
    model, head, params = _model()
    x, _ = _batch()
    out = model.apply(params[0], x)
    assert out.shape == (3, T, 8)
    changed = model.apply(params[0], x.at[:, 4:].set(0))
    np.testing.assert_allclose(changed[:, :4], out[:, :4], rtol=1e-12)
    logits = nn.lm_head.logits(params[1], out)
    assert logits.shape == (3, T, V)
    with pytest.raises(ValueError, match=r"Positions\(6\): the sequence has 7 positions"):
        model.apply(params[0], jnp.zeros((1, 7), jnp.int32))
    with pytest.raises(ValueError, match="d_model 10 must be divisible by num_heads 4"):
        nn.gpt(V, T, d_model=10, num_heads=4)
