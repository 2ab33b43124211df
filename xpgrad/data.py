"""MNIST and Fashion-MNIST: find, verify, download and read the four IDX files.

``load_dataset(name)`` returns a :class:`Dataset` of uint8 NumPy arrays. Each of
the four files is taken from the first place that holds a valid copy:

1. with ``data_dir``: that folder only. A missing file is downloaded into it; a
   present file that fails a check is an error (never silently replaced: the
   folder is the user's, and a bad file there is something they should see).
2. without: the user cache, ``$XPGRAD_CACHE_DIR/<name>`` (default
   ``$XDG_CACHE_HOME/xpgrad/<name>``, i.e. ``~/.cache/xpgrad/<name>``); then the
   system folder ``$XPGRAD_SYSTEM_DATA_DIR/<name>`` (default
   ``/usr/share/datasets/<name>``, where Debian installs Fashion-MNIST); then a
   download into the cache. A bad copy in either place is skipped with a
   warning; a bad cache copy is replaced by the download (the cache is
   xpgrad's), a bad system copy is never touched.

A file is valid when it is a well-formed IDX file of the expected kind and size
and either its compressed bytes match the upstream checksum or its decompressed
payload does (so a recompressed copy, like Debian's, is accepted).

Downloads go through pooch (imported only when needed): it streams into a
temporary file beside the target and moves it into place only when the hash
matches, so a failed or corrupt download leaves nothing behind.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

IMAGE_MAGIC = 0x00000803  # ubyte, 3 dims
LABEL_MAGIC = 0x00000801  # ubyte, 1 dim
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
SPLIT_SIZES = {"train": 60000, "test": 10000}

CACHE_ENV = "XPGRAD_CACHE_DIR"
SYSTEM_ENV = "XPGRAD_SYSTEM_DATA_DIR"
MIRROR_ENV = "XPGRAD_MIRROR"
OFFLINE_ENV = "XPGRAD_OFFLINE"  # "1": never download, only use files already on disk
SYSTEM_DATA_DIR = "/usr/share/datasets"
#: requests' (connect, read) timeouts in seconds; the read one is per chunk, not total.
DOWNLOAD_TIMEOUT = (10.0, 30.0)

_FIX = "delete it to re-download, or pass --data-dir with good copies"
_GZIP_MAGIC = b"\x1f\x8b"
_STANDARD_NAME = re.compile(r"^(train|t10k)-(images-idx3|labels-idx1)-ubyte(\.gz)?$")


# ---------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class IdxFile:
    """One file of a dataset and what a valid copy of it looks like."""

    fname: str
    kind: str  # "images" or "labels"
    count: int  # number of images or labels
    gz_hash: str  # upstream .gz checksum, as pooch takes it: "sha256:..." or "md5:..."
    payload_sha256: str | None  # sha256 of the decompressed IDX bytes, where known


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its four files in a fixed order, and where to download them."""

    name: str
    mirrors: tuple[str, ...]
    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile

    @property
    def files(self) -> tuple[IdxFile, IdxFile, IdxFile, IdxFile]:
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)


def _idx_files(gz_hashes: dict, payload_hashes: dict) -> dict:
    files = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        for kind, stem in (("images", "images-idx3"), ("labels", "labels-idx1")):
            fname = f"{prefix}-{stem}-ubyte.gz"
            key = f"{split}_{kind}"
            files[key] = IdxFile(fname, kind, SPLIT_SIZES[split], gz_hashes[key], payload_hashes.get(key))
    return files


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        **_idx_files(
            {
                "train_images": "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "train_labels": "sha256:3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "test_images": "sha256:8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "test_labels": "sha256:f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            },
            {  # train images: only the upstream .gz hash is known
                "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            },
        ),
    ),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        **_idx_files(
            {  # upstream publishes md5 of the .gz files
                "train_images": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train_labels": "md5:25c81989df183df01b3e8a0aad5dffbe",
                "test_images": "md5:bef4ecab320f06d8554ea6380940ec79",
                "test_labels": "md5:bb300cfdad3c16e7a12a480ee83cd310",
            },
            {
                "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            },
        ),
    ),
}


