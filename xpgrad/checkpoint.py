"""Checkpoints: a run's whole state in one ``.npz`` file, written atomically, read with bounds.

A checkpoint is a plain, uncompressed ``.npz`` that loads with ``allow_pickle=False``:

========================  ===============================================
key                        value
========================  ===============================================
``format``                 checkpoint format version (int): 2 (1 is still read)
``epoch``                  epochs completed
``config``                 the run's configuration, as a JSON string
``dataset_checksum``       sha256 of the dataset the run trained on
``rng_state``              the host RNG's state, as a JSON string
``metrics``                (format 2) every completed epoch's metrics, a JSON list
``param/<name>``           each parameter (``W1``, ``b1``, ...)
``optim/<key>``            the optimizer's state (``step_count``, ``m/all``, ...)
========================  ===============================================

The checkpoint is the run's single source of truth: ``metrics.jsonl`` is
rewritten from its ``metrics`` after every epoch, and rebuilt from it on
resume. A checkpoint is untrusted input when read: only the keys above are
read, each member's size is checked against what the config implies before
it is read, only uncompressed members are accepted (so nothing read is
larger than the file), and every value is checked (the config by the same
rules as the command line, the parameters for NaN and inf).
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile

import numpy

from .errors import CheckpointError, XpgradError
from .files import NotRegularFileError, atomic_write, open_regular

FORMAT = 2
READABLE_FORMATS = (1, 2)
PARAM_PREFIX = "param/"  # parameters are stored as param/<name>, here and in MLP.save
METRIC_KEYS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds")
_META_LIMIT = 1 << 20  # bytes a metadata member may take (config, rng_state, ...)
_METRICS_LIMIT = 64 << 20  # about 100,000 epochs of metrics
_OPTIM_KEY = re.compile(r"^optim/(step_count|[a-z_]+/[A-Za-z0-9_]+)$")
_CORRUPT = "resume from another checkpoint or start a new run"


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
                    config: dict, dataset_checksum: str, metrics=()) -> None:
    """Write a checkpoint atomically (all arrays must be host NumPy arrays; ``metrics``: one dict per epoch)."""
    arrays = {
        "format": numpy.asarray(FORMAT),
        "epoch": numpy.asarray(epoch),
        "config": numpy.asarray(json.dumps(config, sort_keys=True)),
        "dataset_checksum": numpy.asarray(dataset_checksum),
        "rng_state": numpy.asarray(json.dumps(rng_state)),
        "metrics": numpy.asarray(json.dumps(list(metrics))),
    }
    arrays.update(param_arrays(params))
    arrays.update({f"optim/{k}": v for k, v in optimizer_state.items()})
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


def _reading(path, parse):
    """``parse(archive)`` on the checkpoint at ``path``; every way a hostile file can fail is one CheckpointError."""
    path = os.fspath(path)
    try:
        archive = _Archive(path)
    except (CheckpointError, MemoryError):
        raise
    except Exception as exc:  # zipfile and numpy raise many kinds on a damaged file
        raise _corrupt(path, exc) from None
    try:
        return parse(archive)
    except (CheckpointError, MemoryError):
        raise
    except XpgradError as exc:
        raise CheckpointError(f"checkpoint {path} is not a valid xpgrad checkpoint: {exc}; {_CORRUPT}") from None
    except Exception as exc:
        raise _corrupt(path, exc) from None
    finally:
        archive.close()


def peek_epoch(path) -> int:
    """The epoch a checkpoint holds, reading only its ``format`` and ``epoch``; CheckpointError if unreadable."""
    return _reading(path, _epoch_of)


def _epoch_of(archive: _Archive) -> int:
    _check_format(archive)
    return archive.whole("epoch")


def load_checkpoint(path) -> dict:
    """Read and check a checkpoint; raise :class:`CheckpointError` with a one-line reason.

    Returns a dict: ``format``, ``epoch``, ``config`` (a dict, valid by the
    command line's rules), ``dataset_checksum``, ``rng_state``, ``metrics`` (a
    list of rows, or None for format 1), ``params`` and ``optimizer`` (host arrays).
    """
    return _reading(path, _load)


def _check_format(archive: _Archive) -> int:
    missing = [k for k in ("format", "epoch", "config", "dataset_checksum", "rng_state") if not archive.has(k)]
    if missing:
        raise CheckpointError(f"checkpoint {archive.path} is not an xpgrad checkpoint (missing {', '.join(missing)})")
    version = archive.whole("format")
    if version not in READABLE_FORMATS:
        raise CheckpointError(f"checkpoint {archive.path} has format {version}; this xpgrad reads formats "
                              f"{' and '.join(map(str, READABLE_FORMATS))} (a newer xpgrad may read it)")
    return version


def _load(archive: _Archive) -> dict:
    from .training.config import Config  # noqa: PLC0415 - training imports this module

    version = _check_format(archive)
    epoch = archive.whole("epoch")
    raw_config = json.loads(archive.text("config"))
    config = Config.from_dict(raw_config)
    checksum = archive.text("dataset_checksum")
    if not 0 < len(checksum) <= 128 or epoch < 0:
        raise ValueError("its epoch or dataset checksum is out of range")
    rng_state = _checked_rng_state(json.loads(archive.text("rng_state")))
    metrics = _checked_metrics(json.loads(archive.text("metrics", _METRICS_LIMIT)), epoch) if version >= 2 else None
    params = _read_params(archive, config)
    optimizer = _read_optimizer(archive, params)
    for key, value in [*(("param/" + k, v) for k, v in params.items()), *(("optim/" + k, v) for k, v in optimizer.items())]:
        if not numpy.isfinite(value).all():
            raise CheckpointError(f"checkpoint {archive.path} holds NaN or infinite values in {key}; "
                                  "it cannot be evaluated or resumed: use an earlier checkpoint or start a new run")
    return {"format": version, "epoch": epoch, "config": raw_config, "dataset_checksum": checksum,
            "rng_state": rng_state, "metrics": metrics, "params": params, "optimizer": optimizer}


def _read_params(archive: _Archive, config) -> dict:
    """The parameters, each checked against the shape the config implies before it is read."""
    layers = len(config.hidden) + 1
    first, _ = archive.header("param/W1")
    last, _ = archive.header(f"param/W{layers}")
    if len(first) != 2 or len(last) != 2:
        raise ValueError("its weights are not matrices")
    sizes = (first[0] - int(config.input_bias), *config.hidden, last[1])
    if sizes[0] < 1 or not 2 <= sizes[-1] <= 256:
        raise ValueError(f"its layer sizes {sizes} are impossible")
    expected = {}
    for i in range(1, layers + 1):
        expected[f"W{i}"] = (sizes[i - 1] + int(config.input_bias and i == 1), sizes[i])
        if not config.input_bias:
            expected[f"b{i}"] = (sizes[i],)
    params = {}
    for name, shape in expected.items():
        key = PARAM_PREFIX + name
        got, dtype = archive.header(key)
        if tuple(got) != shape or dtype != numpy.dtype(config.dtype):
            raise ValueError(f"{key} is {tuple(got)} {dtype}, where the config implies {shape} {config.dtype}")
        params[name] = archive.read(key, math.prod(shape) * dtype.itemsize)
    return params


def _read_optimizer(archive: _Archive, params: dict) -> dict:
    """``step_count`` and the state arrays: each the size of one parameter or of all of them."""
    total = sum(p.size for p in params.values())
    state = {}
    for name in archive.zip.namelist():
        key = name[:-4]
        if not name.endswith(".npy") or not _OPTIM_KEY.match(key):
            continue  # never read what no xpgrad writes
        if key == "optim/step_count":
            count = archive.whole(key)
            if count < 0:
                raise ValueError("its optimizer step count is negative")
            state["step_count"] = numpy.asarray(count)
            continue
        of = key.rsplit("/", 1)[1]
        shape = (total,) if of == "all" else (params[of].shape if of in params else None)
        if shape is None:
            continue
        state[key[len("optim/"):]] = archive.read(key, math.prod(shape) * 8)
    return state


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
