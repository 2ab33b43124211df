"""Every op's backward, checked by central differences on each backend."""

import numpy as np
import pytest

from xpgrad import backend
from xpgrad.gradcheck import check_op, gradcheck
from xpgrad.ops import (
    Linear,
    Log,
    LogSoftmax,
    Matmul,
    Relu,
    Softmax,
    SoftmaxCrossEntropy,
)

from .helpers import move

DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_backward(xp, rng, dtype):
    x, W = move(xp, rng.normal(size=(4, 3)).astype(dtype), rng.normal(size=(3, 5)).astype(dtype))
    report = check_op(Matmul, x, W)
    assert report.ok, report


def test_matmul_skips_input_grad_when_told(xp, rng):
    x, W = move(xp, rng.normal(size=(4, 3)), rng.normal(size=(3, 5)))
    op = Matmul(needs_input_grad=False)
    op.forward(x, W)
    gx, gW = op.backward(xp.ones((4, 5)))
    assert gx is None
    np.testing.assert_allclose(backend.to_numpy(gW), backend.to_numpy(x.T @ xp.ones((4, 5))))


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_backward(xp, rng, dtype):
    x, W, b = move(
        xp, *(rng.normal(size=s).astype(dtype) for s in [(4, 3), (3, 5), (5,)])
    )
    report = check_op(Linear, x, W, b)
    assert report.ok, report


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward(xp, rng, dtype):
    x = rng.normal(size=(6, 7))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink, where the derivative is undefined
    (x,) = move(xp, x.astype(dtype))
    report = check_op(Relu, x)
    assert report.ok, report


def test_relu_in_place_overwrites_its_input_and_keeps_the_gradient(xp, rng):
    x = rng.normal(size=(6, 7))
    gy = rng.normal(size=(6, 7))
    (x_dev, gy_dev) = move(xp, x, gy)
    op = Relu(inplace=True)
    y = op.forward(x_dev)
    assert y is x_dev
    np.testing.assert_array_equal(backend.to_numpy(x_dev), np.maximum(x, 0))
    np.testing.assert_array_equal(backend.to_numpy(op.backward(gy_dev)), gy * (x > 0))


@pytest.mark.parametrize("op", [Softmax, LogSoftmax])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_family_backward(xp, rng, op, dtype):
    x, gy = move(xp, rng.normal(size=(5, 4)).astype(dtype), rng.normal(size=(5, 4)).astype(dtype))
    report = check_op(op, x, gy=gy)
    assert report.ok, report


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_backward(xp, rng, dtype):
    x, gy = move(xp, rng.uniform(0.1, 2.0, size=(5, 4)).astype(dtype), rng.normal(size=(5, 4)).astype(dtype))
    report = check_op(Log, x, gy=gy)
    assert report.ok, report


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_kind", ["index", "onehot"])
def test_softmax_cross_entropy_backward(xp, rng, dtype, label_kind):
    n, c = 6, 4
    logits = rng.normal(size=(n, c)).astype(dtype) * 3
    t = rng.integers(0, c, size=n)
    if label_kind == "onehot":
        t = np.eye(c, dtype=dtype)[t]
    x, t = move(xp, logits, t)
    report = check_op(SoftmaxCrossEntropy, x, t, gy=xp.asarray(1.7, dtype=dtype), wrt=[0])
    assert report.ok, report


def test_softmax_cross_entropy_matches_its_definition(xp, rng):
    logits = rng.normal(size=(7, 5))
    t = rng.integers(0, 5, size=7)
    x, tt = move(xp, logits, t)
    loss = SoftmaxCrossEntropy().forward(x, tt)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = -np.log(p[np.arange(7), t]).mean()
    assert loss.shape == ()
    assert loss.dtype == np.float64
    np.testing.assert_allclose(float(loss), expected, rtol=1e-13)


def test_softmax_does_not_overflow(xp):
    (x,) = move(xp, np.array([[1e4, 0.0, -1e4], [800.0, 799.0, 0.0]]))
    s = backend.to_numpy(Softmax().forward(x))
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s[0], [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(s[1, :2], [1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1))], rtol=1e-12)


