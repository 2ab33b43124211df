"""The ``xpgrad`` command: ``train``, ``eval``, ``info`` and ``gradcheck``.

User errors (bad options, bad data, no GPU, bad checkpoints, a model file
that fails, divergence, a failed write) end with one line on stderr and exit
1 (2 for a bad option), never a traceback. SIGINT, SIGTERM and SIGHUP end
with one line too, saying what is kept, and exit 128 + the signal's number
(130, 143, 129). A closed stdout never stops training; ``info`` and
``gradcheck``, whose only output it is, then stop quietly with 141, as a Unix
tool killed by SIGPIPE would. A closed stderr loses the messages, never the
exit status.

Only the standard library and small modules are imported at the top, so the
signal handlers are in place before NumPy and CuPy load.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from . import __version__, console, interrupts
from .errors import XpgradError, one_line

EXIT_USER_ERROR = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (no usage dump)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _rule(check, parse):
    """An argparse type: ``parse`` the text, then apply the config's ``check`` (the rule checkpoints obey too)."""
    def convert(text):
        try:
            value = parse(text)
        except ValueError:
            kind = "whole number" if parse is int else "number"
            raise argparse.ArgumentTypeError(f"expected a {kind}, got {text!r}") from None
        try:
            return check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def _batch_size(text):
    from .training.config import whole_number  # noqa: PLC0415

    if str(text).strip().lower() == "full":
        return 0
    return _rule(whole_number(1), int)(text)


