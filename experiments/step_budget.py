"""Where an MLP training step's time goes, matmul by matmul, against the matmul peak.

    python experiments/step_budget.py --out runs/step_budget [--sizes 1024 4096 4096 1024 --batch 512]

The step is ``funcprop bench``'s: the rules' gradient and an optax Adam update, jitted
and donated. A dense layer n_in -> n_out at batch B does three matmuls of 2·B·n_in·n_out
FLOPs each, timed here one by one, jitted alone, in the contraction form XLA gives them
inside the step:

- forward ``H Ωᵀ``: (B, n_in)·(n_out, n_in), contracting the feature axes;
- input gradient ``Δ Ω``: (B, n_out)·(n_out, n_in) (not for the first layer);
- weight gradient ``Δᵀ H``: (B, n_out)·(B, n_in), contracting the batch axis, and the
  same product with Δ transposed first (behind an optimization barrier, so XLA cannot
  fold the transpose back into the dot), its cost included.

Every matmul, the whole step, its two halves and the square matmuls ``funcprop bench``
takes its peak from (1024², 2048², 4096²) run interleaved, in a new order every round;
the peak is the fastest call of any of them. The table's "ceiling" is the
fraction of the peak the step would reach if it were nothing but its matmuls, each at
its standalone speed in the faster of its forms.
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

PEAK_SIZES = (1024, 2048, 4096)  # funcprop bench's on a CPU
FORMS = {  # (lhs, rhs) shapes from (B, n_in, n_out) and the dot's contracting dims
    "forward H Ωᵀ": (lambda b, i, o: ((b, i), (o, i)), ((1,), (1,))),
    "input gradient Δ Ω": (lambda b, i, o: ((b, o), (o, i)), ((1,), (0,))),
    "weight gradient Δᵀ H": (lambda b, i, o: ((b, o), (b, i)), ((0,), (0,))),
}


def dot_runner(shapes, contracting, transpose_lhs: bool, key):
    """A timer of one jitted dot on random operands; ``transpose_lhs`` first transposes
    the left operand for real (the barrier keeps XLA from folding it into the dot)."""
    ka, kb = jax.random.split(key)
    a, b = jax.random.normal(ka, shapes[0]), jax.random.normal(kb, shapes[1])
    if transpose_lhs:
        f = jax.jit(lambda a, b: lax.optimization_barrier(a.T) @ b)
    else:
        f = jax.jit(lambda a, b: lax.dot_general(a, b, (contracting, ((), ()))))
    return bench._timer(lambda: f(a, b))


def runners_for(sizes, batch, key):
    """Timers and FLOPs of every matmul in the step, layer by layer."""
    rows = {}
    for layer, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        flops = 2.0 * batch * n_in * n_out
        for form, (shapes_of, contracting) in FORMS.items():
            if layer == 0 and form.startswith("input"):
                continue  # the network's input needs no gradient
            key, k = jax.random.split(key)
            shapes = shapes_of(batch, n_in, n_out)
            rows[f"layer {layer + 1} {form}"] = (dot_runner(shapes, contracting, False, k), flops)
            if form.startswith("weight"):
                rows[f"layer {layer + 1} {form}, Δ transposed first"] = (dot_runner(shapes, contracting, True, k), flops)
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
    step_flops = bench._flops(compiled)
    halves, _ = bench._halves(model, optimizer, params, x, y)
    square = jax.jit(lambda a, b: a @ b)
    peak_runners = {}
    for n in PEAK_SIZES:
        a = jax.random.normal(jax.random.key(2), (n, n))
        peak_runners[f"{n}² matmul"] = bench._timer(lambda a=a: square(a, a))
    dots = runners_for(sizes, batch, jax.random.key(3))
    runners = {**peak_runners, **halves, **{name: run for name, (run, _) in dots.items()}}
    for run in runners.values():
        run(1)  # compile and warm up
    _, state = bench._time_jax(compiled, state, x, y, 1)
    runners["step"] = [compiled, state]
    times = bench._interleaved(runners, rounds, 1, x, y)
    rates = {n: 2.0 * n**3 / min(times.pop(f"{n}² matmul")) for n in PEAK_SIZES}  # best calls, as funcprop bench takes them
    peak = max(rates.values())
    seconds = {name: statistics.median(ts) for name, ts in times.items()}
    return {"sizes": list(sizes), "batch": batch, "rounds": rounds, "peak_flops": peak,
            "square_matmul_flops": {str(n): r for n, r in rates.items()},
            "step_flops": step_flops, "seconds": seconds,
            "dot_flops": {name: flops for name, (_, flops) in dots.items()}}


def summary(result) -> dict:
    """Sums of the matmuls (as in the step; each in its faster form) and the ceilings."""
    s, peak, flops = result["seconds"], result["peak_flops"], result["step_flops"]
    as_step = [name for name in result["dot_flops"] if "transposed" not in name]
    best = [min(s[name], s.get(f"{name}, Δ transposed first", float("inf"))) for name in as_step]
    out = {"matmuls as in the step": sum(s[name] for name in as_step), "matmuls, faster form": sum(best)}
    for label in ("step", "gradient alone", "update alone"):
        out[label] = s[label]
    out["step fraction of peak"] = flops / s["step"] / peak
    out["ceiling, matmuls as in the step"] = flops / out["matmuls as in the step"] / peak
    out["ceiling, matmuls in the faster form"] = flops / out["matmuls, faster form"] / peak
    return out


def markdown(result, summ) -> str:
    peak = result["peak_flops"]
    squares = ", ".join(f"{n}²: {r / 1e9:.0f}" for n, r in result["square_matmul_flops"].items())
    lines = [f"MLP {'-'.join(map(str, result['sizes']))} at batch {result['batch']}; matmul peak "
             f"{peak / 1e9:.0f} GFLOP/s (square matmuls {squares}); step {result['step_flops'] / 1e9:.1f} GFLOP; medians of "
             f"{result['rounds']} interleaved rounds", "",
             "| matmul | ms | GFLOP/s | % of peak |", "|---|---|---|---|"]
    for name, flops in result["dot_flops"].items():
        t = result["seconds"][name]
        lines.append(f"| {name} | {t * 1e3:.2f} | {flops / t / 1e9:.0f} | {100 * flops / t / peak:.1f} |")
    lines += ["", "| total | ms or % of peak |", "|---|---|"]
    for label, value in summ.items():
        shown = f"{100 * value:.1f}%" if "fraction" in label or "ceiling" in label else f"{value * 1e3:.1f} ms"
        lines.append(f"| {label} | {shown} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/step_budget", help="output folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 4096, 1024])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    result = measure(args.sizes, args.batch, args.rounds)
    summ = summary(result)
    text = markdown(result, summ)
    print(text)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_budget.json").write_text(json.dumps({**result, "summary": summ}, indent=2))
    (out / "step_budget.md").write_text(text)


if __name__ == "__main__":
    main()
