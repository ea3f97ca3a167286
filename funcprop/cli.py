"""The ``funcprop`` command line: shapes, verify, train, report (the main job) and bench.

Bad arguments exit 2 with one line on stderr, never a traceback, before any work
starts: so does a flag that the run would ignore (``--hidden`` with ``--arch seed``) and
an ``--out`` that is not a folder that can be written. Failures of the work itself (a
checkpoint of other settings, a loss that became NaN, out of memory) exit 1 with one
line. Ctrl-C and SIGTERM stop a command the same way (a checkpoint being written is
left whole, its temporary file removed) and exit 128 + the signal's number, as a shell
reports a process they killed: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import os
import pathlib
import re
import signal
import sys
import tempfile
import threading

from funcprop.nn import models


def _shown(value) -> str:
    """A value as it is typed on the command line: ``256 256`` for a list."""
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (``funcprop shapes: error: ...``) and --help shows every default."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def add_argument(self, *flags, fill_in=None, **kwargs):
        """``add_argument``, with ``(default: ...)`` at the end of the help where there is a default.

        ``fill_in=value``: an option that only some runs read. It parses to None when not
        given, so that :func:`_settle` can refuse it where the run would ignore it, and
        :func:`_settle` sets ``value`` where the run reads it; --help shows ``value``.
        """
        default = kwargs.get("default") if fill_in is None else fill_in
        if fill_in is not None:
            kwargs["default"] = None
            dest = flags[0].lstrip("-").replace("-", "_")
            self.set_defaults(fill_in={**(self.get_default("fill_in") or {}), dest: fill_in})
        text = kwargs.get("help") or ""
        if default is not None and default is not False and default != argparse.SUPPRESS and "(default" not in text:
            kwargs["help"] = f"{text} (default: {_shown(default)})".lstrip()
        return super().add_argument(*flags, **kwargs)


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
_count = _checked(int, "an integer", lambda v: v >= 0, "an integer >= 0")
_temperature = _checked(float, "a number", lambda v: 0 <= v < float("inf"), "a finite number >= 0 (0 is greedy)")


def _settle(args, **readers) -> None:
    """Refuse a flag given where this run ignores it; fill in its default where the run reads it.

    ``readers``: an option's dest -> (the option that decides, its values that read it),
    e.g. ``hidden=("arch", ("mlp", "resmlp"))``. An option the run does not read stays
    None, so that the recorded settings (config.json) hold only what ran.
    """
    for dest, (decider, values) in readers.items():
        given, choice = getattr(args, dest), getattr(args, decider)
        if choice in values and given is None:
            setattr(args, dest, args.fill_in.get(dest))
        elif choice not in values and given is not None:
            flag = "--" + dest.replace("_", "-")
            got = flag if given is True else f"{flag} {_shown(given)}"  # a switch has no value to show
            raise UsageError(
                f"--{decider} {choice} does not use {flag} (only --{decider} {' or '.join(values)} "
                f"reads it), got {got}; leave it out"
            )


def _settings(args, *leave_out) -> dict:
    """The options this run read, by dest (what config.json and the checkpoint record)."""
    return {k: v for k, v in vars(args).items() if v is not None and k not in ("run", "fill_in", *leave_out)}


def _out_folder(path) -> pathlib.Path:
    """``--out``, checked before the work starts: a folder, or where one can be made, that can be written.

    Nothing is created here (a run refused later leaves no empty folder): a file is
    written and removed in the nearest folder that exists.
    """
    out = pathlib.Path(path)
    if not str(path):
        raise UsageError("--out is empty; pass a folder (it is created if missing)")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        inside = "" if existing == out else f" is inside {existing}, which"
        raise UsageError(f"--out {path}{inside} is a file; pass a folder (it is created if missing)")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise UsageError(
            f"--out {path} cannot be written ({existing}: {err.strerror}); pass a folder you can write to"
        ) from None
    return out


def _check_resmlp(args) -> None:
    if args.arch == "resmlp" and len(set(args.hidden)) != 1:
        got = f"--hidden {_shown(args.hidden)}" if args.hidden else "no widths"
        raise UsageError(
            f"--arch resmlp needs --hidden with one width repeated, one entry per residual block "
            f"(e.g. --hidden 256 256), got {got}"
        )


# --- funcprop shapes --------------------------------------------------------------


def _cmd_shapes(args) -> int:
    from funcprop import shapes

    _settle(args, hidden=("arch", ("resmlp",)), activation=("arch", ("mlp", "resmlp")))
    _check_resmlp(args)
    if args.arch == "mlp":
        if len(args.sizes) < 2:
            raise UsageError("shapes needs at least two layer sizes, e.g. funcprop shapes 2 4 7 3 2")
        print(shapes.mlp_table(args.sizes, args.batch, args.activation))
        return 0
    if args.sizes:
        raise UsageError(f"--arch {args.arch} takes no layer sizes (it is built for digits: 8x8 images, 10 classes)")
    model, _ = models.build(args.arch, DIGITS_SHAPE[args.arch in models.IMAGE_ARCHS], 10, args.hidden, args.activation)
    batch = args.batch or (1 if args.arch in models.IMAGE_ARCHS else None)  # Flatten needs a batch axis
    print(
        shapes.graph_table(model, DIGITS_SHAPE[args.arch in models.IMAGE_ARCHS], batch, title=f"{args.arch} for digits")
    )
    return 0


# --- funcprop verify / train / report ------------------------------------------------

OPTIMIZERS = ("adam", "adamw", "sgd", "momentum", "rmsprop")
DIGITS_SHAPE = {False: (64,), True: (8, 8, 1)}  # one digits example, flat or as an image


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
    out = None if args.out is None else _out_folder(args.out)
    _use_cache(args)
    import json

    from funcprop.verify import verification_markdown, verify_rules

    rows = verify_rules(seed=args.seed)
    table = verification_markdown(rows)
    print(table, end="")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "verify.json").write_text(json.dumps(rows, indent=2))
        (out / "verify.md").write_text(table)
    return 0 if all(r["passed"] for r in rows) else 1


def _load_dataset(args):
    from funcprop import data

    try:
        if args.dataset == "toy":
            import jax

            return data.toy(jax.random.key(args.seed), kind=args.toy_kind)
        return data.load(args.dataset, seed=args.seed, path=args.data_path, image=args.arch in models.IMAGE_ARCHS)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err


LM_FLAGS = ("context", "d_model", "heads", "layers", "sample_bytes", "temperature", "no_twin_run")  # --arch gpt's
ARCH_DEFAULTS = {"epochs": (20, {"gpt": 3}), "lr": (1e-3, {"gpt": 3e-3})}  # dest: (default, its value by --arch)


def _arch_default(dest: str) -> str:
    default, by_arch = ARCH_DEFAULTS[dest]
    return f"(default: {default}; " + ", ".join(f"{v} with --arch {a}" for a, v in by_arch.items()) + ")"


def _check_text_and_gpt(args) -> None:
    """--dataset text and --arch gpt go together; fill in the defaults that depend on --arch."""
    if args.arch == "gpt" and args.dataset != "text":
        raise UsageError(
            f"--arch gpt is a byte-level language model: it needs --dataset text, got --dataset {args.dataset}"
        )
    if args.dataset == "text" and args.arch != "gpt":
        raise UsageError(f"--dataset text trains a language model: it needs --arch gpt, got --arch {args.arch}")
    for dest, (default, by_arch) in ARCH_DEFAULTS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, by_arch.get(args.arch, default))


def _checkpoint_config(args) -> dict:
    """The settings a resumed run must share with the checkpoint (what it trains, not what it reports)."""
    return _settings(
        args, "epochs", "resume", "no_progress", "no_cache", "out", "sample_bytes", "temperature", "no_twin_run"
    )


def _checkpoint_in(args, out) -> pathlib.Path:
    """``OUT/checkpoint.npz``, the folder made: refused if it holds an earlier run and --resume is not given."""
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / "checkpoint.npz"
    if args.resume and not checkpoint_path.exists():
        print(f"funcprop train: no checkpoint at {checkpoint_path}; starting fresh", file=sys.stderr)
    if not args.resume and checkpoint_path.exists():  # never overwrite what an earlier run trained
        raise UsageError(f"{checkpoint_path} holds an earlier run; pass --resume to continue it, or another --out")
    return checkpoint_path


def _check_batch_size(args, ds) -> None:
    if args.batch_size > ds.x_train.shape[0]:
        raise UsageError(f"--batch-size {args.batch_size} exceeds the {ds.x_train.shape[0]} training examples")


@contextlib.contextmanager
def _memory_errors_named(fix: str):
    """Out of memory in XLA becomes a MemoryError of one line, naming the device and ``fix``."""
    import jax

    try:
        yield
    except jax.errors.JaxRuntimeError as err:  # GPU: RESOURCE_EXHAUSTED; CPU: INTERNAL: ... Out of memory
        said = re.search(r"out of memory[^\n]*", str(err), flags=re.I)
        if not said and "RESOURCE_EXHAUSTED" not in str(err):
            raise
        device = jax.devices()[0]
        name = device if device.device_kind == device.platform else f"{device} ({device.device_kind})"
        detail = (said.group() if said else str(err).splitlines()[0]).rstrip(".")
        raise MemoryError(
            f"out of memory: the model and batch do not fit in the memory of {name} ({detail}); {fix}"
        ) from err


def _cmd_train(args) -> int:
    _check_text_and_gpt(args)
    _settle(
        args,
        hidden=("arch", ("mlp", "resmlp")),
        activation=("arch", ("mlp", "resmlp")),
        toy_kind=("dataset", ("toy",)),
        data_path=("dataset", ("mnist",)),
        text_path=("dataset", ("text",)),
        max_bytes=("dataset", ("text",)),
        **{dest: ("arch", ("gpt",)) for dest in LM_FLAGS},
    )
    _check_resmlp(args)
    if args.dataset == "mnist" and args.data_path is None:
        raise UsageError("--dataset mnist needs --data-path DIR, a folder with the four MNIST IDX files")
    if args.dataset == "toy" and args.arch in models.IMAGE_ARCHS:
        raise UsageError(f"--arch {args.arch} needs images; the toy dataset is 2-D points (use digits or mnist)")
    out = _out_folder(args.out)
    _use_cache(args)
    if args.arch == "gpt":
        return _train_lm(args, out)
    import json

    import jax

    from funcprop import plots, train

    ds = _load_dataset(args)
    _check_batch_size(args, ds)
    model, title = models.build(args.arch, ds.example_shape, ds.num_classes, args.hidden, args.activation)
    checkpoint_path = _checkpoint_in(args, out)
    print("funcprop train: compiling the training step (the first epoch takes longer)...", file=sys.stderr)
    with _memory_errors_named("use smaller --hidden or --batch-size"):
        _, params = model.init(jax.random.key(args.seed), ds.example_shape)
        result = train.train(
            model,
            params,
            _optimizer(args.optimizer, args.lr),
            ds,
            epochs=args.epochs,
            batch_size=args.batch_size,
            key=jax.random.key(args.seed + 1),
            gradient=args.gradient,
            checkpoint_path=checkpoint_path,
            resume=args.resume,
            out_dir=out,
            progress=not args.no_progress,
            config=_checkpoint_config(args),
        )
    title = f"{ds.name}, {title}"
    plots.plot_history(result.history, out / "curves.png", title=title)
    if ds.example_shape == (2,):
        plots.plot_decision_boundary(
            model.apply, result.params, ds.x_test, ds.y_test, out / "boundary.png", title=title
        )
    last = result.history[-1] if result.history else {}
    (out / "config.json").write_text(json.dumps({**_settings(args), "model": title}, indent=2))
    accuracy = last.get("test_accuracy")
    score = (
        f"test accuracy {100 * accuracy:.2f}%"
        if accuracy is not None
        else f"test loss {last['test_loss']:.4f}"
        if last
        else "nothing left to train"
    )
    print(f"{title}: {len(result.history)} epochs, {score}, wrote {out}/")
    return 0


def _train_lm(args, out) -> int:
    """``funcprop train --dataset text --arch gpt``: :func:`funcprop.lm.run_lm`, its table on stdout."""
    import json

    from funcprop import lm

    if args.gradient == "twins" and not args.no_twin_run:
        raise UsageError(
            "--gradient twins trains through jax.grad of the twins already, which the comparison run repeats; "
            "add --no-twin-run, or use --gradient rules or backprop"
        )
    try:
        setup = lm.setup(
            text_path=args.text_path,
            max_bytes=args.max_bytes,
            context=args.context,
            d_model=args.d_model,
            heads=args.heads,
            layers=args.layers,
        )
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err
    _check_batch_size(args, setup.data)
    _checkpoint_in(args, out)
    with _memory_errors_named("use smaller --d-model, --context or --batch-size"):
        summary = lm.run_lm(
            setup,
            _optimizer(args.optimizer, args.lr),
            out,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            gradient=args.gradient,
            twin_run=not args.no_twin_run,
            sample_bytes=args.sample_bytes,
            temperature=args.temperature,
            resume=args.resume,
            progress=not args.no_progress,
            config=_checkpoint_config(args),
            say=lambda message: print(f"funcprop train: {message}", file=sys.stderr),
        )
    settings = {**_settings(args), "model": setup.title, "text": setup.text.source}
    (out / "config.json").write_text(json.dumps(settings, indent=2))
    print(
        f"text, {setup.title}: {summary['runs'][0]['epochs']} epochs, validation "
        f"{summary['validation_bits_per_byte']:.3f} bits/byte (unigram {summary['unigram_bits_per_byte']:.3f}), "
        f"wrote {out}/"
    )
    print(lm.summary_table(summary), end="")
    return 0


def _cmd_report(args) -> int:
    _out_folder(args.out)
    _use_cache(args)
    from funcprop.report import main_job

    summary = main_job(
        args.out, epochs=args.epochs, seed=args.seed, progress=not args.no_progress, compare_sklearn=not args.no_sklearn
    )
    print(
        f"digits test accuracy {100 * summary['test_accuracy']:.2f}%, "
        f"{summary['checks_passed']}/{summary['checks']} rule checks passed, "
        f"{summary['total_wall_s']:.1f} s; report in {args.out}/summary.md"
    )
    return 0 if summary["checks_passed"] == summary["checks"] else 1


def _cmd_bench(args) -> int:
    from funcprop import bench, bench_torch

    if args.torch and not bench_torch.available():
        raise UsageError("--torch needs PyTorch installed (pip install torch)")
    _out_folder(args.out)
    with_torch = False if args.no_torch else (True if args.torch else None)
    bench.run(args.out, quick=args.quick, rounds=args.rounds, with_torch=with_torch)
    print(f"wrote {args.out}/benchmark.{{json,md,png}}")
    return 0


# --- the parser -------------------------------------------------------------------


NO_CACHE = "do not keep compiled programs in ~/.cache/funcprop/jax (JAX's persistent cache)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="funcprop",
        description="Backpropagation as explicit math in JAX.",
        epilog="Ctrl-C or SIGTERM stops a command cleanly: exit 130 (SIGINT) or 143 (SIGTERM).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("shapes", help="print the shapes of every term of backprop, layer by layer")
    p.add_argument("sizes", nargs="*", type=_positive_int, help="mlp layer sizes including the input, e.g. 2 4 7 3 2")
    p.add_argument(
        "--arch",
        choices=("mlp", "cnn", "resmlp", "resnet"),
        default="mlp",
        help="mlp: the dense terms for SIZES; the others: every leaf of that model for digits",
    )
    p.add_argument("--hidden", type=_positive_int, nargs="+", fill_in=[128, 128], help="resmlp width and blocks")
    p.add_argument("--batch", type=_positive_int, default=None, help="a batch size (default: one example)")
    p.add_argument(
        "--activation", fill_in="sigmoid", choices=sorted(_activations()), help="hidden activation (mlp, resmlp)"
    )
    p.set_defaults(run=_cmd_shapes)

    p = sub.add_parser("verify", help="verify every rule against autodiff of its twin and finite differences")
    p.add_argument("--out", default=None, help="also write verify.json and verify.md here")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--no-cache", action="store_true", help=NO_CACHE)
    p.set_defaults(run=_cmd_verify)

    from funcprop.data import DATASETS
    from funcprop.train import GRADIENTS

    p = sub.add_parser(
        "train",
        help="train a network with optax",
        epilog="--dataset text --arch gpt trains a byte-level GPT, then the same model through jax.grad of the "
        "twins (unless --no-twin-run), samples --sample-bytes, and writes lm.json, lm.md, sample.txt and curves.png "
        "(bits per byte) beside metrics.json, metrics.csv and config.json.",
    )
    p.add_argument(
        "--dataset",
        choices=(*DATASETS, "text"),
        default="digits",
        help="text: bytes of this Python's standard library .py files, or of --text-path (for --arch gpt)",
    )
    p.add_argument("--data-path", default=None, help="folder of the MNIST IDX files (for --dataset mnist)")
    p.add_argument("--toy-kind", choices=("moons", "spirals"), fill_in="moons", help="for --dataset toy")
    p.add_argument("--text-path", nargs="+", help="files or folders of text to use (--dataset text)")
    p.add_argument(
        "--max-bytes", type=_positive_int, fill_in=400_000, help="bytes to train on, a tenth as many to validate (text)"
    )
    p.add_argument(
        "--arch",
        choices=(*models.ARCHS, "gpt"),
        default="mlp",
        help="mlp: --hidden widths; seed: the notes' 4-7-3 sigmoid net; cnn: conv32-conv64-pool-128; "
        "resmlp: pre-norm residual MLP, width --hidden[0], a block per --hidden entry; resnet: residual CNN; "
        "gpt: a byte-level transformer for --dataset text",
    )
    p.add_argument("--hidden", type=_positive_int, nargs="*", fill_in=[256, 256], help="hidden widths (mlp, resmlp)")
    p.add_argument(
        "--activation", choices=sorted(_activations()), fill_in="relu", help="hidden activation (mlp, resmlp)"
    )
    p.add_argument("--context", type=_positive_int, fill_in=64, help="bytes a window holds (gpt)")
    p.add_argument("--d-model", type=_positive_int, fill_in=64, help="width of the transformer (gpt)")
    p.add_argument("--heads", type=_positive_int, fill_in=4, help="attention heads, dividing --d-model (gpt)")
    p.add_argument("--layers", type=_positive_int, fill_in=2, help="transformer blocks (gpt)")
    p.add_argument("--sample-bytes", type=_count, fill_in=200, help="bytes to generate after the prompt (gpt)")
    p.add_argument("--temperature", type=_temperature, fill_in=0.8, help="sampling temperature, 0 greedy (gpt)")
    p.add_argument(
        "--no-twin-run",
        action="store_true",
        default=None,
        fill_in=False,
        help="skip training the model again through jax.grad of the twins (gpt)",
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--lr", type=_positive_float, help=f"learning rate {_arch_default('lr')}")
    p.add_argument("--epochs", type=_positive_int, help=f"epochs to train {_arch_default('epochs')}")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--gradient", choices=GRADIENTS, default="rules", help="where gradients come from")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", default="runs/train", help="output folder (metrics, plots, checkpoint)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.npz up to --epochs; where there is none, say so and start fresh",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-cache", action="store_true", help=NO_CACHE)
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("report", help="the main job: verify every rule, train on digits, write a report")
    p.add_argument("--out", default="report", help="the report folder")
    p.add_argument("--epochs", type=_positive_int, default=40)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn comparison")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-cache", action="store_true", help=NO_CACHE)
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


def _version() -> str:
    from funcprop import __version__

    return __version__


def _activations():
    from funcprop.nn import ACTIVATIONS

    return ACTIVATIONS


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that both stop a command the same way."""


