"""The device-resident training step (graph="on"): exact on the CPU, recorded and replayed on a GPU.

On the CPU the step runs through xpgrad.generic and must give the eager
step's results bit for bit. The recording logic (which step, when captured,
what happens when a capture fails) is checked on the CPU with a stand-in for
CUDA graph capture; the kernel count is taken there too, by counting the
launches one step makes through xpgrad.kernels. The gpu-marked tests run the
real thing.
"""

import collections
import contextlib
import re

import numpy as np
import pytest

from xpgrad import backend, generic, kernels, optim
from xpgrad.checkpoint import load_checkpoint
from xpgrad.errors import XpgradError
from xpgrad.training import Config, Trainer, graphstep, run

from .test_cli import FASHION, assert_user_error, needs_fashion, xpgrad
from .test_train import small_config, synthetic_dataset

LR = {"sgd": 0.05, "momentum": 0.05, "adam": 2e-3}


def _config(optimizer="adam", schedule="cosine", **overrides):
    config = small_config(optimizer=optimizer, lr=LR[optimizer], **overrides)
    config.schedule = schedule
    return config


def _same_training(a: Trainer, b: Trainer):
    """Both trainers hold exactly the same parameters, optimizer state and step count."""
    for name, value in a.model.params.items():
        assert np.array_equal(backend.to_numpy(b.model.params[name]), backend.to_numpy(value)), name
    state_a, state_b = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert np.array_equal(state_a[key], state_b[key]), key
    assert a.optimizer.lr == b.optimizer.lr


# 1000 samples in batches of 64: 15 full batches and a partial one of 40.
@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_resident_step_on_the_cpu_is_bit_identical_to_eager(optimizer, schedule):
    data = synthetic_dataset(n_train=1000)
    eager = Trainer(_config(optimizer, schedule), data, progress=False, graph="off")
    resident = Trainer(_config(optimizer, schedule), data, progress=False, graph="on")
    for _ in range(2):
        a, b = eager.train_epoch(), resident.train_epoch()
        assert (a["train_loss"], a["train_accuracy"]) == (b["train_loss"], b["train_accuracy"])
        _same_training(eager, resident)
    assert resident.optimizer.step_count == eager.optimizer.step_count == 32


@pytest.mark.parametrize("overrides", [{"batch_size": 0}, {"hidden": (16, 8)}, {"dtype": "float64"},
                                       {"batch_size": 1000}], ids=["full-batch", "two-hidden", "float64", "one-batch"])
def test_resident_step_is_exact_for_other_shapes(overrides):
    data = synthetic_dataset(n_train=1000)
    eager = Trainer(_config(**overrides), data, progress=False, graph="off")
    resident = Trainer(_config(**overrides), data, progress=False, graph="on")
    for _ in range(2):
        a, b = eager.train_epoch(), resident.train_epoch()
        assert (a["train_loss"], a["train_accuracy"]) == (b["train_loss"], b["train_accuracy"])
    _same_training(eager, resident)
    assert eager.rng.bit_generator.state == resident.rng.bit_generator.state


def _interrupted_and_resumed(tmp_path, data, device, first_graph, resume_graph) -> tuple:
    """(straight, resumed): three epochs in one go, and killed after epoch 2 then resumed, from the same config."""
    straight = Trainer(_config(), data, device=device, progress=False, graph=first_graph)
    run(straight, str(tmp_path / "straight"), log=lambda *_: None)
    first = Trainer(_config(), data, device=device, progress=False, graph=first_graph)

    def interrupt_after_epoch_2(line):
        if first.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(first, str(tmp_path / "split"), log=interrupt_after_epoch_2)
    resumed = Trainer(_config(), data, device=device, progress=False, graph=resume_graph)
    resumed.restore(load_checkpoint(tmp_path / "split" / "checkpoint.npz"), "checkpoint.npz")
    run(resumed, str(tmp_path / "split"), log=lambda *_: None)
    return straight, resumed


@pytest.mark.parametrize("resume_graph", ["on", "off"])
def test_resume_with_the_resident_step_is_bit_exact(tmp_path, resume_graph):
    _same_training(*_interrupted_and_resumed(tmp_path, synthetic_dataset(), "cpu", "on", resume_graph))


