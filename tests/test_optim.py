"""Optimizers against torch.optim, on each backend, and their checkpoint state."""

import numpy as np
import pytest

from xpgrad import backend
from xpgrad.optim import SGD, Adam, MomentumSGD, make_optimizer

torch = pytest.importorskip("torch", reason="the optimizer oracle needs PyTorch (pip install torch==2.13.0)")

CASES = {
    "sgd": (lambda p: SGD(p, lr=0.1), lambda t: torch.optim.SGD(t, lr=0.1)),
    "momentum": (lambda p: MomentumSGD(p, lr=0.1, momentum=0.9), lambda t: torch.optim.SGD(t, lr=0.1, momentum=0.9)),
    "adam": (lambda p: Adam(p, lr=0.01), lambda t: torch.optim.Adam(t, lr=0.01)),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch_optim(xp, rng, name, dtype):
    ours_factory, torch_factory = CASES[name]
    init = {"W": rng.normal(size=(4, 3)).astype(dtype), "b": rng.normal(size=(3,)).astype(dtype)}
    grads = [{k: rng.normal(size=v.shape).astype(dtype) for k, v in init.items()} for _ in range(6)]
    params = {k: xp.asarray(v) for k, v in init.items()}
    opt = ours_factory(params)
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    topt = torch_factory(list(tparams.values()))
    for g in grads:
        opt.step({k: xp.asarray(v) for k, v in g.items()})
        for k, t in tparams.items():
            t.grad = torch.tensor(g[k])
        topt.step()
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    for k in init:
        got = backend.to_numpy(params[k])
        assert got.dtype == dtype
        np.testing.assert_allclose(got, tparams[k].detach().numpy(), rtol=rtol, atol=rtol, err_msg=k)


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_state_round_trip_continues_identically(rng, name):
    make = CASES[name][0]
    init = {"W": rng.normal(size=(5, 2))}
    grads = [{"W": rng.normal(size=(5, 2))} for _ in range(4)]
    a_params = {"W": init["W"].copy()}
    a = make(a_params)
    for g in grads:
        a.step(g)
    b_params = {"W": init["W"].copy()}
    b = make(b_params)
    for g in grads[:2]:
        b.step(g)
    c_params = {"W": b_params["W"].copy()}
    c = make(c_params)
    c.load_state_dict(b.state_dict())
    for g in grads[2:]:
        c.step(g)
    assert np.array_equal(c_params["W"], a_params["W"])


def test_updates_in_place_without_allocating_new_parameters(rng):
    params = {"W": rng.normal(size=(3, 3))}
    before = params["W"]
    make_optimizer("adam", params, 1e-3).step({"W": np.ones((3, 3))})
    assert params["W"] is before


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="learning rate must be positive"):
        SGD({"W": np.zeros(2)}, lr=-1)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("rmsprop", {}, 1e-3)
