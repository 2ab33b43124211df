"""The graph step (xpgrad.graph_step, and the Trainer's --graph): recorded once and replayed on a GPU, the step
as it is on the CPU.

On the CPU nothing is recorded, so graph="on" is the same function as
graph="off" and gives the same bits. The recording logic (which step, when
recorded, what is refused and named, what happens when recording fails) is
checked with a stand-in for CUDA graph capture; the kernels per step are
counted by logging what a GPU would launch (tests/launch_count.py). The
gpu-marked tests run the real thing.
"""

import collections
import contextlib
import functools
import re

import numpy as np
import pytest

from xpgrad import Tensor, backend, functional, generic, graph_step, nn, optim
from xpgrad.backend import graph as backend_graph
from xpgrad.errors import GraphCaptureError, XpgradError
from xpgrad.graphstep import GraphStep
from xpgrad.training import Config, Trainer, run
from xpgrad.training import trainer as trainer_module

from .launch_count import launches_of_one_step
from .test_cli import FASHION, assert_user_error, needs_fashion, xpgrad
from .test_train import restore, small_config, state, synthetic_dataset

LR = {"sgd": 0.05, "momentum": 0.05, "adam": 2e-3}


def _config(optimizer="adam", schedule="cosine", **overrides):
    config = small_config(optimizer=optimizer, lr=LR[optimizer], **overrides)
    config.schedule = schedule
    return config


def _same_training(a: Trainer, b: Trainer):
    """Both trainers hold exactly the same parameters, optimizer state and step count."""
    want = state(a)
    for name, value in state(b).items():
        assert np.array_equal(value, want[name]), name
    state_a, state_b = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert np.array_equal(state_a[key], state_b[key]), key


# 1000 samples in batches of 64: 15 full batches and a partial one of 40.
@pytest.mark.parametrize("overrides", [{}, {"optimizer": "sgd", "schedule": "constant"}, {"batch_size": 0},
                                       {"hidden": (16, 8)}, {"dtype": "float64"}],
                         ids=["adam-cosine", "sgd", "full-batch", "two-hidden", "float64"])
def test_graph_on_the_cpu_is_the_step_as_it_is(overrides):
    data = synthetic_dataset(n_train=1000)
    eager = Trainer(_config(**overrides), data, progress=False, graph="off")
    graphed = Trainer(_config(**overrides), data, progress=False, graph="on")
    for _ in range(2):
        a, b = eager.train_epoch(), graphed.train_epoch()
        assert (a["train_loss"], a["train_accuracy"]) == (b["train_loss"], b["train_accuracy"])
    _same_training(eager, graphed)
    assert not graphed.graph_enabled and graphed.captured_graphs() == []


def test_graph_mode_is_checked():
    with pytest.raises(XpgradError, match="unknown graph mode 'yes'; choose one of off, on, auto"):
        Trainer(_config(), synthetic_dataset(n_train=100, n_test=20), progress=False, graph="yes")


def test_graph_step_on_the_cpu_calls_the_function():
    calls = []
    step = graph_step(lambda: calls.append(1) or len(calls), "cpu")
    assert [step(), step(), step()] == [1, 2, 3] and step.graph is None


# ---------------------------------------------------------------------------
# Recording, with a stand-in for CUDA graph capture (CPU)


class FakeGraph:
    """What capture_graph returns: ``launch`` replays the recorded function."""

    def __init__(self, fn, log):
        self.fn, self.log = fn, log

    def launch(self, stream=None):
        self.log.append("replay")
        self.fn()


@pytest.fixture
def fake_capture(monkeypatch):
    """Stand-ins for backend.capture_graph and capture_stream; yields the log of captures and replays.

    A real capture runs the Python of the step once (recording its launches, running none); the stand-in
    records the function, runs nothing, and "replays" by calling it: the same numbers on the CPU."""
    log = []

    def capture(fn, stream, keep=None):
        log.append("capture")
        return FakeGraph(fn, log)

    monkeypatch.setattr(backend, "capture_graph", capture)
    monkeypatch.setattr(backend, "capture_stream", contextlib.nullcontext)
    monkeypatch.setattr(generic, "CAPTURE_SAFE", True)  # the generic code reads counters on the host
    return log


