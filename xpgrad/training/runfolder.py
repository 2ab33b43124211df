"""A run's folder: where its outputs go, its metrics file and its curves.

``--out`` holds ``metrics.jsonl`` (one JSON line per epoch), ``checkpoint.npz``
(see :mod:`xpgrad.checkpoint`) and ``curves.png``, each written atomically.
"""

from __future__ import annotations

import json
import os

from ..errors import XpgradError
from ..files import atomic_write

METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.npz"
CURVES = "curves.png"


def prepare_out_dir(out) -> str:
    """Create ``out`` if needed and make sure files can be written there."""
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise XpgradError(f"--out {out} is a file, not a folder; pass a folder for the run's outputs")
    try:
        os.makedirs(out, exist_ok=True)
        with atomic_write(os.path.join(out, ".write-test")):
            pass
        os.unlink(os.path.join(out, ".write-test"))
    except OSError as exc:
        raise XpgradError(f"--out {out} is not writable ({exc.strerror or exc}); pass a folder you can write to") from None
    return out


def read_metrics(path) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_metrics(path, rows) -> None:
    with atomic_write(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def append_metrics(path, row) -> None:
    # Rewriting the (small) file atomically keeps it whole even if the run is killed mid-write.
    write_metrics(path, read_metrics(path) + [row])


def plot_curves(metrics, path) -> bool:
    """Draw loss and accuracy curves to ``path`` (PNG); False when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: PLC0415 - optional extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    epochs = [m["epoch"] for m in metrics]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "test"):
        ax_loss.plot(epochs, [m[f"{split}_loss"] for m in metrics], marker="o", label=split)
        ax_acc.plot(epochs, [m[f"{split}_accuracy"] for m in metrics], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return True
