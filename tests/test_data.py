"""xpgrad.data: the registry, checksums, and where each file is taken from.

Real files only: the MNIST test split and train labels in shared/data/mnist, and
Debian's Fashion-MNIST in /usr/share/datasets/fashion-mnist; ``mnist-t10k``
(tests/helpers.py) stands in for a whole dataset. The IDX reader is tested in
test_idx.py, downloads in test_downloads.py.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from xpgrad import data
from xpgrad.errors import DataError

from .helpers import (
    MNIST_DIR,
    MNIST_TEST_COUNTS,
    NAMES,
    T10K_IMAGES,
    T10K_LABELS,
    files,
    fill,
    gz,
    labels_with_count,
    md5_of,
    payload,
    set_byte,
    tiny_spec,
)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason=f"{FASHION_DIR} is absent (apt-get install fashion-mnist provides it)"
)

# Dataset.checksum of Fashion-MNIST: any compression of the upstream data gives this.
FASHION_CHECKSUM = "7b0688d0999122d67a4eb2b95499a3bf7c5afbfaef15b7295b9f619d9e48a0bc"
REAL_MIRRORS = {name: spec.mirrors for name, spec in data.DATASETS.items()}

pytestmark = pytest.mark.usefixtures("isolated")  # no real cache, system folder or network


# ---------------------------------------------------------------------------
# The real files


@pytest.mark.parametrize("key", ["train_labels", "test_images", "test_labels"])
def test_registry_hashes_match_the_real_mnist_files(key):
    spec = getattr(data.DATASETS["mnist"], key)
    raw = (MNIST_DIR / spec.fname).read_bytes()
    assert spec.gz_hash == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert spec.payload_sha256 == hashlib.sha256(gzip.decompress(raw)).hexdigest()


@needs_fashion
def test_fashion_mnist_loads_from_the_system_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(data.SYSTEM_ENV, str(FASHION_DIR.parent))
    ds = data.load_dataset("fashion-mnist", progress=False)
    assert ds.name == "fashion-mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert ds.x_train.dtype == ds.y_train.dtype == np.uint8
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.checksum == FASHION_CHECKSUM
    assert files(tmp_path / "cache") == set()  # read in place, not copied


@needs_fashion
def test_fashion_mnist_payload_hashes_accept_debians_recompressed_files():
    for spec in data.DATASETS["fashion-mnist"].files:
        raw = (FASHION_DIR / spec.fname).read_bytes()
        assert "md5:" + hashlib.md5(raw).hexdigest() != spec.gz_hash  # Debian recompressed them
        assert hashlib.sha256(gzip.decompress(raw)).hexdigest() == spec.payload_sha256


def test_registry_names_and_mirrors():
    assert {"mnist", "fashion-mnist"} <= set(data.DATASETS)
    assert REAL_MIRRORS["mnist"] == (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    )
    assert REAL_MIRRORS["fashion-mnist"] == ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)


def test_unknown_dataset_lists_the_known_names():
    with pytest.raises(DataError, match="unknown dataset 'cifar'.*mnist, fashion-mnist"):
        data.load_dataset("cifar")


def test_label_count_mismatch_in_a_dataset_names_the_labels_file(tmp_path):
    folder = fill(tmp_path / "data")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gz(labels_with_count(9999)))
    expected = r"train-labels-idx1-ubyte.gz: holds 9999 labels, expected 10000 \(one per image\)"
    with pytest.raises(DataError, match=expected):
        data.load_dataset("mnist-t10k", data_dir=str(folder), progress=False)


def test_wrong_split_in_data_dir_is_an_error_and_the_file_is_kept(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copyfile(T10K_IMAGES, folder / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: wrong split: holds 10000 images.*train split"):
        data.load_dataset("mnist", data_dir=str(folder), progress=False)
    assert files(folder) == {"train-images-idx3-ubyte.gz"}


# ---------------------------------------------------------------------------
# Checksums: upstream .gz hash or payload hash


def test_recompressed_copy_is_accepted_by_its_payload_hash(tmp_path):
    folder = fill(tmp_path / "data")
    for name in NAMES:
        path = folder / name
        original = path.read_bytes()
        path.write_bytes(gzip.compress(gzip.decompress(original), compresslevel=1, mtime=12345))
        assert path.read_bytes() != original
    ds = data.load_dataset("mnist-t10k", data_dir=str(folder), progress=False)
    assert np.array_equal(ds.x_test, data.read_idx(T10K_IMAGES))
    expected = data.DATASETS["mnist-t10k"].files
    assert ds.checksum == hashlib.sha256("".join(f.payload_sha256 + "\n" for f in expected).encode()).hexdigest()


def test_gz_hash_alone_accepts_the_upstream_file(tmp_path, monkeypatch):
    monkeypatch.setitem(data.DATASETS, "mnist-t10k", tiny_spec(md5=True))
    ds = data.load_dataset("mnist-t10k", data_dir=str(fill(tmp_path / "data")), progress=False)
    assert np.bincount(ds.y_test).tolist() == MNIST_TEST_COUNTS


def test_recompressed_copy_without_a_payload_hash_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setitem(data.DATASETS, "mnist-t10k", tiny_spec(md5=True))
    folder = fill(tmp_path / "data")
    path = folder / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gz(payload(T10K_LABELS)))
    expected = f"{path}: checksum mismatch: file md5 [0-9a-f]{{32}} \\(expected {md5_of(T10K_LABELS)}\\)"
    with pytest.raises(DataError, match=expected):
        data.load_dataset("mnist-t10k", data_dir=str(folder), progress=False)


def test_altered_data_fails_both_hashes_with_expected_and_actual(tmp_path):
    folder = fill(tmp_path / "data")
    path = folder / "t10k-images-idx3-ubyte.gz"
    altered = set_byte(payload(T10K_IMAGES), 16 + 5000, 1)
    path.write_bytes(gz(altered))
    spec = data.DATASETS["mnist"].test_images
    with pytest.raises(DataError) as info:
        data.load_dataset("mnist-t10k", data_dir=str(folder), progress=False)
    message = str(info.value)
    assert str(path) in message and "checksum mismatch" in message and "delete it" in message
    assert hashlib.sha256(altered).hexdigest() in message and spec.payload_sha256 in message
    assert spec.gz_hash.split(":")[1] in message


# ---------------------------------------------------------------------------
# Where files come from


def test_cache_comes_first(isolated, good_mirror, monkeypatch):
    server, url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    fill(isolated / "cache/mnist-t10k")
    system = isolated / "system/mnist-t10k"
    system.mkdir(parents=True)
    for name in NAMES:  # broken system copies: reading them would warn
        (system / name).write_bytes(b"junk")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = data.load_dataset("mnist-t10k", progress=False)
    assert ds.x_train.shape == (10000, 28, 28)
    assert server.requests == []


def test_system_folder_is_read_in_place(isolated, good_mirror, monkeypatch):
    server, url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    fill(isolated / "system/mnist-t10k")
    data.load_dataset("mnist-t10k", progress=False)
    assert server.requests == []
    assert files(isolated / "cache") == set()


def test_download_into_the_cache_when_no_copy_exists(isolated, good_mirror, monkeypatch):
    server, url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    ds = data.load_dataset("mnist-t10k", progress=False)
    assert sorted(server.requests) == sorted("/" + n for n in NAMES)
    assert files(isolated / "cache/mnist-t10k") == set(NAMES)
    assert not (isolated / "system").exists()
    assert np.bincount(ds.y_test).tolist() == MNIST_TEST_COUNTS
    server.requests.clear()
    data.load_dataset("mnist-t10k", progress=False)  # now cached
    assert server.requests == []


def test_each_file_comes_from_the_first_place_that_has_it(isolated, good_mirror, monkeypatch):
    server, url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    fill(isolated / "cache/mnist-t10k", NAMES[:1])
    fill(isolated / "system/mnist-t10k", NAMES[:3])
    data.load_dataset("mnist-t10k", progress=False)
    assert server.requests == ["/t10k-labels-idx1-ubyte.gz"]
    assert files(isolated / "cache/mnist-t10k") == {NAMES[0], NAMES[3]}


def test_bad_cache_copy_is_skipped_with_a_warning(isolated, good_mirror, monkeypatch):
    server, url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    cache = fill(isolated / "cache/mnist-t10k")
    (cache / NAMES[1]).write_bytes(b"junk")
    fill(isolated / "system/mnist-t10k", NAMES[1:2])
    with pytest.warns(UserWarning, match=f"skipping a bad copy: {cache / NAMES[1]}"):
        data.load_dataset("mnist-t10k", progress=False)
    assert server.requests == []


def test_bad_cache_copy_is_replaced_by_a_download(isolated, good_mirror, monkeypatch):
    server, url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    cache = fill(isolated / "cache/mnist-t10k")
    (cache / NAMES[2]).write_bytes(T10K_IMAGES.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="corrupt gzip"):
        data.load_dataset("mnist-t10k", progress=False)
    assert server.requests == ["/" + NAMES[2]]
    assert (cache / NAMES[2]).read_bytes() == T10K_IMAGES.read_bytes()
    assert files(cache) == set(NAMES)


def test_data_dir_is_the_only_place_used(isolated, good_mirror, monkeypatch):
    server, url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    fill(isolated / "cache/mnist-t10k")
    fill(isolated / "system/mnist-t10k")
    folder = isolated / "mine" / "mnist"  # does not exist yet: created
    data.load_dataset("mnist-t10k", data_dir=str(folder), progress=False)
    assert sorted(server.requests) == sorted("/" + n for n in NAMES)
    assert files(folder) == set(NAMES)


def test_bad_file_in_data_dir_is_an_error_not_replaced(isolated, good_mirror, monkeypatch):
    server, url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    folder = fill(isolated / "mine")
    (folder / NAMES[3]).write_bytes(b"junk")
    with pytest.raises(DataError, match=f"{folder / NAMES[3]}: not an MNIST IDX file.*delete it to re-download"):
        data.load_dataset("mnist-t10k", data_dir=str(folder), progress=False)
    assert (folder / NAMES[3]).read_bytes() == b"junk"
    assert server.requests == []


