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

import numpy as np
import pytest

from xpgrad import Tensor, functional, functions, modeops
from xpgrad.tensor import Function

from .helpers import raised_by_xpgrad

hypothesis = pytest.importorskip("hypothesis", reason="the property test needs hypothesis (pip install hypothesis)")
torch = pytest.importorskip("torch", reason="the gradient oracle needs PyTorch (pip install torch==2.13.0)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Means over nothing (an empty axis, a batch of no rows) are NaN, as in NumPy and PyTorch, and NumPy warns.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
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


def as_torch(t):
    return torch.tensor(np.asarray(t.data, dtype=np.float64), requires_grad=t.requires_grad)


def assert_close(got, want, dtype, what, scale=1.0):
    """Equal to ``rtol`` of ``dtype``, relative to the largest of ``want`` and ``scale``, the size of the terms
    ``want`` is a sum of where they may cancel."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    rtol = RTOL.get(np.dtype(dtype), 1e-9)
    scale = np.max(np.abs(want[np.isfinite(want)]), initial=scale)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, equal_nan=True, err_msg=what)


def check(ours, reference, leaves, valid, dtype, rng, what, grad_scale=None):
    """Run ``ours()`` (an xpgrad Tensor from ``leaves``) and, if ``valid``, compare it and its gradients with
    ``reference(*torch_leaves)``; otherwise it must be refused by xpgrad with a ValueError or TypeError.
    ``grad_scale(gy)``, if given, is the size of the terms the gradients sum, for their tolerance."""
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
            assert_close(t.grad, tt.grad.numpy(), t.dtype, f"{what}: gradient of input {i}",
                         1.0 if grad_scale is None else grad_scale(gy))


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


# ---------------------------------------------------------------------------
# The image layers: conv2d, max_pool2d, batch_norm and dropout


def as_pair(value, low):
    """``value`` as PyTorch's (int, int), or None where xpgrad must refuse it (not ints, or one below ``low``)."""
    if type(value) is int:
        value = (value, value)
    ok = isinstance(value, tuple) and len(value) == 2 and all(type(v) is int and v >= low for v in value)
    return value if ok else None


def image_shape(data, channels, sides=(1, 2, 3, 4, 5)):
    """(N, C, H, W) with N from SIDES (0 now and then) and H, W from ``sides``; now and then of rank 3 or 5,
    or with an H of 0."""
    n, h, w = SIDES[data.draw(st.integers(0, len(SIDES) - 1))], *(data.draw(st.sampled_from(sides)) for _ in "hw")
    form = odd_argument(data, ("4-d",), ("3-d", "5-d", "H of 0"))
    return {"4-d": (n, channels, h, w), "3-d": (channels, h, w), "5-d": (n, channels, h, w, 1),
            "H of 0": (n, channels, 0, w)}[form]


def odd_argument(data, usual, odd):
    """One of ``usual``, or now and then one of ``odd`` (the values xpgrad must refuse, or edge values)."""
    return data.draw(st.sampled_from(odd if now_and_then(data, 12) else usual))


@SETTINGS
@given(st.data())
def test_conv2d_over_shapes_strides_paddings_and_dtypes(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    c = data.draw(st.sampled_from((1, 2, 3, 0)))
    o, kernel = odd_argument(data, ((1, (1, 1)), (2, (2, 2)), (3, (3, 3)), (2, (1, 3)), (3, (2, 1))),
                             ((0, (2, 2)), (2, (0, 2)), (1, (3, 0))))
    stride = odd_argument(data, (1, 2, (1, 2), (2, 1)), (0, -1, 1.5, (1,), True))
    padding = odd_argument(data, (0, 1, (0, 1)), (-1, 2.0, (1, 1, 1)))
    sx = image_shape(data, c, sides=(2, 3, 4, 5, 1))
    sw = (o, c + now_and_then(data, 10), *kernel)
    sb = odd_argument(data, ((o,), None), ((), (o + 1,)))
    dtype = data.draw(st.sampled_from(FLOATS))
    x, W = (leaf(rng, data, s, dtype=None if now_and_then(data, 10) else dtype) for s in (sx, sw))
    b = None if sb is None else leaf(rng, data, sb, dtype=None if now_and_then(data, 10) else dtype)
    parts = [x, W] if b is None else [x, W, b]
    st_, pd = as_pair(stride, 1), as_pair(padding, 0)
    valid = (st_ is not None and pd is not None and len(sx) == 4 and min(sx[2:]) >= 1 and sx[1] == sw[1]
             and o >= 1 and min(kernel) >= 1 and (sb is None or sb == (o,))
             and len({t.dtype for t in parts}) == 1 and W.dtype.kind == "f"
             and all(n + 2 * p >= k for n, p, k in zip(sx[2:], pd, kernel)))

    def reference(tx, tW, tb=None):
        if c == 0:  # torch returns no channels; a sum over no input is 0, so the output is the bias (as Linear's)
            size = [(n + 2 * p - k) // s + 1 for n, p, k, s in zip(sx[2:], pd, kernel, st_)]
            y = torch.zeros(sx[0], o, *size, dtype=torch.float64) + (tx.sum() + tW.sum()) * 0  # x, W get (empty) grads
            return y if tb is None else y + tb[:, None, None]
        return torch.nn.functional.conv2d(tx, tW, tb, stride=st_, padding=pd)

    check(lambda: functional.conv2d(*parts, stride=stride, padding=padding), reference, parts, valid, W.dtype, rng,
          f"conv2d x {x.dtype} {sx}, W {W.dtype} {sw}, b {sb}, stride {stride}, padding {padding}")


@SETTINGS
@given(st.data())
def test_max_pool2d_over_shapes_windows_and_dtypes(data):
    """Of integers too (as PyTorch; no gradient), of bool never (as PyTorch). Channels >= 1 here, because torch
    refuses C = 0 (xpgrad takes it: tests/test_api_validation_layers.py)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    kernel = odd_argument(data, (1, 2, 3, (2, 1), (1, 3)), (0, -1, 2.0, (2,), None))
    stride = odd_argument(data, (None, 1, 2, (1, 2)), (0, 1.5, "2"))
    padding = odd_argument(data, (0, 0, 1, (1, 0)), (-1, (0, 0.5)))
    x = leaf(rng, data, image_shape(data, data.draw(st.sampled_from((1, 2, 3)))))
    k, pd = as_pair(kernel, 1), as_pair(padding, 0)
    s = k if stride is None else as_pair(stride, 1)
    valid = (k is not None and s is not None and pd is not None and all(2 * p <= n for p, n in zip(pd, k))
             and x.ndim == 4 and min(x.shape[2:]) >= 1 and x.dtype.kind != "b"
             and all(n + 2 * p >= w for n, p, w in zip(x.shape[2:], pd, k)))

    def reference(tx):
        return torch.nn.functional.max_pool2d(tx, k, s, pd)

    check(lambda: functional.max_pool2d(x, kernel, stride, padding), reference, [x], valid, x.dtype, rng,
          f"max_pool2d({x.dtype} {x.shape}, {kernel}, {stride}, {padding})")


def statistic(rng, data, c, dtype, positive):
    """A running statistic: (C,) of ``dtype``, or now and then a list, integers, another dtype or shape."""
    form = odd_argument(data, ("array",), ("list", "int64", "other dtype", "longer", "2-d"))
    v = values(rng, (c + (form == "longer"),), dtype, positive)
    other = np.float32 if np.dtype(dtype) == np.float64 else np.float64
    return {"array": v, "longer": v, "list": v.tolist(), "int64": v.astype(np.int64),
            "other dtype": v.astype(other), "2-d": v[None]}[form]


@SETTINGS
@given(st.data())
def test_batch_norm_in_training_and_evaluation(data):
    """The output, every gradient and the running statistics (updated in place) against torch's batch_norm."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    c = odd_argument(data, (1, 2, 3), (0,))
    dtype = data.draw(st.sampled_from(FLOATS))
    x = leaf(rng, data, image_shape(data, c, sides=(1, 2, 3)), dtype=None if now_and_then(data, 10) else dtype)
    affine = odd_argument(data, ("both", "neither"), ("weight only", "short", "other dtype"))
    ws = (1,) if affine == "short" else (c,)
    wd = dtype if affine != "other dtype" else np.float32 if dtype == np.float64 else np.float64
    weight, bias = (None, None) if affine == "neither" else \
        (leaf(rng, data, ws, dtype=wd), None if affine == "weight only" else leaf(rng, data, ws, dtype=wd))
    mean, var = statistic(rng, data, c, dtype, False), statistic(rng, data, c, dtype, True)
    training = odd_argument(data, (True, False), ("yes", 2))
    momentum = odd_argument(data, (0.1, 0.0, 1.0, 0.5), (-0.1, 1.5, None))
    eps = odd_argument(data, (1e-5, 1e-3), (-1e-5, 0.0, np.inf))
    parts = [x] + [t for t in (weight, bias) if t is not None]
    count = x.size // max(x.shape[1], 1) if x.ndim == 4 else 0
    valid = (x.ndim == 4 and c >= 1 and x.dtype.kind == "f" and affine != "weight only"
             and {t.dtype for t in parts} == {x.dtype} and all(t.shape == (c,) for t in parts[1:])
             and all(isinstance(a, np.ndarray) and a.dtype == x.dtype and a.shape == (c,) for a in (mean, var))
             and type(training) is bool and type(momentum) is float and 0 <= momentum <= 1
             and eps in (1e-5, 1e-3) and (not training or count > 1))
    theirs = [torch.tensor(np.asarray(a, dtype=np.float64)) for a in (mean, var)] if valid else None

    def reference(tx, tw=None, tb=None):
        return torch.nn.functional.batch_norm(tx, *theirs, tw, tb, training=training, momentum=momentum, eps=eps)

    what = f"batch_norm x {x.dtype} {x.shape}, {affine}, training={training!r}, momentum={momentum}, eps={eps}"

    def grad_scale(gy):
        """In training, x's gradient is gy less its mean and its projection on the normalized x, times
        weight / std: terms of |gy| * |weight| / std that cancel (all of it for 2 values per channel)."""
        x64 = x.data.astype(np.float64)
        std = np.sqrt(x64.var(axis=(0, 2, 3)) + eps) if training else np.sqrt(var.astype(np.float64) + eps)
        w = 1.0 if weight is None else np.abs(weight.data.astype(np.float64)).max()
        return float(np.abs(gy).max(initial=0.0) * w / std.min()) if x.size else 1.0

    check(lambda: functional.batch_norm(x, mean, var, weight, bias, training, momentum, eps), reference, parts,
          valid, x.dtype, rng, what, grad_scale)
    if valid:
        for ours, want, name in zip((mean, var), theirs, ("running_mean", "running_var")):
            assert_close(ours, want.numpy(), x.dtype, f"{what}: {name}")


@SETTINGS
@given(st.data())
def test_dropout_keeps_what_its_gradient_says_and_advances_its_state(data):
    """Masks are random, so no reference: ``y == x * m`` and ``x.grad == gy * m`` bit for bit, for one mask m of
    0 and 1 / (1 - p); the state's counter moves by one and its key stays."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = leaf(rng, data, shapes(data))
    p = odd_argument(data, (0.5, 0.2, 0.9, 0.0, 1.0), (-0.1, 1.5, "0.5", True, None))
    training = odd_argument(data, (True, True, False), ("yes", 2))
    state = odd_argument(data, ("state",), (None, 5, "zeros(3)", "int64", "(1, 2)", "list"))
    state = {"state": lambda: modeops.new_state(data.draw(st.integers(0, 2**64 - 1))), None: lambda: None,
             5: lambda: 5, "zeros(3)": lambda: np.zeros(3), "int64": lambda: np.zeros(2, np.int64),
             "(1, 2)": lambda: np.zeros((1, 2), np.uint64), "list": lambda: [0, 0]}[state]()
    good_state = isinstance(state, np.ndarray) and state.dtype == np.uint64 and state.shape == (2,)
    good_p = type(p) is float and 0 <= p <= 1
    valid = good_p and type(training) is bool and (good_state or (state is None and (not training or p == 0))) \
        and (not training or p == 0 or x.dtype.kind == "f")
    what = f"dropout({x.dtype} {x.shape}, p={p!r}, training={training!r}, state={state!r:.30})"
    if not valid:
        check(lambda: functional.dropout(x, p, training, state=state), None, [x], False, None, rng, what)
        return
    before = None if state is None else state.copy()
    y = functional.dropout(x, p, training, state=state)
    if not training or p == 0:
        assert y is x and (before is None or np.array_equal(state, before)), what
        return
    assert y.shape == x.shape and y.dtype == x.dtype, what
    assert state[0] == before[0] and state[1] == before[1] + np.uint64(1), what
    if not y.requires_grad:
        return
    gy = values(rng, y.shape, y.dtype)
    y.backward(gy)
    keep = (x.grad != 0) | (gy == 0) if p < 1 else np.zeros(x.shape, bool)
    m = np.multiply(keep, x.dtype.type(1.0 / (1.0 - p)) if p < 1 else 0, dtype=x.dtype)
    assert np.array_equal(x.grad, gy * m) and np.array_equal(y.data, x.data * m), what


# Public Functions the tests above do not drive, each with the reason.
EXEMPT = {"GetItem": "its indices over ranks are checked in tests/test_api_gradients.py",
          "ToDevice": "it moves data to a GPU: tests/test_tensor.py and tests/test_tensor_gradcheck.py, with one"}


def test_the_property_tests_drive_every_public_function():
    """The Functions the tests above drive, and those exempt with a reason, are exactly the public Functions of
    xpgrad.functions: a new one fails here until it is driven (or exempted), and a renamed one until renamed."""
    tested = {"Add", "Sub", "Mul", "Div", "AddScalar", "SubScalar", "RSubScalar", "MulScalar", "DivScalar",
              "RDivScalar", "PowScalar", "Neg", "Exp", "Log", "Relu", "Sum", "Mean", "Reshape", "Transpose",
              "Matmul", "Linear", "LinearReLU", "Softmax", "LogSoftmax", "CrossEntropy",
              "Conv2d", "MaxPool2d", "BatchNorm2d", "Dropout"}
    public = {name for name in functions.__all__
              if isinstance(getattr(functions, name), type) and issubclass(getattr(functions, name), Function)}
    assert not tested & set(EXEMPT)
    assert tested | set(EXEMPT) == public, f"not driven: {public - tested - set(EXEMPT)}; " \
                                           f"not public Functions: {(tested | set(EXEMPT)) - public}"