@dataclass
class Dataset:
    """The four arrays of a dataset, all uint8 NumPy arrays on the host.

    ``checksum`` identifies the data (e.g. in checkpoints): the sha256 of the four
    payload sha256 hex digests, each followed by a newline, in the order
    train images, train labels, test images, test labels. It is the same for any
    compression of the same data; from a shell:
    ``for f in train-images train-labels t10k-images t10k-labels; do
    zcat $f-*.gz | sha256sum | cut -c1-64; done | sha256sum``.
    """

    name: str
    x_train: np.ndarray  # uint8 (60000, 28, 28)
    y_train: np.ndarray  # uint8 (60000,)
    x_test: np.ndarray  # uint8 (10000, 28, 28)
    y_test: np.ndarray  # uint8 (10000,)
    checksum: str
    num_classes: int = NUM_CLASSES


# ---------------------------------------------------------------------------
# Reading and checking one IDX file


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
        raise DataError(f"{path}: corrupt gzip data ({exc}); {_FIX}") from None


def _expected_from_name(path: Path) -> tuple[str | None, int | None]:
    match = _STANDARD_NAME.match(path.name)
    if match is None:
        return None, None
    split = "train" if match.group(1) == "train" else "test"
    return match.group(2).split("-")[0], SPLIT_SIZES[split]


