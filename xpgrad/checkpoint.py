"""Checkpoints and other files written atomically: a temp file in the same folder, then a rename.

A checkpoint is a plain ``.npz`` that loads with ``allow_pickle=False``:

========================  ===============================================
key                        value
========================  ===============================================
``format``                 checkpoint format version (int)
``epoch``                  epochs completed
``config``                 the run's configuration, as a JSON string
``dataset_checksum``       sha256 of the dataset the run trained on
``rng_state``              the host RNG's state, as a JSON string
``param/<name>``           each parameter (``W1``, ``b1``, ...)
``optim/<key>``            the optimizer's state (``step_count``, ``m/W1``, ...)
========================  ===============================================
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile

import numpy

from .errors import CheckpointError

FORMAT = 1


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temp file next to ``path``; on success fsync and rename it over ``path``.

    On any error the temp file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path, *, params: dict, optimizer_state: dict, rng_state: dict, epoch: int,
                    config: dict, dataset_checksum: str) -> None:
    """Write a checkpoint atomically (all arrays must be host NumPy arrays)."""
    arrays = {
        "format": numpy.asarray(FORMAT),
        "epoch": numpy.asarray(epoch),
        "config": numpy.asarray(json.dumps(config, sort_keys=True)),
        "dataset_checksum": numpy.asarray(dataset_checksum),
        "rng_state": numpy.asarray(json.dumps(rng_state)),
    }
    arrays.update({f"param/{k}": v for k, v in params.items()})
    arrays.update({f"optim/{k}": v for k, v in optimizer_state.items()})
    with atomic_write(path) as f:
        numpy.savez(f, **arrays)


def load_checkpoint(path) -> dict:
    """Read and validate a checkpoint; raise :class:`CheckpointError` with a one-line reason."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist; pass the checkpoint.npz that `xpgrad train --out DIR` wrote")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder; pass the checkpoint.npz file inside it")
    try:
        with numpy.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not an xpgrad checkpoint ({type(exc).__name__}: {exc}); "
            "resume from another checkpoint or start a new run"
        ) from None
    missing = [k for k in ("format", "epoch", "config", "dataset_checksum", "rng_state") if k not in arrays]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not an xpgrad checkpoint (missing {', '.join(missing)})")
    if int(arrays["format"]) != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {int(arrays['format'])}; this xpgrad reads format {FORMAT}")
    try:
        config = json.loads(str(arrays["config"]))
        rng_state = json.loads(str(arrays["rng_state"]))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt (bad JSON: {exc})") from None
    return {
        "epoch": int(arrays["epoch"]),
        "config": config,
        "dataset_checksum": str(arrays["dataset_checksum"]),
        "rng_state": rng_state,
        "params": {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")},
        "optimizer": {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")},
    }
