"""The Functions a network is made of, each around an op of :mod:`xpgrad.ops`.

Matrix products, ReLU, softmax, log-softmax and cross-entropy call the ops'
``forward`` and ``backward``, so on a GPU the tape runs the same fused
kernels (and capture-safe matrix products) as the hand-written model.
"""

from __future__ import annotations

import math
import numbers

import numpy

from .. import backend, ops
from ..backend import get_array_module
from ..backend import graph as _graph
from ..backprop import grad_destination, is_unit
from ..tensor import Function, is_grad_enabled
from .arithmetic import broadcast_shape, sum_to
from .array import normalize_axes


# ---------------------------------------------------------------------------
# Matrix products, through xpgrad.ops


class Matmul(Function):
    """``a @ b``. Two matrices go through :class:`xpgrad.ops.Matmul`; vectors and
    stacks of matrices (broadcast as ``numpy.matmul``) through the general rule
    ``ga = gy @ b^T, gb = a^T @ gy``, each summed back to its operand's shape
    and cast to its dtype (NumPy promotes mixed dtypes in the product)."""

    __slots__ = ("op", "a", "b", "shape2")

    def forward(self, a, b):
        xp = get_array_module(a, b)
        _check_matmul(a.shape, b.shape)
        self.a, self.b = a, b
        if a.ndim == 2 and b.ndim == 2:
            self.op = ops.Matmul(needs_input_grad=self.inputs[0].requires_grad)
            return self.op.forward(a, b)
        self.op = None
        _graph.refuse_while_recording(f"Matmul of {a.ndim}-d and {b.ndim}-d arrays calls cuBLAS through CuPy")
        # Vectors promoted to matrices, as numpy.matmul does, then the added axes dropped.
        y = xp.matmul(a[None] if a.ndim == 1 else a, b[:, None] if b.ndim == 1 else b)
        self.shape2 = y.shape
        if b.ndim == 1:
            y = y[..., 0]
        if a.ndim == 1:
            y = y[..., 0] if b.ndim == 1 else y[..., 0, :]
        return y

    def backward(self, gy):
        need_a, need_b = (x.requires_grad for x in self.inputs)
        a, b = self.a, self.b
        if self.op is not None:
            ga, gb = self.op.backward(gy)
            gb = gb if need_b else None
        else:
            xp = get_array_module(gy)
            a2 = a[None] if a.ndim == 1 else a
            b2 = b[:, None] if b.ndim == 1 else b
            g2 = gy.reshape(self.shape2)
            ga = sum_to(xp.matmul(g2, xp.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape) if need_a else None
            gb = sum_to(xp.matmul(xp.swapaxes(a2, -1, -2), g2), b2.shape).reshape(b.shape) if need_b else None
        return _cast(ga, a.dtype), _cast(gb, b.dtype)


def _check_matmul(a, b) -> None:
    """numpy.matmul's rules for shapes ``a`` and ``b``, as a ValueError that names them."""
    if not a or not b:
        raise ValueError(f"matmul needs operands with at least one dimension, got shapes {a} and {b}")
    k = b[0] if len(b) == 1 else b[-2]
    if a[-1] != k:
        raise ValueError(f"matmul: shapes {a} and {b} do not fit: a's last axis has {a[-1]} elements, b's "
                         f"{'only' if len(b) == 1 else 'second-to-last'} axis {k}")
    if len(a) > 2 or len(b) > 2:
        broadcast_shape("matmul (the stacked axes)", a[:-2], b[:-2])


def _cast(g, dtype):
    return g if g is None or g.dtype == dtype else g.astype(dtype)


class Linear(Function):
    """``x @ W + b`` (or ``x @ W`` without ``b``) through :class:`xpgrad.ops.Linear` / ``ops.Matmul``.

    As PyTorch's, it applies to x's last axis: x is (in,), (N, in) or
    (N, ..., in), W is (in, out), and the output is x's shape with ``out``
    for ``in``. ``b`` is (out,), or any shape that broadcasts to the output
    (a number, (1,), ...; its gradient is summed back to its shape). x, W and
    b share one floating-point dtype (PyTorch's rule). The input's gradient is
    skipped when x needs none (a first layer fed with data); a flat
    parameter's gradient is written straight into its slot of the flat
    gradient buffer.
    """

    __slots__ = ("op", "lead", "bias_shape")

    def forward(self, x, W, b=None):
        x = self.rows(x, W, b)
        needs_input_grad = self.inputs[0].requires_grad
        if b is None or self.bias_shape is not None:
            self.op = ops.Matmul(needs_input_grad=needs_input_grad)
            y = self.unrows(self.op.forward(x, W))
            return y if b is None else y + b
        self.op = ops.Linear(needs_input_grad=needs_input_grad)
        return self.unrows(self.op.forward(x, W, b))

    def rows(self, x, W, b):
        """x as (rows, in), after checking the three; remembers how to undo it."""
        xs, ws, dt = x.shape, W.shape, W.dtype
        if len(xs) == 2 and len(ws) == 2 and xs[1] == ws[0] and x.dtype is dt and dt.kind == "f" and (
                b is None or (b.dtype is dt and b.shape == ws[1:])):  # the usual case, in one expression
            self.lead = self.bias_shape = None
            return x
        _check_linear(x, W, b)
        self.bias_shape = None if b is None or b.shape == (W.shape[1],) else b.shape
        if x.ndim == 2:
            self.lead = None
            return x
        self.lead = x.shape[:-1]
        return x.reshape(math.prod(self.lead), x.shape[-1])

    def unrows(self, y2):
        return y2 if self.lead is None else y2.reshape(*self.lead, y2.shape[-1])

    def backward(self, gy):
        inputs = self.inputs
        gy2 = gy if self.lead is None else gy.reshape(math.prod(self.lead), gy.shape[-1])
        out = (None, grad_destination(self, 1), grad_destination(self, 2) if len(inputs) == 3 else None)
        if self.bias_shape is not None:  # a broadcast bias: its gradient summed back to its shape
            gx, gW = self.op.backward(gy2, out=out[:2])
            grads = gx, gW, _cast(sum_to(gy, self.bias_shape), inputs[2].dtype)
        else:
            grads = self.op.backward(gy2, out=out[:len(inputs)])
        return self.finish(grads)

    def finish(self, grads):
        if self.lead is not None and grads[0] is not None:
            grads = (grads[0].reshape(self.inputs[0].shape), *grads[1:])
        return tuple([g if x.requires_grad else None for g, x in zip(grads, self.inputs)])


def _check_linear(x, W, b) -> None:
    """PyTorch's rules for ``linear(x, W, b)`` (W is (in, out) here), as a ValueError or TypeError."""
    if W.ndim != 2:
        raise ValueError(f"linear: the weight W must be 2-d (in_features, out_features), got shape {W.shape}")
    if x.ndim == 0 or x.shape[-1] != W.shape[0]:
        raise ValueError(f"linear: the input x must be ({W.shape[0]},) or (..., {W.shape[0]}) for a weight of shape "
                         f"{W.shape}, got shape {x.shape}")
    dt = W.dtype
    if (x.dtype is not dt and x.dtype != dt) or (b is not None and b.dtype is not dt and b.dtype != dt) \
            or dt.kind != "f":
        dtypes = (x.dtype, dt) if b is None else (x.dtype, dt, b.dtype)
        raise TypeError(f"linear needs x, W{'' if b is None else ' and b'} of one floating-point dtype (PyTorch's "
                        f"rule), got {', '.join(map(str, dtypes))}; convert the input, e.g. with .astype('float32')")
    if b is not None and b.shape != (W.shape[1],) and \
            _broadcast_to(b.shape, out_shape := (*x.shape[:-1], W.shape[1])) != out_shape:
        raise ValueError(f"linear: the bias b must be ({W.shape[1]},) or broadcast to the output's shape "
                         f"{out_shape}, got shape {b.shape}")


def _broadcast_to(shape, out_shape):
    try:
        return numpy.broadcast_shapes(shape, out_shape)
    except ValueError:
        return None


class LinearReLU(Linear):
    """``max(x @ W + b, 0)`` through :class:`xpgrad.ops.LinearReLU`: a Linear layer and its ReLU in one
    Function, so the bias and the ReLU take one pass each way (one kernel on a GPU).
    :class:`xpgrad.nn.Sequential` uses it for a Linear followed by a ReLU. x's ranks are Linear's; b is
    (out,). When the backward pass hands it a gradient of its own (``owned``), the ReLU's mask is applied
    in place."""

    __slots__ = ()

    def forward(self, x, W, b):
        x = self.rows(x, W, b)
        if self.bias_shape is not None:
            raise ValueError(f"LinearReLU needs a bias of shape ({W.shape[1]},), got {b.shape}")
        self.op = ops.LinearReLU(needs_input_grad=self.inputs[0].requires_grad)
        return self.unrows(self.op.forward(x, W, b))

    def backward(self, gy):
        gy2 = gy if self.lead is None else gy.reshape(math.prod(self.lead), gy.shape[-1])
        out = (None, grad_destination(self, 1), grad_destination(self, 2))
        return self.finish(self.op.backward(gy2, out=out, overwrite_gy=self.owned))


# ---------------------------------------------------------------------------
# Activations and the loss, through xpgrad.ops


class Relu(Function):
    """``max(x, 0)`` through :class:`xpgrad.ops.Relu` (the fused backward kernel on a GPU)."""

    __slots__ = ("op",)
    saves_inputs = False  # the op keeps its output

    def forward(self, x):
        self.op = ops.Relu()
        return self.op.forward(x)

    def backward(self, gy):
        return (self.op.backward(gy),)


def _to_rows(x, axis):
    """``x`` with ``axis`` (non-negative) moved last and flattened to (rows, C), and the shape to undo it with."""
    if x.ndim == 2 and axis == 1:
        return x, None
    moved = get_array_module(x).moveaxis(x, axis, -1)
    return moved.reshape(-1, x.shape[axis]), (axis, moved.shape)


def _from_rows(y2, how):
    """Undo :func:`_to_rows` on an array of rows."""
    if how is None:
        return y2
    axis, moved_shape = how
    return get_array_module(y2).moveaxis(y2.reshape(moved_shape), -1, axis)


class _RowOp(Function):
    """An :mod:`xpgrad.ops` op on rows, applied along any one axis of a floating-point x of one dimension or
    more. An empty x (an empty axis, or no rows) gives an empty result, as in PyTorch."""

    __slots__ = ("axis", "op", "how")
    saves_inputs = False  # the ops keep their output

    def __init__(self, axis=-1):
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"{type(self).__name__}'s axis must be an int, got {type(axis).__name__} {axis!r:.40}")
        self.axis = axis

    def forward(self, x):
        name = type(self).__name__
        if x.dtype.kind != "f":
            raise TypeError(f"{name} needs floating-point x, got {x.dtype} (as PyTorch); convert it first, "
                            "e.g. with .astype('float32')")
        if x.ndim == 0:
            raise ValueError(f"{name} needs x of at least one dimension, got a 0-d array")
        (self.axis,) = normalize_axes(self.axis, x.ndim)
        if x.size == 0:
            self.op = None
            return get_array_module(x).empty_like(x)
        x2, self.how = _to_rows(x, self.axis)
        self.op = self.make_op()
        return _from_rows(self.op.forward(x2), self.how)

    def backward(self, gy):
        if self.op is None:
            return (get_array_module(gy).zeros_like(gy),)
        gy2, _ = _to_rows(gy, self.axis)
        return (_from_rows(self.op.backward(gy2), self.how),)


