"""Issue 20, classes A and B: gradients of exactly the inputs' shapes, the check that holds every Function to
it, in-place updates detected by version counters, ``bool(Tensor)``, and linear layers on any leading axes."""

import numpy as np
import pytest

from xpgrad import Tensor, functional, functions, nn, optim
from xpgrad.tensor import Function

torch = pytest.importorskip("torch", reason="the gradient oracle needs PyTorch (pip install torch==2.13.0)")

INPLACE = "one of the variables needed for gradient computation has been modified by an inplace operation"


def pair(a, requires_grad=True):
    """The same float64 values as an xpgrad Tensor and a torch tensor."""
    a = np.asarray(a, dtype=np.float64)
    return Tensor(a.copy(), requires_grad=requires_grad), torch.tensor(a, requires_grad=requires_grad)


# ---------------------------------------------------------------------------
# A broadcast bias, and Linear on (in,), (N, in) and (N, ..., in)


@pytest.mark.parametrize("x_shape", [(2, 3), (3,), (4, 2, 3)])
@pytest.mark.parametrize("b_shape", [(1,), (), (5,), (1, 5)])
def test_a_broadcast_bias_gets_the_gradient_and_update_torch_gives(rng, x_shape, b_shape):
    """The issue's case (b of shape (1,) or () gave [2., 2.] where PyTorch gives [4.]), and others like it."""
    (x, tx), (W, tW) = pair(rng.normal(size=x_shape), False), pair(rng.normal(size=(3, 5)))
    b, tb = pair(rng.normal(size=b_shape))
    out = (*x_shape[:-1], 5)
    if np.broadcast_shapes(out, b_shape) != out:  # a bias may not change the output's shape
        with pytest.raises(ValueError, match=rf"the bias b must be \(5,\) or broadcast to the output's shape"):
            functional.linear(x, W, b)
        return
    y = functional.linear(x, W, b)
    ty = tx @ tW + tb
    assert y.shape == tuple(ty.shape)
    (y * y).sum().backward()
    (ty * ty).sum().backward()
    for ours, theirs in ((W, tW), (b, tb)):
        assert ours.grad.shape == ours.shape
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-12)
    optim.SGD([W, b], lr=0.1).step()
    torch.optim.SGD([tW, tb], lr=0.1).step()
    np.testing.assert_allclose(b.data, tb.detach().numpy(), rtol=1e-12)


def test_the_issues_bias_case_in_its_own_words():
    for shape, want in (((1,), [4.0]), ((), 4.0)):
        b = Tensor(np.zeros(shape), requires_grad=True)
        functional.linear(Tensor(np.ones((2, 3))), Tensor(np.ones((3, 2))), b).sum().backward()
        assert b.grad.shape == shape and np.array_equal(b.grad, want)


def torch_linear(layer):
    """torch.nn.Linear with ``layer``'s weights (PyTorch stores the transpose of xpgrad's (in, out))."""
    theirs = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, dtype=torch.float64)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(layer.weight.data.T))
        if layer.bias is not None:
            theirs.bias.copy_(torch.tensor(layer.bias.data))
    return theirs


