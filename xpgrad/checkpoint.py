"""Checkpoints: a run's whole state in one ``.npz`` file, written atomically, read with bounds.

A checkpoint is a plain, uncompressed ``.npz`` that loads with ``allow_pickle=False``:

========================  ===============================================
key                        value
========================  ===============================================
``format``                 checkpoint format version (int): 3 (1 and 2 are still read)
``epoch``                  epochs completed
``config``                 the run's configuration, as a JSON string (its ``model`` is the ``--model`` spec)
``model_sha256``           (format 3) the SHA-256 of the model's file, or "" for a built-in or module
``dataset_checksum``       sha256 of the dataset the run trained on
``rng_state``              the host RNG's state, as a JSON string
``metrics``                (format >= 2) every completed epoch's metrics, a JSON list
``model/<name>``           (format 3) the model's ``state_dict()``: ``1.weight``, ``1.bias``, ...
``optim/<key>``            the optimizer's ``state_dict()``: ``step_count``, ``lr``, ``m/1.weight``, ...
``param/<name>``           (formats 1 and 2) the MLP's ``W1``, ``b1``, ...; their optimizer state is ``m/all``, ...
========================  ===============================================

The checkpoint is the run's single source of truth: ``metrics.jsonl`` is
rewritten from its ``metrics`` after every epoch, and rebuilt from it on
resume. A checkpoint is untrusted input when read: its metadata is read and
checked first (the config by a rule the caller gives, the command line's);
an array is read only when asked for by name, after its name, shape and
dtype are checked against what the model expects; only uncompressed members
are accepted (so nothing read is larger than the file); and NaN or infinite
values are refused.
"""

from __future__ import annotations

import json
import math
import os
import zipfile

import numpy

from .errors import CheckpointError, XpgradError
from .files import NotRegularFileError, atomic_write, open_regular

FORMAT = 3
READABLE_FORMATS = (1, 2, 3)
MODEL_PREFIX, OPTIM_PREFIX, LEGACY_PARAM_PREFIX = "model/", "optim/", "param/"
METRIC_KEYS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds")
_META_LIMIT = 1 << 20  # bytes a metadata member may take (config, rng_state, ...)
_METRICS_LIMIT = 64 << 20  # about 100,000 epochs of metrics
_CORRUPT = "resume from another checkpoint or start a new run"


def save_arrays(path, arrays: dict) -> None:
    """Write host arrays to an ``.npz`` file atomically."""
    with atomic_write(path) as f:
        numpy.savez(f, **arrays)


def save_checkpoint(path, *, state: dict, optimizer_state: dict, rng_state: dict, epoch: int, config: dict,
                    dataset_checksum: str, metrics=(), model_sha256: str | None = None) -> None:
    """Write a checkpoint atomically. ``state``: the model's state_dict and ``optimizer_state`` the optimizer's,
    as host NumPy arrays; ``metrics``: one dict per epoch."""
    arrays = {
        "format": numpy.asarray(FORMAT),
        "epoch": numpy.asarray(epoch),
        "config": numpy.asarray(json.dumps(config, sort_keys=True)),
        "model_sha256": numpy.asarray(model_sha256 or ""),
        "dataset_checksum": numpy.asarray(dataset_checksum),
        "rng_state": numpy.asarray(json.dumps(rng_state)),
        "metrics": numpy.asarray(json.dumps(list(metrics))),
    }
    arrays.update({MODEL_PREFIX + k: v for k, v in state.items()})
    arrays.update({OPTIM_PREFIX + k: v for k, v in optimizer_state.items()})
    save_arrays(path, arrays)


