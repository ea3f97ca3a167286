"""Memory and time of the gradient: attention and the LM head, hand-derived vs autodiff.

    python experiments/long_context.py --out runs/long_context
    python experiments/long_context.py --quick     # small sizes, a smoke run of seconds

Memory is what DESIGN §7 fixes: temp + output bytes of
``jax.jit(jax.grad(f, argnums)).lower(*args).compile().memory_analysis()``, float32,

- attention: f = Σ attention(q, k, v, causal=True), over (q, k, v), B1 H4 D64, at
  N = T = S from 512 to 8192. Beside funcprop's rule: autodiff of the plain formula
  (``jax.nn.dot_product_attention``'s xla path; it keeps P), and autodiff of funcprop's
  own twin (the same formula with explicit masks, which keeps a little more);
- the LM head: f = mean cross-entropy of h Ωᵀ over (h, Ω), N 4096, d 256, V 32768 and
  131072. Beside the rule: autodiff of the plain formula (logits, then
  ``optax.softmax_cross_entropy_with_integer_labels``) and of the twin.

Compiling needs no memory of that size, so the memory column is given at every size;
a time is measured where the program fits (``--max-gib``, default 8 GiB per program).
Times are medians of jitted calls (``funcprop.timing.median_seconds``) after a warm-up,
on this machine's CPU; the ratios in one run are what to compare. Peers that run on a
CPU (tokamax, flash-attention-jax) are timed where installed, never required. Writes
long_context.json, long_context.md and long_context.png in --out (``--part`` runs one
of the two tables).
"""

import argparse
import json
import math
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcprop.rules.attention import attention, attention_twin
from funcprop.rules.lm_head import linear_cross_entropy, linear_cross_entropy_twin
from funcprop.timing import median_seconds

MIB = 2**20


def grad_memory(f, args, argnums) -> int:
    """Temp + output bytes of the compiled gradient (DESIGN §7's figure)."""
    stats = jax.jit(jax.grad(f, argnums)).lower(*args).compile().memory_analysis()
    return stats.temp_size_in_bytes + stats.output_size_in_bytes


def grad_seconds(f, args, argnums, repeats: int) -> float:
    g = jax.jit(jax.grad(f, argnums))
    return median_seconds(lambda: g(*args), repeats)


def _normal(rng, shape, scale=1.0):
    return jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)


def attention_peers() -> dict:
    """name -> f(q, k, v) of the causal attention, for every peer present."""
    peers = {
        "funcprop": lambda q, k, v: attention(q, k, v, causal=True),
        "autodiff (jax.nn xla)": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True),
        "autodiff (twin)": lambda q, k, v: attention_twin(q, k, v, causal=True),
    }
    try:  # optional: tokamax's chunked xla attention
        import tokamax

        peers["tokamax xla_chunked"] = lambda q, k, v: tokamax.dot_product_attention(
            q, k, v, is_causal=True, implementation="xla_chunked"
        )
    except ImportError:
        pass
    return peers


def head_peers() -> dict:
    def plain(h, omega, labels):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(h @ omega.T, labels))

    peers = {
        "funcprop": linear_cross_entropy,
        "autodiff (logits + optax)": plain,
        "autodiff (twin)": linear_cross_entropy_twin,
    }
    try:
        import tokamax

        peers["tokamax"] = lambda h, omega, labels: tokamax.linear_softmax_cross_entropy_loss(h, labels, omega.T)
    except ImportError:
        pass
    return peers


def attention_table(sizes, repeats: int, max_bytes: float, heads=4, dim=64) -> list:
    rows, rng = [], np.random.default_rng(0)
    for n in sizes:
        q, k, v = (_normal(rng, (1, n, heads, dim)) for _ in range(3))
        for name, peer in attention_peers().items():
            f = lambda q, k, v, peer=peer: jnp.sum(peer(q, k, v))  # noqa: E731
            memory = grad_memory(f, (q, k, v), (0, 1, 2))
            seconds = grad_seconds(f, (q, k, v), (0, 1, 2), repeats) if memory <= max_bytes else None
            rows.append({"case": "attention", "N": n, "impl": name, "memory_mib": memory / MIB, "seconds": seconds})
            print(f"attention N {n:5d} {name:24s} {memory / MIB:9.1f} MiB  {_shown(seconds)}", flush=True)
    return rows


