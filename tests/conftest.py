"""Test configuration: float64 available, strict dtype promotion everywhere.

Strict promotion makes any accidental float32/float64 mix inside a rule an error
instead of a silent upcast.
"""

import atexit
import os
import shutil
import tempfile

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")


import pytest  # noqa: E402

# The CLI keeps compiled programs in $XDG_CACHE_HOME/funcprop/jax: in tests, a folder of
# the session's own, never the user's cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="funcprop-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)


@pytest.fixture
def standard_promotion():
    """optax mixes Python scalars and int32 counters, which strict promotion rejects."""
    with jax.numpy_dtype_promotion("standard"):
        yield
