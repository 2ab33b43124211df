"""The built-in cnn through the Trainer and the command line, on slices of data: it learns, resumes bit for bit
(dropout and batch norm included), records the same step under --graph, and evaluates in chunks sized by memory."""

import collections
import json
import signal

import numpy as np
import pytest

from xpgrad import backend, nn
from xpgrad.backend.memory import peak_allocation
from xpgrad.training import Config, Trainer, run
from xpgrad.training import trainer as trainer_module

from .cli_helpers import assert_same_run, assert_user_error, metrics, write_idx_folder, xpgrad
from .launch_count import launches_of_one_step
from .test_graphstep import _refusing_capture, _same_training, fake_capture, recording  # noqa: F401 - fixtures
from .test_train import restore, state, synthetic_dataset


def cnn_config(**overrides):
    fields = dict(epochs=3, batch_size=64, seed=3)
    fields.update(overrides)
    return Config.from_recipe("cnn", **fields)


def with_batch_norm(input_shape, num_classes):
    """A model with every layer of this issue: Conv2d, BatchNorm2d, MaxPool2d, ReLU, Dropout."""
    return nn.Sequential(nn.Conv2d(input_shape[0], 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3),
                         nn.Linear(8 * 6 * 6, num_classes))


def full_state(trainer) -> dict:
    """Parameters and buffers (running statistics, dropout's generator) as host arrays."""
    return state(trainer)


def test_the_cnn_recipe_trains_the_cnn_and_learns():
    trainer = Trainer(cnn_config(epochs=2), synthetic_dataset(n_train=640, n_test=200), progress=False)
    assert trainer.config.model == "cnn" and trainer.config.hidden == (128,)
    assert [type(m).__name__ for m in trainer.model][:3] == ["Conv2d", "MaxPool2d", "ReLU"]
    for _ in range(2):
        trainer.train_epoch()
    assert trainer.evaluate()["test_accuracy"] > 0.9


@pytest.mark.parametrize("model", ["cnn", "tests.test_cnn:with_batch_norm"])
def test_resume_is_bit_exact_with_dropout_and_batch_norm(tmp_path, model):
    data = synthetic_dataset(n_train=300, n_test=100)
    config = cnn_config(model=model)
    straight = Trainer(config, data, progress=False)
    run(straight, str(tmp_path / "straight"), log=lambda *_: None)
    first = Trainer(config, data, progress=False)

    def interrupt_after_epoch_2(line):
        if first.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(first, str(tmp_path / "split"), log=interrupt_after_epoch_2)
    resumed = Trainer(config, data, progress=False)
    history = restore(resumed, tmp_path / "split" / "checkpoint.npz")
    run(resumed, str(tmp_path / "split"), history=history, log=lambda *_: None)
    want, got = full_state(straight), full_state(resumed)
    assert any(k.endswith("generator_state") for k in want)
    assert got.keys() == want.keys()
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    with np.load(tmp_path / "split" / "checkpoint.npz", allow_pickle=False) as ckpt:
        dropout = [k for k in ckpt.files if k.endswith("generator_state")][0]
        assert int(ckpt[dropout][1]) == 3 * resumed.steps_per_epoch  # one mask per training step
        if "batch_norm" in model:
            assert int(ckpt["model/1.num_batches_tracked"]) == 3 * resumed.steps_per_epoch


def test_graph_on_the_cpu_is_the_step_as_it_is_for_the_cnn():
    data = synthetic_dataset(n_train=300, n_test=50)
    config = cnn_config(model="tests.test_cnn:with_batch_norm")
    eager, graphed = Trainer(config, data, progress=False), Trainer(config, data, progress=False, graph="on")
    for _ in range(2):
        a, b = eager.train_epoch(), graphed.train_epoch()
        assert (a["train_loss"], a["train_accuracy"]) == (b["train_loss"], b["train_accuracy"])
    _same_training(eager, graphed)


def test_the_cnn_step_records_with_no_op_refused(recording, monkeypatch):  # noqa: F811
    """Recorded as a CUDA graph would be (every op's Python runs while recording): no layer reads a value on
    the host, so the dropout mask and the batch-norm statistics are drawn and updated in device memory."""
    data = synthetic_dataset(n_train=256, n_test=20)
    trainer = Trainer(cnn_config(model="tests.test_cnn:with_batch_norm"), data, progress=False, graph="on")
    _refusing_capture(monkeypatch, trainer)
    trainer.train_epoch()
    assert trainer.graph_enabled


@pytest.mark.gpu
def test_the_cnn_recorded_as_a_cuda_graph_trains_as_eager_and_as_the_cpu(gpu_xp):
    """On a GPU: the step with batch norm and dropout recorded once and replayed gives eager's parameters, and
    both the CPU's (the same masks on both devices: the generator is integer arithmetic in device memory)."""
    data = synthetic_dataset(n_train=320, n_test=64)
    config = cnn_config(model="tests.test_cnn:with_batch_norm", dtype="float64", epochs=2)
    cpu = Trainer(config, data, device="cpu", progress=False)
    eager = Trainer(config, data, device="cuda", progress=False)
    graphed = Trainer(config, data, device="cuda", progress=False, graph="on")
    for _ in range(2):
        cpu.train_epoch(), eager.train_epoch(), graphed.train_epoch()
    assert graphed.graph_enabled
    want = full_state(cpu)
    for other in (eager, graphed):
        got = full_state(other)
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-7, atol=1e-9, err_msg=name)


