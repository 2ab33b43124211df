"""Every Function of the tape against central differences (xpgrad.gradcheck), in float64, on each backend."""

import inspect

import numpy as np
import pytest

from xpgrad import Tensor, backend, functional, functions, modeops, no_grad
from xpgrad.gradcheck import gradcheck
from xpgrad.tensor import Function


def away_from_zero(a):
    """Values at least 0.2 from 0 (ReLU's kink, log's and division's poles), signs kept."""
    return np.where(a >= 0, a + 0.2, a - 0.2)


LABELS = np.array([2, 0, 3])
SOFT = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])


def beside(t, a):
    """Host array ``a`` on the device of tensor ``t``."""
    return backend.get_array_module(t.data).asarray(a)

# name -> (the Function classes it exercises, the expression over Tensors, input shapes, input transform)
CASES = {
    "add": ({"Add"}, lambda a, b: a + b, [(3, 4), (4,)], None),
    "sub": ({"Sub"}, lambda a, b: a - b, [(3, 1), (3, 4)], None),
    "mul": ({"Mul"}, lambda a, b: a * b, [(2, 3, 4), (3, 1)], None),
    "div": ({"Div"}, lambda a, b: a / b, [(3, 4), (1, 4)], away_from_zero),
    "scalars": ({"AddScalar", "SubScalar", "RSubScalar", "MulScalar", "DivScalar"},
                lambda a: 2.5 - (3.0 * (a + 1.5) / 4.0 - 0.5), [(3, 4)], None),
    "rdiv": ({"RDivScalar"}, lambda a: 2.0 / a, [(3, 4)], away_from_zero),
    "pow": ({"PowScalar"}, lambda a: (a * a + 1.0) ** 1.5 + a**3, [(3, 4)], None),
    "neg": ({"Neg"}, lambda a: -a, [(5,)], None),
    "exp": ({"Exp"}, lambda a: a.exp(), [(3, 4)], None),
    "log": ({"Log"}, lambda a: (a * a).log(), [(3, 4)], away_from_zero),
    "relu": ({"Relu"}, lambda a: a.relu(), [(3, 4)], away_from_zero),
    "relu (functional)": ({"Relu"}, functional.relu, [(2, 3, 2)], away_from_zero),
    "sum": ({"Sum"}, lambda a: a.sum(axis=1), [(3, 4, 2)], None),
    "sum all": ({"Sum"}, lambda a: a.sum(), [(3, 4)], None),
    "sum keepdims": ({"Sum"}, lambda a: a.sum(axis=(0, -1), keepdims=True), [(3, 4, 2)], None),
    "mean": ({"Mean"}, lambda a: a.mean(axis=0), [(3, 4)], None),
    "mean all": ({"Mean"}, lambda a: a.mean(), [(3, 4)], None),
    "reshape": ({"Reshape"}, lambda a: a.reshape(2, -1) * a.reshape(2, 6), [(3, 4)], None),
    "transpose": ({"Transpose"}, lambda a, b: a.T * b.transpose(2, 0, 1)[:, :, 0], [(3, 4), (3, 2, 4)], None),
    "getitem slices": ({"GetItem"}, lambda a: a[1:, ::-2], [(3, 4)], None),
    "getitem arrays": ({"GetItem"}, lambda a: a[[0, 2, 0], [1, 1, 1]], [(3, 4)], None),
    "matmul": ({"Matmul"}, lambda a, b: a @ b, [(3, 4), (4, 5)], None),
    "matmul batched": ({"Matmul"}, lambda a, b: a @ b, [(2, 3, 4), (4,)], None),
    "matmul vector": ({"Matmul"}, lambda a, b: a @ b, [(4,), (2, 4, 3)], None),
    "linear": ({"Linear"}, functional.linear, [(3, 4), (4, 5), (5,)], None),
    "linear no bias": ({"Linear"}, functional.linear, [(3, 4), (4, 5)], None),
    "linear relu": ({"LinearReLU"}, lambda x, W, b: functions.LinearReLU()(x, W, b), [(3, 4), (4, 5), (5,)], None),
    "softmax": ({"Softmax"}, functional.softmax, [(3, 4)], None),
    "softmax axis 0": ({"Softmax"}, lambda a: functional.softmax(a, axis=0), [(3, 4, 2)], None),
    "log_softmax": ({"LogSoftmax"}, functional.log_softmax, [(3, 4)], None),
    "log_softmax axis 1": ({"LogSoftmax"}, lambda a: functional.log_softmax(a, axis=1), [(2, 3, 4)], None),
    "cross_entropy": ({"CrossEntropy"}, lambda a: functional.cross_entropy(a, beside(a, LABELS)), [(3, 4)], None),
    "cross_entropy soft": ({"CrossEntropy"}, lambda a: functional.cross_entropy(a, beside(a, SOFT)), [(3, 4)], None),
    "cross_entropy step": ({"CrossEntropy"}, lambda a: functions.CrossEntropy(beside(a, LABELS), stats=(
        beside(a, np.zeros(())), beside(a, np.zeros((), np.int64))))(a), [(3, 4)], None),
    "conv2d": ({"Conv2d"}, lambda x, W, b: functional.conv2d(x, W, b, stride=(1, 2), padding=1),
               [(2, 3, 5, 6), (4, 3, 3, 2), (4,)], None),
    "max_pool2d": ({"MaxPool2d"}, lambda a: functional.max_pool2d(a, 3, 2, 1), [(2, 2, 6, 5)], None),
    "batch_norm": ({"BatchNorm2d"}, lambda x, w, b: functional.batch_norm(
        x, beside(x, np.zeros(2)), beside(x, np.ones(2)), w, b, training=True), [(3, 2, 2, 3), (2,), (2,)], None),
    "dropout": ({"Dropout"}, lambda a: functional.dropout(a, 0.4, state=beside(a, modeops.new_state(1))),
                [(4, 5)], None),  # a new state per call: the same mask each time
}


