"""Each convolution of the CNN's training step, in every form, alone and in a loop body.

    python experiments/conv_budget.py --out runs/conv_budget [--hw 28 8 --batch 64 --rounds 7]
    python experiments/conv_budget.py --quick    # smoke run: 8×8 only, 2 short rounds

The network is ``nn.cnn()`` on hw×hw×1 images (28: MNIST-sized; 8: the digits): conv
1→32 3×3 SAME, relu, conv 32→64 3×3 SAME, relu, maxpool 2, flatten, dense, dense. Each
conv (FLOPs 2·N·H_out·W_out·kh·kw·C_in·C_out, the same for every part) is timed on
random operands of its shapes, in these forms:

- forward: the canonical NHWC/HWIO conv;
- input gradient X̄: (a) Δ against the flipped, in/out-swapped kernel, canonical (the
  rule); (b) the flipped kernel read as "HWOI", non-canonical, no swap; (c)
  ``lax.conv_transpose``. Conv 1's is timed too, though the step drops it;
- kernel gradient K̄: (a) x as (C_in, H, W, N), Δ as (H_out, W_out, N, C_out), a
  canonical conv, the result transposed to HWIO (the rule); (b) the old rule's
  ("CHWN", "IHWO", "HWNC"), no transposes; (c) kh·kw shifted matmuls,
  K̄[i, j] = X_pad[:, i:i+H_out, j:j+W_out, :]ᵀ·Δ over (n, y, x); (d) im2col: the
  (N·H_out·W_out, kh·kw·C_in) patches times Δ as (N·H_out·W_out, C_out).

Every form, and the rule's own bwd, is checked against ``jax.vjp`` of
``lax.conv_general_dilated`` (max error ≤ 1e-4 of the reference's max) before timing.
Each form is timed jitted alone ("standalone": the conv in the entry computation,
where XLA:CPU canonicalizes dimension numbers) and as the body of a rolled
``lax.scan`` of 8 iterations (a loop body, as in a training epoch), per iteration.
An iteration perturbs both operands by the carry (nothing can be hoisted) and
reduces the output into the next carry; the standalone call is one such iteration.
Beside them: the rules training step (``bench.make_step``) standalone, and an epoch of
8 steps (``train.make_epoch``, shuffle included) per step in the scan column.

XLA reads XLA_FLAGS at a process's first compilation, so each setting runs in its own
process (``--worker yes|no``): "yes" with ``funcprop.xla_flags.CONV_FLAG`` (convs by
Eigen, funcprop's default), "no" with ``FUNCPROP_XLA_FLAGS=0`` (YNNPACK, XLA's). The
two run one after the other; within each, times are medians over interleaved rounds
(a new order every round), each timer repeated to about --target seconds a round. A
timer whose one call takes over a second (a naive loop nest in the scan: the old kernel
gradient at 28×28 takes about a minute a call) has two samples only: its sizing call and
round 1. Writes conv_budget.json and conv_budget.md in --out.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from funcprop import bench, nn, train, xla_flags
from funcprop.rules.conv import _NHWC, _conv2d_bwd, conv_static

SCAN = 8  # iterations of the rolled scan, and steps of the epoch
TOL = 1e-4  # max |form - reference| / max |reference|
SLOW = 1.0  # seconds a call, beyond which a timer runs in round 1 only
RULE = {
    "forward": "canonical NHWC/HWIO",
    "input gradient": "(a) flipped swapped kernel, canonical (rule)",
    "kernel gradient": "(a) transposes + canonical conv (rule)",
}


def conv(a, b, pads, dims=_NHWC):
    return lax.conv_general_dilated(a, b, (1, 1), pads, dimension_numbers=dims)


def taps(x, delta, kh, kw, pads):
    """The kh·kw windows X_pad[:, i:i+H_out, j:j+W_out, :], i-major."""
    x_pad = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    ho, wo = delta.shape[1:3]
    return [x_pad[:, i : i + ho, j : j + wo, :] for i in range(kh) for j in range(kw)]


def forms(k_shape, pads):
    """``{part: {form: f(a, b)}}``; (a, b) is (x, K), (Δ, K), (x, Δ) by part. Stride and
    dilation 1, as in nn.cnn."""
    kh, kw, c_in, c_out = k_shape
    t_pads = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), pads)]  # X̄'s padding

    def shifted(x, d):
        g = [jnp.tensordot(t, d, axes=([0, 1, 2], [0, 1, 2])) for t in taps(x, d, kh, kw, pads)]
        return jnp.stack(g).reshape(k_shape)

    def im2col(x, d):
        patches = jnp.stack(taps(x, d, kh, kw, pads), axis=3).reshape(-1, kh * kw * c_in)
        return (patches.T @ d.reshape(-1, c_out)).reshape(k_shape)

    return {
        "forward": {RULE["forward"]: lambda x, k: conv(x, k, pads)},
        "input gradient": {
            RULE["input gradient"]: lambda d, k: conv(d, jnp.swapaxes(k[::-1, ::-1], 2, 3), t_pads),
            "(b) flipped kernel as HWOI": lambda d, k: conv(d, k[::-1, ::-1], t_pads, ("NHWC", "HWOI", "NHWC")),
            "(c) lax.conv_transpose": lambda d, k: lax.conv_transpose(
                d, k, (1, 1), t_pads, dimension_numbers=_NHWC, transpose_kernel=True
            ),
        },
        "kernel gradient": {
            RULE["kernel gradient"]: lambda x, d: jnp.transpose(
                conv(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(d, (1, 2, 0, 3)), pads), (1, 2, 0, 3)
            ),
            "(b) CHWN/IHWO/HWNC, no transposes (old rule)": lambda x, d: conv(x, d, pads, ("CHWN", "IHWO", "HWNC")),
            "(c) kh·kw shifted matmuls": shifted,
            "(d) im2col, one matmul": im2col,
        },
    }


def check(name, got, want):
    err = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
    if got.shape != want.shape or not err <= TOL:
        raise AssertionError(
            f"conv_budget: {name} is wrong: shape {got.shape} (want {want.shape}), "
            f"max error {err:.2e} of the reference's max (tolerance {TOL:.0e})"
        )
    return err


def timers(f, a, b):
    """(standalone, in-scan) timers ``run(calls) -> seconds per call`` of one iteration
    ``s -> 1e-3·mean(f(a + s, b + s))`` and of SCAN of them in a rolled scan."""

    def body(s, a, b):
        return 1e-3 * jnp.mean(f(a + s, b + s))

    looped = lambda s, a, b: lax.scan(lambda c, _: (body(c, a, b), None), s, None, length=SCAN)[0]
    s = jnp.zeros((), jnp.float32)
    alone, looped = (jax.jit(g).lower(s, a, b).compile() for g in (body, looped))
    return bench._timer(lambda: alone(s, a, b)), bench._timer(lambda: looped(s, a, b))


def training(hw, batch):
    """Conv kernel shapes of nn.cnn, the step's FLOPs, and (step, epoch) timers."""
    model, opt = nn.cnn(), optax.adam(1e-3)
    _, params = model.init(jax.random.key(0), (hw, hw, 1))
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (batch * SCAN, hw, hw, 1))
    y = jax.random.randint(ky, (batch * SCAN,), 0, 10)
    xb, yb = x[:batch], y[:batch]
    step = bench.make_step(model, "rules", opt)
    state = [jax.tree.map(jnp.copy, params), opt.init(params)]
    compiled = step.lower(*state, xb, yb).compile()
    epoch = train.make_epoch(train.loss_and_grad(model), opt, batch * SCAN, batch)
    e_state = [train.init_state(params, opt, jax.random.key(2))]
    epoch = epoch.lower(e_state[0], x, y).compile()

    def one_step():
        state[0], state[1], loss = compiled(state[0], state[1], xb, yb)
        return loss

    def one_epoch():
        e_state[0], loss = epoch(e_state[0], x, y)
        return loss

    kernels = [leaf.shape for leaf in jax.tree.leaves(params) if leaf.ndim == 4]
    return kernels, bench._flops(compiled), bench._timer(one_step), bench._timer(one_epoch)