@pytest.mark.parametrize("shape", [(3,), (4, 3), (2, 5, 3), (2, 1, 2, 3), (0, 3), (2, 0, 3)], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_nn_linear_applies_to_the_last_axis_as_torch(rng, shape, bias):
    layer = nn.Linear(3, 2, bias=bias, rng=0, dtype="float64")
    theirs = torch_linear(layer)
    (x, tx) = pair(rng.normal(size=shape))
    y, ty = layer(x), theirs(tx)
    assert y.shape == tuple(ty.shape) == (*shape[:-1], 2)
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-12)
    gy = rng.normal(size=y.shape)
    y.backward(gy)
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(layer.weight.grad, theirs.weight.grad.numpy().T, rtol=1e-12, atol=1e-15)
    if bias:
        np.testing.assert_allclose(layer.bias.grad, theirs.bias.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("shape", [(6,), (4, 6), (3, 2, 6)], ids=str)
def test_a_sequential_with_its_fused_linear_relu_on_any_leading_axes(rng, shape):
    model = nn.Sequential(nn.Linear(6, 5, rng=0, dtype="float64"), nn.ReLU(), nn.Linear(5, 2, rng=1, dtype="float64"))
    theirs = torch.nn.Sequential(torch_linear(model[0]), torch.nn.ReLU(), torch_linear(model[2]))
    x, tx = pair(rng.normal(size=shape))
    y, ty = model(x), theirs(tx)
    assert isinstance(y.creator.inputs[0].creator, functions.LinearReLU)  # the fused path ran
    (y * y).sum().backward()
    (ty * ty).sum().backward()
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(model[0].bias.grad, theirs[0].bias.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_a_layer_of_zero_features_as_pytorch_allows():
    layer = nn.Linear(0, 4, rng=0)
    y = layer(Tensor(np.ones((3, 0), np.float32)))
    assert y.shape == (3, 4) and not y.data.any()
    y.sum().backward()
    assert layer.weight.grad.shape == (0, 4) and np.array_equal(layer.bias.grad, [3, 3, 3, 3])


@pytest.mark.parametrize("index", [np.s_[1], np.s_[-1, 1:], np.s_[..., 0], np.s_[None, ::-1], np.s_[[0, 0, 1]],
                                   np.s_[np.array([[1], [0]]), 1:], "mask"], ids=str)
@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_indexing_over_ranks_gives_the_gradient_numpy_says(rng, index, rank):
    x0 = rng.normal(size=(2, 3, 2, 3)[:rank])
    if isinstance(index, str):
        index = x0 > 0
    try:
        want = x0[index]
    except IndexError:
        with pytest.raises(IndexError):
            Tensor(x0, requires_grad=True)[index]
        return
    x = Tensor(x0, requires_grad=True)
    y = x[index]
    assert y.shape == want.shape
    gy = rng.normal(size=y.shape)
    y.backward(gy)
    expected = np.zeros_like(x0)
    np.add.at(expected, index, gy)
    assert x.grad.shape == x.shape
    np.testing.assert_allclose(x.grad, expected)


# ---------------------------------------------------------------------------
# The check on every gradient


class Wrong(Function):
    """A Function whose backward returns what ``make`` gives for its input."""

    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make

    def forward(self, x):
        return x * 2

    def backward(self, gy):
        return self.make(gy)


@pytest.mark.parametrize("make, words", [
    (lambda gy: (gy.sum(axis=0),), r"Function Wrong returned an invalid gradient at index 0 - got float64 \(3,\) "
                                   r"but expected float64 \(2, 3\)"),
    (lambda gy: (gy.astype(np.float32),), r"got float32 \(2, 3\) but expected float64 \(2, 3\)"),
    (lambda gy: (gy, gy), "Wrong.backward returned 2 gradients for 1 inputs"),
], ids=["shape", "dtype", "count"])
def test_a_gradient_unlike_its_input_is_caught_in_the_backward_pass(make, words):
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    y = Wrong(make)(x) * 1.0
    with pytest.raises(RuntimeError, match=words):
        y.sum().backward()
    assert x.grad is None  # nothing wrong reached the leaf


# ---------------------------------------------------------------------------
# In-place updates: versions


def make_optimizer(name, params):
    return {"sgd": lambda: optim.SGD(params, lr=0.1), "momentum": lambda: optim.MomentumSGD(params, lr=0.1),
            "adam": lambda: optim.Adam(params, lr=0.1)}[name]()


@pytest.mark.parametrize("flat", [False, True], ids=["per-parameter", "flat"])
@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_a_graph_kept_past_an_optimizer_step_refuses_a_second_backward(name, flat):
    """The issue's case: ``y = (W * W).sum(); y.backward(); opt.step(); y.backward()`` used the updated W."""
    model = nn.Linear(3, 2, rng=0, dtype="float64")
    if flat:
        nn.flatten_parameters(model)
    opt = make_optimizer(name, model.parameters())
    W = model.weight
    y = (W * W).sum() + model.bias.sum()
    y.backward()
    opt.step()
    assert W._version == 1 and model.bias._version == 1
    grad = W.grad.copy()
    with pytest.raises(RuntimeError, match=rf"{INPLACE}: input [01] of Mul .* is at version 1, updated after this graph was recorded"):
        y.backward()
    assert np.array_equal(W.grad, grad)  # the refused pass added nothing


@pytest.mark.parametrize("view", ["W.T", "W.reshape(-1)", "W[0]", "W.detach()", "Tensor(W)", "W.T.T[1:]"])
def test_a_view_of_a_parameter_shares_its_version(view):
    W = Tensor(np.ones((2, 2)), requires_grad=True)
    v = eval(view)
    x = Tensor(np.full(v.shape, 3.0), requires_grad=True)
    y = (x * v).sum()
    W.grad = np.zeros((2, 2))
    optim.SGD([W], lr=0.1).step()
    with pytest.raises(RuntimeError, match=INPLACE):
        y.backward()


def test_an_operation_that_keeps_no_input_is_not_refused():
    """Adding, scaling, summing and exp's backward read no input (exp keeps its output), so a later step changes
    nothing they need, as in PyTorch."""
    W = Tensor(np.ones(3), requires_grad=True)
    y = (W + 1).sum() + (W * 2.0).sum() + W.mean() + (-W).exp().sum()
    W.grad = np.zeros(3)
    optim.SGD([W], lr=0.5).step()
    W.grad = None
    y.backward()
    np.testing.assert_allclose(W.grad, 1 + 2 + 1 / 3 - np.exp(-1.0))


def test_a_graph_rebuilt_each_step_trains_and_counts_the_updates(rng):
    """The training loop: forward, backward, step, five times over a new graph, flat parameters included."""
    model = nn.Sequential(nn.Linear(4, 8, rng=0), nn.ReLU(), nn.Linear(8, 3, rng=1))
    nn.flatten_parameters(model)
    opt = optim.Adam(model.parameters(), lr=0.01)
    x, t = Tensor(rng.normal(size=(16, 4)).astype(np.float32)), rng.integers(0, 3, size=16)
    losses = []
    for _ in range(5):
        loss = functional.cross_entropy(model(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and all(p._version == 5 for p in model.parameters())
    with pytest.raises(RuntimeError, match=INPLACE):
        loss.backward()


def test_load_state_dict_counts_as_an_update():
    model = nn.Linear(3, 2, rng=0)
    y = model(Tensor(np.ones((1, 3), np.float32), requires_grad=True)).sum()
    model.load_state_dict({k: v.copy() for k, v in model.state_dict().items()})
    with pytest.raises(RuntimeError, match=INPLACE):
        y.backward()


# ---------------------------------------------------------------------------
# bool(Tensor) follows NumPy


@pytest.mark.parametrize("value", [[0.0], [2.0], 0.0, 1, [[0]], [True], [False], np.float32(-1)], ids=str)
def test_the_truth_of_a_one_element_tensor_is_numpys(value):
    assert bool(Tensor(value)) is bool(np.asarray(value))
    assert bool(Tensor(np.asarray(value, dtype=np.float64), requires_grad=True)) is bool(np.asarray(value))


@pytest.mark.parametrize("shape", [(2,), (0,), (2, 3)], ids=str)
def test_the_truth_of_other_tensors_is_ambiguous(shape):
    with pytest.raises(ValueError, match=r"the truth value of a tensor of \d+ elements .* is ambiguous"):
        bool(Tensor(np.zeros(shape)))
    with pytest.raises(ValueError):
        bool(np.zeros(shape))  # NumPy's rule too