class Softmax(_RowOp):
    """Softmax along ``axis``: :class:`xpgrad.ops.Softmax` (row max subtracted; 1e-12 in the denominator)."""

    __slots__ = ()
    make_op = ops.Softmax


class LogSoftmax(_RowOp):
    """Log-softmax along ``axis``: :class:`xpgrad.ops.LogSoftmax` (fused on a GPU)."""

    __slots__ = ()
    make_op = ops.LogSoftmax


class CrossEntropy(Function):
    """Mean softmax cross-entropy of (N, C) logits against labels, through
    :class:`xpgrad.ops.SoftmaxCrossEntropy` (one fused kernel each way on a GPU).

    The labels (class indices of shape (N,), or (N, C) probabilities) are
    constants: they get no gradient. With ``stats=(loss_sum, correct)`` (0-d
    arrays, the loss end of a training step), the batch's summed loss and
    number of correct predictions are added to them, and when the logits need
    a gradient it is computed in the forward pass, in the same kernel.
    """

    __slots__ = ("op", "labels", "stats")

    def __init__(self, labels, stats=None):
        self.labels, self.stats = labels, stats

    def forward(self, x):
        t = self.labels
        if not (isinstance(t, numpy.ndarray) or backend.is_cupy_array(t)):
            raise TypeError(f"cross_entropy's labels must be an array or Tensor: N integer class indices, or (N, C) "
                            f"probabilities; got {type(t).__name__} {t!r:.40}")
        if x.dtype.kind != "f":
            raise TypeError(f"cross_entropy's logits must be floating-point, got {x.dtype} (as PyTorch); "
                            "convert them first, e.g. with .astype('float32')")
        if t.ndim == 2 and t.dtype != x.dtype and t.dtype.kind in "biuf":
            t = self.labels = t.astype(x.dtype)  # probabilities in the logits' dtype, so is their gradient
        self.op = ops.SoftmaxCrossEntropy()
        fused = self.stats is not None and self.inputs[0].requires_grad and is_grad_enabled()
        return self.op.forward(x, self.labels, stats=self.stats, backward=fused)

    def backward(self, gy):
        return (self.op.backward(None if is_unit(gy) else gy),)
