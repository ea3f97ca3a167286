"""Benchmark: one training step with the hand-derived rules against jax.grad and PyTorch.

``funcprop bench [--quick] --out DIR`` (and ``experiments/benchmark.py``). For every
case, each variant is one jitted step (gradient + optax Adam update, buffers donated):

- ``rules``: ``jax.value_and_grad`` through the funcprop rules (hand-written bwds);
- ``jax.grad``: ``jax.value_and_grad`` through the plain twins, JAX's own autodiff;
- ``backprop``: :func:`funcprop.backprop.value_and_grad`, the written-out recursion;
- ``torch``, ``torch.compile``: the same network and step in PyTorch, where installed.

A classifier's loss is ``softmax_cross_entropy``; the GPT's is its head, the loss layer
``nn.LinearCrossEntropy(256)``, whose params train too (params are the pair
``(model_params, head_params)``), on int32 byte ids.

The ``rules`` step is also timed in halves: the gradient alone and the optax update
alone. Step times are medians over interleaved rounds (every JAX variant and half once
per round, in a new order, after warm-up), so drifts of the machine hit all of them
alike; PyTorch runs in rounds of its own afterwards, as its threads would slow
whichever JAX variant ran next. Compiled temporary memory
and FLOPs come from XLA (``memory_analysis``, ``cost_analysis``); residual bytes are
the arrays kept between forward and backward, parameters and inputs not counted.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcprop import nn, train
from funcprop.bench_cases import CASES, QUICK_CASES, Case, case_data, case_flops, case_params
from funcprop.rules.losses import softmax_cross_entropy
from funcprop.timing import timer

JAX_VARIANTS = {"rules": "rules", "jax.grad": "twins", "backprop": "backprop"}


def make_step(model, gradient: str, optimizer, loss=softmax_cross_entropy):
    """A jitted ``step(params, opt_state, x, y) -> (params, opt_state, loss)``, donated.
    With a loss layer (``loss=nn.LinearCrossEntropy(V)``), params are the pair."""
    grad_fn = train.loss_and_grad(model, loss, gradient)

    def step(params, opt_state, x, y):
        value, grads = grad_fn(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.jit(step, donate_argnums=(0, 1))


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan")))


def program_fingerprint(compiled) -> str:
    """A hash of the optimized HLO with names, numbering and source locations removed:
    equal fingerprints mean XLA runs the same program."""
    import hashlib
    import re

    text = compiled.as_text()
    body = text[text.index("\n%") :] if "\n%" in text else text
    body = re.sub(r", metadata=\{[^}]*\}", "", body)
    body = re.sub(r"\.\d+\b", "", body)
    return hashlib.sha256(body.encode()).hexdigest()[:12]


def residual_bytes(model, gradient: str, params, x, y, loss=softmax_cross_entropy) -> int | None:
    """Bytes kept between forward and backward, parameters and inputs not counted.

    Read from JAX's record of what reverse mode saves (``saved_residuals``); the
    written-out backprop keeps what the rules' fwds return, so it is not read here.
    With a loss layer, params are the pair and the head's residuals count too.
    """
    if gradient == "backprop":
        return None
    from jax._src.ad_checkpoint import saved_residuals  # no public equivalent yet

    apply = nn.twin(model) if gradient == "twins" else model.apply
    if nn.is_loss_layer(loss):
        head = loss.node.rule.twin if gradient == "twins" else loss.apply
        kept = saved_residuals(lambda p, x: head(p[1], apply(p[0], x), y), params, x)
    else:
        loss = loss.vjp_rule.twin if gradient == "twins" else loss
        kept = saved_residuals(lambda p, x: loss(apply(p, x), y), params, x)
    skip = ("from the argument", "from a constant", "from a literal")
    return int(sum(aval.size * aval.dtype.itemsize for aval, why in kept if not why.startswith(skip)))


# the square matmul sizes the peak is taken from, by platform (and for --quick)
PEAK_SIZES = {"cpu": (1024, 2048, 4096), "gpu": (4096, 8192, 16384), "quick": (256, 512)}


def matmul_rates(sizes=PEAK_SIZES["cpu"], dtype=jnp.float32, repeats: int = 10) -> dict[int, float]:
    """FLOP/s of square jnp matmuls of each size on this device, the best of ``repeats``
    calls each. Their maximum is the measured peak: no one size is the fastest on every
    machine (on the 2-core development CPU, 2048 runs ~15% faster than 4096)."""
    rates = {}
    f = jax.jit(lambda a, b: a @ b)
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), dtype)
        run = timer(lambda a=a: f(a, a))
        run(1)  # compile
        rates[n] = 2 * n**3 / min(run(1) for _ in range(repeats))
    return rates


def _time_jax(step, state, x, y, steps):
    """Seconds per step of ``step(params, opt_state, x, y)``, and the state it ends in."""
    held = [state]

    def call():
        params, opt_state, value = step(*held[0], x, y)
        held[0] = (params, opt_state)
        return value

    return timer(call)(steps), held[0]


def _halves(model, optimizer, params0, x, y, loss=softmax_cross_entropy) -> tuple[dict, float]:
    """The rules step's two halves as timers ``runner(steps) -> seconds per call``: the
    gradient alone (no optimizer) and the optax update alone (donated, a fixed gradient).
    Also returns the gradient's FLOPs."""
    grad = jax.jit(train.loss_and_grad(model, loss, "rules")).lower(params0, x, y).compile()
    _, grads = grad(params0, x, y)

    def apply_update(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    update = jax.jit(apply_update, donate_argnums=(0, 1))
    state = [jax.tree.map(jnp.copy, params0), optimizer.init(params0)]

    def update_once():
        state[:] = update(*state, grads)
        return state

    return {"gradient alone": timer(lambda: grad(params0, x, y)), "update alone": timer(update_once)}, _flops(grad)


def _interleaved(runners: dict, rounds: int, steps: int, x, y) -> dict:
    """Seconds per step of every runner in every round, each round in a new random order
    so that no runner always runs right after another."""
    times = {label: [] for label in runners}
    order = np.random.default_rng(0)
    for _ in range(rounds):
        for label in order.permutation(list(runners)):
            runner = runners[label]
            if callable(runner):
                times[label].append(runner(steps))
            else:  # [jitted step, (params, opt_state)]
                seconds, runner[1] = _time_jax(runner[0], runner[1], x, y, steps)
                times[label].append(seconds)
    return times


def bench_case(case: Case, *, rounds: int, steps: int, with_torch: bool, log=print) -> dict:
    """Per-variant median step time, ratio to jax.grad, memory, FLOPs, residuals; and the
    rules step split into its halves (gradient alone, optax update alone)."""
    model = case.build()
    params0 = case_params(case, model, jax.random.key(0))
    x, y = case_data(case, jax.random.key(1))
    optimizer = optax.adam(1e-3)
    runners, rows = {}, {}
    for label, gradient in JAX_VARIANTS.items():
        step = make_step(model, gradient, optimizer, case.loss)
        state = (jax.tree.map(jnp.copy, params0), optimizer.init(params0))
        compiled = step.lower(*state, x, y).compile()
        memory = compiled.memory_analysis()
        rows[label] = {
            "temp_bytes": int(memory.temp_size_in_bytes) if memory is not None else None,
            "flops": _flops(compiled),
            "residual_bytes": residual_bytes(model, gradient, params0, x, y, case.loss),
            "program": program_fingerprint(compiled),
        }
        _, state = _time_jax(step, state, x, y, 2)  # warm-up
        runners[label] = [step, state]
    halves, grad_flops = _halves(model, optimizer, params0, x, y, case.loss)
    for runner in halves.values():
        runner(2)  # warm-up
    runners.update(halves)
    times = _interleaved(runners, rounds, steps, x, y)
    if with_torch:
        # PyTorch in rounds of its own: its threads and caches would tax whichever JAX
        # variant ran next, and the ratios to jax.grad are the figures that need 1%
        from funcprop import bench_torch

        torch_runners = bench_torch.runners(case, np.asarray(x), np.asarray(y), log=log)
        for label, runner in torch_runners.items():
            runner(2)
            rows[label] = {"temp_bytes": None, "flops": None, "residual_bytes": None, "threads": runner.threads}
        times.update(_interleaved(torch_runners, rounds, steps, x, y))
    split = {label: statistics.median(times.pop(label)) for label in halves}
    split["gradient_flops"] = grad_flops
    base = statistics.median(times["jax.grad"])
    for label, ts in times.items():
        rows[label].update(step_s=statistics.median(ts), ratio_to_jax_grad=statistics.median(ts) / base, rounds=len(ts))
    auto = rows["jax.grad"]
    for label in JAX_VARIANTS:
        r = rows[label]
        r["memory_ratio"] = r["temp_bytes"] / auto["temp_bytes"] if auto["temp_bytes"] else None
        r["residual_ratio"] = (
            r["residual_bytes"] / auto["residual_bytes"]
            if r["residual_bytes"] is not None and auto["residual_bytes"]
            else None
        )
    same = rows["rules"]["program"] == rows["backprop"]["program"]
    return {
        "case": case.name,
        "batch": case.batch,
        "variants": rows,
        "rules_split": split,
        "rules_and_backprop_same_program": same,
    }


def epoch_batches(step_s: float, quick: bool) -> int:
    """Steps in a timed epoch: about 1.5 s of the case's step, 8 to 64 of them."""
    return 8 if quick else int(np.clip(round(1.5 / step_s), 8, 64))


def epoch_throughput(case: Case, *, batches: int, with_torch: bool, repeats: int = 5) -> dict:
    """Steps per second over one epoch, the path a user's training takes: the compiled
    epoch (:func:`funcprop.train.make_epoch`, as ``train()`` runs it), a Python loop of
    jitted steps fed host batches, and an eager PyTorch loop over the same batches."""
    model = case.build()
    params0 = case_params(case, model, jax.random.key(0))
    n = case.batch * batches
    x, y = case_data(case, jax.random.key(2), batches)
    optimizer = optax.adam(1e-3)
    grad_fn = train.loss_and_grad(model, case.loss, "rules")
    epoch = train.make_epoch(grad_fn, optimizer, n, case.batch)
    state = train.init_state(params0, optimizer, jax.random.key(3))
    state, _ = epoch(state, x, y)  # compile

    def run_epoch():
        nonlocal state
        state, value = epoch(state, x, y)
        return value

    step = make_step(model, "rules", optimizer, case.loss)
    loop_state = (jax.tree.map(jnp.copy, params0), optimizer.init(params0))
    xb = np.asarray(x).reshape(batches, case.batch, *x.shape[1:])
    yb = np.asarray(y).reshape(batches, case.batch, *y.shape[1:])

    def run_loop():
        nonlocal loop_state
        params, opt_state = loop_state
        for i in range(batches):  # a host batch per step, as a plain training loop does
            params, opt_state, value = step(params, opt_state, xb[i], yb[i])
        loop_state = (params, opt_state)
        return value

    timer(run_loop)(1)  # compile
    times = _interleaved({"scan": timer(run_epoch), "loop": timer(run_loop)}, repeats, 1, x, y)
    out = {
        "case": case.name,
        "steps_per_epoch": batches,
        "scan_epoch_steps_per_s": batches / statistics.median(times["scan"]),
        "python_loop_steps_per_s": batches / statistics.median(times["loop"]),
    }
    if with_torch:
        from funcprop import bench_torch

        out["torch_eager_steps_per_s"] = bench_torch.epoch_steps_per_s(case, xb, yb, repeats)
    return out


# --- the whole run -------------------------------------------------------------------


def run(out_dir, *, quick: bool = False, rounds: int | None = None, with_torch: bool | None = None, log=print) -> dict:
    """Run every case (or the quick ones), write benchmark.{json,md,png} into out_dir."""
    import json
    import pathlib
    import platform

    from funcprop import bench_torch, plots

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with_torch = bench_torch.available() if with_torch is None else with_torch
    rounds = rounds or (3 if quick else 15)
    device = jax.devices()[0]
    peak_dtype = jnp.bfloat16 if device.platform == "gpu" else jnp.float32
    peak_sizes = PEAK_SIZES["quick" if quick else ("gpu" if device.platform == "gpu" else "cpu")]
    repeats = 3 if quick else 5
    rates = matmul_rates(peak_sizes, peak_dtype, repeats)
    peak = max(rates.values())
    log(
        f"device {device.device_kind} ({device.platform}); matmul peak {peak / 1e9:.1f} GFLOP/s ({jnp.dtype(peak_dtype).name})"
    )
    results = []
    for case in QUICK_CASES if quick else CASES:
        # about 50 ms of work per variant per round, at least one step
        steps = 1 if quick else max(1, min(200, int(0.05 * peak / max(case_flops(case), 1.0))))
        log(f"{case.name}: {rounds} rounds x {steps} steps")
        res = bench_case(case, rounds=rounds, steps=steps, with_torch=with_torch, log=log)
        for label, r in res["variants"].items():
            log(f"  {label:14s} {r['step_s'] * 1e3:9.3f} ms  x{r['ratio_to_jax_grad']:.3f} of jax.grad")
        for label in ("gradient alone", "update alone"):
            log(f"  rules, {label:14s} {res['rules_split'][label] * 1e3:9.3f} ms")
        results.append(res)
    # the peak again at the end, the better of the two: a busy moment must not inflate "% of peak"
    rates = {n: max(r, rates[n]) for n, r in matmul_rates(peak_sizes, peak_dtype, repeats).items()}
    peak = max(rates.values())
    for res in results:
        for r in res["variants"].values():
            r["fraction_of_peak"] = r["flops"] / r["step_s"] / peak if r.get("flops") else None
        split = res["rules_split"]
        split["gradient_fraction_of_peak"] = split["gradient_flops"] / split["gradient alone"] / peak
    epochs = []
    for case, res in zip(QUICK_CASES if quick else CASES, results):
        step_s = res["variants"]["rules"]["step_s"]
        batches = epoch_batches(step_s, quick)
        log(f"{case.name}: epoch of {batches} steps")
        row = epoch_throughput(case, batches=batches, with_torch=with_torch, repeats=repeats)
        row["step_steps_per_s"] = 1 / step_s
        row["scan_epoch_to_step"] = row["scan_epoch_steps_per_s"] * step_s
        epochs.append(row)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": f"{device.device_kind} ({device.platform})",
        "jax": jax.__version__,
        "python": platform.python_version(),
        "torch": _torch_version() if with_torch else None,
        "matmul_peak_flops": peak,
        "matmul_peak_dtype": jnp.dtype(peak_dtype).name,
        "matmul_rates_flops": {str(n): r for n, r in rates.items()},
        "quick": quick,
        "rounds": rounds,
        "cases": results,
        "epochs": epochs,
    }
    (out / "benchmark.json").write_text(json.dumps(report, indent=2))
    (out / "benchmark.md").write_text(markdown(report))
    plots.plot_benchmark(report, out / "benchmark.png")
    return report


