"""Checkpoints: a run's whole state in one ``.npz`` file, written atomically.

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

import json
import os
import zipfile

import numpy

from .errors import CheckpointError
from .files import atomic_write

FORMAT = 1
PARAM_PREFIX = "param/"  # parameters are stored as param/<name>, here and in MLP.save


def param_arrays(params: dict) -> dict:
    """Parameters by name -> the arrays of a checkpoint (``param/<name>``)."""
    return {f"{PARAM_PREFIX}{k}": v for k, v in params.items()}


def params_from(arrays) -> dict:
    """The parameters by name in a checkpoint's arrays (a dict or an open ``NpzFile``)."""
    keys = arrays.files if hasattr(arrays, "files") else list(arrays)
    return {k[len(PARAM_PREFIX):]: arrays[k] for k in keys if k.startswith(PARAM_PREFIX)}


def save_arrays(path, arrays: dict) -> None:
    """Write host arrays to an ``.npz`` file atomically."""
    with atomic_write(path) as f:
        numpy.savez(f, **arrays)


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
    arrays.update(param_arrays(params))
    arrays.update({f"optim/{k}": v for k, v in optimizer_state.items()})
    save_arrays(path, arrays)


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
        "params": params_from(arrays),
        "optimizer": {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")},
    }
