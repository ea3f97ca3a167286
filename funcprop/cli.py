"""The ``funcprop`` command line: ``funcprop shapes``, ``funcprop verify``, ``funcprop train``.

Bad arguments exit 2 with one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line: ``funcprop shapes: error: ...``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class UsageError(Exception):
    """A bad argument found after parsing; main() prints it on one line, exit 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# --- funcprop shapes --------------------------------------------------------------


def shapes_table(sizes, batch=None, activation="sigmoid") -> str:
    """Per dense layer k, the shapes of h, Ω, β, f, δ, ∂L/∂Ω, ∂L/∂β and ∂L/∂h.

    The shapes are those of a real pass of :func:`funcprop.backprop.value_and_grad`
    with ``return_intermediates=True``, traced by ``jax.eval_shape`` (nothing is
    computed). Without ``batch`` one example is shown, as in the seed's walkthrough.
    """
    import jax
    import jax.numpy as jnp

    from funcprop import backprop, nn
    from funcprop.rules.losses import softmax_cross_entropy

    model = nn.mlp(list(sizes), activation=activation)
    lead = () if batch is None else (batch,)
    x = jax.ShapeDtypeStruct((*lead, sizes[0]), jnp.float32)
    y = jax.ShapeDtypeStruct(lead, jnp.int32)
    params = jax.eval_shape(lambda k: model.init(k, (sizes[0],))[1], jax.random.key(0))
    fn = backprop.value_and_grad(model, softmax_cross_entropy, return_intermediates=True)
    _, grads, traces = jax.eval_shape(fn, params, x, y)

    def fmt(s):
        return str(tuple(s.shape))

    header = ["layer", "h_k", "Ω_k", "β_k", "f_k", "δ_k = ∂L/∂f_k", "∂L/∂Ω_k", "∂L/∂β_k", "∂L/∂h_k"]
    rows = []
    dense_traces = [t for t in traces if "Dense" in t.name]
    dense_grads = [g for g in grads if isinstance(g, nn.DenseParams)]
    dense_params = [p for p in params if isinstance(p, nn.DenseParams)]
    for k, (t, g, p) in enumerate(zip(dense_traces, dense_grads, dense_params)):
        rows.append([str(k), fmt(t.input), fmt(p.omega), fmt(p.beta), fmt(t.output),
                     fmt(t.output_grad), fmt(g.omega), fmt(g.beta), fmt(t.input_grad)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    what = "one example" if batch is None else f"batch of {batch}"
    title = f"mlp {'-'.join(map(str, sizes))} ({activation}, softmax cross-entropy), {what}:"
    return "\n".join([title, *lines])


def _cmd_shapes(args) -> int:
    if len(args.sizes) < 2:
        raise UsageError("shapes needs at least two layer sizes, e.g. funcprop shapes 2 4 7 3 2")
    print(shapes_table(args.sizes, args.batch, args.activation))
    return 0


# --- the parser -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="funcprop", description="Backpropagation as explicit math in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("shapes", help="print the shapes of every term of backprop, layer by layer")
    p.add_argument("sizes", nargs="+", type=_positive_int, help="layer sizes including the input, e.g. 2 4 7 3 2")
    p.add_argument("--batch", type=_positive_int, default=None, help="a batch size (default: one example)")
    p.add_argument("--activation", default="sigmoid", choices=sorted(_activations()), help="hidden activation")
    p.set_defaults(run=_cmd_shapes)
    return parser


def _activations():
    from funcprop.nn import ACTIVATIONS

    return ACTIVATIONS


def main(argv=None) -> int:
    """Entry point of the ``funcprop`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UsageError as err:
        print(f"funcprop {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"funcprop {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
