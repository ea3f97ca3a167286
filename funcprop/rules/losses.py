"""Losses, each the mean over examples, with hand-derived backwards.

Fused softmax + cross-entropy (seed ``backprop-deep-dive-softmax-cross-entropy``):
with p = softmax(z) and L = −Σ_i y_i log p_i, ``∂L/∂z = p − y``; for the mean over B
examples, ``(p − y) / B``. The softmax Jacobian cancels against the log and is never
formed.

Targets that do not sum to one: the general gradient is ``(p Σ_c y_c − y) / B``,
which is ``(p − y) / B`` for every proper distribution. The rule computes the general
form, so it also holds off the simplex (unnormalised targets, second derivatives
along any direction of y). Negative targets are not dropped either: under ``jit`` a
value cannot be checked, so the loss is defined as ``−Σ y log p`` for every real y,
and the rule, its fwd and its twin all compute that one formula (with 0 · log 0 = 0,
so a −inf logit with target 0 adds nothing and gets no gradient).

Empty inputs: a loss over 0 classes or 0 examples raises a ValueError at trace time
(shapes are static): the mean of nothing is NaN, which would train on silently.

Class ids: the label's log-probability is taken with ``take_along_axis``, and the
backward forms ``p − y`` elementwise (``y = (iota == id)``), so no (B, C) one-hot array
is built (at C = 32k it was the whole cost). Under ``jit`` a label cannot be checked,
so an id outside ``[0, C)`` (negative ids included) acts as an all-zero target row:
that example adds 0 to the summed loss (the mean still divides by B) and its logits
get zero gradient. Nothing raises, and nothing is NaN unless its logits are. Call
:func:`check_labels` outside ``jit``, once on the dataset, to catch such ids.

Dtypes (DESIGN §7): every loss accumulates in float32 at least and returns its scalar
in that dtype (float32 for bfloat16 or float16 inputs, float64 for float64); each
cotangent comes back in its own input's dtype. Summed in float16, the cross-entropy of
40,000 examples overflowed to inf before the division by B.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from funcprop.rules._core import (
    accumulation_dtype,
    as_float_array,
    custom_rule,
    implements,
    is_int,
    numel,
    require_nonempty,
    require_same_dtype,
    require_same_shape,
    require_some,
)
from funcprop.rules.softmax import log_softmax_twin


def _is_int_array(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.integer)


def _class_ids(labels):
    """Integer class ids, ids narrower than 32 bits widened to int32 (uint8 ids must not
    wrap around when compared with C)."""
    return labels.astype(jnp.int32) if labels.dtype.itemsize < 4 else labels


def _log_p_of_ids(ids, log_p):
    """log p of each row's id, ``(...)``, taken with ``take_along_axis`` (no (..., C)
    one-hot). An id outside [0, C) gives 0, except in a NaN row, which stays NaN (as
    Σ_c 0 · NaN did with the one-hot): NaN in, NaN out."""
    valid = (ids >= 0) & (ids < log_p.shape[-1])
    picked = jnp.take_along_axis(log_p, jnp.where(valid, ids, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(valid | jnp.isnan(picked), picked, 0)


def _log_p_of_targets(y, log_p):
    """log p, except 0 where y = 0 and p = 0: the convention 0 · log 0 = 0, so that a
    masked −inf logit with a zero target adds nothing, in the loss and in ȳ."""
    return jnp.where((y == 0) & (log_p == -jnp.inf), 0, log_p)


def _cross_entropy_sum(y, log_p):
    """−Σ y log p for any y (negative or unnormalised targets included), 0 · log 0 = 0."""
    return -jnp.sum(y * _log_p_of_targets(y, log_p))


# --- softmax_cross_entropy -------------------------------------------------------


def _upcast(*arrays):
    """The arrays in their accumulation dtype: float32 at least (DESIGN §7), so a loss
    over many bfloat16 or float16 elements neither overflows nor rounds its sum away."""
    acc = accumulation_dtype(arrays[0].dtype)
    return [a.astype(acc) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in arrays]


def softmax_cross_entropy_twin(logits, labels):
    """Plain twin: ``−Σ y log_softmax(z) / B``, B the number of examples, in float32 at
    least; the scalar is returned in that dtype."""
    logits, labels = _upcast(logits, labels)
    return _cross_entropy(labels, log_softmax_twin(logits))


def _cross_entropy(labels, log_p):
    """−Σ y log p / B: for class ids, −Σ_b log p[b, id_b] / B (ids outside [0, C) add 0)."""
    n_examples = numel(log_p.shape[:-1])
    if _is_int_array(labels):
        return -jnp.sum(_log_p_of_ids(_class_ids(labels), log_p)) / n_examples
    return _cross_entropy_sum(labels, log_p) / n_examples


def _softmax_cross_entropy_fwd(logits, labels):
    wide, wide_labels = _upcast(logits, labels)
    log_p = log_softmax_twin(wide)
    loss = _cross_entropy(wide_labels, log_p)
    return loss, (log_p, labels, jnp.zeros((0,), logits.dtype))  # the last: logits' dtype, in 0 bytes


def _softmax_cross_entropy_bwd(res, g):
    """z̄ = ḡ (p Σy − y) / B, i.e. ḡ (p − y) / B;  ȳ = −ḡ log p / B for probabilities.

    For class ids, Σy is 1 for an id in [0, C) and 0 outside, and y is ``iota == id``,
    formed elementwise into z̄ (which is (..., C) anyway), not as a one-hot array."""
    log_p, labels, like = res
    scale = g.astype(log_p.dtype) / numel(log_p.shape[:-1])
    p = jnp.exp(log_p)
    if _is_int_array(labels):
        ids = _class_ids(labels)[..., None]
        valid = (ids >= 0) & (ids < log_p.shape[-1])
        is_label = jax.lax.broadcasted_iota(ids.dtype, log_p.shape, log_p.ndim - 1) == ids
        logits_bar = scale * (valid.astype(p.dtype) * p - is_label.astype(p.dtype))
        return logits_bar.astype(like.dtype), None
    y = labels.astype(log_p.dtype)
    logits_bar = scale * (p * jnp.sum(y, axis=-1, keepdims=True) - y)
    return logits_bar.astype(like.dtype), (-scale * _log_p_of_targets(y, log_p)).astype(labels.dtype)


def _softmax_cross_entropy_args(logits, labels):
    """The validation: float logits (..., C); int ids (...) or probabilities (..., C)."""
    fn = "softmax_cross_entropy"
    logits = as_float_array(fn, "logits", logits)
    labels = jnp.asarray(labels)
    if logits.ndim < 1:
        raise ValueError(f"{fn}: logits must have a class axis (B, C) or (C,), got shape {logits.shape}")
    require_nonempty(fn, logits, -1, "class")
    require_some(fn, numel(logits.shape[:-1]), "example", logits.shape)
    if _is_int_array(labels):
        if labels.shape != logits.shape[:-1]:
            raise ValueError(
                f"{fn}: integer labels have shape {labels.shape} but logits have "
                f"shape {logits.shape}; class ids must be {logits.shape[:-1]} "
                f"(one id per row of logits)"
            )
    elif jnp.issubdtype(labels.dtype, jnp.floating):
        if labels.shape != logits.shape:
            raise ValueError(
                f"{fn}: probability labels have shape {labels.shape} but logits have "
                f"shape {logits.shape}; they must match, or pass integer class ids "
                f"of shape {logits.shape[:-1]}"
            )
        require_same_dtype(fn, logits=logits, labels=labels)
    else:
        raise TypeError(
            f"{fn}: labels must be integer class ids or float probabilities, got "
            f"dtype {labels.dtype}; cast with labels.astype(jnp.int32)"
        )
    return logits, labels


_SOFTMAX_CROSS_ENTROPY = custom_rule(
    softmax_cross_entropy_twin,
    _softmax_cross_entropy_fwd,
    _softmax_cross_entropy_bwd,
    prepare=_softmax_cross_entropy_args,
)


@implements(_SOFTMAX_CROSS_ENTROPY)
def softmax_cross_entropy(logits, labels) -> jax.Array:
    """Mean cross-entropy of softmax(logits) against labels, fused.

    ``L = −(1/B) Σ_b Σ_c y_bc log p_bc`` with ``p = softmax(logits)``. Backward:
    ``∂L/∂logits = (p − y) / B`` (computed as ``(p Σ_c y_c − y) / B``, the same for
    targets that sum to one); for probability labels also ``∂L/∂y = −log p / B``.
    Keeps log p (and the labels). Finite for logits of ±1e4.

    The formula holds for any float targets: negative or unnormalised ones are not
    dropped or clipped (values cannot be checked under jit), and the rule and its twin
    agree on them. 0 · log 0 = 0: a −inf logit with target 0 adds nothing.

    Args:
      logits: ``(B, C)``, or ``(..., C)`` with any leading axes (B is their product),
        or ``(C,)`` for one example.
      labels: integer class ids of shape ``logits.shape[:-1]``, or target
        probabilities of the shape of ``logits``. Ids outside ``[0, C)`` are not
        seen under jit (see the module docstring); check them with
        :func:`check_labels`.

    Returns:
      The scalar mean loss, in float32 at least.

    Raises:
      ValueError: on 0 classes or 0 examples (the mean of nothing is NaN), or labels
        of the wrong shape.
      TypeError: on integer logits, labels neither int nor float, or mixed float dtypes.

    Example:
      >>> import funcprop as fp
      >>> logits, y = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]), jnp.array([0, 2])
      >>> g = jax.grad(fp.softmax_cross_entropy)(logits, y)
      >>> p = jax.nn.softmax(logits)
      >>> bool(jnp.allclose(g, (p - jax.nn.one_hot(y, 3)) / 2))   # (p − y) / B
      True
    """
    return _SOFTMAX_CROSS_ENTROPY.core(*_SOFTMAX_CROSS_ENTROPY.prepare(logits, labels))


def check_labels(labels, num_classes: int) -> np.ndarray:
    """Check integer class ids outside ``jit``; return them as a NumPy array.

    ``softmax_cross_entropy`` cannot see an id outside ``[0, num_classes)`` under
    ``jit`` (it silently contributes zero loss); call this once on a dataset's
    labels before training.

    Raises:
      TypeError: if labels are not integers.
      ValueError: if any id is outside ``[0, num_classes)``, naming the first one.
    """
    if isinstance(num_classes, np.integer):
        num_classes = int(num_classes)
    if not is_int(num_classes, 1):
        raise TypeError(f"check_labels: num_classes must be a positive int, got {num_classes!r}; pass e.g. 10")
    arr = np.asarray(labels)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"check_labels: labels must be integer class ids, got dtype {arr.dtype}; cast with labels.astype(np.int32)"
        )
    bad = (arr < 0) | (arr >= num_classes)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"check_labels: {int(bad.sum())} of {arr.size} labels are outside "
            f"[0, {num_classes}), e.g. labels[{', '.join(map(str, first))}] = "
            f"{arr[first]}; fix the labels or num_classes"
        )
    return arr


def _same_shape_args(fn: str, a_name: str, b_name: str):
    """The validation of a loss of two float arrays of one shape and one dtype."""

    def prepare(a, b):
        a, b = as_float_array(fn, a_name, a), as_float_array(fn, b_name, b)
        require_same_shape(fn, a_name, a, b_name, b)
        require_same_dtype(fn, **{a_name: a, b_name: b})
        require_some(fn, a.size, "element", a.shape)
        return a, b

    return prepare


# --- mse -------------------------------------------------------------------------


def mse_twin(pred, target):
    """Plain twin of :func:`mse`: ``mean((pred − target)²)``, in float32 at least."""
    pred, target = _upcast(pred, target)
    return jnp.mean((pred - target) ** 2)


def _mse_fwd(pred, target):
    wide, wide_target = _upcast(pred, target)
    diff = wide - wide_target
    return jnp.mean(diff**2), (diff, jnp.zeros((0,), pred.dtype))


def _mse_bwd(res, g):
    """p̄ = 2 ḡ (pred − target) / N,  t̄ = −p̄."""
    diff, like = res
    pred_bar = ((2 * g.astype(diff.dtype) / diff.size) * diff).astype(like.dtype)
    return pred_bar, -pred_bar


_MSE = custom_rule(mse_twin, _mse_fwd, _mse_bwd, prepare=_same_shape_args("mse", "pred", "target"))


@implements(_MSE)
def mse(pred, target) -> jax.Array:
    """Mean squared error ``(1/N) Σ (pred − target)²`` over all N elements.

    Backward: ``∂L/∂pred = 2 (pred − target) / N = −∂L/∂target``. Keeps the
    difference. Shapes must match exactly: no broadcasting, which would silently turn
    a ``(B, 1)`` against ``(B,)`` mistake into a ``(B, B)`` loss. N = 0 (an empty
    batch) is a ValueError: the mean of nothing is NaN.
    """
    return _MSE.core(*_MSE.prepare(pred, target))


# --- sigmoid_binary_cross_entropy ------------------------------------------------


def sigmoid_binary_cross_entropy_twin(logits, targets):
    """Plain twin: ``mean(softplus(z) − y z)``, which is −y log σ(z) − (1−y) log(1−σ(z)),
    in float32 at least."""
    logits, targets = _upcast(logits, targets)
    return jnp.mean(jnp.logaddexp(logits, 0) - targets * logits)


def _sigmoid_binary_cross_entropy_fwd(logits, targets):
    return sigmoid_binary_cross_entropy_twin(logits, targets), (logits, targets)


def _sigmoid_binary_cross_entropy_bwd(res, g):
    """z̄ = ḡ (σ(z) − y) / N,  ȳ = −ḡ z / N."""
    logits, targets = res
    wide, wide_targets = _upcast(logits, targets)
    scale = g.astype(wide.dtype) / logits.size
    return (scale * (jax.lax.logistic(wide) - wide_targets)).astype(logits.dtype), (-scale * wide).astype(targets.dtype)


_SIGMOID_BCE = custom_rule(
    sigmoid_binary_cross_entropy_twin,
    _sigmoid_binary_cross_entropy_fwd,
    _sigmoid_binary_cross_entropy_bwd,
    prepare=_same_shape_args("sigmoid_binary_cross_entropy", "logits", "targets"),
)


@implements(_SIGMOID_BCE)
def sigmoid_binary_cross_entropy(logits, targets) -> jax.Array:
    """Mean binary cross-entropy of σ(logits) against targets in [0, 1].

    ``L = (1/N) Σ [softplus(z) − y z]``, the stable form of
    ``−y log σ(z) − (1 − y) log(1 − σ(z))``; finite for logits of ±1e4. Backward:
    ``∂L/∂z = (σ(z) − y) / N``, ``∂L/∂y = −z / N``. Keeps the inputs. The loss is
    linear in y, so targets outside [0, 1] follow the same formula in the rule and its
    twin (nothing is clipped); N = 0 is a ValueError (the mean of nothing is NaN).

    Args:
      logits: any shape.
      targets: the shape of logits, floating point (0/1 labels or soft targets).
    """
    return _SIGMOID_BCE.core(*_SIGMOID_BCE.prepare(logits, targets))
