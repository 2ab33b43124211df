"""A whole run: train to the configured epochs, writing metrics, checkpoints and curves."""

from __future__ import annotations

import math
import os

import numpy

from ..errors import XpgradError
from .runfolder import (
    CHECKPOINT,
    CURVES,
    METRICS,
    append_metrics,
    plot_curves,
    read_metrics,
    write_metrics,
)
from .trainer import Trainer


def _progress_bar(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415 - optional extra
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)


def run(trainer: Trainer, out: str, *, log=print) -> dict:
    """Train ``trainer`` to ``config.epochs``, writing metrics, checkpoints and curves into ``out``.

    Returns the last epoch's metrics plus the mean seconds per epoch.
    """
    os.makedirs(out, exist_ok=True)
    metrics_path = os.path.join(out, METRICS)
    # Lines past the epoch we start from belong to an abandoned run.
    history = [m for m in read_metrics(metrics_path) if m.get("epoch", 0) <= trainer.epoch]
    write_metrics(metrics_path, history)
    row = history[-1] if history else None
    # Overflow on the way to divergence is expected and caught below as a
    # non-finite loss, with a clear message; NumPy's warnings would only add noise.
    with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
        row = _train_epochs(trainer, out, history, row, log)
    if row is None:
        raise XpgradError(f"nothing to train: the checkpoint already has {trainer.epoch} epochs; raise --epochs")
    plot_curves(history, os.path.join(out, CURVES))
    seconds = [m["seconds"] for m in history]
    return {**row, "seconds_per_epoch": sum(seconds) / len(seconds)}


def _train_epochs(trainer, out, history, row, log):
    config = trainer.config
    metrics_path = os.path.join(out, METRICS)
    checkpoint_path = os.path.join(out, CHECKPOINT)
    while trainer.epoch < config.epochs:
        bar = _progress_bar(trainer.steps_per_epoch, f"epoch {trainer.epoch + 1}/{config.epochs}", trainer.progress)
        try:
            stats = trainer.train_epoch(bar)
        finally:
            if bar is not None:
                bar.close()
        stats.update(trainer.evaluate())
        if not math.isfinite(stats["test_loss"]):
            trainer.check_finite(stats["test_loss"], trainer.steps_per_epoch - 1)
        row = {"epoch": trainer.epoch, **{k: stats[k] for k in
               ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds")}}
        trainer.save(checkpoint_path)
        append_metrics(metrics_path, row)
        history.append(row)
        log(
            f"epoch {row['epoch']}/{config.epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
            f"test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.4f} | {row['seconds']:.2f} s"
        )
    return row
