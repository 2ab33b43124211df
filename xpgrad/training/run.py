"""A whole run: train to the configured epochs, writing checkpoints, metrics and curves.

After every epoch the checkpoint is written first, with the whole metrics
history inside it, and ``metrics.jsonl`` is then rewritten from that history.
So the checkpoint is the single source of truth: a run stopped at any instant
(between the two writes included) and resumed ends with exactly the metrics
of an uninterrupted run, since resuming rewrites ``metrics.jsonl`` from the
checkpoint first. A failed write, divergence, a failure of the model (see
:mod:`.blame`) or lack of memory ends the run with one line that says what is
kept.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy

from .. import faults
from ..errors import DivergenceError, ModelError, XpgradError
from .runfolder import RunFolder, plot_curves, recover_metrics
from .trainer import Trainer


def _progress_bar(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415 - optional extra
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)


def run(trainer: Trainer, out, *, history=None, overwrite: bool = False, log=print) -> dict:
    """Train ``trainer`` to ``config.epochs``, writing checkpoints, metrics and curves into ``out``.

    ``out`` is a folder, or a :class:`RunFolder` already opened (and locked) by
    the caller (on a distributed run's other ranks, one that writes nothing). A
    fresh trainer refuses a folder that holds a run unless ``overwrite``.
    ``history`` is the metrics of the epochs already trained (a resumed run's,
    from its checkpoint); if it is None for a resumed trainer, it is recovered
    from the folder's metrics.jsonl (format-1 checkpoints).
    Returns the last epoch's metrics plus the mean seconds per epoch.
    """
    if not isinstance(out, (str, os.PathLike)):  # a RunFolder (or a distributed rank's Bystander)
        return _run(trainer, out, history, log)
    with RunFolder.open(out, fresh=trainer.epoch == 0, overwrite=overwrite) as folder:
        return _run(trainer, folder, history, log)


def _run(trainer, folder, history, log) -> dict:
    history = _starting_history(trainer, folder, history)
    if trainer.epoch:  # the checkpoint rules: repair metrics.jsonl before anything else
        _write(folder, folder.metrics, lambda: folder.write_metrics(history))
    if trainer.epoch >= trainer.config.epochs:
        # A run stopped after its last checkpoint: complete its folder, then say so.
        _write(folder, folder.curves, lambda: plot_curves(history, folder.curves))
        raise XpgradError(f"nothing to train: the checkpoint already has {trainer.epoch} epochs; raise --epochs")
    folder.clear_for_new_run()
    try:
        # Overflow on the way to divergence is expected and caught below as a
        # non-finite loss, with a clear message; NumPy's warnings would only add noise.
        with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
            row = _train_epochs(trainer, folder, history, log)
    except DivergenceError as exc:
        raise DivergenceError(f"{exc}; {folder.kept()}") from None
    except ModelError as exc:  # the model failed in training or evaluation (see .blame)
        raise ModelError(f"{exc}; {folder.kept()}") from None
    _write(folder, folder.curves, lambda: plot_curves(history, folder.curves))
    seconds = [m["seconds"] for m in history]
    return {**row, "seconds_per_epoch": sum(seconds) / len(seconds)}


def _starting_history(trainer, folder, history) -> list[dict]:
    if trainer.epoch == 0:
        return []
    if history is not None:
        return [dict(row) for row in history]
    rows, problem = recover_metrics(folder.metrics, trainer.epoch)
    if problem:
        warnings.warn(f"{problem}, and this (format 1) checkpoint does not hold the metrics history: "
                      "the missing epochs' rows are left out", stacklevel=3)
    return rows


def _train_epochs(trainer, folder, history, log):
    config = trainer.config
    row = None
    while trainer.epoch < config.epochs:
        bar = _progress_bar(trainer.steps_per_epoch, f"epoch {trainer.epoch + 1}/{config.epochs}", trainer.progress)
        try:
            stats = trainer.train_epoch(bar)
        except MemoryError:
            raise XpgradError(f"{_out_of_memory(trainer, 'train')}; {folder.kept()}") from None
        finally:
            if bar is not None:
                bar.close()
        try:
            stats.update(trainer.evaluate())
        except MemoryError:
            raise XpgradError(f"{_out_of_memory(trainer, 'evaluate')}; {folder.kept()}") from None
        if not math.isfinite(stats["test_loss"]):
            trainer.check_finite(stats["test_loss"], trainer.steps_per_epoch - 1)
        faults.reached("epoch:trained")
        row = {"epoch": trainer.epoch, **{k: stats[k] for k in
               ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds")}}
        history.append(row)
        _write(folder, folder.checkpoint, lambda: trainer.save(folder.checkpoint, metrics=history))
        faults.reached("epoch:saved")
        _write(folder, folder.metrics, lambda: folder.write_metrics(history))
        log(
            f"epoch {row['epoch']}/{config.epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
            f"test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.4f} | {row['seconds']:.2f} s"
        )
    return row


def _write(folder: RunFolder, path: str, write) -> None:
    """``write()``, turning a failure (full disk, a folder in the way, --out removed) into one line; nothing
    where the folder is another rank's (``folder.writes`` false: a distributed run's ranks but 0)."""
    if not folder.writes:
        return
    try:
        write()
    except OSError as exc:
        gone = "" if os.path.isdir(folder.path) else f", --out {folder.path} no longer exists"
        raise XpgradError(f"cannot write {path} ({exc.strerror or exc}{gone}); {folder.kept()}") from None


def _out_of_memory(trainer, phase: str) -> str:
    """Why memory ran out, estimated from the sizes involved, so the advice names the real cause."""
    config, epoch = trainer.config, trainer.epoch + (phase == "train")
    itemsize = numpy.dtype(config.dtype).itemsize
    widths = (*config.hidden, trainer.dataset.num_classes)
    rows = trainer.batch_size if phase == "train" else trainer.eval_batch_size
    # Each layer's output and its gradient, and the gathered inputs.
    activations = rows * (2 * sum(widths) + math.prod(trainer.input_shape)) * itemsize
    model = trainer.parameters.data.size * itemsize * 5  # parameters, gradients, optimizer state, scratch
    if phase == "evaluate":
        return (f"out of memory evaluating epoch {epoch}: {rows} test rows at a time need about "
                f"{_size(activations)}; use a smaller --eval-batch-size or smaller --hidden widths")
    if activations >= model:
        return (f"out of memory in epoch {epoch}: a batch of {rows} rows needs about {_size(activations)} "
                "for its activations; use a smaller --batch-size")
    return (f"out of memory in epoch {epoch}: the model's parameters, gradients and optimizer state "
            f"take about {_size(model)}; use smaller --hidden widths")


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
