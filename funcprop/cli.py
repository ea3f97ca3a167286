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

import os
import pathlib
import signal
import sys

from funcprop import cli_args, cli_setup
from funcprop.cli_args import ARCH_DEFAULTS, LM_FLAGS, UsageError, out_folder, recorded_settings, settle, shown
from funcprop.interrupts import Terminated, sigterm_interrupts
from funcprop.nn import models


def _check_resmlp(args) -> None:
    if args.arch == "resmlp" and len(set(args.hidden)) != 1:
        got = f"--hidden {shown(args.hidden)}" if args.hidden else "no widths"
        raise UsageError(
            f"--arch resmlp needs --hidden with one width repeated, one entry per residual block "
            f"(e.g. --hidden 256 256), got {got}"
        )


# --- funcprop shapes --------------------------------------------------------------


def _cmd_shapes(args) -> int:
    from funcprop import shapes

    settle(args, hidden=("arch", ("resmlp",)), activation=("arch", ("mlp", "resmlp")))
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

DIGITS_SHAPE = {False: (64,), True: (8, 8, 1)}  # one digits example, flat or as an image


def _use_cache(args) -> None:
    """JAX's persistent compilation cache in the user's cache folder, unless --no-cache."""
    if not args.no_cache:
        from funcprop.xla_flags import enable_compilation_cache

        enable_compilation_cache()


def _cmd_verify(args) -> int:
    out = None if args.out is None else out_folder(args.out)
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
    """The settings a resumed run must share with the checkpoint (what it trains, not what it reports,
    nor the devices it runs on: a run resumes onto another mesh)."""
    return recorded_settings(
        args,
        "epochs",
        "resume",
        "no_progress",
        "no_cache",
        "out",
        "sample_bytes",
        "temperature",
        "no_twin_run",
        "data_parallel",
        "coordinator",
        "num_processes",
        "process_id",
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


def _cmd_train(args) -> int:
    _check_text_and_gpt(args)
    settle(
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
    cli_args.check_processes(args)
    _use_cache(args)
    mesh = cli_setup.mesh(args)  # joins the other processes first: then process 0's refusals reach them
    out = cli_setup.on_writer(args, lambda: out_folder(args.out), "use --out", pathlib.Path(args.out))
    if args.arch == "gpt":
        return _train_lm(args, out, mesh)
    import json

    import jax

    from funcprop import distributed, plots, train

    ds = _load_dataset(args)
    _check_batch_size(args, ds)
    model, title = models.build(
        args.arch, ds.example_shape, ds.num_classes, args.hidden, args.activation, dtype=cli_setup.dtype(args)
    )
    checkpoint_path = cli_setup.on_writer(args, lambda: _checkpoint_in(args, out), "use --out", out / "checkpoint.npz")
    cli_setup.say("compiling the training step (the first epoch takes longer)...")
    with cli_setup.memory_errors_named("use smaller --hidden or --batch-size"):
        _, params = model.init(jax.random.key(args.seed), ds.example_shape)
        result = train.train(
            model,
            params,
            cli_setup.optimizer(args.optimizer, args.lr, args.dtype),
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
            mesh=mesh,
        )
    if not distributed.is_writer():  # process 0 writes the files and the summary
        return 0
    title = f"{ds.name}, {title}"
    plots.plot_history(result.history, out / "curves.png", title=title)
    if ds.example_shape == (2,):
        plots.plot_decision_boundary(
            model.apply, cli_setup.local(result.params), ds.x_test, ds.y_test, out / "boundary.png", title=title
        )
    last = result.history[-1] if result.history else {}
    (out / "config.json").write_text(json.dumps({**recorded_settings(args), "model": title}, indent=2))
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


def _train_lm(args, out, mesh) -> int:
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
            dtype=cli_setup.dtype(args),
        )
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err
    _check_batch_size(args, setup.data)
    cli_setup.on_writer(args, lambda: _checkpoint_in(args, out), "use --out")
    with cli_setup.memory_errors_named("use smaller --d-model, --context or --batch-size"):
        summary = lm.run_lm(
            setup,
            cli_setup.optimizer(args.optimizer, args.lr, args.dtype),
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
            say=cli_setup.say,
            mesh=mesh,
        )
    if summary is None:  # not process 0
        return 0
    settings = {**recorded_settings(args), "model": setup.title, "text": setup.text.source}
    (out / "config.json").write_text(json.dumps(settings, indent=2))
    print(
        f"text, {setup.title}: {summary['runs'][0]['epochs']} epochs, validation "
        f"{summary['validation_bits_per_byte']:.3f} bits/byte (unigram {summary['unigram_bits_per_byte']:.3f}), "
        f"wrote {out}/"
    )
    print(lm.summary_table(summary), end="")
    return 0


def _cmd_report(args) -> int:
    out_folder(args.out)
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
    out_folder(args.out)
    with_torch = False if args.no_torch else (True if args.torch else None)
    bench.run(args.out, quick=args.quick, rounds=args.rounds, with_torch=with_torch)
    print(f"wrote {args.out}/benchmark.{{json,md,png}}")
    return 0


def build_parser():
    """The parser of every command, each bound to the function that runs it."""
    commands = {"shapes": _cmd_shapes, "verify": _cmd_verify, "train": _cmd_train, "report": _cmd_report}
    return cli_args.build_parser({**commands, "bench": _cmd_bench})


def main(argv=None) -> int:
    """Entry point of the ``funcprop`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with sigterm_interrupts():
            return args.run(args)
    except UsageError as err:
        print(f"funcprop {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        signum = signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT
        print(f"funcprop {args.command}: interrupted by {signum.name}", file=sys.stderr)
        return 128 + signum
    except (OSError, ValueError, TypeError, ImportError, FloatingPointError, MemoryError, RuntimeError) as err:
        if os.environ.get("FUNCPROP_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__  # one line
        print(f"funcprop {args.command}: error: {message} (FUNCPROP_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
