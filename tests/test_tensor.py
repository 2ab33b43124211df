"""The Tensor API's behaviour: what backward computes, accumulates and refuses, on each backend."""

import types

import numpy as np
import pytest

from xpgrad import Tensor, backend, no_grad
from xpgrad.errors import DeviceError
from xpgrad.tensor import is_grad_enabled


def leaf(xp, a):
    return Tensor(xp.asarray(np.asarray(a, dtype=np.float64)), requires_grad=True)


def host(a):
    return backend.to_numpy(a)


def test_attributes(xp):
    t = leaf(xp, np.ones((2, 3)))
    assert t.shape == (2, 3) and t.dtype == np.float64 and t.ndim == 2 and t.size == 6 and len(t) == 2
    assert t.requires_grad and t.grad is None and t.is_leaf
    assert str(t.device) == ("cpu" if xp is np else "cuda:0")
    y = t * 2
    assert not y.is_leaf and y.requires_grad
    assert Tensor([1, 2]).data.dtype.kind == "i" and isinstance(Tensor([1.0]).data, np.ndarray)
    a = xp.zeros(3)
    assert Tensor(a).data is a  # arrays are kept, not copied


def test_only_floating_tensors_require_gradients():
    with pytest.raises(TypeError, match="only floating-point tensors"):
        Tensor(np.arange(3), requires_grad=True)


def test_scalars_on_either_side_of_every_operator(xp):
    x0 = np.array([[0.5, -1.5, 2.0], [3.0, 0.25, -0.75]])
    cases = {  # expression -> its derivative, elementwise
        "x + 2": (lambda x: x + 2, lambda x: 1 + 0 * x), "2 + x": (lambda x: 2 + x, lambda x: 1 + 0 * x),
        "x - 2": (lambda x: x - 2, lambda x: 1 + 0 * x), "2 - x": (lambda x: 2 - x, lambda x: -1 + 0 * x),
        "x * 3": (lambda x: x * 3, lambda x: 3 + 0 * x), "3 * x": (lambda x: 3 * x, lambda x: 3 + 0 * x),
        "x / 4": (lambda x: x / 4, lambda x: 0.25 + 0 * x), "4 / x": (lambda x: 4 / x, lambda x: -4 / x**2),
        "x ** 3": (lambda x: x**3, lambda x: 3 * x**2), "-x": (lambda x: -x, lambda x: -1 + 0 * x),
        "np.float64(2) * x": (lambda x: np.float64(2) * x, lambda x: 2 + 0 * x),
    }
    for name, (f, df) in cases.items():
        x = leaf(xp, x0)
        y = f(x)
        assert isinstance(y, Tensor), name
        np.testing.assert_allclose(host(y.data), f(x0), rtol=1e-15, err_msg=name)
        y.sum().backward()
        np.testing.assert_allclose(host(x.grad), df(x0), rtol=1e-14, err_msg=name)


def test_python_scalars_keep_float32(xp):
    x = Tensor(xp.ones(3, dtype=np.float32), requires_grad=True)
    y = (2.0 * x + 1.0) / 3.0 - 0.5
    assert y.dtype == np.float32
    (y**2.0).sum().backward()
    assert x.grad.dtype == np.float32


def test_broadcast_gradients_are_summed_back_to_each_shape(xp):
    a, b, c = leaf(xp, np.full((2, 3), 3.0)), leaf(xp, [1.0, 2.0, 3.0]), leaf(xp, [[2.0], [4.0]])
    s = leaf(xp, 5.0)
    (a * b + c / s - b).sum().backward()
    np.testing.assert_allclose(host(a.grad), np.tile([1.0, 2.0, 3.0], (2, 1)))
    np.testing.assert_allclose(host(b.grad), [4.0, 4.0, 4.0])  # a's two rows of 3, minus 1 for each row
    np.testing.assert_allclose(host(c.grad), [[3 / 5], [3 / 5]])
    np.testing.assert_allclose(host(s.grad), -(3 * 2 + 3 * 4) / 25)
    assert a.grad.shape == (2, 3) and b.grad.shape == (3,) and c.grad.shape == (2, 1) and s.grad.shape == ()


def test_a_node_used_twice_gets_both_gradients(xp):
    x = leaf(xp, [1.0, 2.0, 3.0])
    h = x * x  # h is used on two paths below
    y = (h * 2 + h.exp()).sum() + (x * x).sum()
    y.backward()
    x0 = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(host(x.grad), 2 * x0 * (2 + np.exp(x0**2)) + 2 * x0, rtol=1e-14)


