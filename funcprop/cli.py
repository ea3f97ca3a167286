"""The ``funcprop`` command line: shapes, verify, train, report (the main job) and bench.

Bad arguments exit 2 with one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line: ``funcprop shapes: error: ...``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class UsageError(Exception):
    """A bad argument found after parsing; main() prints it on one line, exit 2."""


def _checked(convert, what: str, ok, allowed: str):
    """An argparse type: ``convert(text)``, then ``ok(value)``, each with a one-line error."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {value}")
        return value

    return parse


_positive_int = _checked(int, "a positive integer", lambda v: v >= 1, "a positive integer")
_seed = _checked(int, "an integer seed", lambda v: 0 <= v < 2**32, "a seed in [0, 2**32)")
_positive_float = _checked(float, "a positive number", lambda v: 0 < v < float("inf"), "a positive number")


# --- funcprop shapes --------------------------------------------------------------


def _cmd_shapes(args) -> int:
    from funcprop import shapes

    if args.arch == "mlp":
        if len(args.sizes) < 2:
            raise UsageError("shapes needs at least two layer sizes, e.g. funcprop shapes 2 4 7 3 2")
        print(shapes.mlp_table(args.sizes, args.batch, args.activation))
        return 0
    if args.sizes:
        raise UsageError(f"--arch {args.arch} takes no layer sizes (it is built for digits: 8x8 images, 10 classes)")
    model, _ = build_model(args.arch, DIGITS_SHAPE[args.arch in IMAGE_ARCHS], 10, args.hidden, args.activation)
    batch = args.batch or (1 if args.arch in IMAGE_ARCHS else None)  # Flatten needs a batch axis
    print(shapes.graph_table(model, DIGITS_SHAPE[args.arch in IMAGE_ARCHS], batch, title=f"{args.arch} for digits"))
    return 0


# --- funcprop verify / train / report ------------------------------------------------

OPTIMIZERS = ("adam", "adamw", "sgd", "momentum", "rmsprop")
ARCHS = ("mlp", "seed", "cnn", "resmlp", "resnet")
IMAGE_ARCHS = ("cnn", "resnet")  # models of NHWC images
DIGITS_SHAPE = {False: (64,), True: (8, 8, 1)}  # one digits example, flat or as an image


def build_model(arch: str, example_shape, num_classes: int, hidden, activation: str):
    """(model, title) for ``--arch``: the layers ``train`` and ``shapes`` build."""
    from funcprop import nn

    if arch == "cnn":
        return nn.cnn(num_classes), "cnn"
    if arch == "resnet":
        return nn.resnet(num_classes), "resnet"
    if arch == "resmlp":
        return (nn.resmlp(num_classes, width=hidden[0], depth=len(hidden), activation=activation),
                f"resmlp width {hidden[0]} x {len(hidden)} blocks {activation}")
    if arch == "seed":
        sizes, activation = [example_shape[0], 4, 7, 3, num_classes], "sigmoid"
    else:
        sizes = [example_shape[0], *hidden, num_classes]
    return nn.mlp(sizes, activation=activation), f"mlp {'-'.join(map(str, sizes))} {activation}"


def _optimizer(name: str, lr: float):
    import optax

    return {
        "adam": lambda: optax.adam(lr),
        "adamw": lambda: optax.adamw(lr, weight_decay=1e-4),
        "sgd": lambda: optax.sgd(lr),
        "momentum": lambda: optax.sgd(lr, momentum=0.9, nesterov=True),
        "rmsprop": lambda: optax.rmsprop(lr),
    }[name]()


def _use_cache(args) -> None:
    """JAX's persistent compilation cache in the user's cache folder, unless --no-cache."""
    if not args.no_cache:
        from funcprop.xla_flags import enable_compilation_cache

        enable_compilation_cache()


def _cmd_verify(args) -> int:
    _use_cache(args)
    import json
    import pathlib

    from funcprop.verify import verification_markdown, verify_rules

    rows = verify_rules(seed=args.seed)
    table = verification_markdown(rows)
    print(table, end="")
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "verify.json").write_text(json.dumps(rows, indent=2))
        (out / "verify.md").write_text(table)
    return 0 if all(r["passed"] for r in rows) else 1


def _load_dataset(args):
    from funcprop import data

    if args.dataset == "mnist" and args.data_path is None:
        raise UsageError("--dataset mnist needs --data-path DIR, a folder with the four MNIST IDX files")
    try:
        if args.dataset == "toy":
            import jax

            if args.arch in IMAGE_ARCHS:
                raise UsageError(f"--arch {args.arch} needs images; the toy dataset is 2-D points (use digits or mnist)")
            return data.toy(jax.random.key(args.seed), kind=args.toy_kind)
        return data.load(args.dataset, seed=args.seed, path=args.data_path, image=args.arch in IMAGE_ARCHS)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err


