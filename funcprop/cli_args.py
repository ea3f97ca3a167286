"""The ``funcprop`` command line's arguments: the parser, its typed values, and the checks
that refuse a flag a run would ignore (see :mod:`funcprop.cli` for the commands).

``build_parser(commands)`` takes the command functions by name, so this module knows
nothing of what the commands do.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

from funcprop.nn import models

OPTIMIZERS = ("adam", "adamw", "sgd", "momentum", "rmsprop")


def shown(value) -> str:
    """A value as it is typed on the command line: ``256 256`` for a list."""
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (``funcprop shapes: error: ...``) and --help shows every default."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def add_argument(self, *flags, fill_in=None, **kwargs):
        """``add_argument``, with ``(default: ...)`` at the end of the help where there is a default.

        ``fill_in=value``: an option that only some runs read. It parses to None when not
        given, so that :func:`settle` can refuse it where the run would ignore it, and
        :func:`settle` sets ``value`` where the run reads it; --help shows ``value``.
        """
        default = kwargs.get("default") if fill_in is None else fill_in
        if fill_in is not None:
            kwargs["default"] = None
            dest = flags[0].lstrip("-").replace("-", "_")
            self.set_defaults(fill_in={**(self.get_default("fill_in") or {}), dest: fill_in})
        text = kwargs.get("help") or ""
        if default is not None and default is not False and default != argparse.SUPPRESS and "(default" not in text:
            kwargs["help"] = f"{text} (default: {shown(default)})".lstrip()
        return super().add_argument(*flags, **kwargs)


class UsageError(Exception):
    """A bad argument found after parsing; main() prints it on one line, exit 2."""


def checked(convert, what: str, ok, allowed: str):
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


positive_int = checked(int, "a positive integer", lambda v: v >= 1, "a positive integer")
seed = checked(int, "an integer seed", lambda v: 0 <= v < 2**32, "a seed in [0, 2**32)")
positive_float = checked(float, "a positive number", lambda v: 0 < v < float("inf"), "a positive number")
count = checked(int, "an integer", lambda v: v >= 0, "an integer >= 0")
temperature = checked(float, "a number", lambda v: 0 <= v < float("inf"), "a finite number >= 0 (0 is greedy)")
DTYPES = ("float32", "bfloat16", "float16")


def host_port(text: str) -> str:
    """An argparse type: ``HOST:PORT`` with a port in [1, 65535]."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT with a port in [1, 65535], e.g. 10.0.0.1:1234, got {text!r}"
        )
    return text


def check_processes(args) -> None:
    """--coordinator, --num-processes and --process-id come together, the id below the count."""
    given = {f: getattr(args, f.replace("-", "_")) is not None for f in ("coordinator", "num-processes", "process-id")}
    if any(given.values()) and not all(given.values()):
        missing = " and ".join(f"--{f}" for f, g in given.items() if not g)
        raise UsageError(
            "--coordinator, --num-processes and --process-id go together (one process per host, each with its "
            f"own id); add {missing}"
        )
    if all(given.values()) and args.process_id >= args.num_processes:
        raise UsageError(
            f"--process-id {args.process_id} must be below --num-processes {args.num_processes} (ids are 0 to "
            f"{args.num_processes - 1})"
        )


def settle(args, **readers) -> None:
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
            got = flag if given is True else f"{flag} {shown(given)}"  # a switch has no value to show
            raise UsageError(
                f"--{decider} {choice} does not use {flag} (only --{decider} {' or '.join(values)} "
                f"reads it), got {got}; leave it out"
            )


def recorded_settings(args, *leave_out) -> dict:
    """The options this run read, by dest (what config.json and the checkpoint record)."""
    return {k: v for k, v in vars(args).items() if v is not None and k not in ("run", "fill_in", *leave_out)}


def out_folder(path) -> pathlib.Path:
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


LM_FLAGS = ("context", "d_model", "heads", "layers", "sample_bytes", "temperature", "no_twin_run")  # --arch gpt's
ARCH_DEFAULTS = {"epochs": (20, {"gpt": 3}), "lr": (1e-3, {"gpt": 3e-3})}  # dest: (default, its value by --arch)


def arch_default(dest: str) -> str:
    default, by_arch = ARCH_DEFAULTS[dest]
    return f"(default: {default}; " + ", ".join(f"{v} with --arch {a}" for a, v in by_arch.items()) + ")"


# --- the parser -------------------------------------------------------------------


NO_CACHE = "do not keep compiled programs in ~/.cache/funcprop/jax (JAX's persistent cache)"


