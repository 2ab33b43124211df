"""Optimizers over Tensors against torch.optim, on each backend: the flat update and the per-parameter one,
schedules and learning rates kept in device memory, checkpoint state by name, and what is refused."""

import math

import numpy as np
import pytest

from xpgrad import Tensor, backend, nn
from xpgrad.optim import SGD, Adam, ConstantSchedule, CosineSchedule, MomentumSGD, Schedule, make_optimizer

torch = pytest.importorskip("torch", reason="the optimizer oracle needs PyTorch (pip install torch==2.13.0)")

CASES = {
    "sgd": (lambda p, **k: SGD(p, lr=0.1, **k), lambda t: torch.optim.SGD(t, lr=0.1)),
    "momentum": (lambda p, **k: MomentumSGD(p, lr=0.1, momentum=0.9, **k),
                 lambda t: torch.optim.SGD(t, lr=0.1, momentum=0.9)),
    "adam": (lambda p, **k: Adam(p, lr=0.01, **k), lambda t: torch.optim.Adam(t, lr=0.01)),
}


class Pair(nn.Module):
    """Two parameters, W (4, 3) and b (3,), as a tiny model."""

    def __init__(self, xp, init):
        self.W = Tensor(xp.asarray(init["W"]), requires_grad=True)
        self.b = Tensor(xp.asarray(init["b"]), requires_grad=True)


def _setup(xp, rng, dtype, flat):
    init = {"W": rng.normal(size=(4, 3)).astype(dtype), "b": rng.normal(size=(3,)).astype(dtype)}
    grads = [{k: rng.normal(size=v.shape).astype(dtype) for k, v in init.items()} for _ in range(6)]
    model = Pair(xp, init)
    if flat:
        nn.flatten_parameters(model)
    return init, grads, model


def _give(model, xp, g):
    for name, p in model.named_parameters():
        p.grad = xp.asarray(g[name])


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "per-parameter"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch_optim_with_a_changing_learning_rate(xp, rng, name, dtype, flat):
    """Six updates, the learning rate changed by hand after three (as a schedule on the host would)."""
    ours_factory, torch_factory = CASES[name]
    init, grads, model = _setup(xp, rng, dtype, flat)
    opt = ours_factory(model.named_parameters())
    assert (opt.flat is not None) == flat
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    topt = torch_factory(list(tparams.values()))
    for i, g in enumerate(grads):
        if i == 3:
            opt.lr = opt.lr / 4
            for group in topt.param_groups:
                group["lr"] /= 4
        _give(model, xp, g)
        opt.step()
        for k, t in tparams.items():
            t.grad = torch.tensor(g[k])
        topt.step()
    assert opt.step_count == 6
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    for k, p in model.named_parameters():
        got = backend.to_numpy(p.data)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, tparams[k].detach().numpy(), rtol=rtol, atol=rtol, err_msg=k)


@pytest.mark.parametrize("name", list(CASES))
def test_a_cosine_schedule_is_torchs_lambda_schedule(rng, name):
    ours_factory, torch_factory = CASES[name]
    init, grads, model = _setup(np, rng, np.float64, flat=True)
    opt = ours_factory(model.named_parameters(), schedule=CosineSchedule(4))
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    topt = torch_factory(list(tparams.values()))
    decay = torch.optim.lr_scheduler.LambdaLR(topt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, 4) / 4)))
    for g in grads:  # six updates: the last two at factor 0, past the schedule's end
        _give(model, np, g)
        opt.step()
        for k, t in tparams.items():
            t.grad = torch.tensor(g[k])
        topt.step()
        decay.step()
    for k, p in model.named_parameters():
        np.testing.assert_allclose(p.data, tparams[k].detach().numpy(), rtol=1e-12, atol=1e-12, err_msg=k)
    assert [opt.lr_at(s) for s in (0, 2, 4, 9)] == [opt.lr, opt.lr / 2, 0.0, 0.0]


def test_the_learning_rate_and_step_count_live_on_the_parameters_device(xp, rng):
    _, _, model = _setup(xp, rng, np.float32, flat=True)
    opt = Adam(model.named_parameters(), lr=0.01, schedule=CosineSchedule(10))
    assert backend.get_array_module(opt._table, opt._step) is xp
    assert opt._table.shape == (12,) and opt._step.dtype == np.int64
    opt.lr = 0.5
    assert float(opt._table[0]) == 0.5 and opt.lr == 0.5


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_state_round_trip_continues_identically_flat_or_not(rng, name):
    """Two updates, saved by name, loaded into an optimizer over a copy (flat into per-parameter and back)."""
    make = CASES[name][0]
    init, grads, a_model = _setup(np, rng, np.float64, flat=True)
    a = make(a_model.named_parameters())
    for g in grads:
        _give(a_model, np, g)
        a.step()
    b_model = Pair(np, init)
    nn.flatten_parameters(b_model)
    b = make(b_model.named_parameters())
    for g in grads[:2]:
        _give(b_model, np, g)
        b.step()
    c_model = Pair(np, {k: v.copy() for k, v in b_model.state_dict().items()})  # per-parameter
    c = make(c_model.named_parameters())
    c.load_state_dict(b.state_dict())
    assert c.step_count == 2 and set(b.state_dict()) == set(c.state_dict())
    for g in grads[2:]:
        _give(c_model, np, g)
        c.step()
    for k, p in a_model.named_parameters():
        assert np.array_equal(getattr(c_model, k).data, p.data), k


def test_a_state_of_another_model_is_refused(rng):
    _, _, model = _setup(np, rng, np.float64, flat=False)
    opt = Adam(model.named_parameters())
    state = opt.state_dict()
    with pytest.raises(ValueError, match=r"missing \['m/b'\]"):
        Adam(model.named_parameters()).load_state_dict({k: v for k, v in state.items() if k != "m/b"})
    with pytest.raises(ValueError, match="m/W has shape"):
        opt.load_state_dict({**state, "m/W": np.zeros((2, 2))})


