"""Property test: every Function driven with random shapes, dtypes and broadcast patterns (hypothesis).

Each call ends one of two ways, decided beforehand by the rule xpgrad
documents for it (NumPy's broadcasting and matmul rules, PyTorch's for
linear, softmax and cross-entropy, xpgrad's own where its docstrings say so):

* accepted: the output has the reference's shape, NumPy's dtype and its
  values, and ``backward`` gives every input a gradient of exactly the input's
  shape and dtype whose values are torch.autograd's (float64, same inputs);
* refused: a ValueError or TypeError raised by a ``raise`` statement in
  xpgrad's own source, never an error from inside NumPy, and never anything else.

Derandomized, so CI sees the same examples every run.
"""

import pathlib
import traceback

import numpy as np
import pytest

import xpgrad
from xpgrad import Tensor, functional, functions

hypothesis = pytest.importorskip("hypothesis", reason="the property test needs hypothesis (pip install hypothesis)")
torch = pytest.importorskip("torch", reason="the gradient oracle needs PyTorch (pip install torch==2.13.0)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Means over nothing (an empty axis, a batch of no rows) are NaN, as in NumPy and PyTorch, and NumPy warns.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
PACKAGE = pathlib.Path(xpgrad.__file__).resolve().parent
SETTINGS = settings(max_examples=250, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FLOATS = (np.float16, np.float32, np.float64)
CONSTANTS = (np.float32, np.float64, np.int32, np.int64, np.bool_)
RTOL = {np.dtype(np.float16): 2e-2, np.dtype(np.float32): 2e-4, np.dtype(np.float64): 1e-9}


# ---------------------------------------------------------------------------
# Drawing inputs


SIDES = (2, 3, 1, 2, 3, 1, 0)  # hypothesis draws small indices most often: sides of 2 and 3, now and then 1 or 0


def shapes(data, max_rank=4, min_rank=0):
    rank = data.draw(st.integers(min_rank, max_rank))
    return tuple(SIDES[data.draw(st.integers(0, len(SIDES) - 1))] for _ in range(rank))


def now_and_then(data, one_in=6) -> bool:
    """True about once in ``one_in`` draws (hypothesis favours 0, the usual case)."""
    return data.draw(st.integers(0, one_in - 1)) == one_in - 1


def broadcast_pair(data):
    """Two shapes that usually broadcast (leading axes dropped, axes set to 1), now and then two that do not."""
    base = shapes(data, min_rank=0)

    def derive():
        s = list(base[len(base) - data.draw(st.integers(0, len(base))):])
        return tuple(1 if now_and_then(data, 4) else n for n in s)

    a, b = derive(), derive()
    if now_and_then(data, 4):  # one axis of different lengths, neither 1
        i = data.draw(st.integers(0, len(base)))
        a, b = (*a[:i], 2, *a[i:]), (*b[:i], 3, *b[i:])
    return a, b


def values(rng, shape, dtype, positive=False):
    """Random values of ``dtype``: away from 0 where ``positive`` (division, log, fractional powers)."""
    v = rng.normal(size=shape)
    if positive:
        v = 0.5 + np.abs(v)
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return v > (0 if not positive else -1)
    if dtype.kind in "iu":
        return (np.sign(v) * np.ceil(np.abs(v) * 2)).astype(dtype) if positive else np.round(v * 2).astype(dtype)
    return v.astype(dtype)


def leaf(rng, data, shape, positive=False, dtype=None):
    """A floating-point Tensor that requires a gradient (of ``dtype``, if given) or, now and then, a constant
    of any dtype."""
    if now_and_then(data):
        return Tensor(values(rng, shape, data.draw(st.sampled_from(CONSTANTS)), positive))
    dtype = dtype or data.draw(st.sampled_from(FLOATS))
    return Tensor(values(rng, shape, dtype, positive), requires_grad=True)


# ---------------------------------------------------------------------------
# Running one call against its reference


def raised_by_xpgrad(exc) -> bool:
    """Whether ``exc`` came from a ``raise`` statement in xpgrad's source (not from inside NumPy)."""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return pathlib.Path(frame.filename).resolve().is_relative_to(PACKAGE) and frame.line.startswith("raise")


def as_torch(t):
    return torch.tensor(np.asarray(t.data, dtype=np.float64), requires_grad=t.requires_grad)


def assert_close(got, want, dtype, what):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    rtol = RTOL.get(np.dtype(dtype), 1e-9)
    scale = np.max(np.abs(want[np.isfinite(want)]), initial=1.0)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, equal_nan=True, err_msg=what)


def check(ours, reference, leaves, valid, dtype, rng, what):
    """Run ``ours()`` (an xpgrad Tensor from ``leaves``) and, if ``valid``, compare it and its gradients with
    ``reference(*torch_leaves)``; otherwise it must be refused by xpgrad with a ValueError or TypeError."""
    if not valid:
        with pytest.raises((ValueError, TypeError)) as info:
            ours()
        assert raised_by_xpgrad(info.value), f"{what}: {type(info.value).__name__} from outside xpgrad: {info.value}"
        return
    y = ours()
    theirs = [as_torch(t) for t in leaves]
    ty = reference(*theirs)
    assert y.shape == tuple(ty.shape), f"{what}: shape {y.shape}, the reference's {tuple(ty.shape)}"
    assert y.dtype == dtype, f"{what}: dtype {y.dtype}, expected {dtype}"
    assert_close(y.data, ty.detach().numpy(), y.dtype, what)
    if not y.requires_grad:
        return
    gy = values(rng, y.shape, y.dtype)
    y.backward(gy)
    ty.backward(torch.tensor(gy.astype(np.float64)))
    for i, (t, tt) in enumerate(zip(leaves, theirs)):
        if t.requires_grad:
            assert t.grad.shape == t.shape and t.grad.dtype == t.dtype, \
                f"{what}: input {i} is {t.dtype} {t.shape}, its gradient {t.grad.dtype} {t.grad.shape}"
            assert_close(t.grad, tt.grad.numpy(), t.dtype, f"{what}: gradient of input {i}")


def numpy_rule(fn, *arrays):
    """(valid, result dtype) of ``fn`` on the arrays, by NumPy itself (its broadcasting and promotion)."""
    try:
        with np.errstate(all="ignore"):
            return True, fn(*arrays).dtype
    except (ValueError, TypeError):
        return False, None


# ---------------------------------------------------------------------------
# The Functions


BINARY = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}