@pytest.fixture
def recording(monkeypatch, fake_capture):
    """The Trainer's graph steps recorded on the CPU, as on a GPU."""
    monkeypatch.setattr(trainer_module, "GraphStep", functools.partial(GraphStep, record=True))
    return fake_capture


def test_each_step_shape_is_recorded_after_its_first_run_and_replayed(recording):
    data = synthetic_dataset(n_train=1000)
    trainer = Trainer(_config(), data, progress=False, graph="on")
    eager = Trainer(_config(), data, progress=False)
    for _ in range(2):
        trainer.train_epoch(), eager.train_epoch()
    _same_training(eager, trainer)
    # The full batch: run once, recorded, then 14 replays in epoch 1 and 15 in epoch 2; the partial batch:
    # run once at the end of epoch 1, recorded, replayed in epoch 2.
    assert collections.Counter(recording) == {"capture": 2, "replay": 30}
    assert recording[:2] == ["capture", "replay"] and len(trainer.captured_graphs()) == 2
    assert trainer.graph_enabled


def _refusing_capture(monkeypatch, trainer=None):
    """A stand-in capture that runs the step's Python while ``recording`` is on, as a real capture does. On the
    CPU that runs the step too, which a capture would not: so the ``trainer``'s state is put back after."""
    def capture(fn, stream, keep=None):
        kept = _device_state(trainer)
        try:
            with backend_graph.recording_session():
                fn()
        finally:
            for array, value in kept:
                array[...] = value
        return FakeGraph(fn, [])

    monkeypatch.setattr(backend, "capture_graph", capture)


def _device_state(trainer) -> list:
    """(array, a copy of it) for everything a training step changes."""
    if trainer is None:
        return []
    opt, batches = trainer.optimizer, trainer.batches
    arrays = [trainer.parameters.data, trainer.parameters.grad, opt._step, *opt._flat_state.values(),
              batches.counter, batches.loss_sum, batches.correct]
    return [(a, a.copy()) for a in arrays]


class Batched(nn.Module):
    """A model with a batched matrix product, which cuBLAS runs through CuPy: not recordable."""

    def __init__(self, input_shape, num_classes):
        self.fc = nn.Linear(28, num_classes)

    def forward(self, x):
        return (x.reshape(x.shape[0], 28, 28) @ self.fc.weight).sum(axis=1) + self.fc.bias


def test_an_op_that_cannot_be_recorded_is_named(recording, monkeypatch):
    _refusing_capture(monkeypatch)
    layer = nn.Linear(3, 2, rng=0)
    opt = optim.SGD([layer.weight], lr=0.1)
    x = Tensor(np.ones((4, 2, 3), dtype=np.float32))

    def step():
        loss = (x @ layer.weight).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    with pytest.raises(GraphCaptureError, match=r"^Matmul of 3-d and 2-d arrays calls cuBLAS through CuPy, which "
                                                r"a CUDA graph cannot record"):
        GraphStep(step, "cpu", record=True)()
    with pytest.raises(GraphCaptureError, match=r"Tensor.item\(\) reads a value on the host"):
        GraphStep(lambda: functional.relu(Tensor(np.ones(1))).item(), "cpu", record=True)()


def test_an_error_while_recording_names_the_op_that_raised(monkeypatch, fake_capture):
    _refusing_capture(monkeypatch)

    def broken(self, x):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(functional.functions.Relu, "forward", broken)
    with pytest.raises(GraphCaptureError, match=r"Relu cannot be recorded in a CUDA graph \(RuntimeError: operation"):
        with backend_graph.recording_session():
            functional.relu(Tensor(np.ones(2)))


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_a_model_that_cannot_be_recorded(recording, monkeypatch, tmp_path, mode):
    """graph="on": one clear error naming the op; "auto": one warning, then the step as it is."""
    model_file = tmp_path / "batched.py"
    model_file.write_text("from tests.test_graphstep import Batched\n")
    config = _config(model=f"{model_file}:Batched")
    data = synthetic_dataset(n_train=192, n_test=20)  # whole batches: one step shape to record
    if mode == "on":
        trainer = Trainer(config, data, progress=False, graph="on")
        _refusing_capture(monkeypatch, trainer)
        with pytest.raises(GraphCaptureError, match="Matmul of 3-d and 2-d arrays"):
            trainer.train_epoch()
        return
    eager, trainer = Trainer(config, data, progress=False), Trainer(config, data, progress=False, graph="auto")
    trainer._graph_steps = True  # as on a GPU: "auto" records on a GPU only
    _refusing_capture(monkeypatch, trainer)
    with pytest.warns(RuntimeWarning, match="Matmul of 3-d and 2-d arrays .*; training goes on without CUDA graphs"):
        trainer.train_epoch()
    eager.train_epoch()
    trainer.train_epoch(), eager.train_epoch()
    _same_training(eager, trainer)
    assert not trainer.graph_enabled


