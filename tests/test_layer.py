"""The Layer type: a stax pair that carries its structure as data."""

import re

import jax
import jax.numpy as jnp
import pytest

from funcprop import nn, train


def test_a_layer_unpacks_as_a_stax_pair_and_keeps_its_node():
    layer = nn.Dense(3)
    init, apply = layer
    assert (init, apply) == tuple(layer) and len(layer) == 2
    assert layer.node.kind == "rule" and layer.name == "Dense(3)" and repr(layer) == "Layer(Dense(3))"
    assert nn.serial(layer, nn.Relu()).children[0] is layer


def test_a_hand_built_layer_of_the_same_functions_is_another_layer():
    layer = nn.Dense(3)
    bare = nn.Layer(layer.init, layer.apply)
    assert bare.node is None and bare != layer and layer == nn.Layer(layer.init, layer.apply, layer.node)
    assert len({layer, bare}) == 2


def test_tree_map_passes_a_layer_through_whole():
    model = nn.serial(nn.Dense(3), nn.Relu())
    out = jax.tree.map(lambda a: a, {"model": model, "x": jnp.ones(2)})
    assert out["model"] is model and out["model"].node is model.node


def test_a_layer_is_immutable():
    with pytest.raises(AttributeError, match="Layer is immutable"):
        nn.Dense(3).node = None


def test_the_epoch_keys_share_nothing_with_the_shuffle():
    """Dropout's step keys, the shuffle's key (and the subkeys it splits) and the next
    epoch's key are all distinct; the shuffle's key is the one of a two-way split."""
    key = jax.random.key(0)
    nxt, shuffle_key, steps = train.epoch_keys(key, 4)
    assert jax.random.key_data(shuffle_key).tolist() == jax.random.key_data(jax.random.split(key)[1]).tolist()
    used = [nxt, shuffle_key, *jax.random.split(shuffle_key), *steps]
    data = {tuple(jax.random.key_data(k).tolist()) for k in used}
    assert len(data) == len(used)


def test_float_ids_reach_the_embedding_rule_s_own_check():
    """Not the dtype policy's float-input message: ids are no float input."""
    layer = nn.Embedding(5, 2)
    _, params = layer.init(jax.random.key(0), (3,))
    with pytest.raises(TypeError, match=r"embedding: ids must be"):
        layer.apply(params, jnp.zeros((2, 3), jnp.float64))


def test_flatten_needs_a_batch_axis():
    with pytest.raises(ValueError, match=r"Flatten: input must be a batch \(B, \.\.\.\), got shape \(5,\)"):
        nn.Flatten().apply((), jnp.ones(5))


@pytest.mark.parametrize("num_classes", [2.5, 0, True])
def test_check_labels_wants_a_positive_int_count(num_classes):
    import funcprop as fp

    with pytest.raises(TypeError, match=r"check_labels: num_classes must be a positive int"):
        fp.check_labels([0, 1, 2], num_classes)


@pytest.mark.parametrize(
    "model", [nn.Dense(3), nn.mlp([2, 3, 2]), nn.serial(nn.Dense(3), nn.Relu())], ids=["dense", "mlp", "serial"]
)
def test_init_names_the_layer_for_a_key_that_is_not_one(model):
    for bad in (0, jnp.zeros(3), jax.random.split(jax.random.key(0), 2)):
        with pytest.raises(TypeError, match=r"\.init: key must be one PRNG key.*jax\.random\.key\(seed\)"):
            model.init(bad, (2,))
    assert model.init(jax.random.PRNGKey(0), (2,))[0] == model.init(jax.random.key(0), (2,))[0]  # raw keys too


@pytest.mark.parametrize(
    "shape, fix",
    [(2, r"\(2,\)"), ("2", r"\(784,\)"), ((2.0,), r"\(784,\)"), ((-1,), r"\(784,\)"), ((True,), r"\(784,\)")],
)
def test_init_wants_a_tuple_of_ints_for_the_input_shape(shape, fix):
    with pytest.raises(TypeError, match=r"serial\[3\]\.init: input_shape must be one example's shape.*" + fix):
        nn.mlp([2, 3, 2]).init(jax.random.key(0), shape)


def test_fan_in_inits_still_take_a_tuple_of_shapes():
    out, _ = nn.serial(nn.FanOut(2), nn.FanInSum()).init(jax.random.key(0), (4,))
    assert out == (4,)
    assert nn.FanInConcat().init(jax.random.key(0), [(2,), [3]])[0] == (5,)


def test_apply_refuses_params_made_for_another_width():
    _, wide = nn.mlp([2, 5, 2]).init(jax.random.key(0), (2,))
    x = jnp.ones((4, 2), jnp.float32)
    with pytest.raises(
        ValueError,
        match=r"Dense\(3\): params do not fit this layer on inputs of shape \(2,\): "
        r"expected \.omega \(3, 2\), \.beta \(3,\), got shapes \[\(5, 2\), \(5,\)\]",
    ):
        nn.mlp([2, 3, 2]).apply(wide, x)
    with pytest.raises(ValueError, match=r"Dense\(3\): params do not fit"):
        nn.Dense(3).apply(wide[0], x[0])  # one example, no batch axis
    with pytest.raises(ValueError, match=r"Dense\(3\): params do not fit"):
        nn.Dense(3).apply((wide[0].omega[:3],), x)  # a leaf missing


@pytest.mark.parametrize(
    "layer, shape",
    [
        (nn.Dense(3), (0,)),
        (nn.Dense(3), (0, 4)),
        (nn.Conv2D(3, 2), (4, 4, 0)),
        (nn.LayerNorm(), (0,)),
        (nn.RMSNorm(), (5, 0)),
    ],
    ids=["dense", "dense-empty-sequence", "conv", "layer-norm", "rms-norm"],
)
def test_init_refuses_an_empty_example_axis_by_name(layer, shape):
    with pytest.raises(ValueError, match=re.escape(f"{layer.name}: input_shape {shape} has an empty axis")):
        layer.init(jax.random.key(0), shape)  # was ZeroDivisionError in the initialiser