def _parse_idx(payload: bytes, path: Path, kind: str | None, count: int | None) -> np.ndarray:
    """Check an IDX payload against ``kind`` and ``count`` (None: not checked); return a writable array."""
    if len(payload) < 4:
        raise DataError(f"{path}: only {len(payload)} bytes, too short for an IDX header; {_FIX}")
    magic = int.from_bytes(payload[:4], "big")
    found = {IMAGE_MAGIC: "images", LABEL_MAGIC: "labels"}.get(magic)
    if found is None:
        raise DataError(
            f"{path}: not an MNIST IDX file (magic number 0x{magic:08x}, expected 0x{IMAGE_MAGIC:08x} "
            f"for images or 0x{LABEL_MAGIC:08x} for labels, unsigned bytes); {_FIX}"
        )
    if kind is not None and found != kind:
        raise DataError(f"{path}: holds {found} where {kind} are expected (magic 0x{magic:08x}); "
                        f"the files are mixed up: {_FIX}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise DataError(f"{path}: truncated IDX header ({len(payload)} bytes, need {header}); {_FIX}")
    dims = tuple(int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if found == "images" and dims[1:] != IMAGE_SHAPE:
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28; {_FIX}")
    size = header + math.prod(dims)
    if len(payload) != size:
        problem = "truncated" if len(payload) < size else f"{len(payload) - size} trailing bytes"
        raise DataError(f"{path}: {problem}: {len(payload)} bytes, but its header {dims} "
                        f"needs exactly {size}; {_FIX}")
    if count is not None and dims[0] != count:
        raise DataError(f"{path}: {_count_problem(dims[0], count, found)}; {_FIX}")
    array = np.frombuffer(payload, np.uint8, offset=header).reshape(dims).copy()
    if found == "labels" and array.size and array.max() >= NUM_CLASSES:
        bad = int(np.argmax(array >= NUM_CLASSES))
        raise DataError(f"{path}: label {array[bad]} at index {bad} is outside 0..{NUM_CLASSES - 1}; {_FIX}")
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


def _read_verified(path: Path, spec: IdxFile) -> tuple[np.ndarray, str]:
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
                    f"{payload_part}; {_FIX}")


# ---------------------------------------------------------------------------
# Where files come from


def cache_dir(name: str) -> Path:
    """The user cache folder for dataset ``name``."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
        root = base / "xpgrad"
    return Path(root).expanduser() / name


def system_dir(name: str) -> Path:
    """The system-wide folder for dataset ``name`` (e.g. Debian's)."""
    return Path(os.environ.get(SYSTEM_ENV) or SYSTEM_DATA_DIR) / name


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]


def _obtain(spec: DatasetSpec, file: IdxFile, data_dir: str | None, progress: bool) -> tuple[np.ndarray, str]:
    """One file's array and payload sha256, from the first place with a valid copy."""
    if data_dir is not None:
        path = Path(data_dir).expanduser() / file.fname
        if not path.exists():
            _download(spec, file, path.parent, progress, skipped=[])
        return _read_verified(path, file)

    skipped = []
    for folder in (cache_dir(spec.name), system_dir(spec.name)):
        path = folder / file.fname
        if path.is_file():
            try:
                return _read_verified(path, file)
            except DataError as exc:
                skipped.append(str(exc))
                warnings.warn(f"skipping a bad copy: {exc}", stacklevel=3)
    target = cache_dir(spec.name)
    _download(spec, file, target, progress, skipped)
    return _read_verified(target / file.fname, file)


def _one_line(exc: Exception, limit: int = 200) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if "Caused by " in text:  # requests wraps the real reason in a long connection-pool preamble
        text = text.split("Caused by ", 1)[1].rstrip(")")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _download(spec: DatasetSpec, file: IdxFile, folder: Path, progress: bool, skipped: list[str]) -> None:
    """Download ``file`` into ``folder`` from the first mirror that serves a good copy."""
    where = f"{spec.name} {file.fname}"
    if os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        found_bad = f" (bad copies skipped: {' | '.join(skipped)})" if skipped else ""
        raise DataError(f"{where} is missing from {folder}{found_bad} and downloads are off ({OFFLINE_ENV} is set); "
                        f"put the file there, pass --data-dir to a folder that has it, or unset {OFFLINE_ENV}")
    try:
        import pooch
    except ImportError:
        raise DataError(f"{where} is not on this machine and downloading it needs pooch: "
                        "pip install pooch (or xpgrad[train]), or pass --data-dir to a folder that has it") from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {folder} to download {where} ({exc.strerror}); "
                        f"set {CACHE_ENV} or pass --data-dir to a writable folder") from None
    mirrors = ([os.environ[MIRROR_ENV]] if os.environ.get(MIRROR_ENV) else []) + list(spec.mirrors)
    tried = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + file.fname
        try:
            downloader = pooch.HTTPDownloader(progressbar=progress and _have_tqdm(), timeout=DOWNLOAD_TIMEOUT)
            pooch.retrieve(url, known_hash=file.gz_hash, fname=file.fname, path=folder, downloader=downloader)
            return
        except (OSError, ValueError) as exc:  # requests' errors are OSErrors; pooch's hash mismatch a ValueError
            tried.append(f"{url} ({_one_line(exc)})")
    found_bad = f"; bad copies skipped: {' | '.join(skipped)}" if skipped else ""
    raise DataError(f"could not download {where} into {folder}: tried {'; '.join(tried) or 'no mirror'}{found_bad}; "
                    f"check the network, set {MIRROR_ENV} to a reachable mirror, or pass --data-dir "
                    "to a folder with the files")


def _have_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------
# The entry point


def load_dataset(name: str, data_dir: str | None = None, progress: bool = True) -> Dataset:
    """Load dataset ``name`` ("mnist" or "fashion-mnist"), verified, as uint8 arrays.

    See the module docstring for where the files are looked for and when they
    are downloaded. Every problem raises :class:`DataError` with a one-line fix.
    """
    spec = _spec(name)
    arrays, hashes = [], []
    for file in spec.files:
        array, payload_sha256 = _obtain(spec, file, data_dir, progress)
        arrays.append(array)
        hashes.append(payload_sha256)
    checksum = hashlib.sha256("".join(h + "\n" for h in hashes).encode()).hexdigest()
    return Dataset(spec.name, *arrays, checksum)