def test_the_cnn_steps_launches_on_a_gpu(monkeypatch):
    """The kernels one cnn step would launch on a GPU, counted on the CPU (tests/launch_count.py): the figure a
    fused kernel would have to beat. 149 are counted (the first convolution's two copies of the batch itself,
    its layout and its im2col, are not: the harness follows arrays that come from the parameters). Of them,
    col2im is 25 additions (one per tap), each max-pool 26 passes forward and 8 back, the dropout mask 31."""
    from .launch_count import Counted

    trainer = Trainer(Config.from_recipe("cnn"), synthetic_dataset(n_train=300, n_test=20), progress=False)
    dropout = trainer.model[9]
    dropout.generator_state = dropout.generator_state.view(Counted)  # its mask's launches counted too
    with np.errstate(all="ignore"):  # the harness's products leave their outputs uninitialized
        launches = launches_of_one_step(monkeypatch, trainer)
    counts = collections.Counter(launches)
    assert counts["cublas gemm"] == 11  # 2 + 3 for the convolutions, 2 + 3 + 1 for the Linears
    assert "cupy add, " * 25 in ", ".join(launches) + ", "  # col2im: one addition per tap of 5x5
    assert counts["xpgrad_adam_update"] == 1 and len(launches) == 149


def test_evaluation_chunks_are_sized_by_memory(monkeypatch):
    """No evaluation allocates much more than EVAL_MEMORY, whatever the test set's size."""
    data = synthetic_dataset(n_train=128, n_test=1500)
    monkeypatch.setattr(trainer_module, "EVAL_MEMORY", 8 << 20)
    trainer = Trainer(cnn_config(), data, progress=False)
    rows = trainer.eval_batch_size
    assert 10 < rows < 1500 and trainer.config.eval_batch_size == rows
    peak = peak_allocation(trainer.evaluate, backend.CPU)
    assert peak < 1.5 * (8 << 20), peak
    whole = Trainer(cnn_config(eval_batch_size=1500), data, progress=False)
    assert peak_allocation(whole.evaluate, backend.CPU) > 3 * peak
    a, b = trainer.evaluate(), whole.evaluate()
    assert a["test_accuracy"] == b["test_accuracy"] and a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)


def test_the_mlp_recipes_still_evaluate_their_whole_test_set_at_once():
    """10,000 rows, as before chunks were sized by memory: the recipes' recorded test losses keep their bits."""
    from xpgrad.data import Dataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8)
    data = Dataset("random", images[:64], np.zeros(64, np.uint8), images, np.zeros(10000, np.uint8), "r")
    for recipe in ("default", "notebook"):
        assert Trainer(Config.from_recipe(recipe), data, progress=False).eval_batch_size == 10000, recipe


RUN = ("--model", "cnn", "--recipe", "cnn", "--dataset", "idx", "--epochs", "2", "--batch-size", "32",
       "--device", "cpu", "--quiet")


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("cnn-run")
    data = write_idx_folder(base / "data", n_train=256, n_test=64, shape=(16, 16))
    out = base / "reference"
    proc = xpgrad("train", *RUN, "--eval-batch-size", "24", "--data-dir", data, "--out", out, tmp_path=base)
    assert proc.returncode == 0, proc.stderr
    assert "training the cnn on idx with the cnn recipe" in proc.stdout
    return data, out


@pytest.mark.slow
def test_the_cnn_killed_mid_epoch_resumes_bit_for_bit(cnn_run, tmp_path):
    data, reference = cnn_run
    out = tmp_path / "out"
    killed = xpgrad("train", *RUN, "--eval-batch-size", "24", "--data-dir", data, "--out", out, tmp_path=tmp_path,
                    env={"XPGRAD_FAULT": "step:done#12=kill"})  # step 4 of epoch 2's 8
    assert killed.returncode == -signal.SIGKILL
    assert [r["epoch"] for r in metrics(out)] == [1]
    proc = xpgrad("train", "--resume", out / "checkpoint.npz", "--data-dir", data, "--quiet", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_same_run(out, reference)


@pytest.mark.slow
def test_eval_batch_size_is_recorded_and_eval_takes_it(cnn_run, tmp_path):
    data, reference = cnn_run
    with np.load(reference / "checkpoint.npz", allow_pickle=False) as ckpt:
        assert json.loads(str(ckpt["config"]))["eval_batch_size"] == 24
    accuracy = metrics(reference)[-1]["test_accuracy"]
    for chunk in ("5", "64"):
        proc = xpgrad("eval", "--checkpoint", reference / "checkpoint.npz", "--eval-batch-size", chunk, "--device",
                      "cpu", "--data-dir", data, tmp_path=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert f"test accuracy {accuracy:.2%}" in proc.stdout
    assert_user_error(xpgrad("train", *RUN, "--eval-batch-size", "0", "--data-dir", data, "--out", tmp_path / "x",
                             tmp_path=tmp_path), "--eval-batch-size", "at least 1")


@pytest.mark.slow
def test_the_cnn_refuses_images_too_small_and_hidden_reaches_its_linears(tmp_path):
    small = write_idx_folder(tmp_path / "small", n_train=64, n_test=16, shape=(8, 8))
    proc = xpgrad("train", *RUN, "--data-dir", small, "--out", tmp_path / "a", tmp_path=tmp_path)
    assert_user_error(proc, "images of 8x8 are too small for the cnn")
    data = write_idx_folder(tmp_path / "data", n_train=64, n_test=16, shape=(16, 16))
    proc = xpgrad("train", *RUN, "--epochs", "1", "--hidden", "24", "--data-dir", data, "--out", tmp_path / "b",
                  tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "b" / "checkpoint.npz", allow_pickle=False) as ckpt:
        assert ckpt["model/7.weight"].shape == (32, 24)