@SETTINGS
@given(st.data())
def test_arithmetic_between_two_operands(data):
    """``a op b`` with a Tensor on one side and a Tensor, an array or a number on the other, broadcast."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    op = data.draw(st.sampled_from(list(BINARY)))
    sa, sb = broadcast_pair(data)
    a = leaf(rng, data, sa)
    kind = data.draw(st.sampled_from(["array", "number", "numpy number"])) if now_and_then(data, 3) else "tensor"
    b = leaf(rng, data, sb, positive=op == "/")
    other = {"tensor": b, "array": b.data, "number": float(b.data.flat[0]) if b.data.size else 2.0,
             "numpy number": np.float64(b.data.flat[0]) if b.data.size else np.float32(2)}[kind]
    swap = data.draw(st.booleans()) and op != "/"
    leaves = [a, b] if kind == "tensor" else [a]
    left, right = (other, a) if swap else (a, other)
    raw = lambda v: v.data if isinstance(v, Tensor) else v  # noqa: E731
    valid, dtype = numpy_rule(BINARY[op], raw(left), raw(right))
    valid = valid and not (op == "-" and all(np.asarray(raw(v)).dtype.kind == "b" for v in (left, right)))
    fns = {"+": lambda p, q: p + q, "-": lambda p, q: p - q, "*": lambda p, q: p * q, "/": lambda p, q: p / q}

    def reference(*tl):
        o = tl[1] if kind == "tensor" else torch.tensor(np.asarray(other, dtype=np.float64))
        return fns[op](o, tl[0]) if swap else fns[op](tl[0], o)

    check(lambda: fns[op](left, right), reference, leaves, valid, dtype, rng, f"{left!r:.30} {op} {right!r:.30}")


UNARY = {
    "neg": (lambda x: -x, lambda x: -x, np.negative, False),
    "exp": (lambda x: x.exp(), torch.exp, np.exp, False),
    "log": (lambda x: x.log(), torch.log, np.log, True),
    "relu": (functional.relu, torch.relu, lambda x: np.maximum(x, 0), False),
    "square": (lambda x: x**2, lambda x: x**2, lambda x: x**2, False),
    "power 0": (lambda x: x**0, lambda x: x**0, lambda x: x**0, False),
    "power -1.5": (lambda x: x**-1.5, lambda x: x**-1.5, lambda x: x**-1.5, True),
    "power -2": (lambda x: x**-2, lambda x: x**-2, None, True),
    "3 / x": (lambda x: 3.0 / x, lambda x: 3.0 / x, lambda x: 3.0 / x, True),
    "1 - x": (lambda x: 1 - x, lambda x: 1 - x, lambda x: 1 - x, False),
    "x * 0.5 + 2": (lambda x: x * 0.5 + 2, lambda x: x * 0.5 + 2, lambda x: x * 0.5 + 2, False),
}


@SETTINGS
@given(st.data())
def test_elementwise_functions(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    name = data.draw(st.sampled_from(list(UNARY)))
    ours, theirs, rule, positive = UNARY[name]
    x = leaf(rng, data, shapes(data), positive=positive)
    if rule is None:  # an integer to a negative power is no integer: refused, as by PyTorch
        valid, dtype = x.dtype.kind == "f", x.dtype
    else:
        valid, dtype = numpy_rule(rule, x.data)
        valid = valid and not (name == "neg" and x.dtype.kind == "b")
    check(lambda: ours(x), theirs, [x], valid, dtype, rng, f"{name} of {x!r:.60}")


@SETTINGS
@given(st.data())
def test_sums_and_means(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = leaf(rng, data, shapes(data))
    r = x.ndim
    axis = data.draw(st.one_of(st.none(), st.integers(-r - 1, r),
                               st.lists(st.integers(-r - 1, r), max_size=3).map(tuple), st.just(1.0)))
    keepdims, mean = data.draw(st.booleans()), data.draw(st.booleans())
    normalized = None
    if isinstance(axis, int):
        normalized = (axis % r,) if -r <= axis < r else None
    elif isinstance(axis, tuple):
        normalized = tuple(a % r for a in axis) if all(-r <= a < r for a in axis) else None
    valid = axis is None or (normalized is not None and len(set(normalized)) == len(normalized))
    reduce = np.mean if mean else np.sum
    dtype = reduce(x.data, axis=normalized if axis is not None else None).dtype if valid else None

    def reference(t):
        if normalized == ():
            return t * 1.0
        if axis is None:
            y = (torch.mean if mean else torch.sum)(t)
            return y.reshape([1] * r) if keepdims else y
        return (torch.mean if mean else torch.sum)(t, dim=normalized, keepdim=keepdims)

    ours = (lambda: x.mean(axis, keepdims)) if mean else (lambda: x.sum(axis, keepdims))
    check(ours, reference, [x], valid, dtype, rng, f"{'mean' if mean else 'sum'}({x!r:.40}, axis={axis})")


@SETTINGS
@given(st.data())
def test_reshape_and_transpose(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = leaf(rng, data, shapes(data))
    if data.draw(st.booleans()):
        target = list(data.draw(st.permutations(x.shape)))
        if target and data.draw(st.booleans()):
            target[data.draw(st.integers(0, len(target) - 1))] = data.draw(st.sampled_from([-1, -1, 5, 0]))
        valid, _ = numpy_rule(lambda a: a.reshape(target), x.data)
        check(lambda: x.reshape(*target), lambda t: t.reshape(target), [x], valid, x.dtype, rng,
              f"reshape {x.shape} to {target}")
    else:
        axes = list(data.draw(st.permutations(range(x.ndim))))
        if axes and data.draw(st.integers(0, 3)) == 0:
            axes[0] = data.draw(st.sampled_from([axes[-1], x.ndim, -1]))
        valid = sorted(a % x.ndim if -x.ndim <= a < x.ndim else -9 for a in axes) == list(range(x.ndim))
        order = [a % max(x.ndim, 1) for a in axes]
        check(lambda: x.transpose(*axes) if axes else x.T, lambda t: t.permute(order) if axes else t * 1.0,
              [x], valid, x.dtype, rng, f"transpose {x.shape} {axes}")


@SETTINGS
@given(st.data())
def test_matrix_products(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n, k, m = (data.draw(st.integers(0, 3)) for _ in range(3))
    batch_a, batch_b = broadcast_pair(data)
    sa = data.draw(st.sampled_from([(k,), (n, k), (*batch_a[-2:], n, k), ()]))
    sb = data.draw(st.sampled_from([(k,), (k, m), (*batch_b[-2:], k, m), (k + 1, m)]))
    a, b = leaf(rng, data, sa), leaf(rng, data, sb)
    valid, dtype = numpy_rule(np.matmul, a.data, b.data)
    check(lambda: a @ b, torch.matmul, [a, b], valid, dtype, rng, f"{a.dtype} {sa} @ {b.dtype} {sb}")


@SETTINGS
@given(st.data())
def test_linear_on_any_leading_axes(data):
    """F.linear (and the fused Linear+ReLU) on x of rank 0 to 4 against ``x @ W + b`` in torch."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n_in, n_out = (SIDES[data.draw(st.integers(0, len(SIDES) - 1))] for _ in range(2))
    sx = () if now_and_then(data, 10) else (*shapes(data, max_rank=3), n_in + now_and_then(data, 8))
    sw = data.draw(st.sampled_from([(n_in, n_out), (n_in,), (1, n_in, n_out)])) if now_and_then(data) else (n_in, n_out)
    sb = data.draw(st.sampled_from([(n_out,), None, (1,), (), (n_out + 2,), (*sx[:-1], n_out)]))
    dtype = data.draw(st.sampled_from(FLOATS))
    x, W = (leaf(rng, data, s, dtype=None if now_and_then(data, 8) else dtype) for s in (sx, sw))
    b = None if sb is None else leaf(rng, data, sb, dtype=None if now_and_then(data, 8) else dtype)
    fused = b is not None and data.draw(st.booleans())
    parts = [x, W] if b is None else [x, W, b]
    out = (*sx[:-1], sw[-1]) if sx and len(sw) == 2 else None
    valid = (len(sw) == 2 and len(sx) >= 1 and sx[-1] == sw[0]
             and len({t.dtype for t in parts}) == 1 and W.dtype.kind == "f"
             and (b is None or (fused and b.shape == (n_out,))
                  or (not fused and numpy_rule(np.add, np.empty(out), b.data)[0]
                      and np.broadcast_shapes(out, b.shape) == out)))

    def reference(tx, tW, tb=None):
        y = (tx @ tW) if tb is None else (tx @ tW + tb)
        return torch.relu(y) if fused else y

    ours = (lambda: functions.LinearReLU()(x, W, b)) if fused else (lambda: functional.linear(*parts))
    check(ours, reference, parts, valid, W.dtype, rng, f"linear x {x.dtype} {sx}, W {W.dtype} {sw}, b {sb}"
          + (" (fused with ReLU)" if fused else ""))