def test_grad_accumulates_across_backward_calls_until_cleared(xp):
    x = leaf(xp, [1.0, -2.0])
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(host(x.grad), [3 + 2, 3 - 4])
    y = (x * 10).sum()
    y.backward()
    y.backward()  # the graph is kept, so a second pass adds again
    np.testing.assert_allclose(host(x.grad), [25, 19])
    x.grad = None
    (x * 2).sum().backward()
    np.testing.assert_allclose(host(x.grad), [2, 2])


def test_backward_of_a_non_scalar_needs_a_gradient(xp):
    x = leaf(xp, np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"needs a one-element tensor.*shape \(2, 2\).*grad="):
        (x * 2).backward()
    with pytest.raises(ValueError, match="grad has shape"):
        (x * 2).backward(xp.ones(3))
    gy = xp.asarray(np.array([[1.0, 2.0], [3.0, 4.0]]))
    (x * 2).backward(gy)
    np.testing.assert_allclose(host(x.grad), 2 * host(gy))
    gy[...] = 0  # .grad does not alias the caller's array
    assert float(x.grad.sum()) == 20.0
    (x[0, 0] * 1).backward()  # one element: the seed is 1
    assert float(x.grad[0, 0]) == 3.0


def test_backward_without_anything_to_differentiate_is_an_error():
    with pytest.raises(ValueError, match="does not require gradients"):
        (Tensor(np.ones(2)) * 2).sum().backward()


def test_a_leaf_can_be_the_output():
    x = Tensor(np.array(2.0), requires_grad=True)
    x.backward()
    assert float(x.grad) == 1.0


def test_intermediate_gradients_on_request(xp):
    x = leaf(xp, [1.0, 2.0])
    h = x * 3
    h.retain_grad()
    g = h * h
    (g.sum()).backward()
    np.testing.assert_allclose(host(h.grad), [6.0, 12.0])
    assert g.grad is None  # not retained


def test_no_grad_records_nothing(xp):
    x = leaf(xp, [1.0, 2.0])
    with no_grad():
        assert not is_grad_enabled()
        y = x * 2 + 1
        with no_grad():
            pass
        assert not is_grad_enabled()  # nested blocks restore the outer state
    assert is_grad_enabled()
    assert not y.requires_grad and y.creator is None

    @no_grad()
    def evaluate(t):
        return t * 3

    assert not evaluate(x).requires_grad and is_grad_enabled()


def test_nothing_is_recorded_when_no_input_needs_gradients(xp):
    data = Tensor(xp.ones((2, 2)))
    y = (data * 2).exp().sum()
    assert not y.requires_grad and y.creator is None


def test_a_chain_of_ten_thousand_ops_needs_no_recursion():
    x = Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward()
    np.testing.assert_allclose(x.grad, 1.0001**10_000, rtol=1e-10)


def test_a_wide_diamond_runs_each_node_once():
    x = Tensor(np.array(1.0), requires_grad=True)
    h = x * 2
    y = h
    for _ in range(100):
        y = y + h  # h has 101 consumers; its backward must wait for all of them
    y.backward()
    assert float(x.grad) == 202.0


def test_indexing(xp):
    x = leaf(xp, np.arange(12.0).reshape(3, 4))
    (x[1:, ::2].sum() + x[xp.asarray([0, 0, 2]), xp.asarray([1, 1, 3])].sum() + x[Tensor(xp.asarray([2]))].sum()).backward()
    want = np.zeros((3, 4))
    want[1:, ::2] += 1
    want[0, 1] += 2  # picked twice
    want[2, 3] += 1
    want[2] += 1
    np.testing.assert_array_equal(host(x.grad), want)


def test_matmul_of_vectors_and_stacks(xp, rng):
    a, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(4, 5))
    v = rng.normal(size=4)
    for left, right in [(a, b), (a, v), (v, b), (v, v), (b.T, v)]:
        ta, tb = leaf(xp, left), leaf(xp, right)
        y = ta @ tb
        np.testing.assert_allclose(host(y.data), left @ right, rtol=1e-13)
        assert y.shape == (left @ right).shape
    with pytest.raises(ValueError, match="at least one dimension"):
        leaf(xp, 2.0) @ leaf(xp, v)


def test_shape_methods(xp):
    x = leaf(xp, np.arange(6.0).reshape(2, 3))
    assert x.reshape(3, 2).shape == (3, 2) and x.reshape((6,)).shape == (6,) and x.T.shape == (3, 2)
    assert x.transpose(1, 0).shape == (3, 2) and x.sum(axis=1).shape == (2,)
    assert x.mean(axis=(0, 1), keepdims=True).shape == (1, 1)
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        x.sum(axis=2)