def measure(hw, batch, rounds, target, log):
    """Rows of one image size: every form of every conv, then the step; medians in s."""
    kernels, step_flops, step, epoch = training(hw, batch)
    rows, runs = [], {}
    for layer, k_shape in enumerate(kernels, start=1):
        kh, kw, c_in, c_out = k_shape
        _, pads, _ = conv_static("conv2d", (hw, hw), (kh, kw), 1, "SAME", 1)
        kx, kk, kd = jax.random.split(jax.random.key(10 + layer), 3)
        x = jax.random.normal(kx, (batch, hw, hw, c_in))
        k = jax.random.normal(kk, k_shape) / np.sqrt(kh * kw * c_in)
        d = jax.random.normal(kd, (batch, hw, hw, c_out))
        out, vjp = jax.vjp(lambda x, k, pads=pads: conv(x, k, pads), x, k)
        refs = dict(zip(("input gradient", "kernel gradient"), vjp(d)), forward=out)
        rule = _conv2d_bwd((1, 1), pads, (1, 1), (x, k), d)
        check(f"conv {layer} rule bwd X̄", rule[0], refs["input gradient"])
        check(f"conv {layer} rule bwd K̄", rule[1], refs["kernel gradient"])
        operands = {"forward": (x, k), "input gradient": (d, k), "kernel gradient": (x, d)}
        for part, fs in forms(k_shape, pads).items():
            for form, f in fs.items():
                err = check(f"conv {layer} {part} {form}", jax.jit(f)(*operands[part]), refs[part])
                rows.append(
                    {
                        "conv": layer,
                        "shape": f"{c_in}→{c_out} {kh}×{kw}",
                        "part": part,
                        "form": form,
                        "flops": 2.0 * batch * hw * hw * kh * kw * c_in * c_out,
                        "max_rel_error": err,
                    }
                )
                runs[len(rows) - 1] = timers(f, *operands[part])
    rows.append(
        {
            "conv": "-",
            "shape": "",
            "part": "training step",
            "form": "rules step; epoch per step in scan",
            "flops": step_flops,
        }
    )
    runs[len(rows) - 1] = (step, epoch)
    timed = {(i, mode): run for i, pair in runs.items() for mode, run in enumerate(pair)}
    calls, times, slow = {}, {key: [] for key in timed}, set()
    for key, run in timed.items():  # all compiled already: one call sizes the rounds
        first = run(1)
        calls[key] = max(1, min(200, round(target / first)))
        if first > SLOW:
            slow.add(key)
            times[key].append(first)
    log(f"  {hw}×{hw}: {len(timed)} timers checked and sized ({len(slow)} slow), {rounds} rounds")
    order, keys = np.random.default_rng(0), list(timed)
    for r in range(rounds):
        for j in order.permutation(len(keys)):
            if r == 0 or keys[j] not in slow:
                times[keys[j]].append(timed[keys[j]](calls[keys[j]]))
    for i, row in enumerate(rows):
        row["standalone_s"] = statistics.median(times[i, 0])
        row["in_scan_s"] = statistics.median(times[i, 1]) / SCAN  # per iteration (per step of the epoch)
        row["calls_per_round"] = [calls[i, 0], calls[i, 1]]
        row["samples"] = [len(times[i, 0]), len(times[i, 1])]
    return {"hw": hw, "batch": batch, "rows": rows}