def test_updates_in_place_and_keeps_the_flat_views(rng):
    _, grads, model = _setup(np, rng, np.float64, flat=True)
    store = nn.flatten_parameters(model)
    before = [p.data for p in model.parameters()]
    opt = make_optimizer("adam", model.parameters(), 1e-3)
    assert opt.flat is store and opt.names == ["0", "1"]  # plain Tensors are named by position, as in PyTorch
    _give(model, np, grads[0])
    opt.step()
    assert all(p.data is b for p, b in zip(model.parameters(), before))
    assert all(p.grad is p._grad_slot for p in model.parameters())


def test_a_replaced_parameter_is_refused_at_the_next_step(rng):
    _, grads, model = _setup(np, rng, np.float64, flat=True)
    opt = SGD(model.named_parameters(), lr=0.1)
    model.W.data = model.W.data.copy()
    _give(model, np, grads[0])
    with pytest.raises(ValueError, match="parameter W's data was replaced after nn.flatten_parameters"):
        opt.step()
    with pytest.raises(ValueError, match="Pair.b lives in the flat parameter buffer"):
        model.b = Tensor(np.zeros(3), requires_grad=True)


def test_a_gradient_set_by_hand_is_used_by_the_flat_update(rng):
    _, _, model = _setup(np, rng, np.float64, flat=True)
    opt = SGD(model.named_parameters(), lr=1.0)
    W0 = model.W.data.copy()
    model.W.grad, model.b.grad = np.ones((4, 3)), np.zeros(3)
    opt.step()
    assert np.array_equal(model.W.data, W0 - 1) and model.W.grad is model.W._grad_slot


def test_a_parameter_without_a_gradient_is_an_error(rng):
    _, _, model = _setup(np, rng, np.float64, flat=True)
    opt = SGD(model.named_parameters(), lr=0.1)
    model.W.grad = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"parameter b \(shape \(3,\)\) has no gradient"):
        opt.step()


def test_rejects_bad_settings_in_pytorchs_words():
    model = Pair(np, {"W": np.zeros((4, 3)), "b": np.zeros(3)})
    for make, words in [(lambda: SGD(model.parameters(), lr=-1), "Invalid learning rate: -1"),
                        (lambda: SGD(model.parameters(), lr=float("nan")), "Invalid learning rate: nan"),
                        (lambda: Adam(model.parameters(), beta1=1.0), "Invalid beta parameter at index 0: 1.0"),
                        (lambda: Adam(model.parameters(), beta2=-0.1), "Invalid beta parameter at index 1: -0.1"),
                        (lambda: Adam(model.parameters(), eps=-1e-8), "Invalid epsilon value: -1e-08"),
                        (lambda: MomentumSGD(model.parameters(), lr=0.1, momentum=1.5), "Invalid momentum value"),
                        (lambda: make_optimizer("rmsprop", model.parameters(), 1e-3), "unknown optimizer"),
                        (lambda: SGD([], lr=0.1), "the optimizer got no parameters"),
                        (lambda: SGD([model.W, model.W], lr=0.1), "given to the optimizer twice")]:
        with pytest.raises(ValueError, match=words):
            make()
    with pytest.raises(TypeError, match="takes an iterable of parameters"):
        SGD({"W": np.zeros(2)}, lr=0.1)
    with pytest.raises(TypeError, match="must be a leaf Tensor with requires_grad=True"):
        SGD([Tensor(np.ones(2))], lr=0.1)
    with pytest.raises(TypeError, match="xpgrad.optim.Schedule"):
        SGD(model.parameters(), lr=0.1, schedule=lambda s: 1.0)
    with pytest.raises(ValueError, match="total_steps must be a whole number"):
        CosineSchedule(0)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        SGD(model.parameters(), lr=0.1).lr = -3


def test_a_schedule_of_your_own(rng):
    class Halving(Schedule):
        steps = 3

        def factor(self, step):
            return 0.5 ** min(step, self.steps)

    _, _, model = _setup(np, rng, np.float64, flat=True)
    opt = SGD(model.named_parameters(), lr=1.0, schedule=Halving())
    W0 = model.W.data.copy()
    for _ in range(5):
        model.W.grad, model.b.grad = np.ones((4, 3)), np.zeros(3)
        opt.step()
    assert np.array_equal(model.W.data, W0 - (1 + 0.5 + 0.25 + 0.125 + 0.125))
    assert isinstance(SGD(model.parameters(), lr=1.0).schedule, ConstantSchedule)


def test_parameters_moved_after_the_optimizer_was_made_are_refused(rng, monkeypatch):
    """As PyTorch asks: make the optimizer after model.to(...). A flat model cast to another dtype shows it on
    the CPU; another device is shown by making the parameters look moved."""
    _, grads, model = _setup(np, rng, np.float32, flat=True)
    opt = SGD(model.named_parameters(), lr=0.1)
    model.to(dtype="float64")
    _give(model, np, grads[0])
    with pytest.raises(ValueError, match=r"the parameters moved \(to cpu, float64\) after the optimizer was made"):
        opt.step()
    _, grads, loose = _setup(np, rng, np.float32, flat=False)
    opt = SGD(loose.named_parameters(), lr=0.1)
    on_the_cpu = backend.device_of
    monkeypatch.setattr(backend, "device_of", lambda a: backend.Device("cuda", 0) if a is loose.b.data else
                        on_the_cpu(a))
    _give(loose, np, grads[0])
    with pytest.raises(ValueError, match="parameter b moved to cuda:0 after the optimizer was made on cpu"):
        opt.step()
