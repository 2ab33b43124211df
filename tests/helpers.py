"""What tests share: tolerances, moving host arrays to the device under test, and the real data files."""

import gzip
import hashlib
import os
import shutil
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import xpgrad
from xpgrad import data

# The real MNIST test split and train labels (canonical files); shared/ sits beside the checkout.
MNIST_DIR = Path(os.environ.get("XPGRAD_TEST_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared/data/mnist"))
if not MNIST_DIR.is_dir():
    MNIST_DIR = Path("/work/shared/data/mnist")
T10K_IMAGES = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
T10K_LABELS = MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
# MNIST's test-set label histogram, a property of the published data.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
NAMES = [f.fname for f in data.DATASETS["mnist"].files]


def tolerances(dtype):
    """(rtol, atol) for comparing two implementations of the same formula."""
    if np.dtype(dtype) == np.float32:
        return 2e-5, 2e-6
    return 1e-12, 1e-14


def move(xp, *arrays, layout="c"):
    """Host arrays on ``xp``'s device, as a tuple, each with the same values in ``layout``.

    ``"c"``: C-ordered; ``"T"``: a transposed view of a C-ordered copy of the
    transpose; ``"strided"``: every other element of the last axis of a
    twice-as-wide array. Inputs are made on the host (with the ``rng``
    fixture) and moved, so the backends never depend on matching random streams.
    """
    return tuple(_move_one(xp, np.asarray(a), layout) for a in arrays)


def _move_one(xp, a, layout):
    if layout == "c":
        return xp.asarray(a)
    if layout == "T":
        return xp.asarray(np.ascontiguousarray(a.T)).T
    if layout == "strided":
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        wide[..., ::2] = a
        return xp.asarray(wide)[..., ::2]
    raise ValueError(f"unknown layout {layout!r}")


def payload(path) -> bytes:
    """The IDX bytes inside a ``.gz`` file."""
    return gzip.decompress(Path(path).read_bytes())


def gz(data: bytes) -> bytes:
    """``data`` gzip-compressed, quickly and reproducibly."""
    return gzip.compress(data, compresslevel=1, mtime=0)


def labels_with_count(n: int) -> bytes:
    """A labels IDX payload that claims and holds ``n`` of MNIST's test labels."""
    labels = payload(T10K_LABELS)
    return labels[:4] + n.to_bytes(4, "big") + labels[8 : 8 + n]


def set_byte(blob: bytes, index: int, value: int) -> bytes:
    """``blob`` with one byte replaced."""
    return blob[:index] + bytes([value]) + blob[index + 1 :]


# ---------------------------------------------------------------------------
# Datasets: mnist-t10k, a test-only registry entry made of real files.
# shared/ has no MNIST train images, so the full-load and download tests use
# ``mnist-t10k``, whose "train" files are the real t10k files (with their real
# hashes and 10000 items) saved under the train names.


def tiny_spec(md5: bool = False) -> data.DatasetSpec:
    """mnist-t10k: the real t10k files, also standing in as the train split.

    With ``md5``, files carry only the md5 of the .gz (as Fashion-MNIST's upstream
    publishes), so acceptance goes through the compressed-bytes hash alone.
    """
    real = data.DATASETS["mnist"]
    test_images, test_labels = real.test_images, real.test_labels
    if md5:
        test_images = replace(test_images, gz_hash="md5:" + md5_of(T10K_IMAGES), payload_sha256=None)
        test_labels = replace(test_labels, gz_hash="md5:" + md5_of(T10K_LABELS), payload_sha256=None)
    return data.DatasetSpec(
        "mnist-t10k",
        mirrors=(),
        train_images=replace(test_images, fname=real.train_images.fname),
        train_labels=replace(test_labels, fname=real.train_labels.fname),
        test_images=test_images,
        test_labels=test_labels,
    )


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def fill(folder: Path, names=NAMES) -> Path:
    """Put real t10k files into ``folder`` under the given standard names."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(T10K_IMAGES if "images" in name else T10K_LABELS, folder / name)
    return folder


def files(folder: Path) -> set[str]:
    """Every file under ``folder``, relative names (temporary ones included)."""
    if not folder.exists():
        return set()
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def with_mirrors(monkeypatch, name: str, *urls: str, md5: bool = False) -> None:
    monkeypatch.setitem(data.DATASETS, name, replace(tiny_spec(md5) if name == "mnist-t10k" else data.DATASETS[name],
                                                     mirrors=tuple(urls)))


PACKAGE = Path(xpgrad.__file__).resolve().parent


def raised_by_xpgrad(exc) -> bool:
    """Whether ``exc`` came from a ``raise`` statement in xpgrad's source (a check, not NumPy's internals)."""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return Path(frame.filename).resolve().is_relative_to(PACKAGE) and frame.line.startswith("raise")


def assert_bad_argument(call, error, words) -> None:
    """``call()`` raises ``error`` (ValueError or TypeError) from one of xpgrad's checks, in one line matching
    ``words``: issue 20's rule for an argument at the API's boundary."""
    with pytest.raises(error, match=words) as info:
        call()
    assert type(info.value) in (ValueError, TypeError), f"{type(info.value).__name__}, not ValueError or TypeError"
    assert raised_by_xpgrad(info.value), traceback.format_exception(info.value)
    assert "\n" not in str(info.value)