def test_a_failed_capture_warns_once_under_auto_and_training_goes_on(recording, monkeypatch):
    def refuse(fn, stream, keep=None):
        raise RuntimeError("cudaErrorStreamCaptureInvalidated")

    monkeypatch.setattr(backend, "capture_graph", refuse)
    data = synthetic_dataset(n_train=1000)
    trainer = Trainer(_config(), data, progress=False, graph="auto")
    trainer._graph_steps = True
    eager = Trainer(_config(), data, progress=False)
    with pytest.warns(RuntimeWarning, match=r"^recording the step as a CUDA graph failed "
                                            r"\(cudaErrorStreamCaptureInvalidated\); training goes on without CUDA "
                                            r"graphs$") as warned:
        for _ in range(2):
            trainer.train_epoch(), eager.train_epoch()
    assert len(warned) == 2  # once per step shape (the full batch's, the partial one's)
    _same_training(eager, trainer)
    assert trainer.captured_graphs() == []


def test_the_generic_code_is_not_recorded(monkeypatch, recording):
    """As with XPGRAD_FUSED=0 on a GPU: the generic code reads its counters on the host."""
    monkeypatch.setattr(generic, "CAPTURE_SAFE", False)
    data = synthetic_dataset(n_train=1000)
    with pytest.raises(GraphCaptureError, match="the generic code .* reads its counters on the host"):
        Trainer(_config(), data, progress=False, graph="on").train_epoch()
    trainer, eager = Trainer(_config(), data, progress=False, graph="auto"), Trainer(_config(), data, progress=False)
    trainer._graph_steps = True
    with pytest.warns(RuntimeWarning, match="reads its counters on the host"):
        trainer.train_epoch()
    eager.train_epoch()
    _same_training(eager, trainer)
    assert recording == []


def test_resume_with_the_graph_step_is_bit_exact(recording, tmp_path):
    data = synthetic_dataset()
    straight = Trainer(_config(), data, progress=False, graph="on")
    run(straight, str(tmp_path / "straight"), log=lambda *_: None)
    first = Trainer(_config(), data, progress=False, graph="on")

    def interrupt_after_epoch_2(line):
        if first.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(first, str(tmp_path / "split"), log=interrupt_after_epoch_2)
    resumed = Trainer(_config(), data, progress=False, graph="on")
    history = restore(resumed, tmp_path / "split" / "checkpoint.npz")
    run(resumed, str(tmp_path / "split"), history=history, log=lambda *_: None)
    _same_training(straight, resumed)


# ---------------------------------------------------------------------------
# Kernels per step, counted on the CPU


DEFAULT_STEP = [
    "xpgrad_gather_batch",                                # the batch, from the epoch's order at the counter
    "cublas gemm", "xpgrad_bias_relu_fwd",                # layer 1 (Linear + ReLU, one Function)
    "cublas gemm", "cupy add",                            # layer 2: x @ W2, + b2
    "xpgrad_softmax_xent_step",                           # loss, its gradient, loss and accuracy sums
    "cublas gemm", "cublas gemm", "cupy add.reduce",      # layer 2 backward: gx, gW2, gb2
    "xpgrad_bias_relu_bwd", "cublas gemm",                # layer 1 backward: ReLU mask and gb1, gW1
    "xpgrad_adam_update",                                 # one update for the whole model, lr from memory
]


def test_the_default_step_launches_twelve_kernels(monkeypatch):
    """784-100-10 with Adam at batch 128: at most 12 kernels per step, counted as a GPU would launch them
    (a gemm is one cuBLAS kernel here; on a GPU cuBLAS may split one, see bench/gpu_check.sh)."""
    trainer = Trainer(Config.from_recipe("default"), synthetic_dataset(n_train=300, n_test=20), progress=False)
    assert launches_of_one_step(monkeypatch, trainer) == DEFAULT_STEP


