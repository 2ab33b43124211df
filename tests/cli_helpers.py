"""What the end-to-end tests share: running the real ``xpgrad`` command, and checking how it ended.

Every case runs the console entry point in a subprocess (``python -m xpgrad.cli``)
with downloads off and a private cache, and checks what a user would see: the
exit status, stderr (one line, no traceback), and the folders (no temp file
left, nothing lost). ``tests/launch.py`` runs the same ``main()`` with a
dataset's mirrors replaced, for the download cases.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LAUNCH = HERE / "launch.py"
# A killed or stopped test child must never outlive a hung test for long.
TIMEOUT = 300
#: Environment for every child: one BLAS thread (bit-identical sums, fast start), no network.
BASE_ENV = {"XPGRAD_OFFLINE": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: The tiny run the many-instant tests repeat: 3 epochs of 8 steps on 8x8 images.
TINY_RUN = ("--dataset", "idx", "--hidden", "8", "--epochs", "3", "--batch-size", "32", "--device", "cpu", "--quiet")
# Two epochs: enough for a run folder with a history, a resume and a finished run.
SHORT_RUN = ("--dataset", "idx", "--hidden", "8", "--epochs", "2", "--batch-size", "32", "--device", "cpu", "--quiet")


def child_env(tmp_path, env=None) -> dict:
    return {**os.environ, **BASE_ENV, "XPGRAD_CACHE_DIR": str(tmp_path / "cache"),
            "XPGRAD_SYSTEM_DATA_DIR": str(tmp_path / "no-system-data"), **(env or {})}


def command(*args, launcher=False) -> list[str]:
    entry = [str(LAUNCH)] if launcher else ["-m", "xpgrad.cli"]
    return [sys.executable, *entry, *map(str, args)]


def xpgrad(*args, tmp_path, env=None, launcher=False, **kwargs) -> subprocess.CompletedProcess:
    """Run ``xpgrad ARGS`` to the end; text output captured."""
    kwargs.setdefault("capture_output", True)
    return subprocess.run(command(*args, launcher=launcher), text=True, env=child_env(tmp_path, env),
                          timeout=TIMEOUT, **kwargs)


_MEASURE = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
            "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(rc)")


def xpgrad_peak_memory(*args, tmp_path, env=None) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``xpgrad ARGS`` and return it with its peak resident memory, in MiB.

    A wrapper process runs it, so RUSAGE_CHILDREN covers this one command only.
    """
    report = tmp_path / "peak-rss"
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(report), *command(*args)], capture_output=True,
                          text=True, env=child_env(tmp_path, env), timeout=TIMEOUT)
    return proc, int(report.read_text()) // 1024


def start(*args, tmp_path, env=None, **kwargs) -> subprocess.Popen:
    """Start ``xpgrad ARGS`` without waiting; stdout and stderr are pipes (text)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(command(*args), text=True, env=child_env(tmp_path, env), **kwargs)


def one_line(stderr: str) -> str:
    """The single line on stderr (asserted), with no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def assert_user_error(proc, *fragments, code=None):
    """Non-zero exit, no traceback, and exactly one line on stderr that says what is wrong."""
    assert proc.returncode != 0, proc.stdout
    if code is not None:
        assert proc.returncode == code, (proc.returncode, proc.stderr)
    line = one_line(proc.stderr)
    assert re.match(r"^xpgrad( \w+)?: error: ", line), line
    for fragment in fragments:
        assert fragment in line, line
    return line


def temp_files(*folders) -> list[str]:
    """Every temporary file (``*.tmp``) under the folders; a clean exit leaves none."""
    return [str(p) for folder in folders if Path(folder).exists() for p in Path(folder).rglob("*.tmp")]


def metrics(out) -> list[dict]:
    """The run's metrics without the timings (which no two runs share); [] when there is no metrics.jsonl."""
    path = Path(out) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def params(out) -> dict:
    """The checkpoint's parameters and optimizer state, as host arrays."""
    with np.load(Path(out) / "checkpoint.npz", allow_pickle=False) as ckpt:
        return {k: ckpt[k] for k in ckpt.files if k.startswith(("model/", "optim/"))}


def assert_same_run(out, reference):
    """``out`` ended exactly where the uninterrupted run ``reference`` did, bit for bit."""
    assert metrics(out) == metrics(reference)
    got, want = params(out), params(reference)
    assert got.keys() == want.keys()
    for key in want:
        assert np.array_equal(got[key], want[key]), key


# ---------------------------------------------------------------------------
# IDX files of your own


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8; 3-d images or 1-d labels) as an IDX file."""
    magic = 0x0803 if array.ndim == 3 else 0x0801
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def learnable(n: int, shape=(8, 8), classes: int = 4, seed: int = 0):
    """``n`` images of ``shape`` whose class lights up its own band of rows, and their labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype(np.uint8)
    x = rng.integers(0, 60, (n, *shape)).astype(np.uint8)
    band = max(1, shape[0] // classes)
    for c in range(classes):
        x[y == c, c * band:(c + 1) * band, :] += 150
    return x, y


def write_idx_folder(folder, n_train=256, n_test=64, shape=(8, 8), classes=4, compress=True,
                     prefix="", test_word="t10k") -> Path:
    """A folder of four IDX files of learnable data, named as MNIST's (or with a prefix, as EMNIST's)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "-ubyte.gz" if compress else "-ubyte"
    for split, word, n, seed in (("train", "train", n_train, 0), ("test", test_word, n_test, 1)):
        x, y = learnable(n, shape, classes, seed)
        for kind, array in (("images-idx3", x), ("labels-idx1", y)):
            blob = idx_bytes(array)
            (folder / f"{prefix}{word}-{kind}{suffix}").write_bytes(
                gzip.compress(blob, compresslevel=1, mtime=0) if compress else blob)
    return folder


def finished_run(base: Path) -> tuple[Path, Path]:
    """A tiny IDX data folder under ``base``, and a finished, uninterrupted SHORT_RUN of it
    (``base/reference``); tests copy the run before changing it."""
    data = write_idx_folder(base / "data")
    reference = base / "reference"
    proc = xpgrad("train", *SHORT_RUN, "--data-dir", data, "--out", reference, tmp_path=base)
    assert proc.returncode == 0, proc.stderr
    return data, reference
