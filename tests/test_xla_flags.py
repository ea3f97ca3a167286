"""The XLA:CPU flag funcprop sets at import, and the persistent compilation cache."""

import os
import subprocess
import sys
from importlib import metadata

import pytest

from funcprop import xla_flags

ON_CHECKED_JAXLIB = metadata.version("jaxlib").startswith(xla_flags.CHECKED_JAXLIB)


def test_the_flag_is_added_unless_the_user_set_it_or_said_no():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_flags.apply_cpu_flags(env) == ON_CHECKED_JAXLIB
    if ON_CHECKED_JAXLIB:
        assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {xla_flags.CONV_FLAG}"
    own = {"XLA_FLAGS": f"{xla_flags.FLAG_NAME}=individual_convolution"}
    assert not xla_flags.apply_cpu_flags(own) and own["XLA_FLAGS"] == f"{xla_flags.FLAG_NAME}=individual_convolution"
    off = {"FUNCPROP_XLA_FLAGS": "0"}
    assert not xla_flags.apply_cpu_flags(off) and "XLA_FLAGS" not in off


def test_an_unchecked_jaxlib_gets_no_flag(monkeypatch):
    # XLA aborts the process at an unknown flag, so a jaxlib nobody checked gets none
    monkeypatch.setattr(xla_flags.metadata, "version", lambda name: "9.9.9")
    env = {}
    assert not xla_flags.apply_cpu_flags(env) and env == {}


def _in_effect(**env) -> str:
    code = "import funcprop; print(funcprop.xla_flags.conv_flag_in_effect())"
    clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "FUNCPROP_XLA_FLAGS")}
    result = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.strip()


@pytest.mark.skipif(not ON_CHECKED_JAXLIB, reason="the flag is set on the checked jaxlib versions only")
def test_the_flag_takes_effect_in_a_fresh_process():
    """The compiled kernel-gradient convolution leaves YNNPACK with the flag, stays without."""
    assert _in_effect() == "True"
    assert _in_effect(FUNCPROP_XLA_FLAGS="0") == "False"


def test_the_compilation_cache_keeps_programs(tmp_path):
    code = (
        "import jax, jax.numpy as jnp, funcprop, sys; "
        "funcprop.xla_flags.enable_compilation_cache(sys.argv[1]); "
        "jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache")], capture_output=True, timeout=120, check=True)
    assert any((tmp_path / "cache").iterdir())


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert xla_flags.default_cache_dir() == tmp_path / "funcprop" / "jax"
