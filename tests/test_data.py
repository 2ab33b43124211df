"""xpgrad.data: the validating IDX reader, checksums, the search order, and downloads.

Real files only: the MNIST test split and train labels in shared/data/mnist, and
Debian's Fashion-MNIST in /usr/share/datasets/fashion-mnist. Downloads go to
loopback HTTP servers on 127.0.0.1 that serve those files.

shared/ has no MNIST train images, so the full-load and download tests use a
test-only registry entry, ``mnist-t10k``, whose "train" files are the real t10k
files (with their real hashes and 10000 items) saved under the train names.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import shutil
import threading
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from xpgrad import data
from xpgrad.errors import DataError

MNIST_DIR = Path(os.environ.get("XPGRAD_TEST_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared/data/mnist"))
if not MNIST_DIR.is_dir():
    MNIST_DIR = Path("/work/shared/data/mnist")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason=f"{FASHION_DIR} is absent (apt-get install fashion-mnist provides it)"
)

T10K_IMAGES = MNIST_DIR / "t10k-images-idx3-ubyte.gz"
T10K_LABELS = MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
# MNIST's test-set label histogram, a property of the published data.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# Dataset.checksum of Fashion-MNIST: any compression of the upstream data gives this.
FASHION_CHECKSUM = "7b0688d0999122d67a4eb2b95499a3bf7c5afbfaef15b7295b9f619d9e48a0bc"
REAL_MIRRORS = {name: spec.mirrors for name, spec in data.DATASETS.items()}
NAMES = [f.fname for f in data.DATASETS["mnist"].files]


def _tiny_spec(md5: bool = False) -> data.DatasetSpec:
    """mnist-t10k: the real t10k files, also standing in as the train split.

    With ``md5``, files carry only the md5 of the .gz (as Fashion-MNIST's upstream
    publishes), so acceptance goes through the compressed-bytes hash alone.
    """
    real = data.DATASETS["mnist"]
    test_images, test_labels = real.test_images, real.test_labels
    if md5:
        test_images = replace(test_images, gz_hash="md5:" + _md5(T10K_IMAGES), payload_sha256=None)
        test_labels = replace(test_labels, gz_hash="md5:" + _md5(T10K_LABELS), payload_sha256=None)
    return data.DatasetSpec(
        "mnist-t10k",
        mirrors=(),
        train_images=replace(test_images, fname=real.train_images.fname),
        train_labels=replace(test_labels, fname=real.train_labels.fname),
        test_images=test_images,
        test_labels=test_labels,
    )


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _fill(folder: Path, names=NAMES) -> Path:
    """Put real t10k files into ``folder`` under the given standard names."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(T10K_IMAGES if "images" in name else T10K_LABELS, folder / name)
    return folder


