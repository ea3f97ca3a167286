"""The gradient-rule checker: hand-written VJPs against autodiff, element by element.

- :func:`check_vjp` ``(fn, *args, reference=...)``: one rule. Rows, one per leaf:

  - ``output``: fn's forward value against the reference's;
  - ``vjp``: fn's VJP against ``jax.vjp`` of the reference, for random cotangents c;
  - ``finite-diff``: fn's VJP against central differences of φ(x) = ⟨c, fn(x)⟩ in
    float64, ``(φ(x + h eᵢ) − φ(x − h eᵢ)) / 2h`` for every element i of every leaf;
    where float64 is off, ``taylor`` instead: ``|φ(x + εv) − φ(x) − ε⟨∇φ, v⟩|`` falls as ε²;
  - one row set per transform asked for: ``jit``, ``vmap``, ``remat``, ``scan``,
    ``shard_map``, ``symbolic-zeros``, ``second-order`` (:mod:`.transforms`).

  bfloat16 and float16 are checked against a float32 (or float64) reference on the
  same values, to a tolerance measured from the reference's own rounding
  (:mod:`.precision`).
- :func:`check_model` ``(model, loss, params, x, y)``: every layer of a network, each
  rule against its plain twin on the inputs the written-out backprop gave it; names the
  first wrong layer.
- :func:`residuals` ``(fn, *args)``: what the rule keeps between forward and backward,
  beside what autodiff of the reference keeps.

Error measure, per element, with ``a`` fn's value and ``b`` the expected one::

    err = |a − b| / (|b| + max|b|)          (max over the finite entries of the leaf)

relative near the leaf's largest entries, absolute (to the leaf's scale) near zero,
where cancellation leaves only rounding. A leaf passes iff ``max err <= tol``, with tol
tied to the dtype, not to the array size (:func:`default_rtol`; 1e-6 for finite
differences). Equal values, NaN against NaN included, have error 0; a NaN or an
infinity on one side only has error inf.

A pytest plugin (``funcprop.testing.pytest_plugin``, installed with the package) gives
tests the fixture ``assert_vjp``.
"""

from funcprop.check._report import CheckReport, CheckRow, GradientCheckError, default_rtol
from funcprop.check.model import LayerFailure, ModelReport, check_model
from funcprop.check.residuals import ResidualRow, ResidualTable, residuals
from funcprop.check.transforms import TRANSFORMS
from funcprop.check.vjp import FD_RTOL, FD_STEP, check_vjp

__all__ = [
    "FD_RTOL",
    "FD_STEP",
    "TRANSFORMS",
    "CheckReport",
    "CheckRow",
    "GradientCheckError",
    "LayerFailure",
    "ModelReport",
    "ResidualRow",
    "ResidualTable",
    "check_model",
    "check_vjp",
    "default_rtol",
    "residuals",
]
