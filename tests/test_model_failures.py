"""A model of your own that fails while it trains or is evaluated, through the real command
(:mod:`xpgrad.training.blame`).

Whatever the model's code raises in its forward or its own Functions' backward,
a ``sys.exit`` anywhere in it, logits of the wrong shape at the training batch
size, and what xpgrad finds wrong with the model's structure (a parameter that
gets no gradient, logits cut from the parameters, a parameter's data replaced):
each is one line naming the model file, where it failed (``epoch 2, step 4``),
what it did and what to do; exit 1, no traceback (unless ``XPGRAD_DEBUG=1``),
and the run folder as its rules say. Ctrl-C and the signals are still
interruptions, and a failure of xpgrad's own keeps its traceback.
"""

from __future__ import annotations

import os
import signal
import textwrap

import numpy as np
import pytest

from xpgrad import nn
from xpgrad.checkpoint import peek_epoch
from xpgrad.data import Dataset
from xpgrad.errors import ModelError
from xpgrad.training import RECIPES, Config, Trainer

from .cli_helpers import assert_user_error, idx_bytes, learnable, metrics, temp_files, write_idx_folder, xpgrad

pytestmark = pytest.mark.slow  # a subprocess per case

# 256 training images in batches of 16: 16 steps an epoch.
RUN = ("--dataset", "idx", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet")

HEAD = """
    import os
    import signal
    import sys

    from xpgrad import nn
    from xpgrad.tensor import Function, Tensor


    class Twice(Function):
        def forward(self, x):
            return 2 * x

        def backward(self, gy):
            {backward}


    class Net(nn.Module):
        def __init__(self, input_shape, num_classes):
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(input_shape[1] * input_shape[2], num_classes)
            self.calls = 0
            {init}

        def forward(self, x):
            self.calls += self.training
            y = self.fc(self.flatten(x))
            {forward}
            return y


    def make(input_shape, num_classes):
        return Net(input_shape, num_classes)
"""


def model_source(forward="pass", init="pass", backward="return (2 * gy,)") -> str:
    return textwrap.dedent(HEAD).format(forward=forward, init=init, backward=backward)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_idx_folder(tmp_path_factory.mktemp("model-failures") / "data")


def train(tmp_path, data, source, *args, env=None):
    """``xpgrad train`` of ``source`` as model file ``tmp_path/net.py``; returns (process, file, out)."""
    path = tmp_path / "net.py"
    path.write_text(source)
    out = tmp_path / "out"
    proc = xpgrad("train", *RUN, "--model", f"{path}:make", "--data-dir", data, "--out", out, *args,
                  tmp_path=tmp_path, env=env)
    return proc, path, out


FAILURES = {
    # name: (what the model does (model_source's arguments), the words the one line must hold)
    "raises only in training": (
        dict(forward="if self.training: raise RuntimeError('only in training')"),
        "the forward pass in training (epoch 1, step 1, a (16, 1, 8, 8) batch) raised RuntimeError: only in "
        "training; expected (N, 4) logits"),
    "raises only for batches over 4 rows": (
        dict(forward="if x.shape[0] > 4: raise IndexError('more than 4 rows')"),
        "the forward pass in training (epoch 1, step 1, a (16, 1, 8, 8) batch) raised IndexError: more than 4 rows"),
    "an unused parameter": (
        dict(init="self.b = nn.Linear(3, 3)"),
        "parameters b.weight, b.bias get no gradient in training (epoch 1, step 1): the model's forward does not "
        "use them (or only through .data); use them in forward, or remove them from the model"),
    "logits detached from the parameters": (
        dict(forward="y = Tensor(y.data)"),
        "the model's logits in training (epoch 1, step 1) do not depend on its parameters"),
    "too few rows of logits at the training batch size": (
        dict(forward="y = y[:8]"),
        "the forward pass in training (epoch 1, step 1) on a (16, 1, 8, 8) batch gave a float32 Tensor of shape "
        "(8, 4); expected floating-point logits of shape (16, 4)"),
    "a parameter replaced mid-training": (
        dict(forward="if self.calls == 3: self.fc.weight.data = self.fc.weight.data.copy()"),
        "the model replaced the data of parameter fc.weight in training (epoch 1, step 3) (p.data = ...), so the "
        "optimizer's update no longer reaches it; update parameters in place"),
    "sys.exit in forward": (
        dict(forward="if self.training: sys.exit(3)"),
        "the forward pass in training (epoch 1, step 1, a (16, 1, 8, 8) batch) called sys.exit(3)"),
    "its own Function's backward raises": (
        dict(forward="y = Twice()(y)", backward="raise ArithmeticError('broken backward')"),
        "the backward pass in training (epoch 1, step 1, a (16, 1, 8, 8) batch) raised ArithmeticError: broken "
        "backward"),
    "its own Function's backward returns a wrong gradient": (
        dict(forward="y = Twice()(y)", backward="return (gy[:1],)"),
        "the backward pass in training (epoch 1, step 1, a (16, 1, 8, 8) batch) raised RuntimeError: Function "
        "Twice returned an invalid gradient at index 0"),
    "sys.exit in its own Function's backward": (
        dict(forward="y = Twice()(y)", backward="sys.exit('bye')"),
        "the backward pass in training (epoch 1, step 1, a (16, 1, 8, 8) batch) called sys.exit('bye')"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_model_that_fails_in_training_is_one_line(data, tmp_path, case):
    kwargs, words = FAILURES[case]
    proc, path, out = train(tmp_path, data, model_source(**kwargs))
    line = assert_user_error(proc, f"model file {path}: {words}", f"; no checkpoint is kept in {out}", code=1)
    assert line.startswith(f"xpgrad: error: model file {path}: "), line
    assert not out.exists()  # a run that never completed a step leaves no folder


def test_sys_exit_when_the_file_is_run_or_called_is_one_line(data, tmp_path):
    proc, path, out = train(tmp_path, data, "import sys\nsys.exit(3)\n")
    assert_user_error(proc, f"model file {path} called sys.exit(3) when run; expected a file that defines the model",
                      code=1)
    proc, path, out = train(tmp_path, data, "import sys\ndef make(input_shape, num_classes):\n    sys.exit()\n")
    assert_user_error(proc, f"model file {path}: make(input_shape=(1, 8, 8), num_classes=4) called sys.exit(); "
                            "expected an xpgrad.nn.Module", code=1)
    assert not out.exists()


def test_a_failure_in_a_later_epoch_keeps_the_last_checkpoint(data, tmp_path):
    proc, path, out = train(tmp_path, data, model_source(forward="if self.calls == 20: raise ValueError('late')"),
                            "--epochs", "3")
    assert_user_error(proc, f"model file {path}: the forward pass in training (epoch 2, step 4, a (16, 1, 8, 8) "
                            "batch) raised ValueError: late", f"; the checkpoint of epoch 1 is kept in {out}", code=1)
    assert peek_epoch(out / "checkpoint.npz") == 1 and [r["epoch"] for r in metrics(out)] == [1]
    assert temp_files(out) == [] and not (out / ".xpgrad.lock").exists()


def test_a_model_that_fails_in_evaluation_is_one_line(data, tmp_path):
    """In training (the first evaluation sizes its chunks on 64 rows), then in ``xpgrad eval``."""
    fails = "if not self.training and x.shape[0] > 4 and os.environ.get('FAIL') != 'no': "
    source = model_source(forward=fails + "y = y[:2] if os.environ.get('FAIL') == 'rows' else {}['boom']")
    proc, path, out = train(tmp_path, data, source, "--batch-size", "4")
    assert_user_error(proc, f"model file {path}: the forward pass in evaluation (on 64 test rows, measuring the memory "
                            "it needs) raised KeyError: 'boom'", f"no checkpoint is kept in {out}", code=1)
    proc, path, out = train(tmp_path, data, source, "--batch-size", "4", env={"FAIL": "no"})
    assert proc.returncode == 0, proc.stderr
    checkpoint = out / "checkpoint.npz"
    proc = xpgrad("eval", "--checkpoint", checkpoint, "--device", "cpu", "--data-dir", data, tmp_path=tmp_path)
    assert_user_error(proc, f"model file {path}: the forward pass in evaluation (test rows 1-64 of 64) raised "
                            "KeyError: 'boom'", code=1)
    proc = xpgrad("eval", "--checkpoint", checkpoint, "--device", "cpu", "--data-dir", data, tmp_path=tmp_path,
                  env={"FAIL": "rows"})
    assert_user_error(proc, f"model file {path}: the forward pass in evaluation (test rows 1-64 of 64) gave a float32 "
                            "Tensor of shape (2, 4); expected floating-point logits of shape (64, 4)", code=1)
    assert peek_epoch(checkpoint) == 1  # evaluating never touches the run


def test_xpgrad_debug_shows_the_traceback_of_a_failed_step(data, tmp_path):
    proc, _, out = train(tmp_path, data, model_source(init="self.b = nn.Linear(3, 3)"), env={"XPGRAD_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "b.weight" in proc.stderr
    proc, _, out = train(tmp_path, data, model_source(forward="if self.training: sys.exit(3)"),
                         env={"XPGRAD_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "SystemExit: 3" in proc.stderr
    assert "called sys.exit(3)" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()


@pytest.mark.parametrize("forward, code, name", [
    ("if self.calls == 3: raise KeyboardInterrupt", 130, "SIGINT"),
    ("if self.calls == 3: os.kill(os.getpid(), signal.SIGINT)", 130, "SIGINT"),
    ("if self.calls == 3: os.kill(os.getpid(), signal.SIGTERM)", 128 + signal.SIGTERM, "SIGTERM"),
])
def test_ctrl_c_and_signals_in_the_model_are_interruptions_not_model_errors(data, tmp_path, forward, code, name):
    proc, _, out = train(tmp_path, data, model_source(forward=forward))
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip() == f"xpgrad: interrupted by {name}; no checkpoint is kept in {out}"
    assert not out.exists()


def test_training_images_of_one_value_cannot_be_standardized(tmp_path):
    folder = tmp_path / "blank"
    folder.mkdir()
    for word, n in (("train", 64), ("t10k", 32)):
        (folder / f"{word}-images-idx3-ubyte").write_bytes(idx_bytes(np.full((n, 8, 8), 7, np.uint8)))
        (folder / f"{word}-labels-idx1-ubyte").write_bytes(idx_bytes((np.arange(n) % 4).astype(np.uint8)))
    out = tmp_path / "out"
    args = ("train", *RUN, "--hidden", "8", "--data-dir", folder, "--out", out)
    assert_user_error(xpgrad(*args, tmp_path=tmp_path), "every pixel of the idx training images has the value 7, so "
                      "their standard deviation is 0 and the default recipe cannot standardize them",
                      "or use --recipe notebook", code=1)
    assert not out.exists()
    proc = xpgrad(*args, "--recipe", "notebook", tmp_path=tmp_path)  # scaling to [0, 1] needs no spread
    assert proc.returncode == 0, proc.stderr


def test_train_help_lists_the_built_in_models_and_every_recipe(tmp_path):
    from xpgrad.models import BUILTIN

    proc = xpgrad("train", "--help", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    model_help = text.split("--model SPEC ", 1)[1].split(" --dataset")[0]
    assert f"a built-in model ({', '.join(BUILTIN)};" in model_help and "cnn" in model_help
    recipe_help = text.split("--recipe {" + ",".join(RECIPES) + "} ", 1)[1].split(" --data-dir")[0]
    for name in RECIPES:
        assert f"{name} ({Config.from_recipe(name).summary()})" in recipe_help


# ---------------------------------------------------------------------------
# In process: what is not the model's keeps its own exception


def tiny_dataset():
    x_train, y_train = learnable(64)
    x_test, y_test = learnable(32, seed=1)
    return Dataset("synthetic", x_train, y_train, x_test, y_test, "synthetic-0", num_classes=4)


def test_a_failure_of_xpgrads_own_is_not_blamed_on_the_model(tmp_path, monkeypatch):
    path = tmp_path / "net.py"
    path.write_text(model_source())
    trainer = Trainer(Config.from_recipe("default", model=f"{path}:make", batch_size=16, epochs=1),
                      tiny_dataset(), progress=False)

    def bug(self):
        raise RuntimeError("a bug in the optimizer")

    monkeypatch.setattr(type(trainer.optimizer), "step", bug)
    with pytest.raises(RuntimeError, match="a bug in the optimizer"):
        trainer.train_epoch()


def test_a_built_in_models_failure_keeps_its_exception(monkeypatch):
    trainer = Trainer(Config.from_recipe("default", hidden=(8,), batch_size=16, epochs=1), tiny_dataset(),
                      progress=False)
    monkeypatch.setattr(type(trainer.model), "forward", lambda self, x: [][0])
    with pytest.raises(IndexError):
        trainer.train_epoch()


def test_the_trainer_says_where_a_model_file_failed(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(model_source(forward="if self.calls == 2: raise ValueError('second step')"))
    trainer = Trainer(Config.from_recipe("default", model=f"{path}:make", batch_size=16, epochs=1),
                      tiny_dataset(), progress=False)
    with pytest.raises(ModelError, match=r"\(epoch 1, step 2, a \(16, 1, 8, 8\) batch\) raised ValueError: second"):
        trainer.train_epoch()


def model_trainer(tmp_path, forward):
    path = tmp_path / "net.py"
    path.write_text(model_source(forward=forward))
    return Trainer(Config.from_recipe("default", model=f"{path}:make", batch_size=16, epochs=1), tiny_dataset(),
                   progress=False)


def test_a_bug_inside_xpgrad_in_the_forward_pass_keeps_its_traceback(tmp_path, monkeypatch):
    """A Python error raised in xpgrad's code (not by one of its `raise` checks) is xpgrad's bug, even when the
    model's forward called it."""
    trainer = model_trainer(tmp_path, forward="pass")
    code = "def forward(self, x):\n    return {}['a bug in xpgrad']\n"
    scope = {}  # a function whose code is in xpgrad's folder, as a bug in a layer of xpgrad's would be
    exec(compile(code, os.path.join(os.path.dirname(nn.__file__), "a_bug.py"), "exec"), scope)
    monkeypatch.setattr(nn.Flatten, "forward", scope["forward"])
    with pytest.raises(KeyError, match="a bug in xpgrad"):
        trainer.train_epoch()


def test_an_error_of_the_environment_in_the_forward_pass_keeps_its_traceback(tmp_path, monkeypatch):
    """CUDA, NCCL or MPI failing under the model (a synchronized batch norm's allreduce, say) is not the model's."""
    error = type("NcclError", (RuntimeError,), {"__module__": "cupy_backends.cuda.libs.nccl"})

    def allreduce(self, x):
        raise error("unhandled cuda error")

    trainer = model_trainer(tmp_path, forward="pass")
    monkeypatch.setattr(nn.Flatten, "forward", allreduce)
    with pytest.raises(error, match="unhandled cuda error"):
        trainer.train_epoch()


def test_a_check_of_xpgrads_that_the_model_trips_is_the_models(tmp_path):
    """ModuleList's IndexError is raised by xpgrad, but by a check (a `raise`) about what the model asked."""
    trainer = model_trainer(tmp_path, forward="if self.training: nn.ModuleList([])[3]")
    with pytest.raises(ModelError, match=r"raised IndexError: index 3 is out of range for a ModuleList of 0"):
        trainer.train_epoch()


def test_nothing_is_blamed_while_a_step_is_being_recorded(tmp_path, monkeypatch):
    """A failure while a CUDA graph records the step is the recording's to report (GraphStep names it)."""
    from xpgrad.backend import graph
    trainer = model_trainer(tmp_path, forward="if self.training: raise ValueError('cannot be recorded')")
    monkeypatch.setattr(graph, "recording", True)
    with pytest.raises(ValueError, match="cannot be recorded"):
        trainer.train_epoch()