def _torch_version():
    import torch

    return torch.__version__


def markdown(report: dict) -> str:
    """The step table (one row per case and variant) and the epoch table."""

    def fmt(x, spec, scale=1.0):
        return "—" if x is None else format(x * scale, spec)

    rates = report.get("matmul_rates_flops") or {}
    squares = ", the fastest of " + ", ".join(f"{n}²: {r / 1e9:.0f}" for n, r in rates.items()) if rates else ""
    lines = [
        f"Device: {report['device']}; jax {report['jax']}; PyTorch {report['torch'] or 'not installed'}; "
        f"{report['date']}. Matmul peak measured in the same run: "
        f"{report['matmul_peak_flops'] / 1e9:.1f} GFLOP/s ({report['matmul_peak_dtype']}){squares}. "
        f"Medians of {report['rounds']} rounds: the JAX variants interleaved, PyTorch in rounds of its own.",
        "",
        "| case | variant | step (ms) | ÷ jax.grad | temp memory (MiB) | ÷ jax.grad | residuals (KiB) | ÷ jax.grad | GFLOP/step | % of peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in report["cases"]:
        for label, r in res["variants"].items():
            lines.append(
                f"| {res['case']} | {label} | {r['step_s'] * 1e3:.3f} | {r['ratio_to_jax_grad']:.3f} | "
                f"{fmt(r['temp_bytes'], '.3f', 2**-20)} | {fmt(r.get('memory_ratio'), '.3f')} | "
                f"{fmt(r['residual_bytes'], '.1f', 2**-10)} | {fmt(r.get('residual_ratio'), '.3f')} | "
                f"{fmt(r['flops'], '.4f', 1e-9)} | {fmt(r.get('fraction_of_peak'), '.1f', 100)} |"
            )
    lines += [
        "",
        "The `rules` step in halves, timed in the same rounds: the gradient alone (no optimizer) "
        "and the optax Adam update alone (donated, a fixed gradient). On the small cases a call "
        "is mostly dispatch, so the halves need not add up to the step.",
        "",
        "| case | step (ms) | gradient alone (ms) | gradient % of peak | update alone (ms) | step % of peak |",
        "|---|---|---|---|---|---|",
    ]
    for res in report["cases"]:
        r, split = res["variants"]["rules"], res["rules_split"]
        lines.append(
            f"| {res['case']} | {r['step_s'] * 1e3:.3f} | {split['gradient alone'] * 1e3:.3f} | "
            f"{fmt(split.get('gradient_fraction_of_peak'), '.1f', 100)} | {split['update alone'] * 1e3:.3f} | "
            f"{fmt(r.get('fraction_of_peak'), '.1f', 100)} |"
        )
    same = [res["case"] for res in report["cases"] if res.get("rules_and_backprop_same_program")]
    lines += [
        "",
        f"Cases where `rules` and `backprop` compile to the same optimized XLA program (names aside): "
        f"{', '.join(same) or 'none'}. Their step times differ there by measurement noise only.",
        "",
        "Epochs, the path `train()` takes: steps per second of the compiled epoch (`make_epoch`: "
        "shuffle, gather and every step in one `lax.scan`), of a Python loop of jitted steps fed host "
        "batches, and of PyTorch eager's loop over the same batches, beside the rules step's own rate "
        "from the table above. The target: epoch ÷ step at least 0.9 for every model.",
        "",
        "| case | steps/epoch | step alone (steps/s) | compiled epoch (steps/s) | epoch ÷ step | "
        "Python loop of steps (steps/s) | PyTorch eager (steps/s) | epoch ÷ PyTorch | loop ÷ PyTorch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["epochs"]:
        torch_rate = e.get("torch_eager_steps_per_s")
        lines.append(
            f"| {e['case']} | {e['steps_per_epoch']} | {fmt(e.get('step_steps_per_s'), '.1f')} | "
            f"{e['scan_epoch_steps_per_s']:.1f} | {fmt(e.get('scan_epoch_to_step'), '.2f')} | "
            f"{e['python_loop_steps_per_s']:.1f} | {fmt(torch_rate, '.1f')} | "
            f"{fmt(e['scan_epoch_steps_per_s'] / torch_rate if torch_rate else None, '.2f')} | "
            f"{fmt(e['python_loop_steps_per_s'] / torch_rate if torch_rate else None, '.2f')} |"
        )
    return "\n".join(lines) + "\n"