def worker(flag, args):
    log = lambda s: print(f"[flag {flag}] {s}", file=sys.stderr, flush=True)
    in_effect = xla_flags.conv_flag_in_effect()
    log(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; convs out of YNNPACK: {in_effect}")
    results = [measure(hw, args.batch, args.rounds, args.target, log) for hw in args.hw]
    print(
        json.dumps(
            {
                "flag": flag,
                "flag_in_effect": in_effect,
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
                "jax": jax.__version__,
                "results": results,
            }
        )
    )


def spawn(flag, args):
    env = dict(os.environ)  # funcprop's import put the flag here: take it out, let the worker decide
    env["XLA_FLAGS"] = " ".join(t for t in env.get("XLA_FLAGS", "").split() if not t.startswith(xla_flags.FLAG_NAME))
    env["FUNCPROP_XLA_FLAGS"] = "1" if flag == "yes" else "0"
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        flag,
        "--batch",
        str(args.batch),
        "--rounds",
        str(args.rounds),
        "--target",
        str(args.target),
        "--hw",
        *map(str, args.hw),
    ]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"conv_budget: the worker with flag {flag} failed (exit {proc.returncode})")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["flag_in_effect"] != (flag == "yes"):
        raise SystemExit(
            f"conv_budget: the worker with flag {flag} compiled convs "
            f"{'without' if out['flag_in_effect'] else 'with'} YNNPACK; the comparison would be void"
        )
    return out


