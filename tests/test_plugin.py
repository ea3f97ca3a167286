"""The pytest plugin (``funcprop.testing.pytest_plugin``): the ``assert_vjp`` fixture and
its ``--funcprop-*`` options, run on test files of their own by ``pytester``.

The runs that check rules go through a subprocess, as a user's project would: a fresh
interpreter, ``jax_enable_x64`` off, the fixture from the installed entry point (no
conftest). The runs that only parse options go in-process.
"""

import json
import pathlib
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from funcprop.testing import pytest_plugin

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"

# A user's rule, right and 10% wrong, with its plain reference; each test writes what
# assert_vjp returned to <name>.json, for the outer test to read.
RULES = """
import json
import pathlib

import jax
import jax.numpy as jnp


def softsign_plain(x):
    return x / (1 + jnp.abs(x))


def make_softsign(slope):
    @jax.custom_vjp
    def softsign(x):
        return softsign_plain(x)

    softsign.defvjp(lambda x: (softsign_plain(x), x), lambda x, g: (slope * g / (1 + jnp.abs(x)) ** 2,))
    return softsign


softsign, softsign_wrong = make_softsign(1.0), make_softsign(1.1)
softsign_wrong.__name__ = "softsign_wrong"
X = jnp.linspace(-2.0, 2.0, 12).reshape(3, 4)  # float32: x64 is off here
FAST = dict(finite_differences=False)  # the taylor rows compile for a second each (the README's example has them)


def dump(name, out):
    reports = out if isinstance(out, list) else [out]
    text = json.dumps({"list": isinstance(out, list), "reports": [r.to_dict() for r in reports]})
    pathlib.Path(f"{name}.json").write_text(text)


def test_from_the_entry_point(pytestconfig):
    plugin = pytestconfig.pluginmanager.get_plugin("funcprop")
    assert plugin.__name__ == "funcprop.testing.pytest_plugin"
    assert any(p is plugin for p, dist in pytestconfig.pluginmanager.list_plugin_distinfo())


def test_right(assert_vjp):
    dump("right", assert_vjp(softsign, X, reference=softsign_plain, **FAST))


def test_key_given(assert_vjp):
    dump("key", assert_vjp(softsign, X, reference=softsign_plain, key=jax.random.key(7), **FAST))


def test_wrong(assert_vjp):
    assert_vjp(softsign_wrong, X, reference=softsign_plain, **FAST)
"""

HYPOTHESIS = """
import jax.numpy as jnp
from hypothesis import given, settings

import funcprop as fp
from funcprop.testing import strategies as fst


@settings(max_examples=5, deadline=None)  # each new shape compiles
@given(fst.arrays(dtype=jnp.float32, shape=fst.shapes(1, 3, allow_empty=False), elements="moderate"))
def test_tanh(assert_vjp, x):
    assert assert_vjp(fp.tanh, x, finite_differences=False).passed
"""


def _readme_example() -> str:
    """The test file in the README's section on the plugin."""
    section = README.read_text().split("## Checking your own rules in pytest", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```py\n(.*?)^```", section, flags=re.S | re.M)[0]


@pytest.fixture
def project(pytester, monkeypatch):
    """A user's project: one test file, no conftest, plugins loaded from entry points."""
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pytester.makepyfile(test_user_rules=RULES)
    return pytester


def _returned(pytester, name) -> dict:
    return json.loads((pytester.path / f"{name}.json").read_text())


def _row(report, check, leaf="args[0]") -> dict:
    (row,) = [r for r in report["rows"] if (r["check"], r["leaf"]) == (check, leaf)]
    return row


def test_without_options_the_args_are_checked_as_given(project):
    project.makepyfile(test_fuzz=HYPOTHESIS, test_readme_example=_readme_example())
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, failed=1)
    assert not list(project.path.glob("conftest.py"))
    out = result.stdout.str()
    assert "funcprop assert_vjp:" not in out  # the header names the options only when set
    assert "FailedHealthCheck" not in out
    # the failure: the plugin's frames hidden, the dtype named, the report's table
    assert "assert_vjp(softsign_wrong) failed in float32 (the args as given)" in out
    assert "test_user_rules.py:" in out and "pytest_plugin.py" not in out
    assert re.search(r"check +leaf +trial", out)
    assert re.search(r"vjp +args\[0\] .* FAIL", out)
    right = _returned(project, "right")
    assert not right["list"]
    assert [r["check"] for r in right["reports"][0]["rows"]] == ["output", "vjp"]
    assert right["reports"][0]["passed"]


def test_dtypes_transforms_and_seed_from_the_command_line(project):
    result = project.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--funcprop-dtypes=float32,bfloat16",
        "--funcprop-transforms=vmap",
        "--funcprop-seed=1",
    )
    result.assert_outcomes(passed=3, failed=1)
    out = result.stdout.str()
    assert "funcprop assert_vjp: dtypes=float32,bfloat16, transforms=vmap, seed=1" in out
    assert "assert_vjp(softsign_wrong) failed in float32 and in bfloat16 (2 of 2 dtypes)" in out
    assert "--- in float32 ---" in out and "--- in bfloat16 ---" in out
    assert re.search(r"vjp +args\[0\] .* FAIL +bfloat16 fn vs float32 reference", out)
    right = _returned(project, "right")
    assert right["list"] and [r["passed"] for r in right["reports"]] == [True, True]
    for report, dtype in zip(right["reports"], ["float32", "bfloat16"]):
        assert {r["check"] for r in report["rows"]} >= {"output", "vjp", "vmap"}
        assert _row(report, "vjp")["compared"].startswith(f"{dtype} fn vs")
    seed_1, key_1 = _row(right["reports"][0], "vjp"), _row(_returned(project, "key")["reports"][0], "vjp")

    result = project.runpytest_subprocess(
        "-p", "no:cacheprovider", "--funcprop-dtypes=float32,float64", "--funcprop-seed=2", "-k", "right or key"
    )
    result.assert_outcomes(passed=2, warnings=2)
    assert "float64 not checked: jax_enable_x64 is off" in result.stdout.str()
    right = _returned(project, "right")
    (report,) = right["reports"]  # float64 left out, float32 checked
    assert right["list"] and "vmap" not in {r["check"] for r in report["rows"]}
    seed_2, key_2 = _row(report, "vjp"), _row(_returned(project, "key")["reports"][0], "vjp")
    # another seed, other cotangents; a key= in the call wins over the seed
    assert (seed_2["trial"], seed_2["index"], seed_2["expected"]) != (
        seed_1["trial"],
        seed_1["index"],
        seed_1["expected"],
    )
    assert key_2 == key_1