class _Archive:
    """An open ``.npz`` whose members are read one by one, each after its size is checked."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.file = open_regular(path)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path} does not exist; "
                                  "pass the checkpoint.npz that `xpgrad train --out DIR` wrote") from None
        except OSError as exc:
            problem = exc.strerror if isinstance(exc, NotRegularFileError) else f"cannot be read ({exc.strerror})"
            raise CheckpointError(f"checkpoint {path} {problem}; "
                                  "pass the checkpoint.npz file that `xpgrad train --out DIR` wrote") from None
        self.size = os.fstat(self.file.fileno()).st_size
        try:
            self.zip = zipfile.ZipFile(self.file)
        except BaseException:
            self.file.close()
            raise

    def close(self) -> None:
        self.zip.close()
        self.file.close()

    def has(self, key: str) -> bool:
        return f"{key}.npy" in self.zip.NameToInfo

    def header(self, key: str):
        """(shape, dtype) of member ``key``, from its .npy header only; checks the member's sizes."""
        info = self.zip.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"checkpoint {self.path}: {key} is compressed; xpgrad checkpoints are "
                                  f"stored uncompressed (numpy.savez), so this is not one; {_CORRUPT}")
        if info.file_size != info.compress_size or info.header_offset + info.file_size > self.size:
            raise ValueError(f"{key} claims {info.file_size} bytes, more than the file holds")
        with self.zip.open(info) as f:
            version = numpy.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"{key} is a .npy of version {version}, which numpy.savez does not write here")
            read = numpy.lib.format.read_array_header_1_0 if version == (1, 0) else numpy.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            header_size = f.tell()
        if dtype.hasobject:
            raise ValueError(f"{key} holds Python objects")
        if header_size + math.prod(shape) * dtype.itemsize != info.file_size:
            raise ValueError(f"{key} is {info.file_size} bytes, but its header {shape} {dtype} says otherwise")
        return shape, dtype

    def read(self, key: str, limit: int):
        """Member ``key`` as an array, refused before reading if it is over ``limit`` bytes."""
        shape, dtype = self.header(key)
        if math.prod(shape) * dtype.itemsize > limit:
            raise ValueError(f"{key} is {math.prod(shape) * dtype.itemsize} bytes, more than the {limit} it can be")
        with self.zip.open(f"{key}.npy") as f:
            return numpy.lib.format.read_array(f, allow_pickle=False)

    def text(self, key: str, limit: int = _META_LIMIT) -> str:
        value = self.read(key, limit)
        if value.shape != () or value.dtype.kind != "U":
            raise ValueError(f"{key} is not a string")
        return str(value)

    def whole(self, key: str) -> int:
        value = self.read(key, 64)
        if value.shape != () or value.dtype.kind not in "iu":
            raise ValueError(f"{key} is not a whole number")
        return int(value)


def _corrupt(path, exc: BaseException) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is corrupt or not an xpgrad checkpoint "
                           f"({type(exc).__name__}: {exc}); {_CORRUPT}")


def _guarded(path, parse):
    """``parse()``; every way a hostile file can fail is one CheckpointError."""
    try:
        return parse()
    except (CheckpointError, MemoryError):
        raise
    except XpgradError as exc:
        raise CheckpointError(f"checkpoint {path} is not a valid xpgrad checkpoint: {exc}; {_CORRUPT}") from None
    except Exception as exc:  # zipfile, json and numpy raise many kinds on a damaged file
        raise _corrupt(path, exc) from None


class Checkpoint:
    """A checkpoint open for reading: its metadata read and checked, its arrays read on demand (:meth:`read`).

    ``format``, ``epoch``, ``config`` (a dict, checked by the ``check_config``
    given to :func:`load_checkpoint`), ``model_sha256`` ("" when none),
    ``dataset_checksum``, ``rng_state``, ``metrics`` (a list of rows, or None
    for format 1). Close it (or use it as a context manager) when done.
    """

    def __init__(self, path, check_config=None):
        self.path = os.fspath(path)
        self._archive = _guarded(self.path, lambda: _Archive(self.path))
        try:
            _guarded(self.path, lambda: self._read_metadata(check_config))
        except BaseException:
            self.close()
            raise

    def _read_metadata(self, check_config) -> None:
        archive = self._archive
        self.format = _check_format(archive)
        self.epoch = archive.whole("epoch")
        self.config = json.loads(archive.text("config"))
        if not isinstance(self.config, dict):
            raise XpgradError(f"the config is {type(self.config).__name__}, not a dict of fields")
        if check_config is not None:
            check_config(self.config)
        self.model_sha256 = archive.text("model_sha256") if archive.has("model_sha256") else ""
        self.dataset_checksum = archive.text("dataset_checksum")
        if not 0 < len(self.dataset_checksum) <= 128 or self.epoch < 0 or len(self.model_sha256) > 128:
            raise ValueError("its epoch or checksums are out of range")
        self.rng_state = _checked_rng_state(json.loads(archive.text("rng_state")))
        self.metrics = (_checked_metrics(json.loads(archive.text("metrics", _METRICS_LIMIT)), self.epoch)
                        if self.format >= 2 else None)

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()
            self._archive = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def stored(self, prefix: str) -> dict:
        """``{name: (shape, dtype)}`` of the arrays stored under ``prefix`` (from their headers only)."""
        names = [n[len(prefix):-4] for n in self._archive.zip.namelist() if n.startswith(prefix) and n.endswith(".npy")]
        return _guarded(self.path, lambda: {name: self._archive.header(prefix + name) for name in names})

    def read(self, prefix: str, expected: dict, what: str = "this model") -> dict:
        """The arrays under ``prefix`` by name, read only after their names, shapes and dtypes are checked against
        ``expected`` (``{name: (shape, dtype)}``; a dtype of None accepts any number kind of the right shape)."""
        stored = self.stored(prefix)
        missing = [n for n in expected if n not in stored]
        unexpected = [n for n in stored if n not in expected]
        wrong = [f"{n} is {_describe(*stored[n])}, {what} needs {_describe(*expected[n])}"
                 for n in expected if n in stored and not _fits(stored[n], expected[n])]
        if missing or unexpected or wrong:
            found = ([f"{what} has {_names(missing)} that the checkpoint lacks"] if missing else []) + \
                    ([f"the checkpoint has {_names(unexpected)} that {what} lacks"] if unexpected else []) + wrong[:3]
            raise CheckpointError(f"checkpoint {self.path} does not match {what}: {'; '.join(found)}; "
                                  "resume with the model that wrote it, or start a new run")

        def read_all():
            arrays = {}
            for name, (shape, dtype) in stored.items():
                arrays[name] = self._archive.read(prefix + name, math.prod(shape) * dtype.itemsize)
                if arrays[name].dtype.kind == "f" and not numpy.isfinite(arrays[name]).all():
                    raise CheckpointError(f"checkpoint {self.path} holds NaN or infinite values in {prefix}{name}; "
                                          "it cannot be evaluated or resumed: use an earlier checkpoint or start "
                                          "a new run")
            return arrays

        return _guarded(self.path, read_all)


