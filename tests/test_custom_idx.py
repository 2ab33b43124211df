"""Your own IDX data (``--dataset idx --data-dir DIR``) and Kuzushiji-MNIST, through the real command.

The data here is made by the tests (tests/cli_helpers.py: learnable bands of
rows) and is never passed off as a real dataset: the Kuzushiji-MNIST files
cannot be downloaded on this machine, so its registry entry is checked against
the published checksums as written, and a loopback mirror shows that
``--dataset kmnist`` asks for its files and refuses anything else.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import re
import shutil
import threading

import numpy as np
import pytest

from xpgrad import data

from .cli_helpers import (
    assert_user_error,
    idx_bytes,
    learnable,
    temp_files,
    write_idx_folder,
    xpgrad,
)

TINY = ("--hidden", "8", "--epochs", "2", "--batch-size", "32", "--device", "cpu", "--quiet")


def test_any_image_size_and_number_of_classes(tmp_path):
    folder = write_idx_folder(tmp_path / "mine", n_train=300, n_test=50, shape=(5, 7), classes=7)
    out = tmp_path / "out"
    proc = xpgrad("train", "--dataset", "idx", "--data-dir", folder, *TINY, "--out", out, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    notice = [line for line in proc.stdout.splitlines() if line.startswith("note: ")]
    assert notice == [f"note: {folder} holds your own IDX data (300 train and 50 test images of 5x7, 7 classes), "
                      "which no published checksum verifies"]
    with np.load(out / "checkpoint.npz", allow_pickle=False) as ckpt:
        assert ckpt["model/1.weight"].shape == (35, 8) and ckpt["model/3.weight"].shape == (8, 7)
        assert json.loads(str(ckpt["config"]))["dataset"] == "idx"
    evaluated = xpgrad("eval", "--checkpoint", out / "checkpoint.npz", "--device", "cpu", "--data-dir", folder,
                       tmp_path=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    accuracy = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["test_accuracy"]
    assert f"test accuracy {accuracy:.2%} (idx, epoch 2" in evaluated.stdout


def test_emnist_style_names_plain_files_and_learning(tmp_path):
    """``emnist-balanced-train-images-idx3-ubyte`` and ``...-test-...``, uncompressed: found and learned."""
    folder = write_idx_folder(tmp_path / "emnist", n_train=512, n_test=128, classes=4, compress=False,
                              prefix="emnist-balanced-", test_word="test")
    proc = xpgrad("train", "--dataset", "idx", "--data-dir", folder, "--hidden", "16", "--epochs", "6",
                  "--device", "cpu", "--quiet", "--out", tmp_path / "out", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    final = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["test_accuracy"] > 0.9  # the bands are easy; chance is 0.25


def test_resume_and_eval_check_it_is_the_same_data(tmp_path):
    folder = write_idx_folder(tmp_path / "mine")
    out = tmp_path / "out"
    assert xpgrad("train", "--dataset", "idx", "--data-dir", folder, *TINY, "--out", out,
                  tmp_path=tmp_path).returncode == 0
    other = write_idx_folder(tmp_path / "other", n_train=257)
    for args in (("eval", "--checkpoint", out / "checkpoint.npz", "--device", "cpu"),
                 ("train", "--resume", out / "checkpoint.npz", "--epochs", "3", "--quiet")):
        assert_user_error(xpgrad(*args, "--data-dir", other, tmp_path=tmp_path), "was trained on different idx data")
        assert_user_error(xpgrad(*args, tmp_path=tmp_path), "--dataset idx trains on your own IDX files: pass --data-dir")
    resumed = xpgrad("train", "--resume", out / "checkpoint.npz", "--epochs", "3", "--quiet", "--data-dir", folder,
                     tmp_path=tmp_path)
    assert resumed.returncode == 0, resumed.stderr


def _break(folder, how):
    if how == "no folder":
        shutil.rmtree(folder)
    elif how == "a file missing":
        (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    elif how == "two train image files":
        shutil.copy(folder / "train-images-idx3-ubyte.gz", folder / "copy-train-images-idx3-ubyte.gz")
    elif how == "labels for other images":
        x, y = learnable(10)
        (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
    elif how == "two image sizes":
        x, _ = learnable(64, shape=(9, 8))
        (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x)))
    elif how == "one class":
        for split, n in (("train", 256), ("t10k", 64)):
            (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(n, np.uint8))))
    elif how == "no images":
        (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((0, 8, 8), np.uint8))))
        (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(0, np.uint8))))
    elif how == "labels as images":
        shutil.copy(folder / "train-labels-idx1-ubyte.gz", folder / "train-images-idx3-ubyte.gz")
    elif how == "a header of no images, each 2^32-1 pixels square":
        header = b"".join(n.to_bytes(4, "big") for n in (0x0803, 0, 2**32 - 1, 2**32 - 1))
        (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header))
    elif how == "cut short":
        blob = (folder / "train-images-idx3-ubyte.gz").read_bytes()
        (folder / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])


BROKEN = {
    "no folder": "is not a folder",
    "a file missing": "has no test labels file",
    "two train image files": "has 2 train images files (copy-train-images-idx3-ubyte.gz, train-images-idx3-ubyte.gz)",
    "labels for other images": "holds 10 labels for 256 images",
    "two image sizes": "train images are 8x8 but test images are 9x8",
    "one class": "every label is 0",
    "no images": "holds no images",
    "labels as images": "holds labels where images are expected",
    "cut short": "corrupt gzip data",
    "a header of no images, each 2^32-1 pixels square": "its header says 0 images of 4294967295x4294967295 pixels",
}


@pytest.mark.parametrize("how", list(BROKEN))
def test_the_structural_checks_hold_for_your_own_files(tmp_path, how):
    folder = write_idx_folder(tmp_path / "mine")
    _break(folder, how)
    proc = xpgrad("train", "--dataset", "idx", "--data-dir", folder, *TINY, "--out", tmp_path / "out",
                  tmp_path=tmp_path)
    assert_user_error(proc, BROKEN[how])
    assert "re-download" not in proc.stderr  # your own files are not downloaded: the fix is to write them again
    assert not (tmp_path / "out" / "checkpoint.npz").exists()


# ---------------------------------------------------------------------------
# Kuzushiji-MNIST


def test_kuzushiji_mnist_is_registered_with_its_published_checksums():
    """The md5 sums torchvision publishes for KMNIST (pytorch/vision, torchvision/datasets/mnist.py)."""
    spec = data.DATASETS["kmnist"]
    published = {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    }
    assert {f.fname: f.gz_hash for f in spec.files} == {k: "md5:" + v for k, v in published.items()}
    assert [(f.kind, f.count) for f in spec.files] == [("images", 60000), ("labels", 60000),
                                                       ("images", 10000), ("labels", 10000)]
    assert all(f.payload_sha256 is None for f in spec.files)  # not published: only the upstream .gz is accepted
    assert spec.mirrors == ("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
                            "http://codh.rois.ac.jp/kmnist/dataset/kmnist/")


class _Recorder(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()


def test_kmnist_downloads_its_files_and_refuses_others(tmp_path):
    """A mirror serving well-formed files that are not Kuzushiji-MNIST (all-zero images made here)."""
    served = tmp_path / "served"
    served.mkdir()
    header = b"".join(n.to_bytes(4, "big") for n in (0x0803, 60000, 28, 28))
    (served / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(60000 * 784), 1, mtime=0))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Recorder, directory=str(served)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/"
        proc = xpgrad("train", "--dataset", "kmnist", *TINY, "--out", tmp_path / "out", tmp_path=tmp_path,
                      launcher=True, env={"XPGRAD_OFFLINE": "", "XPGRAD_MIRROR": url,
                                          "XPGRAD_TEST_MIRRORS": json.dumps({"kmnist": []})})
    finally:
        server.shutdown()
        server.server_close()
    line = assert_user_error(proc, "could not download kmnist train-images-idx3-ubyte.gz",
                             "checksum mismatch: file md5", "(expected bdb82020997e1d708af4cf47b453dcf7)")
    assert re.search(r"payload sha256 [0-9a-f]{64}", line)
    assert server.requests == ["/train-images-idx3-ubyte.gz"]
    assert temp_files(tmp_path / "cache") == [] and not (tmp_path / "cache" / "kmnist" / "train-images-idx3-ubyte.gz").exists()