def head_table(vocabs, repeats: int, max_bytes: float, n=4096, d=256) -> list:
    rows, rng = [], np.random.default_rng(1)
    for vocab in vocabs:
        h, omega = _normal(rng, (n, d)), _normal(rng, (vocab, d), 1 / math.sqrt(d))
        labels = jnp.asarray(rng.integers(0, vocab, n), jnp.int32)
        for name, peer in head_peers().items():
            memory = grad_memory(peer, (h, omega, labels), (0, 1))
            seconds = grad_seconds(peer, (h, omega, labels), (0, 1), repeats) if memory <= max_bytes else None
            rows.append({"case": "lm_head", "V": vocab, "impl": name, "memory_mib": memory / MIB, "seconds": seconds})
            print(f"lm_head V {vocab:6d} {name:26s} {memory / MIB:9.1f} MiB  {_shown(seconds)}", flush=True)
    return rows


def _shown(seconds) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:9.1f} ms"


def ratios(rows, key: str, ours="funcprop", reference=None) -> list:
    """Per size: ours / reference for memory and time (reference: the first autodiff)."""
    out = []
    for size in sorted({r[key] for r in rows}):
        at = {r["impl"]: r for r in rows if r[key] == size}
        ref = reference or next(name for name in at if name.startswith("autodiff"))
        mine, theirs = at[ours], at[ref]
        time = mine["seconds"] / theirs["seconds"] if mine["seconds"] and theirs["seconds"] else None
        out.append({key: size, "vs": ref, "memory": mine["memory_mib"] / theirs["memory_mib"], "time": time})
    return out


def markdown(rows, key: str, title: str) -> str:
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    lines = [f"## {title}", "", f"| {key} | " + " | ".join(f"{i} MiB | {i} ms" for i in impls) + " |"]
    lines.append("|---:" * (1 + 2 * len(impls)) + "|")
    for size in sorted({r[key] for r in rows}):
        at = {r["impl"]: r for r in rows if r[key] == size}
        cells = [f"{at[i]['memory_mib']:.1f} | {_shown(at[i]['seconds']).strip()}" for i in impls]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    lines += ["", f"| {key} | vs | memory ratio | time ratio |", "|---:|---|---:|---:|"]
    for r in ratios(rows, key):
        time = "—" if r["time"] is None else f"{r['time']:.2f}×"
        lines.append(f"| {r[key]} | {r['vs']} | {r['memory']:.3f} (1/{1 / r['memory']:.1f}) | {time} |")
    return "\n".join(lines) + "\n"


def plot(rows, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for impl in dict.fromkeys(r["impl"] for r in rows):
        pts = sorted((r["N"], r["memory_mib"]) for r in rows if r["impl"] == impl)
        ax.loglog(*zip(*pts), marker="o", label=impl)
    ax.set_xlabel("sequence length N (B1 H4 D64, causal, f32)")
    ax.set_ylabel("gradient memory, MiB (temp + output)")
    ax.set_title("attention: compiled memory of the gradient")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/long_context")
    parser.add_argument("--quick", action="store_true", help="small sizes and one repeat: a smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-gib", type=float, default=8.0, help="time only programs that need less memory")
    parser.add_argument("--part", choices=("all", "attention", "lm_head"), default="all", help="one table only")
    args = parser.parse_args(argv)
    sizes = [128, 256] if args.quick else [512, 1024, 2048, 4096, 8192]
    vocabs = [1024] if args.quick else [32768, 131072]
    repeats = 1 if args.quick else args.repeats
    max_bytes = args.max_gib * 2**30
    attn = attention_table(sizes, repeats, max_bytes) if args.part != "lm_head" else []
    n, d = (256, 32) if args.quick else (4096, 256)
    head = head_table(vocabs, repeats, max_bytes, n, d) if args.part != "attention" else []
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()} {jax.devices()[0].device_kind}, jax {jax.__version__}"
    result = {
        "machine": machine,
        "attention": attn,
        "lm_head": head,
        "attention_ratios": ratios(attn, "N"),
        "lm_head_ratios": ratios(head, "V"),
    }
    (out / "long_context.json").write_text(json.dumps(result, indent=2) + "\n")
    md = f"# Gradient memory and time, hand-derived vs autodiff ({machine})\n\n"
    if attn:
        md += markdown(attn, "N", "Attention, causal, B1 H4 D64, float32") + "\n"
        plot(attn, out / "long_context.png")
    if head:
        md += markdown(head, "V", f"LM head, N {n}, d {d}, float32")
    (out / "long_context.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