def test_graph_mode_is_checked():
    with pytest.raises(XpgradError, match="unknown graph mode 'yes'; choose one of off, on, auto"):
        Trainer(_config(), synthetic_dataset(n_train=100, n_test=20), progress=False, graph="yes")


def test_on_the_cpu_nothing_is_recorded():
    data = synthetic_dataset(n_train=200, n_test=20)
    for mode in ("on", "auto", "off"):
        trainer = Trainer(_config(), data, progress=False, graph=mode)
        trainer.train_epoch()
        assert not trainer.graph_enabled and trainer.captured_graphs() == []
    assert Trainer(_config(), data, progress=False, graph="auto")._runner is None  # auto is eager on the CPU


def test_the_notebook_recipe_trains_eagerly_with_a_warning():
    data = synthetic_dataset(n_train=200, n_test=20)
    with pytest.warns(RuntimeWarning, match="notebook loss head is not part of the graph step"):
        trainer = Trainer(Config.from_recipe("notebook", epochs=1), data, progress=False, graph="on")
    eager = Trainer(Config.from_recipe("notebook", epochs=1), data, progress=False)
    trainer.train_epoch(), eager.train_epoch()
    _same_training(eager, trainer)
    assert trainer._runner is None


# ---------------------------------------------------------------------------
# Recording, with a stand-in for CUDA graph capture (CPU)


class FakeGraph:
    """What capture_graph returns: ``launch`` replays the recorded function."""

    def __init__(self, fn, log):
        self.fn, self.log = fn, log

    def launch(self, stream=None):
        self.log.append(("replay", self.fn.rows))
        self.fn()


@pytest.fixture
def fake_capture(monkeypatch):
    """backend.capture_graph and capture_stream stand-ins; yields the log of captures and replays."""
    log = []

    def capture(fn, stream, keep=None):
        log.append(("capture", fn.rows))
        return FakeGraph(fn, log)

    monkeypatch.setattr(backend, "capture_graph", capture)
    monkeypatch.setattr(backend, "capture_stream", contextlib.nullcontext)
    # The stand-in "replays" by calling the step, so the generic step, which reads its
    # counter on the host, can be recorded here.
    monkeypatch.setattr(generic, "CAPTURE_SAFE", True)
    return log


def _recording_trainer(config, data):
    """A CPU trainer whose device-resident steps are recorded as if on a GPU."""
    trainer = Trainer(config, data, progress=False, graph="on")
    trainer._runner = graphstep.GraphRunner(trainer, capture=True)
    return trainer


def test_each_step_shape_is_recorded_after_its_first_run_and_replayed(fake_capture):
    data = synthetic_dataset(n_train=1000)
    trainer = _recording_trainer(_config(), data)
    eager = Trainer(_config(), data, progress=False)
    for _ in range(2):
        trainer.train_epoch(), eager.train_epoch()
    _same_training(eager, trainer)
    counts = collections.Counter(fake_capture)
    # The full batch: run once, recorded, then 14 replays in epoch 1 and 15 in epoch 2; the partial
    # batch: run once at the end of epoch 1, recorded, replayed in epoch 2.
    assert counts == {("capture", 64): 1, ("replay", 64): 29, ("capture", 40): 1, ("replay", 40): 1}
    assert fake_capture[:2] == [("capture", 64), ("replay", 64)]
    assert [g.fn.rows for g in trainer.captured_graphs()] == [64, 40]


def test_a_failed_capture_warns_once_and_training_goes_on_eagerly(fake_capture, monkeypatch):
    def refuse(fn, stream, keep=None):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(backend, "capture_graph", refuse)
    data = synthetic_dataset(n_train=1000)
    trainer = _recording_trainer(_config(), data)
    eager = Trainer(_config(), data, progress=False)
    with pytest.warns(RuntimeWarning, match=r"^recording the training step as a CUDA graph failed \(RuntimeError: "
                                            r"operation not permitted when stream is capturing\); training goes on "
                                            r"without graphs$") as warned:
        for _ in range(2):
            trainer.train_epoch(), eager.train_epoch()
    assert len(warned) == 1
    _same_training(eager, trainer)
    assert trainer.captured_graphs() == [] and trainer._runner.failed


