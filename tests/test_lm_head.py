"""linear_cross_entropy, the chunked LM head: against its twin and against optax on the
explicit logits, its ignore_index and out-of-range semantics, chunks that do not divide
N, bfloat16, errors, and the memory it saves (a structural property of the compiled
program, not a timing)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import RTOL, assert_close, numpy_rng

import funcprop as fp
from funcprop.rules.lm_head import default_chunk_size, linear_cross_entropy_twin

FN = fp.linear_cross_entropy
ARGNUMS = (0, 1)  # h and omega; the labels are held fixed


def _inputs(n, d, v, dtype=jnp.float64, seed=0, labels=None):
    rng = numpy_rng(jax.random.key(seed))
    h = jnp.asarray(rng.standard_normal((n, d)), dtype)
    omega = jnp.asarray(rng.standard_normal((v, d)) / np.sqrt(d), dtype)
    labels = rng.integers(0, v, n) if labels is None else labels
    return h, omega, jnp.asarray(labels, jnp.int32)


def _value_and_grads(fn, *args, **kwargs):
    """(loss, (h̄, Ω̄)), jitted; one compilation per function, static arguments and shapes."""
    return _jitted_value_and_grads(fn, tuple(sorted(kwargs.items())), *args)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jitted_value_and_grads(fn, kwargs, h, omega, labels):
    return jax.value_and_grad(lambda h, w: fn(h, w, labels, **dict(kwargs)), ARGNUMS)(h, omega)


F64 = RTOL[np.dtype("float64")]


def _assert_same(got, want, rtol=F64, what=""):
    (loss, grads), (ref_loss, ref_grads) = got, want
    assert_close(loss, ref_loss, rtol, f"{what} loss")
    for name, a, b in zip(("h", "omega"), grads, ref_grads):
        assert_close(a, b, rtol, f"{what} cotangent of {name}")


# 9 rows, V = 6: one ignored (−100), ids 6 and −1 outside [0, 6); 6 rows count
LABELS = [1, 5, -100, 0, 6, 2, -1, 3, 3]


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 9, 100, None])
def test_matches_the_twin_for_any_chunk_size(chunk_size):
    """Chunks of 2 and 5 rows do not divide N = 9: the padded rows must add nothing."""
    args = _inputs(9, 4, 6, labels=LABELS)
    got = _value_and_grads(FN, *args, chunk_size=chunk_size)
    _assert_same(got, _value_and_grads(linear_cross_entropy_twin, *args), what=f"chunk_size={chunk_size}")


def test_matches_optax_on_the_explicit_logits(standard_promotion):
    h, omega, labels = _inputs(9, 4, 6, labels=LABELS)
    counted = (labels >= 0) & (labels < 6)

    def reference(h, omega, labels):
        per_row = optax.softmax_cross_entropy_with_integer_labels(h @ omega.T, jnp.where(counted, labels, 0))
        return jnp.sum(jnp.where(counted, per_row, 0)) / jnp.sum(counted)

    got = _value_and_grads(FN, h, omega, labels, chunk_size=4)
    _assert_same(got, _value_and_grads(reference, h, omega, labels), what="vs optax")


@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_the_mean_is_over_the_labels_that_count(ignore_index):
    """PyTorch's convention: ignored and out-of-range rows add nothing and are not in
    the count; the loss equals the loss of the counted rows alone, ∂L/∂h is 0 on the
    rest, and ∂L/∂Ω is the counted rows' (ignore_index may be a class id, here 3)."""
    h, omega, labels = _inputs(9, 4, 6, labels=LABELS)
    keep = np.flatnonzero((np.asarray(labels) >= 0) & (np.asarray(labels) < 6) & (np.asarray(labels) != ignore_index))
    loss, (h_bar, omega_bar) = _value_and_grads(FN, h, omega, labels, ignore_index=ignore_index, chunk_size=4)
    sub_loss, (sub_h_bar, sub_omega_bar) = _value_and_grads(FN, h[keep], omega, labels[keep])
    assert_close(loss, sub_loss, 1e-12, "loss")
    assert_close(h_bar[keep], sub_h_bar, 1e-12, "h̄ of counted rows")
    assert_close(omega_bar, sub_omega_bar, 1e-12, "Ω̄")
    np.testing.assert_array_equal(np.delete(np.asarray(h_bar), keep, axis=0), 0.0)