def test_float64_only_where_x64_is_on(project):
    project.makepyfile(
        test_user_rules="""
        import jax
        import jax.numpy as jnp
        import funcprop as fp

        def test_x64_off(assert_vjp):
            with jax.enable_x64(False):
                assert_vjp(fp.tanh, jnp.linspace(-1.0, 1.0, 4))

        def test_x64_on(assert_vjp):
            with jax.enable_x64(True):
                (report,) = assert_vjp(fp.tanh, jnp.linspace(-1.0, 1.0, 4))
            assert {r.check for r in report.rows} == {"output", "vjp", "finite-diff"}
            assert _row_dtypes(report) == {"float64"}

        def _row_dtypes(report):
            return {r.compared.split()[0] for r in report.rows if r.check != "finite-diff"}
        """
    )
    result = project.runpytest_inprocess("-p", "no:cacheprovider", "--funcprop-dtypes=float64", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    assert "float64 needs jax_enable_x64, which is off" in result.stdout.str()


@pytest.mark.parametrize(
    "option, message",
    [
        ("--funcprop-dtypes=float32,float33", "--funcprop-dtypes: unknown 'float33'; choose from float16, bfloat16"),
        ("--funcprop-dtypes=", "--funcprop-dtypes: no names in ''"),
        ("--funcprop-transforms=vmap,vmapp", "--funcprop-transforms: unknown 'vmapp'; choose from jit, vmap"),
        ("--funcprop-seed=abc", "--funcprop-seed: 'abc' is not an integer"),
        ("--funcprop-seed=-1", "--funcprop-seed: '-1' is not an integer"),
    ],
)
def test_a_bad_option_is_a_usage_error(project, option, message):
    result = project.runpytest_inprocess(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"ERROR: {message}" in result.stderr.str()


def test_ini_options_and_the_command_line_over_them(project):
    project.makeini("[pytest]\nfuncprop_seed = 5\nfuncprop_transforms = remat\n")
    result = project.runpytest_inprocess("--co")
    assert result.ret == pytest.ExitCode.OK
    assert "funcprop assert_vjp: transforms=remat, seed=5" in result.stdout.str()
    result = project.runpytest_inprocess("--co", "--funcprop-seed=6")
    assert "funcprop assert_vjp: transforms=remat, seed=6" in result.stdout.str()
    project.makeini("[pytest]\nfuncprop_dtypes = float32 bfloat16\n")
    result = project.runpytest_inprocess("--co")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: ini option funcprop_dtypes: unknown 'float32 bfloat16'" in result.stderr.str()


def test_the_plugin_adds_no_autouse_fixture_and_turns_off(project):
    project.makepyfile(
        test_user_rules="""
        def test_names(request):
            print("FIXTURES", sorted(request.fixturenames))

        def test_uses(assert_vjp):
            pass
        """
    )
    on = project.runpytest_inprocess("-s", "-p", "no:cacheprovider")
    on.assert_outcomes(passed=2)
    off = project.runpytest_inprocess("-s", "-p", "no:cacheprovider", "-p", "no:funcprop")
    off.assert_outcomes(passed=1, errors=1)
    assert "fixture 'assert_vjp' not found" in off.stdout.str()
    names = [re.search(r"FIXTURES .*", r.stdout.str()).group() for r in (on, off)]
    assert names[0] == names[1]


def test_importing_the_plugin_sets_nothing_and_imports_no_hypothesis():
    code = (
        "import sys, jax\n"
        "before = dict(jax.config.values)\n"
        "import funcprop.testing.pytest_plugin\n"
        "assert dict(jax.config.values) == before\n"
        "assert 'hypothesis' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_raise_on_fail_is_refused():
    with pytest.raises(TypeError, match="takes no raise_on_fail="):
        pytest_plugin.AssertVjp(pytest_plugin.Options())(jnp.tanh, jnp.ones(2), raise_on_fail=False)


def test_casting_touches_floating_leaves_only():
    args = ({"w": jnp.ones((2, 3)), "ids": jnp.arange(3)}, 0.5, np.ones(2, np.float32), 3)
    cast = pytest_plugin._cast(args, "bfloat16")
    assert cast[0]["ids"] is args[0]["ids"] and cast[3] == 3
    assert [x.dtype for x in (cast[0]["w"], cast[1], cast[2])] == [jnp.bfloat16] * 3


def test_options_parse_in_order_once_each():
    options = pytest_plugin.parse_options("bfloat16, float32,bfloat16", "remat,vmap", "0")
    assert options == pytest_plugin.Options(("bfloat16", "float32"), ("remat", "vmap"), 0)
    assert pytest_plugin.Options().header() is None