def check_expression(xp, rng, expression, shapes, transform):
    arrays = [rng.normal(size=s) for s in shapes]
    if transform is not None:
        arrays = [transform(a) for a in arrays]
    arrays = [xp.asarray(a) for a in arrays]
    tensors = [Tensor(a, requires_grad=True) for a in arrays]
    y = expression(*tensors)
    gy = xp.asarray(rng.normal(size=y.shape))
    y.backward(gy)

    def fn(*inputs):
        with no_grad():
            return expression(*(Tensor(a) for a in inputs)).data

    return gradcheck(fn, arrays, [t.grad for t in tensors], gy)


@pytest.mark.parametrize("name", list(CASES))
def test_function_matches_central_differences(xp, rng, name):
    _, expression, shapes, transform = CASES[name]
    report = check_expression(xp, rng, expression, shapes, transform)
    assert report.ok, f"{name}: {report}"


def test_a_wrong_derivative_is_caught(rng, monkeypatch):
    """The check can fail: Exp with a derivative off by a factor of 1 + 1e-4."""
    monkeypatch.setattr(functions.Exp, "backward", lambda self, gy: (gy * self.y * (1 + 1e-4),))
    report = check_expression(np, rng, lambda a: a.exp(), [(3, 4)], None)
    assert not report.ok


def test_every_function_has_a_case():
    classes = {name for name, obj in vars(functions).items()
               if inspect.isclass(obj) and issubclass(obj, Function) and not name.startswith("_")}
    covered = set().union(*(names for names, *_ in CASES.values())) | {"ToDevice"}  # ToDevice: below, on a GPU
    assert classes == covered


def test_to_device_gradient(gpu_xp, rng):
    a = rng.normal(size=(3, 4))
    x = Tensor(gpu_xp.asarray(a), requires_grad=True)
    gy = rng.normal(size=(3, 4))
    (x.to("cpu") * 2.0).backward(gy)
    np.testing.assert_allclose(backend.to_numpy(x.grad), 2.0 * gy)
