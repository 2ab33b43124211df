"""nn modules and optimizers over Tensors, against the hand-written MLP, the notebook's chain and torch.optim."""

import numpy as np
import pytest

from xpgrad import Tensor, backend, functional, models, nn, no_grad, notebook, ops, optim
from xpgrad.errors import DeviceError


def host(a):
    return backend.to_numpy(a)


class Unfused(nn.Module):
    """The mlp's layers called one by one: a Linear, then its ReLU, as separate Functions."""

    def __init__(self, seq):
        self.seq = seq

    def forward(self, x):
        for layer in self.seq:
            x = layer(x)
        return x


def test_the_mlp_gets_the_hand_chained_ops_gradients_bit_for_bit(xp, rng):
    """models.mlp through the tape (its Linear+ReLU fused) against the notebook-style chain of xpgrad.ops on the
    same arrays, and against its layers run unfused: the same numbers to the last bit."""
    model = models.mlp((1, 28, 28), 10, hidden=(100,))
    model.to("cpu" if xp is np else "cuda", dtype="float64")
    with no_grad():
        for i, layer in enumerate((model[1], model[3]), start=1):
            layer.bias.data[...] = xp.asarray(rng.normal(size=layer.bias.shape) * 0.1)  # non-zero biases
    x = xp.asarray(rng.normal(size=(32, 1, 28, 28)))
    t = xp.asarray(rng.integers(0, 10, size=32))
    W1, b1, W2, b2 = (p.data for p in model.parameters())
    lin1, relu, lin2, sce = ops.Linear(needs_input_grad=False), ops.Relu(), ops.Linear(), ops.SoftmaxCrossEntropy()
    want_loss = sce.forward(lin2.forward(relu.forward(lin1.forward(x.reshape(32, 784), W1, b1)), W2, b2), t)
    g, gW2, gb2 = lin2.backward(sce.backward())
    _, gW1, gb1 = lin1.backward(relu.backward(g))
    for net in (model, Unfused(model)):
        model.zero_grad()
        loss = functional.cross_entropy(net(Tensor(x)), t)
        loss.backward()
        assert host(loss.data) == host(want_loss)
        named = dict(model.named_parameters())
        assert list(named) == ["1.weight", "1.bias", "3.weight", "3.bias"]
        for name, want in zip(named, (gW1, gb1, gW2, gb2)):
            assert host(named[name].grad).dtype == np.float64
            assert np.array_equal(host(named[name].grad), host(want)), name


def test_the_mlp_with_the_notebooks_bias_column(rng):
    """input_bias: the first layer's weight and bias are the notebook's (785, 100) W1, drawn in one piece."""
    with nn.init.defaults(seed=5, dtype="float64"):
        model = models.mlp((1, 28, 28), 10, hidden=(100,), init="normal", input_bias=True)
    W1 = np.random.default_rng(5).normal(size=(785, 100))
    assert np.array_equal(model[1].weight.data, W1[:-1]) and np.array_equal(model[1].bias.data, W1[-1])
    assert model[3].bias is None and model[3].weight.dtype == np.float64
    x = rng.normal(size=(3, 784))
    with no_grad():
        got = model(Tensor(x.reshape(3, 1, 28, 28))).data
    want = np.maximum(np.concatenate([x, np.ones((3, 1))], axis=1) @ W1, 0) @ model[3].weight.data
    np.testing.assert_allclose(got, want, rtol=1e-12)


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
    functional.cross_entropy(model(np.ones((4, 3), np.float32)), np.array([0, 1, 1, 0])).backward()
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


def test_tensor_optimizer_state_round_trips_by_name():
    a, b = (nn.Linear(3, 2, rng=0) for _ in range(2))
    opt_a = optim.Adam(a.named_parameters(), lr=0.1)
    for p in a.parameters():
        p.grad = np.ones_like(p.data)
    opt_a.step()
    opt_b = optim.Adam(b.named_parameters(), lr=0.1)
    opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.step_count == 1
    assert sorted(opt_a.state_dict()) == ["lr", "m/bias", "m/weight", "step_count", "v/bias", "v/weight"]