@pytest.mark.parametrize("optimizer, hidden, count", [("sgd", (100,), 12), ("momentum", (100,), 12),
                                                      ("adam", (100, 100), 17)])
def test_each_hidden_layer_adds_five_kernels(monkeypatch, optimizer, hidden, count):
    config = Config.from_recipe("default", optimizer=optimizer, hidden=hidden)
    launches = launches_of_one_step(monkeypatch, Trainer(config, synthetic_dataset(n_train=300, n_test=20),
                                                         progress=False))
    assert len(launches) == count, launches
    assert launches[-1] == f"xpgrad_{optimizer}_update"


# ---------------------------------------------------------------------------
# On a GPU


def _gpu_pair(config, data):
    return (Trainer(config, data, device="cuda", progress=False, graph="off"),
            Trainer(config, data, device="cuda", progress=False, graph="on"))


def _max_relative_difference(a: Trainer, b: Trainer) -> float:
    """The largest ``max|a - b| / max|a|`` over the parameters."""
    worst, got = 0.0, state(b)
    for name, want in state(a).items():
        worst = max(worst, float(np.abs(got[name] - want).max() / max(np.abs(want).max(), 1e-30)))
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


def test_the_default_graph_step_records_the_kernels_counted_on_the_cpu_on_a_gpu(gpu_xp):
    """The recorded default step against DEFAULT_STEP: xpgrad's own kernels exactly; cuBLAS may add a split-K
    reduction per gemm, nothing else may be added; and no memory nodes (cuBLAS works in its set workspace)."""
    from bench import steps

    data = synthetic_dataset(n_train=1000)
    trainer = Trainer(Config.from_recipe("default", epochs=1), data, device="cuda", progress=False, graph="on")
    trainer.train_epoch()
    counted = steps.graph_nodes(trainer.captured_graphs()[0])
    print(f"the default step's graph: {steps.describe_nodes(counted)}")
    on_cpu = collections.Counter(steps.kernel_owner(name) for name in DEFAULT_STEP)
    ours = [steps.xpgrad_kernel(name) for kind, name in counted["nodes"]
            if kind == "KERNEL" and steps.kernel_owner(name) == "xpgrad"]
    assert sorted(ours) == sorted(name for name in DEFAULT_STEP if steps.kernel_owner(name) == "xpgrad")
    reduces = counted["by_owner"]["cublas_reduce"]
    assert reduces <= on_cpu["cublas"]
    assert counted["kernels"] - reduces <= len(DEFAULT_STEP)
    assert counted["node_types"].get("MEM_ALLOC", 0) == counted["node_types"].get("MEM_FREE", 0) == 0


def test_a_changed_learning_rate_reaches_a_recorded_step_on_a_gpu(gpu_xp, rng):
    """The optimizer's lr lives in device memory: set between replays, it is used without recording again."""
    model = nn.Sequential(nn.Linear(20, 16, rng=0), nn.ReLU(), nn.Linear(16, 5, rng=1)).to("cuda")
    twin = nn.Sequential(nn.Linear(20, 16, rng=0), nn.ReLU(), nn.Linear(16, 5, rng=1)).to("cuda")
    x = Tensor(gpu_xp.asarray(rng.normal(size=(32, 20)).astype(np.float32)))
    t = gpu_xp.asarray(rng.integers(0, 5, size=32).astype(np.int32))
    steps = []
    for net in (model, twin):
        nn.flatten_parameters(net)
        opt = optim.Adam(net.named_parameters(), lr=0.01)

        def step(net=net, opt=opt):
            loss = functional.cross_entropy(net(x), t)
            opt.zero_grad()
            loss.backward()
            opt.step()

        steps.append((step, opt))
    recorded = graph_step(steps[0][0], "cuda")
    for i in range(6):
        for _, opt in steps:
            opt.lr = 0.01 / (i + 1)
        recorded()
        steps[1][0]()
    assert recorded.graph is not None and steps[0][1].step_count == 6
    for a, b in zip(model.parameters(), twin.parameters()):
        np.testing.assert_allclose(backend.to_numpy(a.data), backend.to_numpy(b.data), rtol=1e-5, atol=1e-6)


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
        with np.load(out / "checkpoint.npz") as ckpt:
            params[mode] = {k: ckpt[k] for k in ckpt.files if k.startswith("model/")}
    for name, value in params["off"].items():
        assert np.array_equal(params["on"][name], value), name
