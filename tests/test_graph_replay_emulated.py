"""A recorded optimizer step replayed with a changing learning rate, on the CPU through the CUDA emulator.

A CUDA graph records each kernel launch with its arguments (the arrays'
addresses, the numbers) and a replay launches exactly those again, reading
whatever the arrays hold then. This stand-in does the same with xpgrad's raw
kernels run by tests/cuda_emulator.py: while "recording", ``optimizer.step()``
runs its Python and each launch is kept (none runs); a "replay" runs the kept
launches on the same NumPy arrays. So it shows what the GPU's replay would
compute: an optimizer whose learning rate, schedule and step count are read
in device memory replays the right update after ``optimizer.lr = x``, with
the right bias corrections, step after step; one that passed them as numbers
would replay the recorded ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from xpgrad import backend, generic, kernels, nn, optim

from .helpers import tolerances
from .test_kernels_emulated import compiled, emulated  # noqa: F401 - fixtures


class Recorded:
    """The kernel launches made by ``fn`` (which run nothing while recorded), replayable."""

    def __init__(self, fn, monkeypatch):
        self.launches = []
        launch = kernels.RawKernelSpec.launch
        with monkeypatch.context() as patch:
            patch.setattr(kernels.RawKernelSpec, "launch", lambda spec, *args: self.launches.append((spec, args)))
            fn()
        self._launch = launch

    def replay(self):
        for spec, args in self.launches:
            self._launch(spec, *args)


@pytest.fixture
def on_host(emulated, monkeypatch):
    """The emulator's kernels on NumPy arrays, which the rest of xpgrad still sees as host arrays."""
    monkeypatch.setattr(backend, "is_cupy_array", lambda a: False)
    monkeypatch.setattr(optim, "get_ops", lambda xp: kernels)


def _model(seed):
    model = nn.Sequential(nn.Linear(6, 5, rng=seed), nn.ReLU(), nn.Linear(5, 3, rng=seed + 1))
    nn.flatten_parameters(model)
    return model


@pytest.mark.parametrize("name", ["adam", "momentum", "sgd"])
def test_a_recorded_step_replays_with_the_current_learning_rate(on_host, rng, monkeypatch, name):
    lrs = [0.01, 0.01, 0.005, 0.02, 0.001, 0.001, 0.03]
    make = {"adam": lambda m: optim.Adam(m.named_parameters(), lr=lrs[0], schedule=optim.CosineSchedule(5)),
            "momentum": lambda m: optim.MomentumSGD(m.named_parameters(), lr=lrs[0], momentum=0.9),
            "sgd": lambda m: optim.SGD(m.named_parameters(), lr=lrs[0])}[name]
    eager_model, graph_model = _model(0), _model(0)
    eager, graphed = make(eager_model), make(graph_model)
    grads = [rng.normal(size=eager_model._flat.grad.shape).astype(np.float32)
             for _ in lrs]

    def give(model, g):  # the gradient buffer refilled, as a backward pass would before each step
        for p in model.parameters():
            p.grad = p._grad_slot
        model._flat.grad[...] = g

    give(graph_model, grads[0])
    recorded = Recorded(graphed.step, monkeypatch)
    assert [spec.name for spec, _ in recorded.launches] == [f"xpgrad_{name}_update"]
    rtol, atol = tolerances(np.float32)
    for i, (lr, g) in enumerate(zip(lrs, grads)):
        eager.lr = graphed.lr = lr  # only the device table changes; the recording stays as it is
        give(eager_model, g)
        eager.step()
        give(graph_model, g)
        recorded.replay()
        for (n, a), b in zip(eager_model.named_parameters(), graph_model.parameters()):
            assert np.array_equal(a.data, b.data), (i, n)
        assert graphed.step_count == eager.step_count == i + 1
    # and against the generic code's numbers (Python floats for the lr and bias corrections)
    host = _model(0)
    reference = make(host)
    monkeypatch.setattr(optim, "get_ops", lambda xp: generic)
    for lr, g in zip(lrs, grads):
        reference.lr = lr
        give(host, g)
        reference.step()
    for a, b in zip(host.parameters(), graph_model.parameters()):
        np.testing.assert_allclose(b.data, a.data, rtol=rtol, atol=atol)


def test_a_step_recorded_with_numbers_would_replay_them(on_host, rng, monkeypatch):
    """The failure this design prevents: an update given its learning rate and bias corrections as numbers
    (the old ``adam_update(..., lr, ..., step)``) replays the recorded ones. Shown with a launch that captured
    a number: changing ``lr`` afterwards does not reach it."""
    model = _model(0)
    opt = optim.SGD(model.named_parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = p._grad_slot
    model._flat.grad[...] = 1.0
    recorded = Recorded(opt.step, monkeypatch)
    before = model._flat.data.copy()
    opt.lr = 0.0  # read from the table at replay time: the replay must not move the parameters
    recorded.replay()
    assert np.array_equal(model._flat.data, before)
    opt.lr = 0.5
    recorded.replay()
    np.testing.assert_allclose(model._flat.data, before - 0.5, rtol=1e-6)
    assert isinstance(opt._table, np.ndarray) and opt._table.dtype == np.float64
