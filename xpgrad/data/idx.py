"""The IDX file format (MNIST's): read one file, gzip or plain, and check everything about it.

An IDX file is a big-endian header (a magic number whose last byte is the
number of dimensions, then one uint32 per dimension) followed by the raw
bytes. Images are ``0x00000803`` (N, rows, cols), labels ``0x00000801`` (N,).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import re
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from .registry import SPLIT_SIZES, IdxFile

IMAGE_MAGIC = 0x00000803  # ubyte, 3 dims
LABEL_MAGIC = 0x00000801  # ubyte, 1 dim
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

FIX = "delete it to re-download, or pass --data-dir with good copies"
_GZIP_MAGIC = b"\x1f\x8b"
_STANDARD_NAME = re.compile(r"^(train|t10k)-(images-idx3|labels-idx1)-ubyte(\.gz)?$")


def _read_bytes(path: Path) -> tuple[bytes, bytes]:
    """The file's raw bytes and its IDX payload (decompressed when it is gzip)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path, or pass --data-dir to the folder with it") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror}); check its permissions or pass --data-dir") from None
    if not raw.startswith(_GZIP_MAGIC):
        return raw, raw
    try:
        return raw, gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"{path}: corrupt gzip data ({exc}); {FIX}") from None


def _expected_from_name(path: Path) -> tuple[str | None, int | None]:
    match = _STANDARD_NAME.match(path.name)
    if match is None:
        return None, None
    split = "train" if match.group(1) == "train" else "test"
    return match.group(2).split("-")[0], SPLIT_SIZES[split]


def _parse_idx(payload: bytes, path: Path, kind: str | None, count: int | None) -> np.ndarray:
    """Check an IDX payload against ``kind`` and ``count`` (None: not checked); return a writable array."""
    if len(payload) < 4:
        raise DataError(f"{path}: only {len(payload)} bytes, too short for an IDX header; {FIX}")
    magic = int.from_bytes(payload[:4], "big")
    found = {IMAGE_MAGIC: "images", LABEL_MAGIC: "labels"}.get(magic)
    if found is None:
        raise DataError(
            f"{path}: not an MNIST IDX file (magic number 0x{magic:08x}, expected 0x{IMAGE_MAGIC:08x} "
            f"for images or 0x{LABEL_MAGIC:08x} for labels, unsigned bytes); {FIX}"
        )
    if kind is not None and found != kind:
        raise DataError(f"{path}: holds {found} where {kind} are expected (magic 0x{magic:08x}); "
                        f"the files are mixed up: {FIX}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise DataError(f"{path}: truncated IDX header ({len(payload)} bytes, need {header}); {FIX}")
    dims = tuple(int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if found == "images" and dims[1:] != IMAGE_SHAPE:
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28; {FIX}")
    size = header + math.prod(dims)
    if len(payload) != size:
        problem = "truncated" if len(payload) < size else f"{len(payload) - size} trailing bytes"
        raise DataError(f"{path}: {problem}: {len(payload)} bytes, but its header {dims} "
                        f"needs exactly {size}; {FIX}")
    if count is not None and dims[0] != count:
        raise DataError(f"{path}: {_count_problem(dims[0], count, found)}; {FIX}")
    array = np.frombuffer(payload, np.uint8, offset=header).reshape(dims).copy()
    if found == "labels" and array.size and array.max() >= NUM_CLASSES:
        bad = int(np.argmax(array >= NUM_CLASSES))
        raise DataError(f"{path}: label {array[bad]} at index {bad} is outside 0..{NUM_CLASSES - 1}; {FIX}")
    return array


def _count_problem(found: int, expected: int, kind: str) -> str:
    split = {size: split for split, size in SPLIT_SIZES.items()}
    wrong, right = split.get(found), split.get(expected)
    if wrong and right and wrong != right:
        return (f"wrong split: holds {found} {kind}, the size of the {wrong} split, "
                f"where the {right} split ({expected}) is expected")
    per_image = " (one per image)" if kind == "labels" else ""
    return f"holds {found} {kind}, expected {expected}{per_image}"


def read_idx(path, kind: str | None = None, count: int | None = None) -> np.ndarray:
    """Read one IDX file (gzip or plain) into a uint8 array, checking everything.

    Images come back as (N, 28, 28), labels as (N,). ``kind`` ("images" or
    "labels") and ``count`` (N) are checked when given; when not given and the
    file has a standard name (``train-images-idx3-ubyte.gz`` ...), they are taken
    from the name, so a test file under a train name is a "wrong split" error.
    Any problem raises :class:`DataError` naming the file and the fix.
    """
    path = Path(path)
    name_kind, name_count = _expected_from_name(path)
    _, payload = _read_bytes(path)
    return _parse_idx(payload, path, kind or name_kind, count if count is not None else name_count)


def read_verified(path: Path, spec: IdxFile) -> tuple[np.ndarray, str]:
    """Read ``path`` as ``spec`` and check its checksum; return the array and payload sha256."""
    raw, payload = _read_bytes(path)
    array = _parse_idx(payload, path, spec.kind, spec.count)
    payload_sha256 = hashlib.sha256(payload).hexdigest()
    if payload_sha256 == spec.payload_sha256:
        return array, payload_sha256
    algorithm, expected_gz = spec.gz_hash.split(":")
    actual_gz = hashlib.new(algorithm, raw).hexdigest()
    if actual_gz == expected_gz:
        return array, payload_sha256
    payload_part = f"payload sha256 {payload_sha256}"
    if spec.payload_sha256:
        payload_part += f" (expected {spec.payload_sha256})"
    raise DataError(f"{path}: checksum mismatch: file {algorithm} {actual_gz} (expected {expected_gz}), "
                    f"{payload_part}; {FIX}")