def _fits(stored, expected) -> bool:
    (shape, dtype), (want_shape, want_dtype) = stored, expected
    if tuple(shape) != tuple(want_shape):
        return False
    return dtype.kind in "iuf" if want_dtype is None else dtype == numpy.dtype(want_dtype)


def _describe(shape, dtype) -> str:
    return f"{tuple(shape)} {'a number' if dtype is None else numpy.dtype(dtype)}"


def _names(names) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def load_checkpoint(path, check_config=None) -> Checkpoint:
    """Open and check a checkpoint; raise :class:`CheckpointError` with a one-line reason.

    ``check_config(dict)`` raises XpgradError for a config the command line
    would refuse (the training layer passes ``Config.from_dict``).
    """
    return Checkpoint(path, check_config)


def peek_epoch(path) -> int:
    """The epoch a checkpoint holds, reading only its ``format`` and ``epoch``; CheckpointError if unreadable."""
    path = os.fspath(path)
    archive = _guarded(path, lambda: _Archive(path))
    try:
        return _guarded(path, lambda: (_check_format(archive), archive.whole("epoch"))[1])
    finally:
        archive.close()


def _check_format(archive: _Archive) -> int:
    missing = [k for k in ("format", "epoch", "config", "dataset_checksum", "rng_state") if not archive.has(k)]
    if missing:
        raise CheckpointError(f"checkpoint {archive.path} is not an xpgrad checkpoint (missing {', '.join(missing)})")
    version = archive.whole("format")
    if version not in READABLE_FORMATS:
        raise CheckpointError(f"checkpoint {archive.path} has format {version}; this xpgrad reads formats "
                              f"{', '.join(map(str, READABLE_FORMATS))} (a newer xpgrad may read it)")
    return version


def _checked_rng_state(state) -> dict:
    inner = state.get("state") if isinstance(state, dict) else None
    ok = (isinstance(inner, dict) and state.get("bit_generator") == "PCG64"
          and all(_whole_in(inner.get(k), 2**128) for k in ("state", "inc"))
          and state.get("has_uint32") in (0, 1) and _whole_in(state.get("uinteger"), 2**32))
    if not ok:
        raise ValueError("its rng_state is not the state of NumPy's PCG64 generator")
    return state


def _whole_in(value, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit


def _checked_metrics(rows, epoch: int) -> list:
    """The metrics history: valid rows of epochs 1..``epoch`` in order (one per epoch, unless a
    format-1 checkpoint's metrics.jsonl had lost some when it was resumed)."""
    if not isinstance(rows, list):
        raise ValueError("its metrics are not a list of rows")
    previous = 0
    for row in rows:
        number = check_metrics_row(row)
        if not previous < number <= epoch:
            raise ValueError(f"its metrics hold a row for epoch {number} out of order, or past its epoch {epoch}")
        previous = number
    return rows


def check_metrics_row(row) -> int:
    """The epoch of a metrics row; ValueError unless it has the keys of METRIC_KEYS and finite numbers."""
    if not isinstance(row, dict) or set(row) != set(METRIC_KEYS) or type(row["epoch"]) is not int:
        raise ValueError(f"its metrics row {str(row)[:80]} is malformed")
    for key in METRIC_KEYS[1:]:
        value = row[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"its metrics row for epoch {row['epoch']} has {key} {value!r}")
    return row["epoch"]
