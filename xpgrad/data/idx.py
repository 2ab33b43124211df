"""The IDX file format (MNIST's): read one file, gzip or plain, with bounds, and check everything about it.

An IDX file is a big-endian header (a magic number whose last byte is the
number of dimensions, then one uint32 per dimension) followed by the raw
bytes. Images are ``0x00000803`` (N, rows, cols), labels ``0x00000801`` (N,).

Files are untrusted: the header is read first and checked against what is
expected (the registry's count and image size, when known), and the rest is
read, and decompressed, only up to the size the header announces: reading
stops at the first byte past it, so a small ``.gz`` that inflates to
gigabytes costs no more memory than the file it claims to be.
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import open_regular
from .registry import IMAGE_SHAPE, SPLIT_SIZES, IdxFile

IMAGE_MAGIC = 0x00000803  # ubyte, 3 dims
LABEL_MAGIC = 0x00000801  # ubyte, 1 dim
#: The number of classes of the known datasets.
NUM_CLASSES = 10

FIX = "delete it to re-download, or pass --data-dir with good copies"  # a file of a registered dataset
OWN_FIX = "write it again, or replace it with a good copy"  # a file of your own (--dataset idx, read_idx)
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_BYTES = int(np.iinfo(np.intp).max)  # the largest array NumPy can make, in bytes (uint8: elements)
_CHUNK = 1 << 20
_STANDARD_NAME = re.compile(r"^(train|t10k)-(images-idx3|labels-idx1)-ubyte(\.gz)?$")


class _Corrupt(Exception):
    """The gzip stream is damaged; the message says how."""


class _Payload:
    """The IDX bytes of an open file, gzip or plain, read in order and hashed on the way.

    ``read(n)`` returns up to ``n`` bytes, fewer only at the end of the data.
    ``raw_limit`` bounds the file bytes read (set once the header gives the size).
    """

    def __init__(self, f, raw_hash):
        self.f, self.raw_hash = f, raw_hash
        self.raw_read, self.raw_limit = 0, None
        self.pending = f.read(2)
        self._count(self.pending)
        self.gz = self.pending == _GZIP_MAGIC
        self.inflate = zlib.decompressobj(wbits=31) if self.gz else None

    def _count(self, chunk: bytes) -> None:
        self.raw_read += len(chunk)
        self.raw_hash.update(chunk)

    def _raw(self, n: int = _CHUNK) -> bytes:
        if self.pending:
            chunk, self.pending = self.pending, b""
            return chunk
        if self.raw_limit is not None and self.raw_read > self.raw_limit:
            raise _Corrupt(f"more than {self.raw_limit} compressed bytes, more than any gzip of its payload")
        chunk = self.f.read(n)
        self._count(chunk)
        return chunk

    def read(self, n: int) -> bytes:
        if not self.gz:
            return self._plain(n)
        out = bytearray()
        while len(out) < n:
            data = self._next_input()
            if data is None:
                break
            out += self.inflate.decompress(data, n - len(out))
        return bytes(out)

    def _plain(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            chunk = self._raw(min(_CHUNK, n - got))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _next_input(self) -> bytes | None:
        """The next compressed bytes to inflate, None at the clean end of the last gzip member."""
        if self.inflate.unconsumed_tail:
            return self.inflate.unconsumed_tail
        if not self.inflate.eof:
            data = self._raw()
            if not data:
                raise _Corrupt("compressed data ended early (the file is cut short)")
            return data
        rest = self.inflate.unused_data
        while len(rest) < 2:
            more = self._raw()
            if not more:
                break
            rest += more
        if not rest:
            return None
        if not rest.startswith(_GZIP_MAGIC):
            raise _Corrupt(f"{len(rest)}+ bytes of garbage after the gzip data")
        self.inflate = zlib.decompressobj(wbits=31)  # another gzip member follows
        return rest


def _expected_from_name(path: Path) -> tuple[str | None, int | None]:
    match = _STANDARD_NAME.match(path.name)
    if match is None:
        return None, None
    split = "train" if match.group(1) == "train" else "test"
    return match.group(2).split("-")[0], SPLIT_SIZES[split]


def _parse_header(head: bytes, label: str, kind, count, image_shape, fix: str) -> tuple[str, tuple, int]:
    """(kind found, dims, header size) from the first bytes; every mismatch is a DataError."""
    if len(head) < 4:
        raise DataError(f"{label}: only {len(head)} bytes, too short for an IDX header; {fix}")
    magic = int.from_bytes(head[:4], "big")
    found = {IMAGE_MAGIC: "images", LABEL_MAGIC: "labels"}.get(magic)
    if found is None:
        raise DataError(
            f"{label}: not an MNIST IDX file (magic number 0x{magic:08x}, expected 0x{IMAGE_MAGIC:08x} "
            f"for images or 0x{LABEL_MAGIC:08x} for labels, unsigned bytes); {fix}"
        )
    if kind is not None and found != kind:
        raise DataError(f"{label}: holds {found} where {kind} are expected (magic 0x{magic:08x}); "
                        f"the files are mixed up: {fix}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(head) < header:
        raise DataError(f"{label}: truncated IDX header ({len(head)} bytes, need {header}); {fix}")
    dims = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if found == "images" and image_shape is not None and dims[1:] != tuple(image_shape):
        want = "x".join(map(str, image_shape))
        raise DataError(f"{label}: images are {dims[1]}x{dims[2]}, expected {want}; {fix}")
    if found == "images" and 0 in dims[1:]:
        raise DataError(f"{label}: images of {dims[1]}x{dims[2]} pixels hold nothing; {fix}")
    # Python's ints do not overflow; NumPy's sizes do. Each image's size counts even when there are no images:
    # NumPy refuses a (0, rows, cols) array whose rows * cols bytes it could not address.
    item, total = math.prod(dims[1:]), math.prod(dims)
    if max(item, total) > _MAX_BYTES:
        what = f"images of {dims[1]}x{dims[2]} pixels" if found == "images" else "labels"
        size = f"{item} bytes each" if item > _MAX_BYTES else f"{total} bytes in all"
        raise DataError(f"{label}: its header says {dims[0]} {what}, {size}, more than an array can hold "
                        f"({_MAX_BYTES} bytes); {fix}")
    if count is not None and dims[0] != count:
        raise DataError(f"{label}: {_count_problem(dims[0], count, found)}; {fix}")
    return found, dims, header


def _count_problem(found: int, expected: int, kind: str) -> str:
    split = {size: split for split, size in SPLIT_SIZES.items()}
    wrong, right = split.get(found), split.get(expected)
    if wrong and right and wrong != right:
        return (f"wrong split: holds {found} {kind}, the size of the {wrong} split, "
                f"where the {right} split ({expected}) is expected")
    per_image = " (one per image)" if kind == "labels" else ""
    return f"holds {found} {kind}, expected {expected}{per_image}"


def read_file(path: Path, kind, count, image_shape, num_classes, raw_algorithm="sha256", label=None, fix=OWN_FIX):
    """(array, payload sha256, ``raw_algorithm`` digest of the file's bytes) of one IDX file.

    ``kind``, ``count`` and ``image_shape`` are checked when not None (see
    :func:`read_idx`); ``label`` names the file in messages (default: its path), which end in
    ``fix``: what to do about a bad file (for a registered dataset's, :data:`FIX`).
    """
    label = label or str(path)
    raw_hash, payload_hash = hashlib.new(raw_algorithm), hashlib.sha256()
    try:
        with open_regular(path) as f:
            stream = _Payload(f, raw_hash)
            head = stream.read(16 if kind != "labels" else 8)
            found, dims, header = _parse_header(head, label, kind, count, image_shape, fix)
            size = header + math.prod(dims)
            stream.raw_limit = size + size // 100 + (1 << 16)  # deflate never grows data by more
            body = bytearray(head)
            while len(body) < size:
                chunk = stream.read(min(16 * _CHUNK, size - len(body)))
                if not chunk:
                    break
                body += chunk
            extra = stream.read(1) if len(body) == size else b""
    except FileNotFoundError:
        raise DataError(f"{label}: file not found; check the path, or pass --data-dir to the folder with it") from None
    except OSError as exc:
        raise DataError(f"{label}: cannot read it ({exc.strerror or exc}); check it, or pass --data-dir "
                        "to a folder with good copies") from None
    except (_Corrupt, zlib.error, EOFError) as exc:
        raise DataError(f"{label}: corrupt gzip data ({exc}); {fix}") from None
    if len(body) < size:
        raise DataError(f"{label}: truncated: {len(body)} bytes, but its header {dims} needs exactly {size}; {fix}")
    if len(body) > size or extra:
        raise DataError(f"{label}: trailing bytes: more than the {size} bytes its header {dims} needs "
                        f"(reading stopped at the first byte past them); {fix}")
    payload_hash.update(body)
    array = np.frombuffer(body, np.uint8, offset=header).reshape(dims)
    if found == "labels" and array.size and int(array.max()) >= num_classes:
        bad = int(np.argmax(array >= num_classes))
        raise DataError(f"{label}: label {array[bad]} at index {bad} is outside 0..{num_classes - 1}; {fix}")
    return array, payload_hash.hexdigest(), raw_hash.hexdigest()


def read_idx(path, kind: str | None = None, count: int | None = None, *,
             image_shape=IMAGE_SHAPE, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Read one IDX file (gzip or plain) into a writable uint8 array, checking everything.

    Images come back as (N, rows, cols), labels as (N,). ``kind`` ("images" or
    "labels"), ``count`` (N) and ``image_shape`` ((rows, cols); None: any) are
    checked when given; when ``kind`` and ``count`` are not given and the file
    has a standard name (``train-images-idx3-ubyte.gz`` ...), they are taken
    from the name, so a test file under a train name is a "wrong split" error.
    Labels must be below ``num_classes``. Only regular files are read. Any
    problem raises :class:`DataError` naming the file and the fix.
    """
    path = Path(path)
    name_kind, name_count = _expected_from_name(path)
    return read_file(path, kind or name_kind, count if count is not None else name_count, image_shape, num_classes)[0]


def read_verified(path: Path, spec: IdxFile, label: str | None = None) -> tuple[np.ndarray, str]:
    """Read ``path`` as ``spec`` and check its checksum; return the array and payload sha256.

    A file is accepted when its bytes match ``spec.gz_hash`` or its IDX payload
    matches ``spec.payload_sha256``. ``label`` names the file in messages
    (default: its path).
    """
    label = label or str(path)
    algorithm, expected_gz = spec.gz_hash.split(":")
    array, payload_sha256, actual_gz = read_file(Path(path), spec.kind, spec.count, IMAGE_SHAPE, NUM_CLASSES,
                                             algorithm, label, FIX)
    if payload_sha256 == spec.payload_sha256 or actual_gz == expected_gz:
        return array, payload_sha256
    payload_part = f"payload sha256 {payload_sha256}"
    if spec.payload_sha256:
        payload_part += f" (expected {spec.payload_sha256})"
    raise DataError(f"{label}: checksum mismatch: file {algorithm} {actual_gz} (expected {expected_gz}), "
                    f"{payload_part}; {FIX}")
