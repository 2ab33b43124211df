"""The ``xpgrad`` command: ``train``, ``eval``, ``info`` and ``gradcheck``.

User errors (bad options, bad data, no GPU, bad checkpoints, divergence) end
with one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings

from . import __version__, backend
from .errors import XpgradError

EXIT_USER_ERROR = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (no usage dump)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(minimum, words):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{words}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "must be at least 1")
_non_negative_int = _int_at_least(0, "must not be negative")


def _batch_size(text):
    if str(text).strip().lower() == "full":
        return 0
    return _positive_int(text)


def _hidden(text):
    """``100`` or ``1024,1024``: the hidden layers' widths, input to output."""
    parts = [p.strip() for p in str(text).split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected widths separated by commas, like 100 or 1024,1024; got {text!r}")
    return tuple(_positive_int(p) for p in parts)


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS  # noqa: PLC0415 - keeps `xpgrad --help` light
    from .optim import OPTIMIZERS  # noqa: PLC0415
    from .training import DTYPES, RECIPES  # noqa: PLC0415

    parser = _Parser(prog="xpgrad", description="Readable autodiff on NumPy and CuPy: train the notebook's MLP.")
    parser.add_argument("--version", action="version", version=f"xpgrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train an MLP on MNIST or Fashion-MNIST",
                           description="Train the 784-100-10 MLP. Options left out come from --recipe.")
    train.add_argument("--dataset", choices=list(DATASETS), default=None, help="default: mnist")
    train.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    train.add_argument("--epochs", type=_positive_int, default=None)
    train.add_argument("--batch-size", type=_batch_size, default=None, help="a positive number, or 'full'")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    train.add_argument("--lr", type=_positive_float, default=None, help="learning rate")
    train.add_argument("--dtype", choices=DTYPES, default=None)
    train.add_argument("--hidden", type=_hidden, default=None, metavar="W[,W...]",
                       help="hidden layer widths, e.g. 1024,1024 (default: 100)")
    train.add_argument("--seed", type=_non_negative_int, default=None, help="default: 0")
    train.add_argument("--recipe", choices=list(RECIPES), default=None,
                       help="default: a modern recipe (Adam, He init); 'notebook' reproduces the notebook")
    train.add_argument("--data-dir", default=None, help="use only this folder for the dataset files")
    train.add_argument("--out", default=None, help="folder for metrics.jsonl, checkpoint.npz, curves.png "
                                                   "(default: runs/<dataset>-<recipe>)")
    train.add_argument("--resume", metavar="CHECKPOINT", default=None, help="continue from a checkpoint.npz")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--graph", choices=("on", "off", "auto"), default="off",
                       help="replay each training step as a CUDA graph: on, off, or auto (on for a GPU); default: off")

    ev = sub.add_parser("eval", help="print the test loss and accuracy of a checkpoint")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--device", default="auto")
    ev.add_argument("--data-dir", default=None)

    info = sub.add_parser("info", help="print backend facts (NumPy/BLAS, CuPy, GPU) and self-test the GPU")
    info.add_argument("--device", default=None,
                      help="with cuda or cuda:N, fail unless a kernel compiles and runs there")

    sub.add_parser("gradcheck", help="run the notebook's gradient-check cell with xpgrad's ops")
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"xpgrad: warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None) -> int:
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return {"train": cmd_train, "eval": cmd_eval, "info": cmd_info, "gradcheck": cmd_gradcheck}[args.command](args)
    except XpgradError as exc:
        print(f"xpgrad: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("xpgrad: interrupted; the last completed epoch's checkpoint is kept", file=sys.stderr)
        return 130
    except MemoryError:
        print("xpgrad: error: out of memory; use a smaller --batch-size or --dtype float32", file=sys.stderr)
        return EXIT_USER_ERROR


# ---------------------------------------------------------------------------
# train / eval


# Options that define a run: a resumed run keeps the checkpoint's, and may
# change only --epochs (and where it runs: --device, --out, --data-dir).
_RUN_OPTIONS = ("dataset", "batch_size", "optimizer", "lr", "dtype", "seed", "hidden")
_FIXED_ON_RESUME = (*_RUN_OPTIONS, "recipe")


def _config_from_args(args):
    from .training import Config  # noqa: PLC0415

    overrides = {k: getattr(args, k) for k in ("epochs", *_RUN_OPTIONS)}
    return Config.from_recipe(args.recipe or "default", **overrides)


def _resume_config(args, checkpoint):
    from .training import Config  # noqa: PLC0415

    config = Config.from_dict(checkpoint["config"])
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
    return config


def _words(value) -> str:
    """An option's value as it is typed: 1024,1024 for a tuple of widths."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def cmd_train(args) -> int:
    from .checkpoint import load_checkpoint  # noqa: PLC0415
    from .data import load_dataset  # noqa: PLC0415
    from .training import Trainer, prepare_out_dir, run  # noqa: PLC0415

    checkpoint = load_checkpoint(args.resume) if args.resume else None
    config = _resume_config(args, checkpoint) if checkpoint else _config_from_args(args)
    device = backend.get_device(args.device)
    if args.out is not None:
        out = args.out
    elif args.resume:
        out = os.path.dirname(os.path.abspath(args.resume))
    else:
        out = os.path.join("runs", f"{config.dataset}-{config.recipe}")
    out = prepare_out_dir(out)
    dataset = load_dataset(config.dataset, data_dir=args.data_dir, progress=not args.quiet)
    trainer = Trainer(config, dataset, device=device, progress=not args.quiet, graph=args.graph)
    if checkpoint:
        trainer.restore(checkpoint, args.resume)
        print(f"resuming {args.resume} at epoch {trainer.epoch}")
    print(f"training on {config.dataset} with the {config.recipe} recipe on {_device_words(device)}; writing to {out}")
    result = run(trainer, out)
    print(
        f"done: test accuracy {result['test_accuracy']:.2%} after {result['epoch']} epochs, "
        f"{result['seconds_per_epoch']:.2f} s/epoch on {_device_words(device)}"
    )
    return 0


def cmd_eval(args) -> int:
    from .checkpoint import load_checkpoint  # noqa: PLC0415
    from .data import load_dataset  # noqa: PLC0415
    from .training import Config, Trainer  # noqa: PLC0415

    checkpoint = load_checkpoint(args.checkpoint)
    config = Config.from_dict(checkpoint["config"])
    device = backend.get_device(args.device)
    dataset = load_dataset(config.dataset, data_dir=args.data_dir, progress=False)
    trainer = Trainer(config, dataset, device=device, progress=False)
    trainer.restore(checkpoint, args.checkpoint)
    result = trainer.evaluate()
    print(f"test loss {result['test_loss']:.4f}, test accuracy {result['test_accuracy']:.2%} "
          f"({config.dataset}, epoch {trainer.epoch}, {_device_words(device)})")
    return 0


def _device_words(device) -> str:
    return "cpu" if not device.is_gpu else f"{device} ({device.name()})"


# ---------------------------------------------------------------------------
# info


def _blas_line() -> str:
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415 - optional

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            p = pools[0]
            return f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture')}, {p.get('num_threads')} threads)"
    except ImportError:
        pass
    try:
        import numpy  # noqa: PLC0415

        blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        return "unknown"


def gpu_self_test(device) -> str:
    """Compile and run one fused kernel on ``device``; return a one-line verdict or raise XpgradError."""
    import numpy  # noqa: PLC0415

    from . import kernels  # noqa: PLC0415

    x = numpy.array([-1.0, 0.5, 2.0], dtype=numpy.float32)
    gy = numpy.array([3.0, 4.0, 5.0], dtype=numpy.float32)
    try:
        with device:
            gx = backend.to_numpy(kernels.relu_backward(backend.to_device(x, device), backend.to_device(gy, device)))
    except Exception as exc:  # compile errors, missing headers, driver errors
        text = " ".join(str(exc).split())[:300]
        hint = ("the CUDA headers NVRTC needs are missing: use an nvidia/cuda *-devel image or install the CUDA toolkit headers"
                if "include" in text.lower() or "cuda_fp16" in text.lower() or "nvrtc" in text.lower()
                else "check the driver (nvidia-smi) and that CuPy matches its CUDA version")
        raise XpgradError(f"GPU self-test failed on {device} ({type(exc).__name__}: {text}); {hint}") from None
    if not numpy.array_equal(gx, [0.0, 4.0, 5.0]):
        raise XpgradError(f"GPU self-test computed {gx.tolist()} instead of [0, 4, 5] on {device}; the GPU stack is broken")
    return f"GPU self-test: ok (xpgrad_relu_bwd compiled and ran on {device}, {device.name()})"


def cmd_info(args) -> int:
    import numpy  # noqa: PLC0415

    print(f"xpgrad {__version__}")
    print(f"python {sys.version.split()[0]}")
    print(f"numpy {numpy.__version__}, BLAS: {_blas_line()}")
    if backend.cupy_installed():
        print(f"cupy {backend.cupy.__version__}")
    else:
        print("cupy: not installed (pip install 'xpgrad[cuda12]' or 'xpgrad[cuda13]' for GPUs)")
    ok, reason = backend.gpu_status()
    wants_gpu = args.device is not None and args.device.strip().lower().startswith("cuda")
    if not ok:
        print(f"gpu: none ({reason})")
        if wants_gpu:
            raise XpgradError(f"no usable GPU for --device {args.device}: {reason}")
        return 0
    for i in range(backend.cupy.cuda.runtime.getDeviceCount()):
        dev = backend.Device("cuda", i)
        with dev:
            free, total = backend.cupy.cuda.runtime.memGetInfo()
        print(f"gpu cuda:{i}: {dev.name()}, {total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free)")
    device = backend.get_device(args.device or "cuda:0")
    if device.is_gpu:
        print(gpu_self_test(device))
    return 0


def cmd_gradcheck(args) -> int:
    """The notebook's "Final Gradient Check" cell: xpgrad's gradient next to an autodiff framework's."""
    import numpy  # noqa: PLC0415

    from . import notebook  # noqa: PLC0415

    inputs = notebook.inputs(seed=0)
    grads = notebook.chain(*inputs)
    numpy.set_printoptions(precision=8, suppress=True, linewidth=100)
    print(grads["h2_log_grad"])
    print("--" * 20)
    try:
        import torch  # noqa: PLC0415 - optional oracle
    except ImportError:
        print("(PyTorch is not installed, so there is no independent autodiff to compare with: pip install torch)")
        return 0
    reference = notebook.torch_gradients(torch, *inputs)
    print(reference["h2_log_grad"])
    worst = notebook.max_relative_difference(grads, reference)
    print(f"max relative difference from PyTorch over prob, W1, W2 and x gradients: {worst:.2e}")
    if worst > 1e-10:
        raise XpgradError(f"gradients differ from PyTorch by {worst:.2e} (more than 1e-10)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
