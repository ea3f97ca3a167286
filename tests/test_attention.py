"""The attention rule beyond the table's sweep: peers, masks, blocks, dtypes, memory,
errors; and the attention layers (the table checks twin, finite differences, jit, vmap
and grad of grad on every row)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, assert_close, numpy_rng

from funcprop import nn
from funcprop.rules.attention import attention, attention_twin


def _qkv(shape_q, shape_kv, dtype=jnp.float64, seed=0):
    rng = numpy_rng(jax.random.key(seed))
    q = jnp.asarray(rng.standard_normal(shape_q), dtype)
    k, v = (jnp.asarray(rng.standard_normal(shape_kv), dtype) for _ in range(2))
    return q, k, v


def _grads(f, q, k, v, ct):
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(ct * f(q, k, v)), argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize(
    "causal,shape_kv",
    [(False, (2, 9, 4, 8)), (True, (2, 9, 4, 8)), (True, (2, 9, 2, 8))],
    ids=["full", "causal", "gqa"],
)
def test_matches_jax_nn_dot_product_attention(causal, shape_kv):
    """Same layout, scale and (for T = S) causal alignment as jax.nn's xla path."""
    q, k, v = _qkv((2, 9, 4, 8), shape_kv, jnp.float32)
    ct = _qkv((2, 9, 4, 8), (1, 1, 1, 1), jnp.float32, seed=1)[0]

    def ours(q, k, v):
        return attention(q, k, v, causal=causal, block_q=4, block_k=4)

    def peer(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal)

    assert_close(jax.jit(ours)(q, k, v), jax.jit(peer)(q, k, v), 1e-5, "output")
    for name, a, b in zip("qkv", _grads(ours, q, k, v, ct), _grads(peer, q, k, v, ct)):
        assert_close(a, b, 1e-5, f"d{name}")


def test_causal_with_fewer_queries_aligns_bottom_right():
    """T < S: query t sees keys s ≤ t + S − T, as an explicit mask says (the last T
    positions of a sequence whose first S − T are cached)."""
    q, k, v = _qkv((1, 3, 2, 4), (1, 7, 2, 4))
    t, s = np.arange(3)[:, None], np.arange(7)
    mask = jnp.asarray(s <= t + 4)
    assert_close(attention(q, k, v, causal=True, block_q=2), attention(q, k, v, mask=mask), RTOL[np.dtype("float64")])
    # and the last query sees every key: the same as no mask at all
    full = attention(q, k, v)
    assert_close(attention(q, k, v, causal=True)[:, -1], full[:, -1], RTOL[np.dtype("float64")])


def test_fully_masked_rows_give_zero_output_and_zero_gradient():
    """A row with no key left is defined as 0 (jax.nn's xla path gives the mean of V),
    and passes no gradient to q, k or v. Causal with T > S masks the first T − S rows."""
    q, k, v = _qkv((1, 6, 2, 3), (1, 4, 2, 3))
    ct = _qkv((1, 6, 2, 3), (1, 1, 1, 1), seed=1)[0]
    out = attention(q, k, v, causal=True, block_q=4, block_k=2)
    np.testing.assert_array_equal(out[:, :2], 0)
    assert np.all(np.abs(out[:, 2:]) > 0)
    dq, dk, dv = _grads(lambda q, k, v: attention(q, k, v, causal=True, block_q=4, block_k=2), q, k, v, ct)
    np.testing.assert_array_equal(dq[:, :2], 0)
    # the masked rows' cotangents change nothing: zero them and k, v get the same gradient
    _, dk0, dv0 = _grads(lambda q, k, v: attention(q, k, v, causal=True), q, k, v, ct.at[:, :2].set(0))
    assert_close(dk, dk0, RTOL[np.dtype("float64")], "dk")
    assert_close(dv, dv0, RTOL[np.dtype("float64")], "dv")
    # a mask row of all False, too, and no NaN anywhere (the twin agrees)
    mask = jnp.ones((1, 1, 6, 4), bool).at[0, 0, 3].set(False)
    out = attention(q, k, v, mask=mask)
    np.testing.assert_array_equal(out[:, 3], 0)
    assert_close(out, attention_twin(q, k, v, mask=mask), RTOL[np.dtype("float64")])
    grads = _grads(lambda q, k, v: attention(q, k, v, mask=mask), q, k, v, ct)
    assert all(np.isfinite(g).all() for g in grads)
    np.testing.assert_array_equal(grads[0][:, 3], 0)


