"""The benchmark's quick mode runs and writes its three files (no timing asserted)."""

import json

import pytest

from funcprop import bench
from funcprop.cli import main

pytestmark = pytest.mark.usefixtures("standard_promotion")


def test_quick_benchmark_writes_json_markdown_and_png(tmp_path, capsys):
    assert main(["bench", "--quick", "--no-torch", "--rounds", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert [c["case"] for c in report["cases"]] == [c.name for c in bench.QUICK_CASES]
    rates = report["matmul_rates_flops"]
    assert (
        set(rates) == {str(n) for n in bench.PEAK_SIZES["quick"]}
        and report["matmul_peak_flops"] == max(rates.values()) > 0
    )
    for case in report["cases"]:
        assert set(case["variants"]) == {"rules", "jax.grad", "backprop"}
        auto = case["variants"]["jax.grad"]
        assert auto["ratio_to_jax_grad"] == 1.0 and auto["residual_bytes"] > 0 and auto["flops"] > 0
        split = case["rules_split"]
        assert split["gradient alone"] > 0 and split["update alone"] > 0
        assert 0 < split["gradient_flops"] <= case["variants"]["rules"]["flops"]
    table = (tmp_path / "benchmark.md").read_text()
    assert "| seed 2-4-7-3-2 @ 64 | rules |" in table and "compiled epoch (steps/s)" in table
    gpt = bench.QUICK_CASES[-1].name
    assert gpt.startswith("gpt ") and f"| {gpt} | backprop |" in table and f"| {gpt} | 8 |" in table
    # every model has an epoch row, the CNN included, with its own step's rate beside it
    assert [e["case"] for e in report["epochs"]] == [c.name for c in bench.QUICK_CASES]
    for e in report["epochs"]:
        assert e["scan_epoch_steps_per_s"] > 0 and e["step_steps_per_s"] > 0 and e["scan_epoch_to_step"] > 0
    assert "gradient alone (ms)" in table
    assert (tmp_path / "benchmark.png").stat().st_size > 0


def test_residual_bytes_leave_out_parameters_and_inputs():
    """A single dense layer with the loss keeps only log p; autodiff keeps more."""
    import jax
    import jax.numpy as jnp

    from funcprop import nn

    model = nn.mlp([3, 4])
    _, params = model.init(jax.random.key(0), (3,))
    x, y = jnp.ones((5, 3), jnp.float32), jnp.zeros(5, jnp.int32)
    assert bench.residual_bytes(model, "rules", params, x, y) == 5 * 4 * 4  # log p: (5, 4) float32
    assert bench.residual_bytes(model, "twins", params, x, y) > 5 * 4 * 4
    assert bench.residual_bytes(model, "backprop", params, x, y) is None


def test_rules_and_backprop_compile_to_one_program():
    """The written-out recursion and jax.grad through the rules: the same XLA program."""
    import jax
    import optax

    case = bench.CASES[1]
    model = case.build()
    _, params = model.init(jax.random.key(0), case.input_shape)
    x, y = bench.case_data(case, jax.random.key(1))
    opt = optax.adam(1e-3)
    prints = {
        g: bench.program_fingerprint(bench.make_step(model, g, opt).lower(params, opt.init(params), x, y).compile())
        for g in ("rules", "backprop", "twins")
    }
    assert prints["rules"] == prints["backprop"] != prints["twins"]


def test_gpt_case_is_the_cli_lm_on_token_ids_with_its_head():
    """The GPT case: int32 ids and the next ids as targets, params the (model, head) pair;
    its residuals count the head's, and the rules keep less than autodiff."""
    import jax
    import jax.numpy as jnp

    from funcprop import nn

    case = bench.QUICK_CASES[-1]
    assert nn.is_loss_layer(case.loss) and case.tokens and case.torch_layers[0][0] == "gpt"
    assert bench.CASES[-1].name == "gpt d64 x2, T64 @ 32"  # the CLI's default LM
    model = case.build()
    params = bench.case_params(case, model, jax.random.key(0))
    model_params, head = params
    assert head.omega.shape == (256, 32)
    x, y = bench.case_data(case, jax.random.key(1), batches=2)
    assert x.shape == y.shape == (2 * case.batch, 16) and x.dtype == y.dtype == jnp.int32
    assert bool(jnp.all(x[:, 1:] == y[:, :-1])) and 0 <= int(x.min()) and int(x.max()) < 256
    rules = bench.residual_bytes(model, "rules", params, x, y, case.loss)
    assert 0 < rules < bench.residual_bytes(model, "twins", params, x, y, case.loss)
    assert bench.case_flops(case) > 6 * 256 * 32 * 16 * case.batch  # the head alone


@pytest.mark.parametrize("case", bench.CASES, ids=[c.name for c in bench.CASES])
def test_torch_twin_has_the_same_parameter_count(case):
    """The PyTorch network built from the case's specs is the funcprop model's size (the
    GPT's head included)."""
    pytest.importorskip("torch")
    import jax
    import numpy as np

    from funcprop import bench_torch

    params = bench.case_params(case, case.build(), jax.random.key(0))  # with the GPT's head
    ours = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
    assert sum(p.numel() for p in bench_torch.build(case).parameters()) == ours


def test_torch_gpt_twin_computes_the_same_logits():
    """Given funcprop's parameters, the PyTorch GPT gives the same logits: the same pre-norm
    blocks, causal attention, GELU (tanh) MLP, learned positions and untied head."""
    torch = pytest.importorskip("torch")
    import jax
    import numpy as np

    from funcprop import bench_torch
    from funcprop.nn import lm_head

    case = bench.QUICK_CASES[-1]
    model = case.build()
    params = bench.case_params(case, model, jax.random.key(0))
    x, _ = bench.case_data(case, jax.random.key(1))
    ours = lm_head.logits(params[1], model.apply(params[0], x))
    twin = bench_torch.build(case, train=False)
    state = twin.state_dict()  # its modules are in the order of the pair's leaves
    leaves = jax.tree.leaves(params)
    assert [tuple(v.shape) for v in state.values()] == [leaf.shape for leaf in leaves]
    twin.load_state_dict({k: torch.from_numpy(np.array(leaf)) for k, leaf in zip(state, leaves)})
    with torch.no_grad():
        theirs = twin(torch.from_numpy(np.array(x, np.int64))).numpy()
    scale = float(np.abs(ours).max())
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5 * scale)