def _cmd_train(args) -> int:
    _use_cache(args)
    import json
    import pathlib

    import jax

    from funcprop import nn, plots, train

    ds = _load_dataset(args)
    if args.arch == "resmlp" and (not args.hidden or len(set(args.hidden)) != 1):
        raise UsageError(f"--arch resmlp needs --hidden with one width repeated, one entry per residual block "
                         f"(e.g. --hidden 256 256), got {args.hidden}")
    model, title = build_model(args.arch, ds.example_shape, ds.num_classes, args.hidden, args.activation)
    title = f"{ds.name}, {title}"
    _, params = model.init(jax.random.key(args.seed), ds.example_shape)
    if args.batch_size > ds.x_train.shape[0]:
        raise UsageError(f"--batch-size {args.batch_size} exceeds the {ds.x_train.shape[0]} training examples")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = train.train(
        model, params, _optimizer(args.optimizer, args.lr), ds,
        epochs=args.epochs, batch_size=args.batch_size, key=jax.random.key(args.seed + 1),
        gradient=args.gradient, checkpoint_path=out / "checkpoint.npz", resume=args.resume,
        out_dir=out, progress=not args.no_progress,
        config={k: v for k, v in vars(args).items() if k not in ("run", "epochs", "resume", "no_progress", "no_cache", "out")},
    )
    plots.plot_history(result.history, out / "curves.png", title=title)
    if ds.example_shape == (2,):
        plots.plot_decision_boundary(model.apply, result.params, ds.x_test, ds.y_test, out / "boundary.png", title=title)
    last = result.history[-1] if result.history else {}
    (out / "config.json").write_text(json.dumps({k: v for k, v in vars(args).items() if k != "run"}, indent=2))
    accuracy = last.get("test_accuracy")
    score = (f"test accuracy {100 * accuracy:.2f}%" if accuracy is not None
             else f"test loss {last['test_loss']:.4f}" if last else "nothing left to train")
    print(f"{title}: {len(result.history)} epochs, {score}, wrote {out}/")
    return 0


def _cmd_report(args) -> int:
    _use_cache(args)
    from funcprop.report import main_job

    summary = main_job(args.out, epochs=args.epochs, seed=args.seed, progress=not args.no_progress,
                       compare_sklearn=not args.no_sklearn)
    print(f"digits test accuracy {100 * summary['test_accuracy']:.2f}%, "
          f"{summary['checks_passed']}/{summary['checks']} rule checks passed, "
          f"{summary['total_wall_s']:.1f} s; report in {args.out}/summary.md")
    return 0 if summary["checks_passed"] == summary["checks"] else 1


def _cmd_bench(args) -> int:
    from funcprop import bench, bench_torch

    if args.torch and not bench_torch.available():
        raise UsageError("--torch needs PyTorch installed (pip install torch)")
    with_torch = False if args.no_torch else (True if args.torch else None)
    bench.run(args.out, quick=args.quick, rounds=args.rounds, with_torch=with_torch)
    print(f"wrote {args.out}/benchmark.{{json,md,png}}")
    return 0


# --- the parser -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="funcprop", description="Backpropagation as explicit math in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("shapes", help="print the shapes of every term of backprop, layer by layer")
    p.add_argument("sizes", nargs="*", type=_positive_int, help="mlp layer sizes including the input, e.g. 2 4 7 3 2")
    p.add_argument("--arch", choices=("mlp", "cnn", "resmlp", "resnet"), default="mlp",
                   help="mlp: the dense terms for SIZES; the others: every leaf of that model for digits")
    p.add_argument("--hidden", type=_positive_int, nargs="+", default=[128, 128], help="resmlp width and blocks")
    p.add_argument("--batch", type=_positive_int, default=None, help="a batch size (default: one example)")
    p.add_argument("--activation", default="sigmoid", choices=sorted(_activations()), help="hidden activation")
    p.set_defaults(run=_cmd_shapes)

    p = sub.add_parser("verify", help="verify every rule against autodiff of its twin and finite differences")
    p.add_argument("--out", default=None, help="also write verify.json and verify.md here")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--no-cache", action="store_true", help="do not keep compiled programs in ~/.cache/funcprop/jax (JAX's persistent cache)")
    p.set_defaults(run=_cmd_verify)

    from funcprop.data import DATASETS
    from funcprop.train import GRADIENTS

    p = sub.add_parser("train", help="train a network with optax")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-path", default=None, help="folder of the MNIST IDX files (for --dataset mnist)")
    p.add_argument("--toy-kind", choices=("moons", "spirals"), default="moons")
    p.add_argument("--arch", choices=ARCHS, default="mlp", help="mlp: --hidden widths; seed: the seed's 4-7-3 sigmoid net; cnn: conv32-conv64-pool-128; "
                   "resmlp: pre-norm residual MLP, width --hidden[0], a block per --hidden entry; resnet: residual CNN")
    p.add_argument("--hidden", type=_positive_int, nargs="*", default=[256, 256], help="hidden widths of the mlp")
    p.add_argument("--activation", choices=sorted(_activations()), default="relu")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="learning rate")
    p.add_argument("--epochs", type=_positive_int, default=20)
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--gradient", choices=GRADIENTS, default="rules", help="where gradients come from")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", default="runs/train", help="output folder (metrics, plots, checkpoint)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-cache", action="store_true", help="do not keep compiled programs in ~/.cache/funcprop/jax (JAX's persistent cache)")
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("report", help="the main job: verify every rule, train on digits, write a report")
    p.add_argument("--out", default="report", help="the report folder")
    p.add_argument("--epochs", type=_positive_int, default=40)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn comparison")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-cache", action="store_true", help="do not keep compiled programs in ~/.cache/funcprop/jax (JAX's persistent cache)")
    p.set_defaults(run=_cmd_report)

    p = sub.add_parser("bench", help="time a training step: rules vs jax.grad vs backprop vs PyTorch")
    p.add_argument("--out", default="runs/bench", help="output folder (benchmark.json, .md, .png)")
    p.add_argument("--quick", action="store_true", help="small cases, few rounds: a smoke run of seconds")
    p.add_argument("--rounds", type=_positive_int, default=None, help="interleaved rounds (default 15, quick 3)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--torch", action="store_true", help="require PyTorch (default: use it if installed)")
    group.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    p.set_defaults(run=_cmd_bench)
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
    except (OSError, ValueError, TypeError, ImportError, FloatingPointError) as err:
        if os.environ.get("FUNCPROP_DEBUG"):
            raise
        message = " ".join(str(err).split())  # one line
        print(f"funcprop {args.command}: error: {message} (FUNCPROP_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