def _hidden(text):
    """``100`` or ``1024,1024``: the hidden layers' widths, input to output."""
    from .training.config import whole_number, widths  # noqa: PLC0415

    parts = [p.strip() for p in str(text).split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected widths separated by commas, like 100 or 1024,1024; got {text!r}")
    return widths(tuple(_rule(whole_number(1), int)(p) for p in parts))


def _model(text):
    """``mlp``, ``path/to/file.py:NAME`` or ``package.module:NAME``: checked for its form here, loaded later."""
    from .training.modelspec import check_spec  # noqa: PLC0415

    try:
        return check_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _path(text):
    """A path: an empty or blank one (an unset shell variable) is an error, never "no path"."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r} (an unset variable?)")
    return text


_EVAL_BATCH_HELP = ("test images evaluated at a time (default: as many as fit in 128 MiB, at most 10000; "
                    "the run records it)")


def build_parser() -> argparse.ArgumentParser:
    from .data import CUSTOM, DATASETS  # noqa: PLC0415 - keeps `xpgrad --help` light
    from .optim import OPTIMIZERS  # noqa: PLC0415
    from .models import BUILTIN  # noqa: PLC0415
    from .training import DTYPES, RECIPES, Config  # noqa: PLC0415
    from .training.config import positive_number, whole_number  # noqa: PLC0415

    parser = _Parser(prog="xpgrad", description="Readable autodiff on NumPy and CuPy: train the notebook's MLP, "
                                                "or a model of your own.")
    parser.add_argument("--version", action="version", version=f"xpgrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a model on MNIST, Fashion-MNIST, Kuzushiji-MNIST or your own IDX files",
                           description=f"Train a built-in model ({', '.join(BUILTIN)}) or your own (--model). "
                                       "Options left out come from --recipe.")
    train.add_argument("--model", type=_model, default=None, metavar="SPEC",
                       help=f"a built-in model ({', '.join(BUILTIN)}; default: the --recipe's), path/to/file.py:NAME "
                            "or package.module:NAME, where NAME(input_shape, num_classes) returns an xpgrad.nn.Module")
    train.add_argument("--dataset", choices=[*DATASETS, CUSTOM], default=None,
                       help="default: mnist; idx: your own four IDX files in --data-dir")
    train.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    train.add_argument("--epochs", type=_rule(whole_number(1), int), default=None)
    train.add_argument("--batch-size", type=_batch_size, default=None, help="a positive number, or 'full'")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    train.add_argument("--lr", type=_rule(positive_number, float), default=None, help="learning rate")
    train.add_argument("--dtype", choices=DTYPES, default=None)
    train.add_argument("--hidden", type=_hidden, default=None, metavar="W[,W...]",
                       help="hidden layer widths of the mlp, e.g. 1024,1024 (default: 100); of the cnn's Linear layers")
    train.add_argument("--seed", type=_rule(whole_number(0), int), default=None, help="default: 0")
    train.add_argument("--threads", type=_rule(whole_number(1), int), default=None,
                       help="threads for the CPU's matrix products (default: OMP_NUM_THREADS or OPENBLAS_NUM_THREADS "
                            "if set, else every core)")
    train.add_argument("--recipe", choices=list(RECIPES), default=None,
                       help="where the options left out come from (default: default): " + "; ".join(
                           f"{name} ({Config.from_recipe(name).summary()})" for name in RECIPES))
    train.add_argument("--data-dir", type=_path, default=None, help="use only this folder for the dataset files")
    train.add_argument("--out", type=_path, default=None, help="folder for metrics.jsonl, checkpoint.npz, curves.png "
                                                               "(default: runs/<dataset>-<recipe>)")
    train.add_argument("--resume", type=_path, metavar="CHECKPOINT", default=None,
                       help="continue from a checkpoint.npz")
    train.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--graph", choices=("on", "off", "auto"), default="off",
                       help="replay each training step as a CUDA graph: on, off, or auto (on for a GPU); default: off")
    train.add_argument("--eval-batch-size", type=_rule(whole_number(1), int), default=None, metavar="N",
                       help=_EVAL_BATCH_HELP)
    train.add_argument("--distributed", action="store_true",
                       help="be one rank of a data-parallel job started by mpiexec or srun (needs the mpi extra)")

    ev = sub.add_parser("eval", help="print the test loss and accuracy of a checkpoint")
    ev.add_argument("--checkpoint", type=_path, required=True)
    ev.add_argument("--device", default="auto")
    ev.add_argument("--data-dir", type=_path, default=None)
    ev.add_argument("--model", type=_model, default=None, metavar="SPEC",
                    help="the checkpoint's model file, if it has moved since")
    ev.add_argument("--eval-batch-size", type=_rule(whole_number(1), int), default=None, metavar="N",
                    help=_EVAL_BATCH_HELP)

    info = sub.add_parser("info", help="print backend facts (NumPy/BLAS, CuPy, GPU) and self-test the GPU")
    info.add_argument("--device", default=None,
                      help="with cuda or cuda:N, fail unless a kernel compiles and runs there")

    sub.add_parser("gradcheck", help="run the notebook's gradient-check cell with xpgrad's ops")
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"xpgrad: warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None) -> int:
    """Run the ``xpgrad`` command line; returns the exit status."""
    previous = None
    try:
        previous = interrupts.install()
        console.guard()
        warnings.showwarning = _show_warning
        args = build_parser().parse_args(argv)
        if args.command in ("info", "gradcheck"):
            console.stop_when_stdout_closes()
        if getattr(args, "distributed", False):
            from .distributed.job import run_rank  # noqa: PLC0415

            return run_rank(args, cmd_train)
        return _command(args.command)(args)
    except XpgradError as exc:
        print(f"xpgrad: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        detail = getattr(exc, "detail", None)
        name = str(exc) if isinstance(exc, interrupts.Interrupted) else "SIGINT"
        print(f"xpgrad: interrupted by {name}" + (f"; {detail}" if detail else ""), file=sys.stderr)
        return getattr(exc, "exit_code", 130)
    except console.StdoutClosed:
        return console.EXIT_STDOUT_CLOSED
    except MemoryError as exc:
        # The known allocations (model, batch, evaluation, data) say which is at fault; this is the rest.
        print(f"xpgrad: error: out of memory ({one_line(exc, 200)})", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        # Called as the command (argv None): ignore late signals; called from Python: put the handlers back.
        interrupts.settle(previous if argv is not None else None)
        if isinstance(sys.stdout, console.GuardedStream):  # never raises: a closed stdout is not an error
            sys.stdout.flush()


def _command(name):
    if name in ("train", "eval"):
        return {"train": cmd_train, "eval": cmd_eval}[name]
    from . import diagnostics  # noqa: PLC0415

    return {"info": diagnostics.cmd_info, "gradcheck": diagnostics.cmd_gradcheck}[name]


# ---------------------------------------------------------------------------
# train / eval


# Options that define a run: a resumed run keeps the checkpoint's, and may
# change only --epochs (and where it runs: --device, --out, --data-dir).
_RUN_OPTIONS = ("dataset", "batch_size", "optimizer", "lr", "dtype", "seed", "hidden")
_FIXED_ON_RESUME = (*_RUN_OPTIONS, "recipe")


def _config_from_args(args):
    from .training import Config, ModelSpec  # noqa: PLC0415

    if args.model is not None and ":" in args.model and args.hidden is not None:
        raise XpgradError(f"--hidden sets the widths of the built-in mlp (and of the cnn's Linear layers), and "
                          f"--model {args.model} builds its own layers; drop --hidden")
    overrides = {k: getattr(args, k) for k in ("epochs", "eval_batch_size", *_RUN_OPTIONS)}
    if args.model is not None:
        overrides["model"] = str(ModelSpec(args.model))
    return Config.from_recipe(args.recipe or "default", **overrides)


def _resume_config(args, checkpoint):
    from .training import Config  # noqa: PLC0415
    from .training.modelspec import resumed_spec  # noqa: PLC0415

    config = Config.from_dict(checkpoint.config)
    config.model = resumed_spec(config.model, checkpoint.model_sha256, args.model, checkpoint.path)
    for name in _FIXED_ON_RESUME:
        given = getattr(args, name)
        if given is not None and given != getattr(config, name):
            flag = "--" + name.replace("_", "-")
            raise XpgradError(
                f"{flag} {_words(given)} conflicts with the checkpoint, which was trained with "
                f"{flag} {_words(getattr(config, name))}; "
                f"drop {flag} to resume, or start a new run without --resume"
            )
    if args.epochs is not None:
        config.epochs = args.epochs
    if args.eval_batch_size is not None:
        config.eval_batch_size = args.eval_batch_size
    return config


def _words(value) -> str:
    """An option's value as it is typed: 1024,1024 for a tuple of widths."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _out_dir(args, config) -> str:
    if args.out is not None:
        return args.out
    if args.resume is not None:
        return os.path.dirname(os.path.abspath(args.resume))
    model = config.model.rpartition(":")[2]
    name = config.recipe if model == "mlp" else model if config.recipe in ("default", model) else f"{model}-{config.recipe}"
    return os.path.join("runs", f"{config.dataset}-{name}")


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _open_checkpoint(path):
    from .checkpoint import load_checkpoint  # noqa: PLC0415
    from .training import Config  # noqa: PLC0415

    return load_checkpoint(path, check_config=Config.from_dict)


def cmd_train(args, job=None) -> int:
    """``xpgrad train``; ``job`` (an :class:`xpgrad.distributed.job.Job`): as one rank of a data-parallel job."""
    import contextlib  # noqa: PLC0415

    with contextlib.ExitStack() as stack:
        checkpoint = stack.enter_context(_open_checkpoint(args.resume)) if args.resume is not None else None
        return _cmd_train(args, checkpoint, job)


def _cmd_train(args, checkpoint, job) -> int:
    from . import backend  # noqa: PLC0415
    from .training import RunFolder  # noqa: PLC0415
    from .training.runfolder import CHECKPOINT  # noqa: PLC0415

    config = _resume_config(args, checkpoint) if checkpoint else _config_from_args(args)
    _check_data_dir(config, args.data_dir)
    device = job.device if job else backend.get_device(args.device)
    out = _out_dir(args, config)
    fresh = checkpoint is None or not _same_file(args.resume, os.path.join(out, CHECKPOINT))
    with (job.open_folder(config) if job else RunFolder.open)(out, fresh=fresh, overwrite=args.overwrite) as folder:
        try:
            result = _train(args, config, checkpoint, device, folder, job)
        except KeyboardInterrupt as exc:
            exc.detail = folder.kept(hint=True)
            raise
    print(
        f"done: test accuracy {result['test_accuracy']:.2%} after {result['epoch']} epoch{'s' * (result['epoch'] != 1)}, "
        f"{result['seconds_per_epoch']:.2f} s/epoch on {_device_words(device, job)}"
    )
    return 0


def _train(args, config, checkpoint, device, folder, job) -> dict:
    from .training import Trainer, run  # noqa: PLC0415
    from .training.threads import use_blas_threads  # noqa: PLC0415

    config.threads = use_blas_threads(args.threads)
    progress = not args.quiet and (job is None or job.rank == 0)
    load = lambda: _load_data(config, args.data_dir, progress=progress)  # noqa: E731
    dataset = job.staged(load) if job else load()
    trainer = _trainer(Trainer, config, dataset, device, progress=progress, graph=args.graph,
                       parallel=job and job.parallel)
    if checkpoint:
        trainer.restore(checkpoint)
        print(f"resuming {args.resume} at epoch {trainer.epoch}")
    where, _, name = config.model.rpartition(":")
    model = "" if config.model == "mlp" else f"{name} from {where} " if where else f"the {name} "
    print(f"training {model}on {config.dataset} with the {config.recipe} recipe on {_device_words(device, job)}; "
          f"writing to {folder.path}")
    return run(trainer, folder, history=checkpoint.metrics if checkpoint else None)


def _check_data_dir(config, data_dir) -> None:
    from .data import CUSTOM  # noqa: PLC0415

    if config.dataset == CUSTOM and data_dir is None:
        raise XpgradError("--dataset idx trains on your own IDX files: pass --data-dir with the folder "
                          "that holds them (the same files as the run's, to resume or evaluate one)")


def _load_data(config, data_dir, progress):
    from .data import load_dataset  # noqa: PLC0415

    try:
        dataset = load_dataset(config.dataset, data_dir=data_dir, progress=progress)
    except MemoryError:
        raise XpgradError(f"out of memory reading the {config.dataset} files") from None
    if not dataset.verified:
        x = dataset.x_train
        print(f"note: {data_dir} holds your own IDX data ({len(x)} train and {len(dataset.x_test)} test images "
              f"of {'x'.join(map(str, x.shape[1:]))}, {dataset.num_classes} classes), which no published "
              "checksum verifies")
    return dataset


def _trainer(Trainer, config, dataset, device, **options):
    """``Trainer(config, dataset, device=device, **options)``; running out of memory there is one line."""
    try:
        return Trainer(config, dataset, device=device, **options)
    except MemoryError:
        raise XpgradError(_setup_out_of_memory(config, dataset)) from None


def _setup_out_of_memory(config, dataset) -> str:
    import numpy  # noqa: PLC0415

    inputs = int(numpy.prod(dataset.x_train.shape[1:]))
    sizes = (inputs + int(config.input_bias), *config.hidden, dataset.num_classes)
    count = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    data = (len(dataset.x_train) + len(dataset.x_test)) * inputs * numpy.dtype(config.dtype).itemsize
    return (f"out of memory setting up the run: the model has {count:,} parameters (--hidden "
            f"{_words(config.hidden)}) and the data takes {data / 2**20:.0f} MiB as {config.dtype}; "
            "use smaller --hidden widths" + (" or --dtype float32" if config.dtype == "float64" else ""))


def cmd_eval(args) -> int:
    from . import backend  # noqa: PLC0415
    from .training import Config, Trainer  # noqa: PLC0415
    from .training.modelspec import resumed_spec  # noqa: PLC0415

    with _open_checkpoint(args.checkpoint) as checkpoint:
        config = Config.from_dict(checkpoint.config)
        config.model = resumed_spec(config.model, checkpoint.model_sha256, args.model, checkpoint.path)
        config.eval_batch_size = args.eval_batch_size or config.eval_batch_size
        _check_data_dir(config, args.data_dir)
        device = backend.get_device(args.device)
        dataset = _load_data(config, args.data_dir, progress=False)
        trainer = _trainer(Trainer, config, dataset, device, progress=False)
        trainer.restore(checkpoint)
    result = trainer.evaluate()
    print(f"test loss {result['test_loss']:.4f}, test accuracy {result['test_accuracy']:.2%} "
          f"({config.dataset}, epoch {trainer.epoch}, {_device_words(device)})")
    return 0


def _device_words(device, job=None) -> str:
    words = "cpu" if not device.is_gpu else f"{device} ({device.name()})"
    return f"{words} x {job.words()}" if job else words


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