def rule_sum(rows, key):
    """Seconds of the convs as the rule does them (conv 1's input gradient is dropped)."""
    return sum(
        r[key]
        for r in rows
        if r["part"] in RULE and r["form"] == RULE[r["part"]] and not (r["conv"] == 1 and r["part"] == "input gradient")
    )


def markdown(runs, batch) -> str:
    ms, rate = lambda s: f"{s * 1e3:.3f}", lambda f, s: f"{f / s / 1e9:.1f}"
    lines = []
    for i, result in enumerate(runs["yes"]["results"]):
        hw = result["hw"]
        for flag in ("yes", "no"):
            rows = runs[flag]["results"][i]["rows"]
            lines += [
                f"### {hw}×{hw}, batch {batch}, flag {flag} "
                f"({'Eigen convs' if flag == 'yes' else 'YNNPACK convs, XLA default'})",
                "",
                "| conv | part | form | GFLOP | standalone (ms) | GFLOP/s | in scan (ms/iter) | GFLOP/s "
                "| in scan ÷ standalone |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for r in rows:
                a, b, f = r["standalone_s"], r["in_scan_s"], r["flops"]
                lines.append(
                    f"| {r['conv']} {r['shape']} | {r['part']} | {r['form']} | {f / 1e9:.3f} | {ms(a)} | "
                    f"{rate(f, a)} | {ms(b)} | {rate(f, b)} | {b / a:.2f} |"
                )
            a, b = rule_sum(rows, "standalone_s"), rule_sum(rows, "in_scan_s")
            lines += [f"| all | convs as the rule does them (sum) | | | {ms(a)} | | {ms(b)} | | {b / a:.2f} |", ""]
        lines += [f"Fastest, {hw}×{hw} (across forms and flags):", ""]
        rows = {flag: runs[flag]["results"][i]["rows"] for flag in ("yes", "no")}
        for j, r in enumerate(rows["yes"]):
            if r["part"] == "training step" or any(
                s["conv"] == r["conv"] and s["part"] == r["part"] for s in rows["yes"][:j]
            ):
                continue
            same = [(flag, s) for flag in rows for s in rows[flag] if (s["conv"], s["part"]) == (r["conv"], r["part"])]
            text = []
            for key, label in (("in_scan_s", "in scan"), ("standalone_s", "standalone")):
                flag, best = min(same, key=lambda fs: fs[1][key])
                rule = {f: s[key] for f, s in same if s["form"] == RULE[r["part"]]}
                text.append(
                    f"{label} {best['form']}, flag {flag}, {ms(best[key])} ms "
                    f"(the rule's: {ms(rule['yes'])} ms flag yes, {ms(rule['no'])} ms flag no)"
                )
            lines.append(f"- conv {r['conv']} {r['part']}: " + "; ".join(text))
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/conv_budget", help="output folder")
    parser.add_argument("--hw", type=int, nargs="+", help="image sizes (default 28 8; --quick: 8)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 7; --quick: 2)")
    parser.add_argument("--target", type=float, help="seconds per timer per round (default 0.1; --quick: 0.02)")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--worker", choices=("yes", "no"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.hw = args.hw or ([8] if args.quick else [28, 8])
    args.rounds = args.rounds or (2 if args.quick else 7)
    args.target = args.target or (0.02 if args.quick else 0.1)
    if min(args.hw) < 2 or args.batch < 1 or args.rounds < 1 or args.target <= 0:
        parser.error(
            f"expected --hw of at least 2 and a positive --batch, --rounds and --target, got --hw {args.hw} "
            f"--batch {args.batch} --rounds {args.rounds} --target {args.target}"
        )
    if args.worker:
        return worker(args.worker, args)
    runs = {flag: spawn(flag, args) for flag in ("yes", "no")}
    text = markdown(runs, args.batch)
    print(text)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "conv_budget.json").write_text(
        json.dumps(
            {
                "hw": args.hw,
                "batch": args.batch,
                "rounds": args.rounds,
                "target_s": args.target,
                "scan_length": SCAN,
                "tolerance": TOL,
                "runs": runs,
            },
            indent=2,
        )
    )
    (out / "conv_budget.md").write_text(text)


if __name__ == "__main__":
    main()