@pytest.mark.parametrize("blocks", [(1, 1), (2, 3), (5, 7), (64, 64)])
def test_block_sizes_change_nothing(blocks):
    """Any block sizes, dividing T and S or not, give the twin's numbers (float64)."""
    q, k, v = _qkv((2, 5, 2, 3), (2, 7, 2, 3))
    ct = _qkv((2, 5, 2, 3), (1, 1, 1, 1), seed=2)[0]
    bq, bk = blocks

    def ours(q, k, v):
        return attention(q, k, v, causal=True, block_q=bq, block_k=bk)

    def twin(q, k, v):
        return attention_twin(q, k, v, causal=True)

    assert_close(jax.jit(ours)(q, k, v), twin(q, k, v), RTOL[np.dtype("float64")])
    for a, b in zip(_grads(ours, q, k, v, ct), _grads(twin, q, k, v, ct)):
        assert_close(a, b, RTOL[np.dtype("float64")])


def test_mask_broadcasts_over_batch_and_heads():
    q, k, v = _qkv((2, 4, 3, 2), (2, 5, 3, 2))
    rng = numpy_rng(jax.random.key(4))
    for shape in [(4, 5), (1, 1, 4, 5), (2, 1, 4, 5), (1, 3, 4, 5), (2, 3, 4, 5)]:
        mask = jnp.asarray(rng.random(shape) > 0.4)
        assert_close(
            attention(q, k, v, mask=mask, block_q=3, block_k=2),
            attention_twin(q, k, v, mask=mask),
            RTOL[np.dtype("float64")],
            f"mask {shape}",
        )


@pytest.mark.usefixtures("standard_promotion")
def test_bfloat16_accumulates_in_float32_and_returns_bfloat16():
    q, k, v = _qkv((1, 16, 2, 8), (1, 16, 2, 8), jnp.float32)
    low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    out = attention(*low, causal=True, block_q=8, block_k=8)
    assert out.dtype == jnp.bfloat16
    ref = attention(*[x.astype(jnp.float32) for x in low], causal=True)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=2e-2)
    grads = jax.grad(lambda *a: jnp.sum(attention(*a, causal=True).astype(jnp.float32) ** 2), argnums=(0, 1, 2))(*low)
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 3


def _grad_memory(f, *args) -> int:
    stats = jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(*args).compile().memory_analysis()
    return stats.temp_size_in_bytes + stats.output_size_in_bytes


def test_memory_is_linear_not_quadratic_and_no_probabilities_are_saved():
    """The residuals are q, k, v, O and L = m + log ℓ (no T×S array), and the compiled gradient's
    memory grows ~linearly in T while autodiff of the twin grows ~quadratically."""
    q, k, v = _qkv((1, 512, 2, 16), (1, 512, 2, 16), jnp.float32)
    out, pullback = jax.vjp(lambda *a: attention(*a, causal=True), q, k, v)
    saved = jax.tree_util.tree_leaves(pullback)
    assert max(x.size for x in saved) <= q.size  # nothing of T·S = 262144 per head
    assert sum(x.size for x in saved) <= 4 * q.size + 2 * (2 * 512)  # and m, ℓ per head and row

    def f(*a):
        return jnp.sum(attention(*a, causal=True, block_q=128, block_k=128))

    def g(*a):
        return jnp.sum(attention_twin(*a, causal=True))

    small, large = (_qkv((1, t, 2, 16), (1, t, 2, 16), jnp.float32) for t in (512, 1024))
    ours, autodiff = _grad_memory(f, *large), _grad_memory(g, *large)
    assert ours * 8 < autodiff
    assert _grad_memory(f, *large) < 2.5 * _grad_memory(f, *small)  # twice T: about twice the bytes
    assert _grad_memory(g, *large) > 3.5 * _grad_memory(g, *small)  # twice T: four times


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"q": np.zeros((4, 2, 3))}, ValueError, r"attention: q must be \(B, T, H, D\)"),
        ({"k": np.zeros((1, 5, 3, 3)), "v": np.zeros((1, 5, 3, 3))}, ValueError, "multiple of the key/value heads"),
        ({"k": np.zeros((1, 5, 2, 4))}, ValueError, "share the batch B and the head dim D"),
        ({"v": np.zeros((1, 6, 2, 3))}, ValueError, "they must share"),
        ({"mask": np.ones((4, 5), np.int32)}, TypeError, "mask must be boolean"),
        ({"mask": np.ones((4, 6), bool)}, ValueError, r"does not broadcast to \(B, H, T, S\)"),
        ({"scale": -1.0}, ValueError, "scale must be finite and > 0"),
        ({"scale": jnp.float32(0.5)}, TypeError, "scale must be a static Python float"),
        ({"block_q": 0}, ValueError, "block_q must be a positive int"),
        ({"causal": 1}, TypeError, "causal must be a bool"),
        ({"q": np.zeros((1, 4, 4, 3), np.int32)}, TypeError, "q must be a floating-point array"),
    ],
)
def test_bad_input_is_refused_by_name(kwargs, error, match):
    args = {"q": np.zeros((1, 4, 4, 3)), "k": np.zeros((1, 5, 2, 3)), "v": np.zeros((1, 5, 2, 3))}
    args.update(kwargs)
    q, k, v = (jnp.asarray(args.pop(n)) for n in "qkv")
    with pytest.raises(error, match=match):
        attention(q, k, v, **args)


