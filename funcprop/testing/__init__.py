"""Test-time tools for funcprop and for code built on it.

:mod:`funcprop.testing.strategies` holds Hypothesis strategies for adversarial arrays
(shapes with empty axes and mismatched sizes, every dtype family, NaN, ±Inf, huge and
subnormal values). Hypothesis is a test dependency (the ``test`` extra), not a runtime
one: ``import funcprop`` and ``import funcprop.testing`` import nothing of it; import
``funcprop.testing.strategies`` where hypothesis is installed.
"""
