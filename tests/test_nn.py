"""nn modules and optimizers over Tensors, against the hand-written MLP, the notebook's chain and torch.optim."""

import numpy as np
import pytest

from xpgrad import Tensor, backend, functional, nn, no_grad, notebook, optim
from xpgrad.errors import DeviceError
from xpgrad.model import MLP
from xpgrad.ops import SoftmaxCrossEntropy


def host(a):
    return backend.to_numpy(a)


def mlp_and_sequential(xp, sizes=(784, 100, 10), dtype="float64"):
    """An MLP and an nn.Sequential with the same weights, on xp's device."""
    device = "cpu" if xp is np else "cuda"
    mlp = MLP(sizes, dtype=dtype, device=device, seed=3)
    model = nn.Sequential(nn.Linear(sizes[0], sizes[1], dtype=dtype), nn.ReLU(),
                          nn.Linear(sizes[1], sizes[2], dtype=dtype)).to(device)
    with no_grad():  # the same (in, out) layout: the MLP's arrays copy over unchanged
        for i, layer in ((1, model[0]), (2, model[2])):
            layer.weight.data[...] = mlp.params[f"W{i}"]
            layer.bias.data[...] = mlp.params[f"b{i}"] + 0.01 * i  # non-zero biases
            mlp.params[f"b{i}"][...] = layer.bias.data
    return mlp, model


def test_sequential_gets_the_mlps_gradients(xp, rng):
    mlp, model = mlp_and_sequential(xp)
    x = xp.asarray(rng.normal(size=(32, 784)))
    t = xp.asarray(rng.integers(0, 10, size=32))
    head = SoftmaxCrossEntropy()
    mlp_loss = head.forward(mlp.forward(x), t)
    grads = mlp.backward(head.backward())
    loss = functional.cross_entropy(model(Tensor(x)), t)
    loss.backward()
    assert float(loss.data) == float(mlp_loss)
    named = dict(model.named_parameters())
    assert list(named) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for name, key in (("0.weight", "W1"), ("0.bias", "b1"), ("2.weight", "W2"), ("2.bias", "b2")):
        got, want = host(named[name].grad), host(grads[key])
        assert got.shape == want.shape and got.dtype == np.float64
        scale = np.abs(want).max()
        assert scale > 0
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * scale, err_msg=name)


def test_the_notebook_cell_written_with_tensors(xp):
    """The "Final Gradient Check" cell: the same seven gradients as the hand-written chain."""
    x, W1, W2, label = notebook.inputs(seed=4, xp=xp)
    want = notebook.chain(x, W1, W2, label)
    tx, tW1, tW2 = (Tensor(a, requires_grad=True) for a in (x, W1, W2))
    h1 = tx @ tW1
    h1_relu = h1.relu()
    h2 = h1_relu @ tW2
    prob = functional.softmax(h2)
    for t in (h1, h1_relu, h2, prob):
        t.retain_grad()
    (label * (prob + 1e-12).log()).sum().backward()
    got = {"h2_log_grad": prob.grad, "h2_soft_grad": h2.grad, "h2_grad": h1_relu.grad, "W2_grad": tW2.grad,
           "h1_relu_grad": h1.grad, "h1_grad": tx.grad, "W1_grad": tW1.grad}
    assert set(got) == set(want)
    for name in want:
        ref = host(want[name])
        np.testing.assert_allclose(host(got[name]), ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max(), err_msg=name)


def test_parameters_zero_grad_and_sharing():
    shared = nn.Linear(3, 3, rng=0)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(3, 2, bias=False, rng=1))
    params = list(model.parameters())
    assert len(params) == 3  # the shared layer once
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "3.weight"]
    functional.cross_entropy(model(np.ones((4, 3))), np.array([0, 1, 1, 0])).backward()
    assert all(p.grad is not None for p in params)
    model.zero_grad()
    assert all(p.grad is None for p in params)
    assert len(model) == 4 and model[1].__class__ is nn.ReLU and "Linear(3, 2, bias=False)" in repr(model)


def test_linear_init_dtype_and_device():
    layer = nn.Linear(200, 50, rng=7)
    assert layer.weight.shape == (200, 50) and layer.weight.dtype == np.float32 and layer.bias.shape == (50,)
    assert not layer.bias.data.any() and abs(layer.weight.data.std() - np.sqrt(2 / 200)) < 0.01  # He init
    assert np.array_equal(nn.Linear(200, 50, rng=7).weight.data, layer.weight.data)
    assert nn.Linear(2, 2, dtype="float64", init="normal").weight.dtype == np.float64
    with pytest.raises(DeviceError, match="unknown device"):
        layer.to("tpu")


def test_without_a_gpu_cuda_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(backend, "gpu_status", lambda: (False, "CuPy is not installed (stand-in reason)"))
    with pytest.raises(DeviceError, match=r"cannot use device 'cuda': CuPy is not installed \(stand-in reason\)"):
        nn.Linear(2, 2, device="cuda")
    with pytest.raises(DeviceError, match="cannot use device 'cuda:1'"):
        nn.Sequential(nn.Linear(2, 2)).to("cuda:1")
    with pytest.raises(DeviceError, match="cannot use device"):
        Tensor(np.ones(2)).to("cuda")


