"""Where an MLP training step's time goes, matmul by matmul, against the matmul peak.

    python experiments/step_budget.py --out runs/step_budget [--sizes 1024 4096 4096 1024 --batch 512]

The step is ``funcprop bench``'s: the rules' gradient and an optax Adam update, jitted
and donated. A dense layer n_in -> n_out at batch B does three matmuls of 2·B·n_in·n_out
FLOPs each. Each is timed here jitted alone, in the contraction form XLA gives it
inside the step:

- forward ``H Ωᵀ``: (B, n_in)·(n_out, n_in), contracting the feature axes;
- input gradient ``Δ Ω``: (B, n_out)·(n_out, n_in) (the first layer has none);
- weight gradient ``Δᵀ H``: (B, n_out)·(B, n_in), contracting the batch axis.

The weight gradient is also timed in other forms, each with its cost: Δ transposed
first; Δ and H transposed first; Δ's columns in four blocks, as a batched einsum. An
optimization barrier keeps XLA from folding a transpose back into the dot.

Every matmul, the whole step, its two halves (gradient alone, update alone) and the
square matmuls ``funcprop bench`` takes its peak from run interleaved, in a new order
every round. The peak is the fastest call of any square matmul. The table gives three
bounds on the fraction of the peak, each for a step with less in it than the real one:
its matmuls alone as XLA gives them; its matmuls alone with each weight gradient in its
fastest form; and the latter plus the Adam update, which every step must do. Times are
medians over rounds; the bounds are also given from each matmul's fastest call, which
is how the peak is taken.
"""

import argparse
import json
import pathlib
import statistics

import jax
import jax.numpy as jnp
import optax
from jax import lax

from funcprop import bench, nn

_barrier = lax.optimization_barrier


