"""The `xpgrad` command end to end: the happy path, and every bad input ending in one clear line.

These run the real console entry point in a subprocess on the real
Fashion-MNIST files that Debian installs (`apt-get install dataset-fashion-mnist`),
with downloads switched off so nothing reaches the network.
"""

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from xpgrad import backend

from .cli_helpers import assert_user_error, temp_files, xpgrad

FASHION = Path("/usr/share/datasets/fashion-mnist")
FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
needs_fashion = pytest.mark.skipif(
    not all((FASHION / f).exists() for f in FILES),
    reason="needs Debian's Fashion-MNIST: apt-get install -y dataset-fashion-mnist",
)


def no_temp_files(folder):
    return temp_files(folder) == []


@pytest.fixture
def fashion_copy(tmp_path):
    """A private, writable copy of the Fashion-MNIST files that a test may damage."""
    folder = tmp_path / "fashion"
    folder.mkdir()
    for f in FILES:
        shutil.copy(FASHION / f, folder / f)
    return folder


# ---------------------------------------------------------------------------
# Options


@pytest.mark.parametrize("args, fragment", [
    (["--dataset", "cifar10"], "invalid choice: 'cifar10'"),
    (["--dtype", "float16"], "invalid choice: 'float16'"),
    (["--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["--batch-size", "0"], "must be at least 1"),
    (["--batch-size", "many"], "expected a whole number"),
    (["--epochs", "-3"], "must be at least 1"),
    (["--lr", "-0.1"], "must be a positive number"),
    (["--lr", "fast"], "expected a number"),
    (["--lr", "nan"], "must be a positive number"),
    (["--seed", "-1"], "must not be negative"),
    (["--hidden", "0"], "must be at least 1"),
    (["--hidden", "100,,10"], "expected widths separated by commas"),
    (["--hidden", "wide"], "expected a whole number"),
])
def test_bad_option_values(tmp_path, args, fragment):
    assert_user_error(xpgrad("train", *args, tmp_path=tmp_path), fragment, code=2)


def test_unknown_device(tmp_path):
    assert_user_error(xpgrad("train", "--device", "tpu", tmp_path=tmp_path), "unknown device 'tpu'")


def test_cuda_without_a_gpu_says_which_case(tmp_path):
    if backend.gpu_available():
        pytest.skip("a GPU is usable here, so --device cuda is not an error")
    proc = xpgrad("train", "--device", "cuda", "--out", tmp_path / "out", tmp_path=tmp_path)
    assert_user_error(proc, "cannot use device 'cuda'")
    expected = "is installed but CUDA is not usable" if backend.cupy_installed() else "CuPy is not installed"
    assert expected in proc.stderr


def test_info_reports_no_gpu_and_fails_when_one_is_required(tmp_path):
    if backend.gpu_available():
        pytest.skip("a GPU is usable here")
    proc = xpgrad("info", tmp_path=tmp_path)
    assert proc.returncode == 0
    assert "numpy" in proc.stdout and "gpu: none" in proc.stdout
    assert_user_error(xpgrad("info", "--device", "cuda", tmp_path=tmp_path), "no usable GPU")


# ---------------------------------------------------------------------------
# Data files


@needs_fashion
def test_missing_data_file(tmp_path, fashion_copy):
    (fashion_copy / "t10k-labels-idx1-ubyte.gz").unlink()
    proc = xpgrad("train", "--dataset", "fashion-mnist", "--data-dir", fashion_copy, "--out", tmp_path / "out",
                  tmp_path=tmp_path)
    assert_user_error(proc, "t10k-labels-idx1-ubyte.gz", "missing")
    assert no_temp_files(tmp_path)


@needs_fashion
@pytest.mark.parametrize("damage, fragment", [
    ("truncate", "t10k-images-idx3-ubyte.gz"),
    ("garbage", "t10k-images-idx3-ubyte.gz"),
    ("wrong_split", "train-images-idx3-ubyte.gz"),
    ("checksum", "t10k-images-idx3-ubyte.gz"),
])
def test_damaged_data_file(tmp_path, fashion_copy, damage, fragment):
    target = fashion_copy / "t10k-images-idx3-ubyte.gz"
    if damage == "truncate":
        blob = target.read_bytes()
        target.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        target.write_bytes(os.urandom(4096))
    elif damage == "wrong_split":  # the test images where the training images belong
        shutil.copy(FASHION / "t10k-images-idx3-ubyte.gz", fashion_copy / "train-images-idx3-ubyte.gz")
    elif damage == "checksum":  # a well-formed file whose pixels differ from the real ones
        payload = bytearray(gzip.decompress(target.read_bytes()))
        payload[5000] ^= 0xFF
        target.write_bytes(gzip.compress(bytes(payload)))
    proc = xpgrad("train", "--dataset", "fashion-mnist", "--data-dir", fashion_copy, "--out", tmp_path / "out",
                  tmp_path=tmp_path)
    assert_user_error(proc, fragment)
    if damage == "checksum":
        assert "sha256" in proc.stderr or "checksum" in proc.stderr
    assert not (tmp_path / "out" / "checkpoint.npz").exists()


# ---------------------------------------------------------------------------
# Output folder


def test_out_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    assert_user_error(xpgrad("train", "--out", tmp_path / "taken", tmp_path=tmp_path), "is a file")
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_out_is_not_writable(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    assert_user_error(xpgrad("train", "--out", tmp_path / "taken" / "run", tmp_path=tmp_path), "not writable")


# ---------------------------------------------------------------------------
# Training, checkpoints, resume


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real epoch on Fashion-MNIST through the CLI."""
    if not all((FASHION / f).exists() for f in FILES):
        pytest.skip("needs Debian's Fashion-MNIST: apt-get install -y dataset-fashion-mnist")
    tmp = tmp_path_factory.mktemp("cli-train")
    out = tmp / "run"
    proc = xpgrad("train", "--dataset", "fashion-mnist", "--device", "cpu", "--epochs", "1", "--quiet",
                  "--data-dir", FASHION, "--out", out, tmp_path=tmp)
    return tmp, out, proc


def test_train_writes_metrics_checkpoint_and_summary(trained):
    _, out, proc = trained
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert set(rows[0]) == {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"}
    assert rows[0]["test_accuracy"] > 0.80  # one epoch of the default recipe on Fashion-MNIST
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("done: test accuracy") and "s/epoch" in last and "cpu" in last
    assert (out / "curves.png").exists() and no_temp_files(out)
    with np.load(out / "checkpoint.npz", allow_pickle=False) as ckpt:
        assert int(ckpt["epoch"]) == 1


def test_eval_reproduces_the_test_accuracy(trained):
    tmp, out, _ = trained
    proc = xpgrad("eval", "--checkpoint", out / "checkpoint.npz", "--device", "cpu", "--data-dir", FASHION,
                  tmp_path=tmp)
    assert proc.returncode == 0, proc.stderr
    accuracy = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["test_accuracy"]
    assert f"test accuracy {accuracy:.2%}" in proc.stdout


def test_resume_continues_the_run(trained, tmp_path):
    tmp, out, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    proc = xpgrad("train", "--resume", copy / "checkpoint.npz", "--epochs", "2", "--device", "cpu", "--quiet",
                  "--data-dir", FASHION, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def _recorded_threads(out) -> int:
    with np.load(out / "checkpoint.npz", allow_pickle=False) as ckpt:
        return json.loads(str(ckpt["config"]))["threads"]


def test_threads_are_the_environments_unless_given_and_recorded(trained, tmp_path):
    """The children run with OPENBLAS_NUM_THREADS=1 (tests/cli_helpers.py): honoured, as NumPy does, and
    recorded; a resumed run may use another count (where it runs, not what it computes)."""
    tmp, out, _ = trained
    assert _recorded_threads(out) == 1
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    proc = xpgrad("train", "--resume", copy / "checkpoint.npz", "--epochs", "2", "--threads", "2", "--device", "cpu",
                  "--quiet", "--data-dir", FASHION, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _recorded_threads(copy) == 2
    assert_user_error(xpgrad("train", "--threads", "0", tmp_path=tmp_path), "--threads", "at least 1", code=2)


def test_resume_with_a_conflicting_option(trained):
    tmp, out, _ = trained
    proc = xpgrad("train", "--resume", out / "checkpoint.npz", "--dataset", "mnist", "--out", tmp / "x",
                  tmp_path=tmp)
    assert_user_error(proc, "--dataset mnist conflicts with the checkpoint")


def test_checkpoint_from_other_data_is_refused(trained, tmp_path, fashion_copy):
    tmp, out, _ = trained
    # Other (but valid-looking) data: same files, one checksum recorded differently in the checkpoint.
    with np.load(out / "checkpoint.npz", allow_pickle=False) as ckpt:
        arrays = {k: ckpt[k] for k in ckpt.files}
    arrays["dataset_checksum"] = np.asarray("0" * 64)
    np.savez(tmp_path / "other.npz", **arrays)
    proc = xpgrad("eval", "--checkpoint", tmp_path / "other.npz", "--device", "cpu", "--data-dir", fashion_copy,
                  tmp_path=tmp_path)
    assert_user_error(proc, "different fashion-mnist data")


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_bad_checkpoint(tmp_path, kind):
    path = tmp_path / "checkpoint.npz"
    if kind == "corrupt":
        path.write_bytes(b"PK\x03\x04 definitely not a whole zip file")
    for cmd in (["train", "--resume", path], ["eval", "--checkpoint", path]):
        proc = xpgrad(*cmd, tmp_path=tmp_path)
        assert_user_error(proc, "does not exist" if kind == "missing" else "corrupt")


@needs_fashion
def test_divergence_is_reported_and_leaves_no_checkpoint(tmp_path):
    out = tmp_path / "out"
    proc = xpgrad("train", "--dataset", "fashion-mnist", "--device", "cpu", "--optimizer", "sgd", "--lr", "1e30",
                  "--epochs", "1", "--quiet", "--data-dir", FASHION, "--out", out, tmp_path=tmp_path)
    assert_user_error(proc, "diverged", "--lr")
    assert not (out / "checkpoint.npz").exists()
    assert no_temp_files(out)


def test_gradcheck_command_prints_the_notebook_cell(tmp_path):
    pytest.importorskip("torch", reason="the comparison needs PyTorch")
    proc = xpgrad("gradcheck", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    relative = float(proc.stdout.strip().splitlines()[-1].split()[-1])
    assert relative < 1e-10