def test_no_label_counting_gives_zero_loss_and_zero_gradients():
    h, omega, labels = _inputs(5, 3, 4, labels=[-100, -100, 4, -1, -100])
    for fn in (FN, linear_cross_entropy_twin):
        loss, grads = _value_and_grads(fn, h, omega, labels)
        assert loss == 0.0 and loss.dtype == jnp.float64
        for g in grads:
            np.testing.assert_array_equal(g, 0.0)


def test_leading_axes_are_rows():
    h, omega, labels = _inputs(6, 3, 5, labels=[0, 4, -100, 2, 2, 1])
    flat = _value_and_grads(FN, h, omega, labels, chunk_size=4)
    loss, (h_bar, omega_bar) = _value_and_grads(FN, h.reshape(2, 3, 3), omega, labels.reshape(2, 3), chunk_size=4)
    assert h_bar.shape == (2, 3, 3)
    _assert_same((loss, (h_bar.reshape(6, 3), omega_bar)), flat, what="(2, 3, d)")


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int8, jnp.uint32, jnp.int64])
def test_narrow_and_unsigned_labels_do_not_wrap(dtype):
    """V = 300: a uint8 id 120 must not be compared with a V that wrapped around to 44."""
    h, omega, labels = _inputs(4, 3, 300, labels=[5, 120, 100, 7])
    got = _value_and_grads(FN, h, omega, labels.astype(dtype))
    _assert_same(got, _value_and_grads(FN, h, omega, labels), what=str(dtype))


def test_bfloat16_accumulates_in_float32():
    """Loss a float32 scalar, cotangents bfloat16, each the float32 result (of the same
    rounded inputs) rounded to bfloat16, to within one step of it."""
    h, omega, labels = _inputs(64, 16, 40, dtype=jnp.bfloat16, labels=None)
    loss, grads = _value_and_grads(FN, h, omega, labels, chunk_size=24)
    ref_loss, ref_grads = _value_and_grads(FN, h.astype(jnp.float32), omega.astype(jnp.float32), labels)
    assert loss.dtype == jnp.float32 and all(g.dtype == jnp.bfloat16 for g in grads)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for g, ref in zip(grads, ref_grads):
        rounded = ref.astype(jnp.bfloat16)
        near = (g == rounded) | (g == jnp.nextafter(rounded, jnp.inf)) | (g == jnp.nextafter(rounded, -jnp.inf))
        assert bool(jnp.all(near)), f"{int(jnp.sum(~near))} cotangents off by more than one bfloat16 step"


def test_forward_over_reverse_hessian_vector_product_matches_the_twin():
    """jvp of grad: forward mode through the forward's scan (the rule's residuals are
    its gradients); the table tests reverse over reverse."""
    args = _inputs(7, 3, 5, labels=[1, 4, -100, 0, 7, 2, 1])
    tangents = tuple(
        jnp.asarray(numpy_rng(jax.random.key(9 + i)).standard_normal(a.shape)) for i, a in enumerate(args[:2])
    )

    def hvp(fn):
        grad = jax.grad(lambda h, w: fn(h, w, args[2], chunk_size=3), ARGNUMS)
        return jax.jit(lambda p, t: jax.jvp(grad, p, t)[1])(args[:2], tangents)

    for a, b in zip(hvp(FN), hvp(linear_cross_entropy_twin)):
        assert_close(a, b, 1e-12, "Hessian-vector product")


def test_residuals_are_the_gradients_not_the_logits():
    """What the rule keeps for the backward: h̄ (N, d) and Ω̄ (V, d), no (N, V) array."""
    h, omega, labels = _inputs(64, 4, 50)
    _, pullback = jax.vjp(lambda h, w: FN(h, w, labels), h, omega)
    shapes = sorted(leaf.shape for leaf in jax.tree.leaves(pullback) if hasattr(leaf, "shape"))
    assert (64, 4) in shapes and (50, 4) in shapes
    assert max(int(np.prod(s)) for s in shapes) < 64 * 50, shapes


