"""Checkpoints written before the one engine (formats 1 and 2, the hand-written MLP's ``W1, b1, ...``) still load.

tests/data/format2/ holds real checkpoints written by main at 71f8a94
(tests/data/format2/make_fixtures.py): three runs of two epochs on the tiny
IDX data of tests.cli_helpers (the default recipe, the notebook's, and a
two-hidden-layer float64 momentum run), each killed after epoch 1 and the same
run finished. Resuming the epoch-1 checkpoint with today's engine must end
exactly where the old code's own epoch 2 did: every parameter, every
optimizer state array and every metric, bit for bit. Both ran with one BLAS
thread, OpenBLAS's Haswell kernel and NumPy without AVX-512 (the fixtures'
README.json), so any AVX2 machine computes the same bits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from .cli_helpers import assert_user_error, metrics, write_idx_folder, xpgrad
from .test_hostile_files import npy, rewrite

pytestmark = pytest.mark.slow  # a subprocess per case

FIXTURES = Path(__file__).resolve().parent / "data" / "format2"
INFO = json.loads((FIXTURES / "README.json").read_text())
RUNS = INFO["runs"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_idx_folder(tmp_path_factory.mktemp("format2") / "data")


def old_arrays(path) -> dict:
    with np.load(path, allow_pickle=False) as ckpt:
        return {k: ckpt[k] for k in ckpt.files}


def as_old_layout(path, input_bias: bool) -> dict:
    """A format-3 checkpoint's model and optimizer state in the old MLP's names and flat layout."""
    new = old_arrays(path)
    model = [k[len("model/"):] for k in new if k.startswith("model/")]
    layers = sorted({int(name.split(".")[0]) for name in model})
    old = {}
    for i, layer in enumerate(layers, start=1):
        W, b = new[f"model/{layer}.weight"], new.get(f"model/{layer}.bias")
        if input_bias and i == 1:
            old["param/W1"] = np.concatenate([W, b[None]])
            continue
        old[f"param/W{i}"] = W
        if b is not None:
            old[f"param/b{i}"] = b
    old["optim/step_count"] = new["optim/step_count"]
    for state in ("m", "v", "velocity"):
        if f"optim/{state}/{model[0]}" in new:
            old[f"optim/{state}/all"] = np.concatenate([new[f"optim/{state}/{name}"].reshape(-1) for name in model])
    return old


def resumed(name, data, tmp_path, fmt: int):
    """The old run's epoch-1 checkpoint (in format ``fmt``) resumed to epoch 2 by today's xpgrad; its folder."""
    out = tmp_path / name
    out.mkdir()
    epoch1 = FIXTURES / f"{name}-epoch1.npz"
    if fmt == 1:  # format 1 kept no metrics inside: they come from the folder's metrics.jsonl
        rewrite(epoch1, out / "checkpoint.npz", {"format": npy(1)}, drop=("metrics",))
        rows = json.loads(str(old_arrays(epoch1)["metrics"]))
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        shutil.copy(epoch1, out / "checkpoint.npz")
    proc = xpgrad("train", "--dataset", "idx", "--data-dir", data, "--device", "cpu", "--quiet", "--resume",
                  out / "checkpoint.npz", tmp_path=tmp_path, env=INFO["env"])
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return out


@pytest.mark.parametrize("fmt", [2, 1])
@pytest.mark.parametrize("name", list(RUNS))
def test_an_old_checkpoint_resumes_to_exactly_what_the_old_code_computed(name, fmt, data, tmp_path):
    out = resumed(name, data, tmp_path, fmt)
    want = old_arrays(FIXTURES / f"{name}-epoch2.npz")
    got = as_old_layout(out / "checkpoint.npz", input_bias="--recipe" in RUNS[name])
    assert got.keys() == {k for k in want if k.startswith(("param/", "optim/"))}
    for key, value in got.items():
        assert value.dtype == want[key].dtype and np.array_equal(value, want[key]), key
    want_metrics = [{k: v for k, v in row.items() if k != "seconds"} for row in json.loads(str(want["metrics"]))]
    assert metrics(out) == want_metrics
    assert int(old_arrays(out / "checkpoint.npz")["format"]) == 3  # written in today's format from then on


@pytest.mark.parametrize("name", list(RUNS))
def test_an_old_checkpoint_is_evaluated_as_it_was(name, data, tmp_path):
    path = FIXTURES / f"{name}-epoch2.npz"
    proc = xpgrad("eval", "--checkpoint", path, "--device", "cpu", "--data-dir", data, tmp_path=tmp_path,
                  env=INFO["env"])
    assert proc.returncode == 0, proc.stderr
    row = json.loads(str(old_arrays(path)["metrics"]))[-1]
    assert f"test loss {row['test_loss']:.4f}, test accuracy {row['test_accuracy']:.2%}" in proc.stdout


def test_a_format_1_checkpoint_with_damaged_metrics_resumes_with_a_warning(data, tmp_path):
    out = tmp_path / "default"
    out.mkdir()
    rewrite(FIXTURES / "default-epoch1.npz", out / "checkpoint.npz", {"format": npy(1)}, drop=("metrics",))
    (out / "metrics.jsonl").write_bytes(b"\xff\xfe not json\n")
    proc = xpgrad("train", "--dataset", "idx", "--data-dir", data, "--device", "cpu", "--quiet", "--resume",
                  out / "checkpoint.npz", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warning = proc.stderr.strip()
    assert warning.startswith("xpgrad: warning: ") and "\n" not in warning and "left out" in warning
    assert [r["epoch"] for r in metrics(out)] == [2]  # epoch 1's row could not be recovered


def test_an_old_checkpoint_of_another_shape_is_one_line(data, tmp_path):
    path = tmp_path / "checkpoint.npz"
    rewrite(FIXTURES / "default-epoch1.npz", path, {"param/W2": npy(np.zeros((9, 4), "f4"))})
    assert_user_error(xpgrad("eval", "--checkpoint", path, "--device", "cpu", "--data-dir", data, tmp_path=tmp_path),
                      f"checkpoint {path} does not match this MLP: W2 is (9, 4) float32, this MLP needs (8, 4) float32")