def test_a_failing_first_graph_step_falls_back_to_the_eager_step(fake_capture, monkeypatch):
    def broken(step):
        raise RuntimeError("nvrtc: error: identifier 'x' is undefined")

    monkeypatch.setattr(graphstep.ResidentStep, "__call__", broken)
    data = synthetic_dataset(n_train=1000)
    trainer = _recording_trainer(_config(), data)
    eager = Trainer(_config(), data, progress=False)
    with pytest.warns(RuntimeWarning, match="the graph step failed .*identifier 'x' is undefined.*without CUDA graphs"):
        trainer.train_epoch()
    eager.train_epoch()
    trainer.train_epoch(), eager.train_epoch()
    _same_training(eager, trainer)
    assert trainer._runner is None and not trainer.graph_enabled


def test_the_generic_step_is_not_recorded(monkeypatch):
    """As with XPGRAD_FUSED=0 on a GPU: the generic step reads its counter on the host, so it runs eagerly."""
    monkeypatch.setattr(backend, "capture_stream", contextlib.nullcontext)
    data = synthetic_dataset(n_train=1000)
    with pytest.warns(RuntimeWarning, match="generic kernels read the step counter on the host"):
        trainer = _recording_trainer(_config(), data)
    eager = Trainer(_config(), data, progress=False)
    trainer.train_epoch(), eager.train_epoch()
    _same_training(eager, trainer)
    assert trainer.captured_graphs() == []


# ---------------------------------------------------------------------------
# Kernels per step, counted on the CPU


def _count_launches(monkeypatch, config):
    """The launches one device-resident step makes through xpgrad.kernels, by name (no kernel runs)."""
    launches = []
    trainer = Trainer(config, synthetic_dataset(n_train=300, n_test=20), progress=False, graph="on")
    monkeypatch.setattr(backend, "cupy", np)  # the kernels' own scratch arrays, on the host
    monkeypatch.setattr(graphstep, "get_ops", lambda xp: kernels)
    monkeypatch.setattr(optim, "get_ops", lambda xp: kernels)
    monkeypatch.setattr(kernels.KernelSpec, "__call__", lambda spec, *a, **k: launches.append(spec.name))
    monkeypatch.setattr(kernels.RawKernelSpec, "launch", lambda spec, *a: launches.append(spec.name))
    monkeypatch.setattr(graphstep, "gemm", lambda xp, a, b, out: launches.append("cublas gemm"))
    monkeypatch.setattr(kernels, "bias_grad", lambda g, out: launches.append("cupy sum(axis=0)"))
    runner = graphstep.GraphRunner(trainer, capture=False)
    runner.arrays.order[...] = np.arange(300)
    runner.arrays.schedule[...] = trainer._schedule()
    runner.run(0)
    return launches


def test_the_default_step_launches_twelve_kernels(monkeypatch):
    """784-100-10 with Adam at batch 128: at most 14 kernels per step (issue 10); a gemm is one cuBLAS kernel."""
    launches = _count_launches(monkeypatch, Config.from_recipe("default"))
    assert launches == [
        "xpgrad_gather_batch", "cublas gemm", "xpgrad_bias_relu_fwd", "cublas gemm", "xpgrad_softmax_xent_step",
        "cublas gemm", "cupy sum(axis=0)", "cublas gemm", "xpgrad_relu_bwd", "cublas gemm", "cupy sum(axis=0)",
        "xpgrad_adam_step"]


@pytest.mark.parametrize("optimizer, hidden, count", [("sgd", (100,), 12), ("momentum", (100,), 12),
                                                      ("adam", (100, 100), 18)])
def test_each_hidden_layer_adds_six_kernels(monkeypatch, optimizer, hidden, count):
    launches = _count_launches(monkeypatch, Config.from_recipe("default", optimizer=optimizer, hidden=hidden))
    assert len(launches) == count
    assert launches[-1] == {"sgd": "xpgrad_sgd_step_x4", "momentum": "xpgrad_momentum_step",
                            "adam": "xpgrad_adam_step"}[optimizer]