def _files(folder: Path) -> set[str]:
    """Every file under ``folder``, relative names (temporary ones included)."""
    if not folder.exists():
        return set()
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _payload(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Never touch the real cache, system folder or network; register mnist-t10k."""
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(data.SYSTEM_ENV, str(tmp_path / "system"))
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)
    for name, spec in list(data.DATASETS.items()):
        monkeypatch.setitem(data.DATASETS, name, replace(spec, mirrors=()))
    monkeypatch.setitem(data.DATASETS, "mnist-t10k", _tiny_spec())
    return tmp_path


# ---------------------------------------------------------------------------
# Loopback HTTP servers


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.server.mode == "stall":
            self.server.release.wait(10)
            return
        if self.server.mode == "drop":  # announce the whole file, send half, hang up
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def serve():
    """Start loopback servers: ``serve(directory, mode)`` -> (server, base URL)."""
    running = []

    def start(directory: Path, mode: str = "files"):
        handler = functools.partial(_Handler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.block_on_close = False
        server.mode, server.requests, server.release = mode, [], threading.Event()
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        running.append((server, thread))
        return server, f"http://127.0.0.1:{server.server_port}/"

    yield start
    for server, thread in running:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def good_mirror(serve, tmp_path_factory):
    """A loopback server with the four mnist-t10k files."""
    return serve(_fill(tmp_path_factory.mktemp("good_mirror")))


def _with_mirrors(monkeypatch, name: str, *urls: str, md5: bool = False) -> None:
    monkeypatch.setitem(data.DATASETS, name, replace(_tiny_spec(md5) if name == "mnist-t10k" else data.DATASETS[name],
                                                     mirrors=tuple(urls)))


# ---------------------------------------------------------------------------
# The real files


def test_reads_real_mnist_test_images():
    x = data.read_idx(T10K_IMAGES)
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert x.min() == 0 and x.max() == 255
    assert 30 < x.mean() < 37  # MNIST digits: mostly black background, mean about 33
    assert x.flags.writeable


def test_reads_real_mnist_labels():
    y = data.read_idx(T10K_LABELS)
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == MNIST_TEST_COUNTS
    y_train = data.read_idx(MNIST_DIR / "train-labels-idx1-ubyte.gz")
    counts = np.bincount(y_train, minlength=10)
    assert y_train.shape == (60000,) and len(counts) == 10 and counts.min() > 5000 and counts.max() < 7000


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
    assert _files(tmp_path / "cache") == set()  # read in place, not copied


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


# ---------------------------------------------------------------------------
# Every kind of broken file


def _labels_with_count(n: int) -> bytes:
    payload = _payload(T10K_LABELS)
    return payload[:4] + n.to_bytes(4, "big") + payload[8 : 8 + n]


def _set_byte(payload: bytes, index: int, value: int) -> bytes:
    return payload[:index] + bytes([value]) + payload[index + 1 :]


def _gz(payload: bytes) -> bytes:
    return gzip.compress(payload, compresslevel=1, mtime=0)


IMAGES, LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
CORRUPTIONS = {
    # case: (file name, bytes as written, words the message must contain)
    "bad magic": (IMAGES, lambda: _gz(b"\x00\x00\x09\x03" + _payload(T10K_IMAGES)[4:]), "magic number 0x00000903"),
    "not idx at all": (LABELS, lambda: b"<html>404 Not Found</html>", "not an MNIST IDX file"),
    "labels as images": (IMAGES, lambda: T10K_LABELS.read_bytes(), "holds labels where images"),
    "wrong dims": (IMAGES, lambda: _gz(_set_byte(_payload(T10K_IMAGES), 15, 27)), "28x27, expected 28x28"),
    "truncated": (IMAGES, lambda: _gz(_payload(T10K_IMAGES)[:-100]), "truncated"),
    "trailing bytes": (LABELS, lambda: _gz(_payload(T10K_LABELS) + b"\0" * 5), "5 trailing bytes"),
    "label out of range": (LABELS, lambda: _gz(_set_byte(_payload(T10K_LABELS), 8 + 17, 10)), "label 10 at index 17"),
    "label count": (LABELS, lambda: _gz(_labels_with_count(9999)), "holds 9999 labels, expected 10000"),
    "test images as train": ("train-images-idx3-ubyte.gz", lambda: T10K_IMAGES.read_bytes(), "wrong split"),
    "test labels as train": ("train-labels-idx1-ubyte.gz", lambda: T10K_LABELS.read_bytes(), "wrong split"),
    "gzip cut short": (IMAGES, lambda: T10K_IMAGES.read_bytes()[:50000], "corrupt gzip"),
    "gzip bad crc": (LABELS, lambda: _set_byte(T10K_LABELS.read_bytes(), -6, 0), "corrupt gzip"),
    "gzip garbled": (IMAGES, lambda: T10K_IMAGES.read_bytes()[:1000] + b"\xff" * 4000, "corrupt gzip"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_broken_file_is_a_one_line_data_error_naming_the_file(case, tmp_path):
    name, make, words = CORRUPTIONS[case]
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(DataError) as info:
        data.read_idx(path)
    message = str(info.value)
    assert str(path) in message and words in message and "delete it" in message
    assert "\n" not in message


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found.*--data-dir"):
        data.read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")


def test_plain_uncompressed_idx_is_read(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(_payload(T10K_LABELS))
    assert np.array_equal(data.read_idx(path), data.read_idx(T10K_LABELS))


def test_explicit_kind_and_count_override_the_name(tmp_path):
    path = tmp_path / "labels.bin.gz"
    path.write_bytes(T10K_LABELS.read_bytes())
    assert data.read_idx(path).shape == (10000,)  # no standard name: count not checked
    with pytest.raises(DataError, match="wrong split"):
        data.read_idx(path, count=60000)
    with pytest.raises(DataError, match="holds labels where images"):
        data.read_idx(path, kind="images")


def test_label_count_mismatch_in_a_dataset_names_the_labels_file(tmp_path):
    folder = _fill(tmp_path / "data")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(_gz(_labels_with_count(9999)))
    expected = r"train-labels-idx1-ubyte.gz: holds 9999 labels, expected 10000 \(one per image\)"
    with pytest.raises(DataError, match=expected):
        data.load_dataset("mnist-t10k", data_dir=str(folder), progress=False)


def test_wrong_split_in_data_dir_is_an_error_and_the_file_is_kept(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copyfile(T10K_IMAGES, folder / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: wrong split: holds 10000 images.*train split"):
        data.load_dataset("mnist", data_dir=str(folder), progress=False)
    assert _files(folder) == {"train-images-idx3-ubyte.gz"}


# ---------------------------------------------------------------------------
# Checksums: upstream .gz hash or payload hash


def test_recompressed_copy_is_accepted_by_its_payload_hash(tmp_path):
    folder = _fill(tmp_path / "data")
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
    monkeypatch.setitem(data.DATASETS, "mnist-t10k", _tiny_spec(md5=True))
    ds = data.load_dataset("mnist-t10k", data_dir=str(_fill(tmp_path / "data")), progress=False)
    assert np.bincount(ds.y_test).tolist() == MNIST_TEST_COUNTS


def test_recompressed_copy_without_a_payload_hash_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setitem(data.DATASETS, "mnist-t10k", _tiny_spec(md5=True))
    folder = _fill(tmp_path / "data")
    path = folder / "train-labels-idx1-ubyte.gz"
    path.write_bytes(_gz(_payload(T10K_LABELS)))
    expected = f"{path}: checksum mismatch: file md5 [0-9a-f]{{32}} \\(expected {_md5(T10K_LABELS)}\\)"
    with pytest.raises(DataError, match=expected):
        data.load_dataset("mnist-t10k", data_dir=str(folder), progress=False)


def test_altered_data_fails_both_hashes_with_expected_and_actual(tmp_path):
    folder = _fill(tmp_path / "data")
    path = folder / "t10k-images-idx3-ubyte.gz"
    altered = _set_byte(_payload(T10K_IMAGES), 16 + 5000, 1)
    path.write_bytes(_gz(altered))
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
    _fill(isolated / "cache/mnist-t10k")
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
    _fill(isolated / "system/mnist-t10k")
    data.load_dataset("mnist-t10k", progress=False)
    assert server.requests == []
    assert _files(isolated / "cache") == set()


def test_download_into_the_cache_when_no_copy_exists(isolated, good_mirror, monkeypatch):
    server, url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    ds = data.load_dataset("mnist-t10k", progress=False)
    assert sorted(server.requests) == sorted("/" + n for n in NAMES)
    assert _files(isolated / "cache/mnist-t10k") == set(NAMES)
    assert not (isolated / "system").exists()
    assert np.bincount(ds.y_test).tolist() == MNIST_TEST_COUNTS
    server.requests.clear()
    data.load_dataset("mnist-t10k", progress=False)  # now cached
    assert server.requests == []


def test_each_file_comes_from_the_first_place_that_has_it(isolated, good_mirror, monkeypatch):
    server, url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    _fill(isolated / "cache/mnist-t10k", NAMES[:1])
    _fill(isolated / "system/mnist-t10k", NAMES[:3])
    data.load_dataset("mnist-t10k", progress=False)
    assert server.requests == ["/t10k-labels-idx1-ubyte.gz"]
    assert _files(isolated / "cache/mnist-t10k") == {NAMES[0], NAMES[3]}


def test_bad_cache_copy_is_skipped_with_a_warning(isolated, good_mirror, monkeypatch):
    server, url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    cache = _fill(isolated / "cache/mnist-t10k")
    (cache / NAMES[1]).write_bytes(b"junk")
    _fill(isolated / "system/mnist-t10k", NAMES[1:2])
    with pytest.warns(UserWarning, match=f"skipping a bad copy: {cache / NAMES[1]}"):
        data.load_dataset("mnist-t10k", progress=False)
    assert server.requests == []


def test_bad_cache_copy_is_replaced_by_a_download(isolated, good_mirror, monkeypatch):
    server, url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    cache = _fill(isolated / "cache/mnist-t10k")
    (cache / NAMES[2]).write_bytes(T10K_IMAGES.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="corrupt gzip"):
        data.load_dataset("mnist-t10k", progress=False)
    assert server.requests == ["/" + NAMES[2]]
    assert (cache / NAMES[2]).read_bytes() == T10K_IMAGES.read_bytes()
    assert _files(cache) == set(NAMES)


def test_data_dir_is_the_only_place_used(isolated, good_mirror, monkeypatch):
    server, url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    _fill(isolated / "cache/mnist-t10k")
    _fill(isolated / "system/mnist-t10k")
    folder = isolated / "mine" / "mnist"  # does not exist yet: created
    data.load_dataset("mnist-t10k", data_dir=str(folder), progress=False)
    assert sorted(server.requests) == sorted("/" + n for n in NAMES)
    assert _files(folder) == set(NAMES)


def test_bad_file_in_data_dir_is_an_error_not_replaced(isolated, good_mirror, monkeypatch):
    server, url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    folder = _fill(isolated / "mine")
    (folder / NAMES[3]).write_bytes(b"junk")
    with pytest.raises(DataError, match=f"{folder / NAMES[3]}: not an MNIST IDX file.*delete it to re-download"):
        data.load_dataset("mnist-t10k", data_dir=str(folder), progress=False)
    assert (folder / NAMES[3]).read_bytes() == b"junk"
    assert server.requests == []


# ---------------------------------------------------------------------------
# Downloads through pooch, mirror by mirror


@pytest.fixture
def bad_files(tmp_path_factory):
    """Files that are not what the registry says: altered, or cut short (valid gzip up to the cut)."""
    folder = tmp_path_factory.mktemp("bad_files")
    for name in NAMES:
        raw = (T10K_IMAGES if "images" in name else T10K_LABELS).read_bytes()
        (folder / name).write_bytes(raw[: len(raw) // 2] if "images" in name else _set_byte(raw, 100, raw[100] ^ 1))
    return folder


@pytest.mark.parametrize("mode", ["corrupt", "truncated", "dropped", "missing", "stalled"])
def test_a_bad_mirror_falls_through_to_the_next(mode, isolated, serve, good_mirror, bad_files, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT", (2.0, 0.5))
    directory, server_mode = {
        "corrupt": (bad_files, "files"),
        "truncated": (bad_files, "files"),
        "dropped": (_fill(tmp_path / "full"), "drop"),
        "missing": (tmp_path, "files"),  # 404
        "stalled": (tmp_path, "stall"),
    }[mode]
    bad_server, bad_url = serve(directory, server_mode)
    good_server, good_url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, bad_url)
    _with_mirrors(monkeypatch, "mnist-t10k", good_url)
    ds = data.load_dataset("mnist-t10k", progress=False)
    assert np.array_equal(ds.x_train, data.read_idx(T10K_IMAGES))
    assert len(bad_server.requests) == 4 and len(good_server.requests) == 4
    assert _files(isolated / "cache/mnist-t10k") == set(NAMES)  # no temporary left beside them


def test_all_mirrors_bad_is_one_error_and_leaves_no_file(isolated, serve, bad_files, tmp_path, monkeypatch):
    first, first_url = serve(bad_files)
    second, second_url = serve(_fill(tmp_path / "full"), "drop")
    _with_mirrors(monkeypatch, "mnist-t10k", first_url, second_url)
    folder = isolated / "mine"
    with pytest.raises(DataError) as info:
        data.load_dataset("mnist-t10k", data_dir=str(folder), progress=False)
    message = str(info.value)
    assert "could not download mnist-t10k train-images-idx3-ubyte.gz" in message and "\n" not in message
    assert f"{first_url}train-images-idx3-ubyte.gz" in message and f"{second_url}train-images-idx3-ubyte.gz" in message
    assert "XPGRAD_MIRROR" in message
    assert first.requests == second.requests == ["/train-images-idx3-ubyte.gz"]
    assert _files(folder) == set()


def test_download_checks_an_md5_gz_hash(isolated, good_mirror, bad_files, serve, monkeypatch):
    bad_server, bad_url = serve(bad_files)
    _, good_url = good_mirror
    _with_mirrors(monkeypatch, "mnist-t10k", bad_url, good_url, md5=True)
    data.load_dataset("mnist-t10k", progress=False)
    assert len(bad_server.requests) == 4
    assert (isolated / "cache/mnist-t10k" / NAMES[0]).read_bytes() == T10K_IMAGES.read_bytes()


def test_download_without_pooch_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pooch", None)
    with pytest.raises(DataError, match=r"pip install pooch \(or xpgrad\[train\]\)"):
        data.load_dataset("mnist-t10k", progress=False)


def test_progress_bar_download(isolated, good_mirror, monkeypatch, capsys):
    pytest.importorskip("tqdm")
    _, url = good_mirror
    monkeypatch.setenv(data.MIRROR_ENV, url)
    data.load_dataset("mnist-t10k", progress=True)
    assert "100%" in capsys.readouterr().err