def test_log_keeps_the_notebook_epsilon(xp):
    (p,) = move(xp, np.array([[0.0, 1.0]]))
    op = Log()
    y = backend.to_numpy(op.forward(p))
    np.testing.assert_allclose(y, [[np.log(1e-12), np.log(1 + 1e-12)]], rtol=1e-15)
    g = backend.to_numpy(op.backward(xp.ones((1, 2))))
    np.testing.assert_allclose(g, [[1e12, 1 / (1 + 1e-12)]], rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ops_keep_dtype(xp, rng, dtype):
    x, W, b = move(xp, *(rng.normal(size=s).astype(dtype) for s in [(4, 3), (3, 5), (5,)]))
    t = xp.asarray(rng.integers(0, 5, size=4))
    h = Linear().forward(x, W, b)
    for op in (Relu(), Softmax(), LogSoftmax()):
        out = op.forward(h)
        assert out.dtype == dtype, type(op).__name__
        assert op.backward(xp.ones_like(out)).dtype == dtype, type(op).__name__
    sce = SoftmaxCrossEntropy()
    assert sce.forward(h, t).dtype == dtype
    assert sce.backward().dtype == dtype


@pytest.mark.parametrize("label_dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint32])
def test_softmax_cross_entropy_rejects_bad_labels(label_dtype):
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match="labels must lie"):
        SoftmaxCrossEntropy().forward(x, np.array([0, 4, 1], dtype=label_dtype))
    if np.dtype(label_dtype).kind == "i":
        with pytest.raises(ValueError, match="labels must lie"):
            SoftmaxCrossEntropy().forward(x, np.array([0, -1, 1], dtype=label_dtype))
    # the largest and smallest valid labels pass
    SoftmaxCrossEntropy().forward(x, np.array([0, 3, 3], dtype=label_dtype))
    with pytest.raises(ValueError, match="3 rows of logits but 2 labels"):
        SoftmaxCrossEntropy().forward(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="labels must be integer class indices"):
        SoftmaxCrossEntropy().forward(x, np.zeros((3, 5)))


def test_gradcheck_catches_a_wrong_backward(rng):
    """The checker itself must be able to fail."""
    x = rng.normal(size=(3, 4))

    def square(a):
        return a * a

    report = gradcheck(square, (x,), [3 * x])  # the right answer is 2x
    assert not report.ok
    assert "MISMATCH" in str(report)
    assert gradcheck(square, (x,), [2 * x]).ok


def test_backward_out_arguments_match_fresh_results(xp, rng):
    """out= (NumPy's convention: one array per returned value, None to allocate) gives the same numbers."""
    x, W, b, gy = move(xp, *(rng.normal(size=s) for s in [(4, 3), (3, 5), (5,), (4, 5)]))
    for op_cls, args in ((Matmul, (x, W)), (Linear, (x, W, b))):
        op = op_cls()
        op.forward(*args)
        fresh = op.backward(gy)
        outs = tuple(xp.full_like(a, np.nan) for a in fresh)
        got = op.backward(gy, out=outs)
        for g, o, f in zip(got, outs, fresh):
            assert g is o
            np.testing.assert_array_equal(backend.to_numpy(o), backend.to_numpy(f))
        h = xp.full_like(op.forward(*args), np.nan)
        assert op.forward(*args, out=h) is h
        np.testing.assert_array_equal(backend.to_numpy(h), backend.to_numpy(op_cls().forward(*args)))


def test_relu_backward_can_overwrite_its_gradient(xp, rng):
    x, gy = rng.normal(size=(6, 7)), rng.normal(size=(6, 7))
    x_dev, gy_dev = move(xp, x, gy)
    op = Relu()
    op.forward(x_dev)
    assert op.backward(gy_dev, out=gy_dev) is gy_dev
    np.testing.assert_array_equal(backend.to_numpy(gy_dev), gy * (x > 0))