SIGTERM_RETRY_S = 2.0  # how often a SIGTERM is raised again until the command has stopped


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM raises :class:`_Terminated` for the duration; the previous handler comes back after.

    Python runs a signal handler between any two bytecodes, and an exception raised in a
    ``__del__`` or a weakref callback (JAX has many) is printed and dropped. So after the
    first SIGTERM a thread raises it again every :data:`SIGTERM_RETRY_S` seconds until
    the command has stopped: one signal is enough, wherever it lands. A dropped raise is
    kept off stderr (``sys.unraisablehook``), since the next one stops the command.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    requested, stopped = threading.Event(), threading.Event()

    def again():
        while not stopped.wait(SIGTERM_RETRY_S):
            _thread.interrupt_main(signal.SIGTERM)

    def terminate(signum, frame):
        if not requested.is_set():
            requested.set()
            threading.Thread(target=again, name="funcprop-sigterm", daemon=True).start()
        raise _Terminated

    def unraisable(info):  # the dropped raise is retried: not worth a traceback on stderr
        if not isinstance(info.exc_value, _Terminated):
            previous_hook(info)

    previous, previous_hook = signal.signal(signal.SIGTERM, terminate), sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        stopped.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        sys.unraisablehook = previous_hook


def main(argv=None) -> int:
    """Entry point of the ``funcprop`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _sigterm_interrupts():
            return args.run(args)
    except UsageError as err:
        print(f"funcprop {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        signum = signal.SIGTERM if isinstance(stop, _Terminated) else signal.SIGINT
        print(f"funcprop {args.command}: interrupted by {signum.name}", file=sys.stderr)
        return 128 + signum
    except (OSError, ValueError, TypeError, ImportError, FloatingPointError, MemoryError) as err:
        if os.environ.get("FUNCPROP_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__  # one line
        print(f"funcprop {args.command}: error: {message} (FUNCPROP_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