def build_parser(commands: dict) -> argparse.ArgumentParser:
    """The parser of every command; ``commands`` maps a command's name to the function that
    runs it (``args.run``)."""
    parser = Parser(
        prog="funcprop",
        description="Backpropagation as explicit math in JAX.",
        epilog="Ctrl-C or SIGTERM stops a command cleanly: exit 130 (SIGINT) or 143 (SIGTERM).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("shapes", help="print the shapes of every term of backprop, layer by layer")
    p.add_argument("sizes", nargs="*", type=positive_int, help="mlp layer sizes including the input, e.g. 2 4 7 3 2")
    p.add_argument(
        "--arch",
        choices=("mlp", "cnn", "resmlp", "resnet"),
        default="mlp",
        help="mlp: the dense terms for SIZES; the others: every leaf of that model for digits",
    )
    p.add_argument("--hidden", type=positive_int, nargs="+", fill_in=[128, 128], help="resmlp width and blocks")
    p.add_argument("--batch", type=positive_int, default=None, help="a batch size (default: one example)")
    p.add_argument(
        "--activation", fill_in="sigmoid", choices=sorted(_activations()), help="hidden activation (mlp, resmlp)"
    )
    p.set_defaults(run=commands["shapes"])

    p = sub.add_parser("verify", help="verify every rule against autodiff of its twin and finite differences")
    p.add_argument("--out", default=None, help="also write verify.json and verify.md here")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--no-cache", action="store_true", help=NO_CACHE)
    p.set_defaults(run=commands["verify"])

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
        "--max-bytes", type=positive_int, fill_in=400_000, help="bytes to train on, a tenth as many to validate (text)"
    )
    p.add_argument(
        "--arch",
        choices=(*models.ARCHS, "gpt"),
        default="mlp",
        help="mlp: --hidden widths; seed: the notes' 4-7-3 sigmoid net; cnn: conv32-conv64-pool-128; "
        "resmlp: pre-norm residual MLP, width --hidden[0], a block per --hidden entry; resnet: residual CNN; "
        "gpt: a byte-level transformer for --dataset text",
    )
    p.add_argument("--hidden", type=positive_int, nargs="*", fill_in=[256, 256], help="hidden widths (mlp, resmlp)")
    p.add_argument(
        "--activation", choices=sorted(_activations()), fill_in="relu", help="hidden activation (mlp, resmlp)"
    )
    p.add_argument("--context", type=positive_int, fill_in=64, help="bytes a window holds (gpt)")
    p.add_argument("--d-model", type=positive_int, fill_in=64, help="width of the transformer (gpt)")
    p.add_argument("--heads", type=positive_int, fill_in=4, help="attention heads, dividing --d-model (gpt)")
    p.add_argument("--layers", type=positive_int, fill_in=2, help="transformer blocks (gpt)")
    p.add_argument("--sample-bytes", type=count, fill_in=200, help="bytes to generate after the prompt (gpt)")
    p.add_argument("--temperature", type=temperature, fill_in=0.8, help="sampling temperature, 0 greedy (gpt)")
    p.add_argument(
        "--no-twin-run",
        action="store_true",
        default=None,
        fill_in=False,
        help="skip training the model again through jax.grad of the twins (gpt)",
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--lr", type=positive_float, help=f"learning rate {arch_default('lr')}")
    p.add_argument("--epochs", type=positive_int, help=f"epochs to train {arch_default('epochs')}")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--gradient", choices=GRADIENTS, default="rules", help="where gradients come from")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="computation dtype; parameters and optimizer state stay float32, matmuls, softmax and the loss "
        "accumulate in float32; float16 adds a dynamic loss scale",
    )
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--out", default="runs/train", help="output folder (metrics, plots, checkpoint)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.npz up to --epochs; where there is none, say so and start fresh",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-cache", action="store_true", help=NO_CACHE)
    many = p.add_argument_group(
        "many devices",
        "each batch is sharded over the devices, parameters replicated, one program; --batch-size must be a "
        "multiple of the device count. With --coordinator, run the same command on every host (or several "
        "times on one), each with its own --process-id; process 0 writes OUT",
    )
    many.add_argument("--data-parallel", action="store_true", help="use every device this process sees")
    many.add_argument(
        "--coordinator", type=host_port, help="HOST:PORT of process 0 (jax.distributed); implies --data-parallel"
    )
    many.add_argument("--num-processes", type=positive_int, help="how many processes join (with --coordinator)")
    many.add_argument("--process-id", type=count, help="this process's number, 0 to N-1 (with --coordinator)")
    p.set_defaults(run=commands["train"])

    p = sub.add_parser("report", help="the main job: verify every rule, train on digits, write a report")
    p.add_argument("--out", default="report", help="the report folder")
    p.add_argument("--epochs", type=positive_int, default=40)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn comparison")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-cache", action="store_true", help=NO_CACHE)
    p.set_defaults(run=commands["report"])

    p = sub.add_parser("bench", help="time a training step: rules vs jax.grad vs backprop vs PyTorch")
    p.add_argument("--out", default="runs/bench", help="output folder (benchmark.json, .md, .png)")
    p.add_argument("--quick", action="store_true", help="small cases, few rounds: a smoke run of seconds")
    p.add_argument("--rounds", type=positive_int, default=None, help="interleaved rounds (default 15, quick 3)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--torch", action="store_true", help="require PyTorch (default: use it if installed)")
    group.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    p.set_defaults(run=commands["bench"])
    return parser


def _version() -> str:
    from funcprop import __version__

    return __version__


def _activations():
    from funcprop.nn import ACTIVATIONS

    return ACTIVATIONS
