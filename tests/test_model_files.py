"""``xpgrad train --model`` with a model of your own, through the real command.

A model file trains, survives SIGKILL mid-epoch and resumes bit for bit; the
checkpoint records the file and its SHA-256, and ``--resume`` and ``eval``
rebuild the model from it. Every way a model file can be wrong is one line
naming the file, what it did and what was expected (a traceback only with
``XPGRAD_DEBUG=1``).
"""

from __future__ import annotations

import shutil
import signal
import textwrap
from pathlib import Path

import numpy as np
import pytest

from .cli_helpers import assert_same_run, assert_user_error, metrics, params, write_idx_folder, xpgrad

pytestmark = pytest.mark.slow  # a subprocess per case

RUN = ("--dataset", "idx", "--epochs", "2", "--batch-size", "32", "--device", "cpu", "--quiet")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "net.py"

NET = """
    from xpgrad import functional as F
    from xpgrad import nn


    class Net(nn.Module):
        def __init__(self, input_shape, num_classes):
            self.flatten = nn.Flatten()
            self.hidden = nn.Linear(input_shape[1] * input_shape[2], 12)
            self.out = nn.Linear(12, num_classes)

        def forward(self, x):
            return self.out(F.relu(self.hidden(self.flatten(x))))
"""


def model_file(folder: Path, source: str = NET, name: str = "net.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The data, the model file, and an uninterrupted two-epoch run of it."""
    base = tmp_path_factory.mktemp("model-file")
    data = write_idx_folder(base / "data")
    path = model_file(base)
    out = base / "reference"
    proc = xpgrad("train", *RUN, "--model", f"{path}:Net", "--data-dir", data, "--out", out, tmp_path=base)
    assert proc.returncode == 0, proc.stderr
    return data, path, out


def test_a_model_file_trains_and_its_checkpoint_records_it(reference):
    data, path, out = reference
    with np.load(out / "checkpoint.npz") as ckpt:
        import hashlib
        import json

        config = json.loads(str(ckpt["config"]))
        assert config["model"] == f"{path}:Net"
        assert str(ckpt["model_sha256"]) == hashlib.sha256(path.read_bytes()).hexdigest()
        assert sorted(k for k in ckpt.files if k.startswith("model/")) == [
            "model/hidden.bias", "model/hidden.weight", "model/out.bias", "model/out.weight"]
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_a_model_file_killed_mid_epoch_resumes_bit_for_bit(reference, tmp_path):
    data, path, ref = reference
    out = tmp_path / "out"
    killed = xpgrad("train", *RUN, "--model", f"{path}:Net", "--data-dir", data, "--out", out, tmp_path=tmp_path,
                    env={"XPGRAD_FAULT": "step:done#12=kill"})  # step 4 of epoch 2's 8
    assert killed.returncode == -signal.SIGKILL
    assert [r["epoch"] for r in metrics(out)] == [1]
    proc = xpgrad("train", "--resume", out / "checkpoint.npz", "--data-dir", data, "--quiet", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_same_run(out, ref)


def test_eval_and_a_moved_model_file(reference, tmp_path):
    data, path, ref = reference
    proc = xpgrad("eval", "--checkpoint", ref / "checkpoint.npz", "--device", "cpu", "--data-dir", data,
                  tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"test accuracy {metrics(ref)[-1]['test_accuracy']:.2%}" in proc.stdout
    moved = tmp_path / "elsewhere" / "model.py"
    moved.parent.mkdir()
    shutil.copy(path, moved)
    checkpoint = tmp_path / "checkpoint.npz"
    shutil.copy(ref / "checkpoint.npz", checkpoint)
    proc = xpgrad("eval", "--checkpoint", checkpoint, "--model", f"{moved}:Net", "--device", "cpu", "--data-dir",
                  data, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_a_changed_or_missing_model_file_is_one_line(reference, tmp_path):
    data, path, ref = reference
    copy = model_file(tmp_path, NET + "\n# edited\n")
    checkpoint = tmp_path / "checkpoint.npz"
    shutil.copy(ref / "checkpoint.npz", checkpoint)
    proc = xpgrad("eval", "--checkpoint", checkpoint, "--model", f"{copy}:Net", "--device", "cpu", "--data-dir", data,
                  tmp_path=tmp_path)
    assert_user_error(proc, f"model file {copy} has changed since checkpoint {checkpoint} was written (sha256 ",
                      "restore the file as it was")
    proc = xpgrad("train", "--resume", checkpoint, "--model", f"{tmp_path / 'gone.py'}:Net", "--data-dir", data,
                  "--out", tmp_path / "out", tmp_path=tmp_path)
    assert_user_error(proc, f"model file {tmp_path / 'gone.py'}, which checkpoint {checkpoint} was trained with, does "
                            "not exist")
    proc = xpgrad("eval", "--checkpoint", checkpoint, "--model", "mlp", "--device", "cpu", "--data-dir", data,
                  tmp_path=tmp_path)
    assert_user_error(proc, f"--model mlp is not the model checkpoint {checkpoint} was trained with ({path}:Net)")
    assert not (tmp_path / "out").exists()


def test_a_module_whose_parameters_changed_is_one_line_naming_them(reference, tmp_path):
    """A package.module:NAME spec has no file checksum: a changed model is caught by its parameters."""
    data, _, _ = reference
    package = tmp_path / "models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    model_file(package, name="small.py")
    out = tmp_path / "out"
    proc = xpgrad("train", *RUN, "--model", "models.small:Net", "--data-dir", data, "--out", out, tmp_path=tmp_path,
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    model_file(package, NET.replace("12", "16"), name="small.py")
    proc = xpgrad("eval", "--checkpoint", out / "checkpoint.npz", "--device", "cpu", "--data-dir", data,
                  tmp_path=tmp_path, cwd=tmp_path)
    assert_user_error(proc, "does not match this model: hidden.weight is (64, 12) float32, this model needs "
                            "(64, 16) float32")


BROKEN = {
    # name: (the file's source, or None for no file; the words the one line must hold)
    "missing": (None, "model file {path} does not exist"),
    "raises when run": ("import numpy\nraise RuntimeError('no GPU in this file')\n",
                        "model file {path} raised RuntimeError: no GPU in this file when run; expected a file that "
                        "defines the model"),
    "no such name": ("x = 1\n", "model file {path} defines no Net; expected a function or class Net(input_shape, "
                                "num_classes)"),
    "not callable": ("Net = 3\n", "model file {path}: Net is a int, not a function or class"),
    "raises when called": ("def Net(input_shape, num_classes):\n    return [][0]\n",
                           "model file {path}: Net(input_shape=(1, 8, 8), num_classes=4) raised IndexError: list "
                           "index out of range; expected an xpgrad.nn.Module"),
    "wrong arguments": ("def Net(shape):\n    pass\n", "raised TypeError: Net() got an unexpected keyword argument"),
    "not a module": ("def Net(input_shape, num_classes):\n    return 'model'\n",
                     "Net(input_shape=(1, 8, 8), num_classes=4) returned str, not an xpgrad.nn.Module"),
    "no parameters": ("from xpgrad import nn\ndef Net(input_shape, num_classes):\n    return nn.Flatten()\n",
                      "returned a Module with no parameters, so there is nothing to train"),
    "wrong logits": ("from xpgrad import nn\ndef Net(input_shape, num_classes):\n"
                     "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n",
                     "the model's forward on a (2, 1, 8, 8) batch gave a float32 Tensor of shape (2, 3); expected "
                     "floating-point logits of shape (2, 4)"),
    "forward raises": ("from xpgrad import nn\nclass Net(nn.Module):\n"
                       "    def __init__(self, input_shape, num_classes):\n        self.fc = nn.Linear(10, 4)\n"
                       "    def forward(self, x):\n        return self.fc(x)\n",
                       "the model's forward on a (2, 1, 8, 8) batch raised ValueError"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_model_file_is_one_line(reference, tmp_path, case):
    data, _, _ = reference
    source, words = BROKEN[case]
    path = tmp_path / "broken.py"
    if source is not None:
        path.write_text(source)
    out = tmp_path / "out"
    proc = xpgrad("train", *RUN, "--model", f"{path}:Net", "--data-dir", data, "--out", out, tmp_path=tmp_path)
    line = assert_user_error(proc, words.format(path=path))
    assert "XPGRAD_DEBUG=1" in line or case in ("missing", "no such name", "not callable", "not a module",
                                                "no parameters", "wrong logits")
    assert not out.exists()  # a run that never started leaves no folder


def test_xpgrad_debug_shows_the_traceback(reference, tmp_path):
    data, _, _ = reference
    path = model_file(tmp_path, "def Net(input_shape, num_classes):\n    return [][0]\n")
    proc = xpgrad("train", *RUN, "--model", f"{path}:Net", "--data-dir", data, "--out", tmp_path / "out",
                  tmp_path=tmp_path, env={"XPGRAD_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "IndexError" in proc.stderr


@pytest.mark.parametrize("spec, words", [("net.txt", "unknown model 'net.txt'"),
                                         ("net.py:", "does not end in :NAME"), ("net.py:1x", "does not end in :NAME"),
                                         ("a-b:Net", "neither a .py file nor a dotted module name")])
def test_a_malformed_spec_is_a_usage_error(tmp_path, spec, words):
    assert_user_error(xpgrad("train", "--model", spec, tmp_path=tmp_path), "argument --model: ", words, code=2)


def test_hidden_is_for_the_mlp_only(reference, tmp_path):
    data, path, _ = reference
    proc = xpgrad("train", *RUN, "--model", f"{path}:Net", "--hidden", "32", "--data-dir", data, "--out",
                  tmp_path / "out", tmp_path=tmp_path)
    assert_user_error(proc, "--hidden sets the widths of the built-in mlp", "builds its own layers; drop --hidden")


def test_the_example_model_file_trains(tmp_path):
    """examples/net.py, the README's example, on the tiny data."""
    data = write_idx_folder(tmp_path / "data")
    proc = xpgrad("train", *RUN, "--model", f"{EXAMPLE}:Net", "--data-dir", data, "--out", tmp_path / "out",
                  tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {k for k in params(tmp_path / "out") if k.startswith("model/")} == {
        "model/fc1.weight", "model/fc1.bias", "model/fc2.weight", "model/fc2.bias", "model/out.weight",
        "model/out.bias"}