# ---------------------------------------------------------------------------
# On a GPU


def _gpu_pair(config, data):
    return (Trainer(config, data, device="cuda", progress=False, graph="off"),
            Trainer(config, data, device="cuda", progress=False, graph="on"))


def _max_relative_difference(a: Trainer, b: Trainer) -> float:
    """The largest ``max|a - b| / max|a|`` over the parameters."""
    worst = 0.0
    for name, value in a.model.params.items():
        want, got = backend.to_numpy(value), backend.to_numpy(b.model.params[name])
        worst = max(worst, float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)))
    return worst


def test_graph_epochs_match_eager_epochs_on_a_gpu(gpu_xp):
    """Two epochs (the partial last batch's graph is recorded in the first and replayed in the second),
    float32, from the same initial weights: parameters within 1e-5 relative (issue 10)."""
    eager, graphed = _gpu_pair(_config(), synthetic_dataset(n_train=1000))
    for _ in range(2):
        a, b = eager.train_epoch(), graphed.train_epoch()
        np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-5)
        assert abs(b["train_accuracy"] - a["train_accuracy"]) <= 2 / 1000
    assert graphed.graph_enabled and len(graphed.captured_graphs()) == 2
    worst = _max_relative_difference(eager, graphed)
    print(f"graph vs eager, max relative parameter difference after 2 epochs: {worst:.3e}")
    assert worst <= 1e-5


def test_graph_resume_continues_exactly_on_a_gpu(gpu_xp, tmp_path):
    straight, resumed = _interrupted_and_resumed(tmp_path, synthetic_dataset(), "cuda", "on", "on")
    _same_training(straight, resumed)
    assert resumed.graph_enabled


def _kernel_nodes(graph) -> int:
    dot = graph.debug_dot_str(backend.cupy.cuda.runtime.cudaGraphDebugDotFlagsVerbose)
    dot = dot.decode(errors="replace") if isinstance(dot, bytes) else dot
    return collections.Counter(re.findall(r'label="\{?\s*([A-Z][A-Z_]*)', dot))["KERNEL"]


def test_the_default_graph_step_has_at_most_14_kernels_on_a_gpu(gpu_xp):
    data = synthetic_dataset(n_train=1000)
    trainer = Trainer(Config.from_recipe("default", epochs=1), data, device="cuda", progress=False, graph="on")
    trainer.train_epoch()
    full = trainer.captured_graphs()[0]
    print(f"kernel nodes in the default step's graph: {_kernel_nodes(full)} (12 counted on the CPU)")
    assert _kernel_nodes(full) <= 14


def test_a_failed_capture_on_a_gpu_falls_back_to_eager(gpu_xp, monkeypatch):
    def refuse(fn, stream, keep=None):
        raise RuntimeError("no capture today")

    monkeypatch.setattr(backend, "capture_graph", refuse)
    eager, graphed = _gpu_pair(_config(), synthetic_dataset(n_train=1000))
    with pytest.warns(RuntimeWarning, match="no capture today"):
        graphed.train_epoch()
    eager.train_epoch()
    assert not graphed.graph_enabled and graphed.captured_graphs() == []
    assert _max_relative_difference(eager, graphed) <= 1e-5


# ---------------------------------------------------------------------------
# The command line


@needs_fashion
def test_train_graph_option_picks_the_step_and_is_checked(tmp_path):
    assert_user_error(xpgrad("train", "--graph", "maybe", tmp_path=tmp_path), "--graph", code=2)
    params = {}
    for mode in ("on", "off"):
        out = tmp_path / mode
        proc = xpgrad("train", "--dataset", "fashion-mnist", "--data-dir", FASHION, "--device", "cpu", "--epochs", 1,
                      "--hidden", 16, "--graph", mode, "--out", out, "--quiet", tmp_path=tmp_path)
        assert proc.returncode == 0, proc.stderr
        params[mode] = load_checkpoint(out / "checkpoint.npz")["params"]
    for name, value in params["off"].items():
        assert np.array_equal(params["on"][name], value), name