def test_the_default_chunk_evens_out_the_padding():
    assert default_chunk_size(4096, 32768) == 128  # 4M logits per chunk
    assert default_chunk_size(1024, 8192) == 256  # at least 4 chunks
    assert default_chunk_size(3, 10**8) == 1
    for n, v in [(1001, 32768), (7, 5), (1, 5), (5000, 131072)]:
        rows = default_chunk_size(n, v)
        n_chunks = -(-n // rows)
        assert 1 <= rows <= n and n_chunks * rows - n < n_chunks, (n, v, rows)


def _compiled_bytes(fn, *args):
    m = fn.lower(*args).compile().memory_analysis()
    return m.temp_size_in_bytes + m.output_size_in_bytes


def test_the_compiled_gradient_needs_under_a_quarter_of_autodiffs_memory():
    """N 1024, d 64, V 8192 in float32: autodiff of the twin holds the 32 MiB logits and
    their cotangent; the rule holds one chunk's (a quarter of the logits, by default).
    Without differentiation too: the primal is the chunked loss, not the twin."""
    h, omega, labels = _inputs(1024, 64, 8192, dtype=jnp.float32)
    rule = _compiled_bytes(jax.jit(jax.grad(FN, ARGNUMS)), h, omega, labels)
    autodiff = _compiled_bytes(jax.jit(jax.grad(linear_cross_entropy_twin, ARGNUMS)), h, omega, labels)
    assert rule < autodiff / 4, (rule / 2**20, autodiff / 2**20)
    forward = _compiled_bytes(jax.jit(FN), h, omega, labels)
    plain = _compiled_bytes(jax.jit(linear_cross_entropy_twin), h, omega, labels)
    assert forward < plain / 3, (forward / 2**20, plain / 2**20)


H, OMEGA, IDS = np.zeros((4, 3), np.float32), np.zeros((5, 3), np.float32), np.zeros(4, np.int32)

ERRORS = [
    (
        "omega-features",
        (H, np.zeros((5, 2), np.float32), IDS),
        {},
        ValueError,
        r"omega has shape \(5, 2\) but h has 3 features.*must be \(V, 3\)",
    ),
    (
        "omega-vector",
        (H, np.zeros(3, np.float32), IDS),
        {},
        ValueError,
        r"omega has shape \(3,\).*\(V, 3\) with V >= 1",
    ),
    ("omega-no-classes", (H, np.zeros((0, 3), np.float32), IDS), {}, ValueError, r"with V >= 1"),
    ("h-scalar", (np.float32(1), OMEGA, IDS), {}, ValueError, r"h must have a feature axis"),
    ("no-rows", (np.zeros((0, 3), np.float32), OMEGA, np.zeros(0, np.int32)), {}, ValueError, r"at least one row"),
    (
        "labels-shape",
        (H, OMEGA, np.zeros(5, np.int32)),
        {},
        ValueError,
        r"labels have shape \(5,\) but h has shape \(4, 3\); labels must be \(4,\)",
    ),
    (
        "labels-float",
        (H, OMEGA, IDS.astype(np.float32)),
        {},
        TypeError,
        r"labels must be integer class ids, got dtype float32; cast",
    ),
    ("h-int", (H.astype(np.int32), OMEGA, IDS), {}, TypeError, r"h must be a floating-point array"),
    ("mixed-dtypes", (H, OMEGA.astype(np.float64), IDS), {}, TypeError, r"h is float32, omega is float64"),
    ("chunk-zero", (H, OMEGA, IDS), {"chunk_size": 0}, ValueError, r"chunk_size must be a positive int, got 0"),
    ("chunk-negative", (H, OMEGA, IDS), {"chunk_size": -2}, ValueError, r"chunk_size must be a positive int"),
    ("chunk-float", (H, OMEGA, IDS), {"chunk_size": 2.0}, ValueError, r"chunk_size must be a positive int, got 2.0"),
    ("chunk-bool", (H, OMEGA, IDS), {"chunk_size": True}, ValueError, r"chunk_size must be a positive int, got True"),
    ("ignore-float", (H, OMEGA, IDS), {"ignore_index": -100.0}, TypeError, r"ignore_index must be a static Python int"),
    ("ignore-none", (H, OMEGA, IDS), {"ignore_index": None}, TypeError, r"ignore_index must be a static Python int"),
]


@pytest.mark.parametrize("args, kwargs, error, match", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_bad_input_is_refused_by_name(args, kwargs, error, match):
    with pytest.raises(error, match=rf"^linear_cross_entropy: .*{match}"):
        jax.eval_shape(lambda *a: FN(*a, **kwargs), *args)