def _blocked(d, h, blocks=4):
    """Δᵀ H with Δ's columns in ``blocks`` blocks, one batched matmul."""
    b, n_out = d.shape
    d_blocks = _barrier(d.reshape(b, blocks, n_out // blocks).transpose(1, 2, 0))  # (blocks, n_out/blocks, B)
    return (d_blocks @ h).reshape(n_out, h.shape[1])


WEIGHT_GRADIENT_FORMS = {
    "": lambda d, h: lax.dot_general(d, h, (((0,), (0,)), ((), ()))),  # as XLA gives it
    ", Δ transposed first": lambda d, h: _barrier(d.T) @ h,
    ", Δ and H transposed first": lambda d, h: _barrier(d.T) @ _barrier(h.T).T,
    ", Δ in 4 column blocks, batched": _blocked,
}


def _runner(f, shapes, key):
    """A timer of ``f`` jitted, on random operands of ``shapes``."""
    ka, kb = jax.random.split(key)
    a, b = jax.random.normal(ka, shapes[0]), jax.random.normal(kb, shapes[1])
    f = jax.jit(f)
    return bench._timer(lambda: f(a, b))


def matmul_runners(sizes, batch, key):
    """``{name: (timer, flops, base)}`` for every matmul of the step, layer by layer;
    ``base`` names the matmul of the step that the row computes (itself, or a form of it)."""
    rows = {}
    for layer, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        flops = 2.0 * batch * n_in * n_out
        key, k1, k2, k3 = jax.random.split(key, 4)
        name = f"layer {layer} forward H Ωᵀ"
        rows[name] = (_runner(lambda h, w: h @ w.T, ((batch, n_in), (n_out, n_in)), k1), flops, name)
        if layer > 1:  # the network's input needs no gradient
            name = f"layer {layer} input gradient Δ Ω"
            rows[name] = (_runner(lambda d, w: d @ w, ((batch, n_out), (n_out, n_in)), k2), flops, name)
        base = f"layer {layer} weight gradient Δᵀ H"
        for suffix, form in WEIGHT_GRADIENT_FORMS.items():
            if form is _blocked and n_out % 4:
                continue
            rows[base + suffix] = (_runner(form, ((batch, n_out), (batch, n_in)), k3), flops, base)
    return rows


def measure(sizes, batch, rounds):
    model = nn.mlp(list(sizes), activation="relu")
    _, params = model.init(jax.random.key(0), (sizes[0],))
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (batch, sizes[0]))
    y = jax.random.randint(ky, (batch,), 0, sizes[-1])
    optimizer = optax.adam(1e-3)
    step = bench.make_step(model, "rules", optimizer)
    state = (jax.tree.map(jnp.copy, params), optimizer.init(params))
    compiled = step.lower(*state, x, y).compile()
    halves, _ = bench._halves(model, optimizer, params, x, y)
    square = jax.jit(lambda a, b: a @ b)
    squares = {}
    for n in bench.PEAK_SIZES["cpu"]:
        a = jax.random.normal(jax.random.key(2), (n, n))
        squares[f"{n}² matmul"] = (bench._timer(lambda a=a: square(a, a)), 2.0 * n**3)
    matmuls = matmul_runners(sizes, batch, jax.random.key(3))
    runners = {name: row[0] for name, row in {**squares, **matmuls}.items()}
    runners.update(halves)
    for run in runners.values():
        run(1)  # compile and warm up
    _, state = bench._time_jax(compiled, state, x, y, 1)
    runners["step"] = [compiled, state]
    times = bench._interleaved(runners, rounds, 1, x, y)
    rates = {name: flops / min(times[name]) for name, (_, flops) in squares.items()}
    return {
        "sizes": list(sizes),
        "batch": batch,
        "rounds": rounds,
        "peak_flops": max(rates.values()),
        "square_matmul_flops": rates,
        "step_flops": bench._flops(compiled),
        "median_s": {name: statistics.median(ts) for name, ts in times.items() if name not in squares},
        "fastest_s": {name: min(ts) for name, ts in times.items() if name not in squares},
        "matmul_flops": {name: flops for name, (_, flops, _) in matmuls.items()},
        "stands_for": {name: base for name, (_, _, base) in matmuls.items()},
    }


def bounds(result, seconds) -> dict:
    """Totals and the three bounds on the fraction of the peak, from ``seconds`` (the
    medians or the fastest calls). A bound's FLOPs are the matmuls' own."""
    peak, stands_for = result["peak_flops"], result["stands_for"]
    as_step = [name for name, base in stands_for.items() if name == base]
    fastest = {base: min(seconds[n] for n, b in stands_for.items() if b == base) for base in as_step}
    flops = sum(result["matmul_flops"][name] for name in as_step)
    as_step_s, fastest_s = sum(seconds[n] for n in as_step), sum(fastest.values())
    return {
        "matmuls as XLA gives them (s)": as_step_s,
        "matmuls, weight gradients in the fastest form (s)": fastest_s,
        "step (s)": seconds["step"],
        "gradient alone (s)": seconds["gradient alone"],
        "update alone (s)": seconds["update alone"],
        "step, fraction of peak": result["step_flops"] / seconds["step"] / peak,
        "bound: matmuls as XLA gives them": flops / as_step_s / peak,
        "bound: matmuls in the fastest form": flops / fastest_s / peak,
        "bound: matmuls in the fastest form + Adam update": flops / (fastest_s + seconds["update alone"]) / peak,
    }


def markdown(result, by_median, by_fastest) -> str:
    peak = result["peak_flops"]
    squares = ", ".join(f"{name}: {r / 1e9:.0f}" for name, r in result["square_matmul_flops"].items())
    matmul_total = sum(f for n, f in result["matmul_flops"].items() if result["stands_for"][n] == n)
    lines = [
        f"MLP {'-'.join(map(str, result['sizes']))} at batch {result['batch']}, {result['rounds']} "
        f"interleaved rounds. Matmul peak {peak / 1e9:.0f} GFLOP/s, the fastest call of the square "
        f"matmuls ({squares} GFLOP/s). The step: {result['step_flops'] / 1e9:.2f} GFLOP by XLA's count, "
        f"of which its matmuls {matmul_total / 1e9:.2f}.",
        "",
        "| matmul | median (ms) | GFLOP/s | % of peak |",
        "|---|---|---|---|",
    ]
    for name, flops in result["matmul_flops"].items():
        t = result["median_s"][name]
        lines.append(f"| {name} | {t * 1e3:.2f} | {flops / t / 1e9:.0f} | {100 * flops / t / peak:.1f} |")
    lines += ["", "| total | from medians | from fastest calls |", "|---|---|---|"]
    for label in by_median:
        a, b = by_median[label], by_fastest[label]
        shown = (
            f"{100 * a:.1f}% | {100 * b:.1f}%"
            if label.startswith(("bound", "step,"))
            else f"{a * 1e3:.1f} ms | {b * 1e3:.1f} ms"
        )
        lines.append(f"| {label.replace(' (s)', '')} | {shown} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/step_budget", help="output folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 4096, 1024])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    if len(args.sizes) < 2 or min(args.sizes) < 1 or args.batch < 1 or args.rounds < 1:
        parser.error(
            f"expected --sizes of at least two positive widths and a positive --batch and --rounds, "
            f"got --sizes {args.sizes} --batch {args.batch} --rounds {args.rounds}"
        )
    result = measure(args.sizes, args.batch, args.rounds)
    by_median, by_fastest = bounds(result, result["median_s"]), bounds(result, result["fastest_s"])
    text = markdown(result, by_median, by_fastest)
    print(text)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.update(bounds_from_medians=by_median, bounds_from_fastest_calls=by_fastest)
    (out / "step_budget.json").write_text(json.dumps(result, indent=2))
    (out / "step_budget.md").write_text(text)


if __name__ == "__main__":
    main()