def test_module_to_gpu_and_back(gpu_xp):
    model = nn.Sequential(nn.Linear(4, 3, rng=0), nn.ReLU(), nn.Linear(3, 2, rng=1))
    before = [p.data.copy() for p in model.parameters()]
    model.to("cuda")
    assert all(str(p.device) == "cuda:0" for p in model.parameters())
    x = Tensor(gpu_xp.ones((5, 4)))
    functional.cross_entropy(model(x), gpu_xp.asarray([0, 1, 0, 1, 1])).backward()
    assert all(isinstance(p.grad, gpu_xp.ndarray) for p in model.parameters())
    model.to("cpu")
    assert all(isinstance(p.grad, np.ndarray) for p in model.parameters())
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, b)


# ---------------------------------------------------------------------------
# Optimizers over Tensors


def _torch():
    return pytest.importorskip("torch", reason="the optimizer oracle needs PyTorch (pip install torch==2.13.0)")


OPTIMIZERS = {
    "sgd": (lambda ps: optim.SGD(ps, lr=0.1), lambda torch, ps: torch.optim.SGD(ps, lr=0.1)),
    "momentum": (lambda ps: optim.MomentumSGD(ps, lr=0.1, momentum=0.9),
                 lambda torch, ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    "adam": (lambda ps: optim.Adam(ps, lr=0.01), lambda torch, ps: torch.optim.Adam(ps, lr=0.01)),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_training_over_tensors_matches_torch(xp, rng, name):
    torch = _torch()
    ours_opt, torch_opt = OPTIMIZERS[name]
    device = "cpu" if xp is np else "cuda"
    model = nn.Sequential(nn.Linear(6, 5, rng=0, dtype="float64"), nn.ReLU(),
                          nn.Linear(5, 3, rng=1, dtype="float64")).to(device)
    tmodel = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).double()
    with torch.no_grad():  # torch stores (out, in): the transpose of xpgrad's (in, out)
        for ours, theirs in ((model[0], tmodel[0]), (model[2], tmodel[2])):
            theirs.weight.copy_(torch.tensor(host(ours.weight.data).T))
            theirs.bias.copy_(torch.tensor(host(ours.bias.data) + 0.1))
            ours.bias.data[...] = xp.asarray(theirs.bias.numpy())
    opt, topt = ours_opt(model.parameters()), torch_opt(torch, tmodel.parameters())
    for _ in range(4):
        x, t = rng.normal(size=(8, 6)), rng.integers(0, 3, size=8)
        opt.zero_grad()
        functional.cross_entropy(model(Tensor(xp.asarray(x))), xp.asarray(t)).backward()
        opt.step()
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tmodel(torch.tensor(x)), torch.tensor(t)).backward()
        topt.step()
    assert all(p.grad is not None for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    for ours, theirs in ((model[0], tmodel[0]), (model[2], tmodel[2])):
        np.testing.assert_allclose(host(ours.weight.data), theirs.weight.detach().numpy().T, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(host(ours.bias.data), theirs.bias.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_tensor_optimizer_state_round_trips():
    a, b = (nn.Linear(3, 2, rng=0) for _ in range(2))
    opt_a = optim.Adam(a.parameters(), lr=0.1)
    for p in a.parameters():
        p.grad = np.ones_like(p.data)
    opt_a.step()
    opt_b = optim.Adam(b.parameters(), lr=0.1)
    opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.step_count == 1 and sorted(opt_a.state_dict()) == ["m/0", "m/1", "step_count", "v/0", "v/1"]


def test_optimizer_over_tensors_refuses_what_cannot_work():
    layer = nn.Linear(2, 2, rng=0)
    opt = optim.SGD(layer.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"parameter 0 \(shape \(2, 2\)\) has no gradient; call loss.backward"):
        opt.step()
    with pytest.raises(ValueError, match="no parameters"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="leaf Tensor with requires_grad=True"):
        optim.SGD([Tensor(np.ones(2))], lr=0.1)
    with pytest.raises(TypeError, match="leaf Tensor"):
        optim.SGD([layer.weight * 2], lr=0.1)
    with pytest.raises(TypeError, match="was given a dict of arrays"):
        optim.SGD({"W": np.ones(2)}, lr=0.1).step()
    layer.weight.data = layer.weight.data.copy()  # what model.to(device) does
    for p in layer.parameters():
        p.grad = np.zeros_like(p.data)
    with pytest.raises(ValueError, match="data was replaced after the optimizer was made"):
        opt.step()


def test_the_dict_form_is_unchanged():
    params = {"W": np.ones((2, 2))}
    opt = optim.SGD(params, lr=0.5)
    opt.step({"W": np.ones((2, 2))})
    assert opt.tensors is None and np.array_equal(params["W"], np.full((2, 2), 0.5))