def test_optimizer_over_tensors_refuses_what_cannot_work(monkeypatch):
    layer = nn.Linear(2, 2, rng=0)
    opt = optim.SGD(layer.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"parameter 0 \(shape \(2, 2\)\) has no gradient; call loss.backward"):
        opt.step()
    with pytest.raises(TypeError, match="leaf Tensor"):
        optim.SGD([layer.weight * 2], lr=0.1)
    with pytest.raises(TypeError, match="takes an iterable of parameters"):
        optim.SGD({"W": np.ones(2)}, lr=0.1)
    on_the_cpu = backend.device_of  # the bias "on a GPU", as far as the optimizer can tell
    monkeypatch.setattr(backend, "device_of", lambda a: backend.Device("cuda", 0) if a is layer.bias.data
                        else on_the_cpu(a))
    with pytest.raises(ValueError, match="every parameter must be on one device: 1 is on cuda:0, 0 on cpu"):
        optim.SGD(layer.parameters(), lr=0.1)


# ---------------------------------------------------------------------------
# Module: names, state, modes, buffers, devices and dtypes


class Net(nn.Module):
    """A model of one's own: attributes, a nested Sequential, a buffer, and a shared layer."""

    def __init__(self):
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 6, rng=0), nn.ReLU())
        self.head = nn.Linear(6, 3, rng=1)
        self.scale = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
        self.register_buffer("seen", np.zeros(1, dtype=np.int64))

    def forward(self, x):
        return self.head(self.body(x)) * self.scale


def test_state_dict_names_are_pytorchs_and_load_back_in_place():
    net = Net()
    names = ["scale", "body.1.weight", "body.1.bias", "head.weight", "head.bias"]
    assert [n for n, _ in net.named_parameters()] == names
    assert list(net.state_dict()) == [*names, "seen"]
    assert [n for n, _ in net.named_modules()] == ["", "body", "body.0", "body.1", "body.2", "head"]
    other = Net()
    with no_grad():
        other.head.weight.data[...] = 7
    other.seen[...] = 3
    before = net.head.weight.data
    assert net.load_state_dict(other.state_dict()) == ([], [])
    assert net.head.weight.data is before and (before == 7).all() and net.seen[0] == 3
    with pytest.raises(ValueError, match=r"missing \['seen'\], unexpected \['extra'\]"):
        net.load_state_dict({**{k: v for k, v in other.state_dict().items() if k != "seen"}, "extra": np.ones(1)})
    loose = net.load_state_dict({"head.bias": np.full(3, 2.0)}, strict=False)
    assert "head.weight" in loose.missing_keys and (net.head.bias.data == 2).all()
    with pytest.raises(ValueError, match=r"head.bias has shape \(4,\) in the state, but \(3,\) in the model"):
        net.load_state_dict({**net.state_dict(), "head.bias": np.zeros(4)})


def test_train_and_eval_set_every_module():
    net = Net()
    assert net.training and net.body[1].training
    assert net.eval() is net and not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_to_casts_parameters_and_buffers_and_keeps_the_flat_store():
    net = Net()
    store = nn.flatten_parameters(net)
    net.to(dtype="float64")
    assert all(p.dtype == np.float64 for p in net.parameters()) and net.seen.dtype == np.int64
    assert nn.flatten_parameters(net) is store and store.data.dtype == np.float64
    assert all(p.data.base is store.data or p.data.base is store.data.base for p in net.parameters())


def test_flatten_takes_a_conv_net_shape_view_and_is_idempotent():
    x = Tensor(np.ones((1, 12), dtype=np.float32))
    net = Net()
    want = net(x).data
    store = nn.flatten_parameters(net)
    assert store.data.size == 3 + 12 * 6 + 6 + 6 * 3 + 3 and store.names[0] == "scale"
    assert np.array_equal(net(x).data, want)  # the same values, now views
    assert nn.flatten_parameters(net) is store
    functional.cross_entropy(net(x), np.array([1])).backward()
    assert all(p.grad is p._grad_slot for p in net.parameters())
    flat_grad = store.grad.copy()
    functional.cross_entropy(net(x), np.array([1])).backward()  # gradients accumulate, in place
    np.testing.assert_allclose(store.grad, 2 * flat_grad, rtol=1e-6)
    mixed = Net()
    mixed.head.bias.data = mixed.head.bias.data.astype(np.float64)
    with pytest.raises(ValueError, match="one device in one dtype: head.bias is float64"):
        nn.flatten_parameters(mixed)
    with pytest.raises(ValueError, match="has no parameters"):
        nn.flatten_parameters(nn.ReLU())


def test_flatten_matches_torch_flatten():
    torch = _torch()
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    for args in [(), (0,), (1, 2), (2, -1), (0, -1)]:
        want = torch.nn.Flatten(*args)(torch.tensor(x)).numpy()
        assert np.array_equal(nn.Flatten(*args)(Tensor(x)).data, want), args
    with pytest.raises(ValueError, match="start_dim comes after end_dim"):
        nn.Flatten(2, 1)(Tensor(x))