@SETTINGS
@given(st.data())
def test_softmax_and_log_softmax_along_any_axis(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = leaf(rng, data, shapes(data))
    r = x.ndim
    axis = data.draw(st.sampled_from([r, -r - 1, (0,), 0.0])) if now_and_then(data, 8) or not r else \
        data.draw(st.integers(-r, r - 1))
    log = data.draw(st.booleans())
    valid = x.dtype.kind == "f" and r >= 1 and type(axis) is int and -r <= axis < r
    fn = functional.log_softmax if log else functional.softmax
    reference = (lambda t: torch.log_softmax(t, dim=axis)) if log else (lambda t: torch.softmax(t, dim=axis))
    check(lambda: fn(x, axis), reference, [x], valid, x.dtype, rng, f"{fn.__name__}({x!r:.40}, axis={axis})")


@SETTINGS
@given(st.data())
def test_cross_entropy_of_logits_and_labels(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    n, c = (data.draw(st.sampled_from((4, 3, 1, 0))) for _ in range(2))
    logits = leaf(rng, data, data.draw(st.sampled_from([(c,), (n, c, 2)])) if now_and_then(data, 8) else (n, c))
    form = data.draw(st.sampled_from(["list", "int", "float indices"])) if now_and_then(data, 8) else \
        data.draw(st.sampled_from(["indices", "probabilities"]))
    size, high = n + now_and_then(data, 8), c + now_and_then(data, 8)
    labels = {"indices": lambda: rng.integers(0, max(high, 1), size=size) if high else np.zeros(size, np.int64),
              "float indices": lambda: rng.integers(0, max(c, 1), size=n).astype(np.float64),
              "probabilities": lambda: values(rng, (size, c), data.draw(st.sampled_from(FLOATS + (np.int64,))), True),
              "list": lambda: [0] * n, "int": lambda: 0}[form]()
    two_d = logits.ndim == 2 and c >= 1 and logits.dtype.kind == "f"
    in_range = form != "indices" or size == 0 or labels.max() < c
    valid = two_d and form in ("indices", "probabilities") and size == n and in_range

    def reference(t):
        if form == "indices":
            return torch.nn.functional.cross_entropy(t, torch.tensor(labels, dtype=torch.int64))
        return torch.nn.functional.cross_entropy(t, torch.tensor(np.asarray(labels, dtype=np.float64)))

    check(lambda: functional.cross_entropy(logits, labels), reference, [logits], valid, logits.dtype, rng,
          f"cross_entropy({logits.dtype} {logits.shape}, {form} {np.shape(labels)})")


def test_the_property_tests_name_real_functions():
    """The Functions the tests above drive (GetItem's ranks are in tests/test_api_gradients.py, ToDevice needs a
    GPU): a renamed one must be renamed here too."""
    tested = {"Add", "Sub", "Mul", "Div", "AddScalar", "SubScalar", "RSubScalar", "MulScalar", "DivScalar",
              "RDivScalar", "PowScalar", "Neg", "Exp", "Log", "Relu", "Sum", "Mean", "Reshape", "Transpose",
              "MatMul", "Linear", "LinearReLU", "Softmax", "LogSoftmax", "CrossEntropy"}
    assert tested <= set(functions.__all__)