# --- layers ----------------------------------------------------------------------


def test_multi_head_attention_shapes_and_params():
    layer = nn.MultiHeadAttention(4, num_kv_heads=2, causal=True)
    shape, params = layer.init(jax.random.key(0), (6, 16))
    assert shape == (6, 16)
    assert layer.name == "MultiHeadAttention(4, kv=2, causal)"
    q, k, v = params[1]
    assert (q.omega.shape, k.omega.shape, v.omega.shape, params[3].omega.shape) == (
        (16, 16),
        (8, 16),
        (8, 16),
        (16, 16),
    )
    x = jnp.asarray(numpy_rng(jax.random.key(1)).standard_normal((3, 6, 16)), jnp.float32)
    y = layer.apply(params, x)
    assert y.shape == (3, 6, 16) and y.dtype == jnp.float32
    # causal: position 2's output does not depend on positions 3..5
    y2 = layer.apply(params, x.at[:, 3:].set(0))
    np.testing.assert_allclose(y2[:, :3], y[:, :3], rtol=1e-6)
    # head_dim other than d / H needs out_features
    wide = nn.MultiHeadAttention(2, head_dim=5, out_features=16)
    assert wide.init(jax.random.key(0), (6, 16))[0] == (6, 16)
    with pytest.raises(ValueError, match="pass out_features="):
        nn.MultiHeadAttention(2, head_dim=5)
    with pytest.raises(ValueError, match="not divisible by num_heads 3"):
        nn.MultiHeadAttention(3).init(jax.random.key(0), (6, 16))
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        nn.MultiHeadAttention(4, num_kv_heads=3)


def test_positions_refuse_a_sequence_longer_than_the_table():
    layer = nn.PositionalEmbedding(4, 3)
    shape, params = layer.init(jax.random.key(0), (4, 3))
    assert shape == (4, 3)
    x = jnp.zeros((2, 3, 3), jnp.float32)
    table = params[1][1][1].table
    np.testing.assert_allclose(layer.apply(params, x), jnp.broadcast_to(table[:3], (2, 3, 3)))
    with pytest.raises(ValueError, match=r"Positions\(4\): the sequence has 5 positions"):
        layer.apply(params, jnp.zeros((2, 5, 3), jnp.float32))
    with pytest.raises(ValueError, match=r"Positions\(4\): the sequence has 6"):
        layer.init(jax.random.key(0), (6, 3))


def test_a_nan_input_spoils_its_own_rows_only():
    """A NaN in query t makes row t NaN (and only that row); a NaN in key s or value s
    reaches every row that attends to s (P_ts > 0, or 0 · NaN in P V), as in the twin."""
    q, k, v = _qkv((1, 4, 1, 2), (1, 4, 1, 2))
    out = attention(q.at[0, 1, 0, 0].set(jnp.nan), k, v)
    assert np.isnan(out[0, 1]).all() and np.isfinite(np.delete(np.asarray(out), 1, axis=1)).all()
    causal = attention(q, k, v.at[0, 2, 0, 1].set(jnp.nan), causal=True, block_q=2, block_k=2)
    assert np.isfinite(causal[0, :2]).all() and np.isnan(causal[0, 2:, 0, 1]).all()
    assert np.isfinite(causal[0, :, 0, 0]).all()  # the other feature of v is untouched