def test_mixing_devices_raises_device_error(monkeypatch):
    """The same check as everywhere, with a stand-in for cupy.ndarray (no GPU needed)."""

    class FakeDeviceArray:
        device = types.SimpleNamespace(id=0)
        dtype = np.dtype("float64")

    monkeypatch.setattr(backend, "cupy", types.SimpleNamespace(ndarray=FakeDeviceArray))
    on_device = Tensor(FakeDeviceArray())
    on_host = Tensor(np.ones(2), requires_grad=True)
    for expression in (lambda: on_host + on_device, lambda: on_device * on_host, lambda: on_host @ on_device):
        with pytest.raises(DeviceError, match=r"different devices \((cpu and cuda:0|cuda:0 and cpu)\)"):
            expression()


def test_mixing_devices_on_a_gpu(gpu_xp):
    x = Tensor(gpu_xp.ones(3), requires_grad=True)
    with pytest.raises(DeviceError, match="different devices"):
        x + Tensor(np.ones(3))
    with pytest.raises(DeviceError, match="different devices"):
        x.sum().backward(np.ones(()))


def test_to_moves_and_the_gradient_comes_back(gpu_xp):
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x.to("cuda")
    assert str(y.device) == "cuda:0" and x.to("cpu") is x
    (y * y).sum().backward()
    assert isinstance(x.grad, np.ndarray)
    np.testing.assert_allclose(x.grad, [2.0, 4.0])


def test_in_place_operators_update_the_data_and_its_version(xp):
    """``p -= lr * p.grad`` under no_grad updates p itself (rebinding it would train nothing), in its dtype."""
    from xpgrad import nn
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    nn.flatten_parameters(model)
    model.to(backend.get_device("cpu") if xp is np else backend.get_device("cuda"))
    x = Tensor(xp.ones((4, 3), dtype=np.float32))
    loss = model(x).sum()
    loss.backward()
    before = [(p.data.copy(), p.grad.copy(), p._version) for p in model.parameters()]
    with no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
    for p, (data, grad, version) in zip(model.parameters(), before):
        assert p.data.dtype == np.float32 and p._version == version + 1
        np.testing.assert_array_equal(backend.to_numpy(p.data), backend.to_numpy(data - np.float32(0.5) * grad))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()  # the graph saved the parameters before the update
    t = Tensor(xp.ones((2, 3), dtype=np.float32))
    view = t.T
    t += 1
    t *= Tensor(xp.full(3, 2.0, dtype=np.float32))
    t /= np.float32(4)  # NumPy scalars too (CuPy takes them as they are)
    t -= [0.5, 0.5, 0.5]
    np.testing.assert_array_equal(backend.to_numpy(view.data), np.full((3, 2), 0.5, np.float32))
    assert view._version == t._version == 4 and t.dtype == np.float32


def test_in_place_operators_in_a_recorded_graph_are_recorded_as_the_operator(rng):
    """``h += x`` in a forward pass (a residual block's line), with h or x computed from parameters: the tape
    records no in-place operation, so it is ``h = h + x``, recorded, and the gradient flows through both."""
    w = Tensor(rng.normal(size=(2, 3)), requires_grad=True)
    h = w * 2
    before = h
    h += w
    acc = Tensor(np.zeros((2, 3)))
    acc += h
    acc *= 3.0  # recorded too: acc now requires grad
    assert h is not before and acc.requires_grad and before._version == 0
    acc.sum().backward()
    np.testing.assert_array_equal(w.grad, np.full((2, 3), 9.0))  # d(3 * (2w + w))/dw


@pytest.mark.parametrize("case, error, words", [
    ("leaf", RuntimeError, "leaf tensor that requires grad"),
    ("shape", ValueError, "does not broadcast to the tensor's shape (2, 3)"),
    ("int", TypeError, "the float64 result cannot be written into the tensor's int64 data"),
    ("str", TypeError, "takes a Tensor, an array or a real number, got str"),
    ("numpy str", TypeError, "takes a Tensor, an array or a real number, got str_"),
])
def test_in_place_operators_refuse_what_they_cannot_do(case, error, words):
    w = Tensor(np.ones((2, 3)), requires_grad=True)
    t = Tensor(np.ones((2, 3)))
    with pytest.raises(error) as info:
        if case == "leaf":
            w -= 1.0
        elif case == "numpy str":
            t += np.str_("a")
        elif case == "shape":
            t += np.ones(4)
        elif case == "int":
            i = Tensor(np.arange(3))
            i /= 2
        else:
            t += "a"
    assert words in str(info.value)
    np.testing.assert_array_equal(t.data, np.ones((2, 3)))  # nothing written by a refused update
    with no_grad():
        w -= 1.0  # the same update, where it is allowed
    assert w._version == 1 and not w.data.any()
