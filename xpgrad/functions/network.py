"""The Functions a network is made of, each around an op of :mod:`xpgrad.ops`.

Matrix products, ReLU, softmax, log-softmax and cross-entropy call the ops'
``forward`` and ``backward``, so on a GPU the tape runs the same fused
kernels (and capture-safe matrix products) as the hand-written model.
"""

from __future__ import annotations

from .. import ops
from ..backend import get_array_module
from ..backend import graph as _graph
from ..backprop import grad_destination, is_unit
from ..tensor import Function, is_grad_enabled
from .arithmetic import sum_to
from .array import normalize_axes


# ---------------------------------------------------------------------------
# Matrix products, through xpgrad.ops


class MatMul(Function):
    """``a @ b``. Two matrices go through :class:`xpgrad.ops.Matmul`; vectors and
    stacks of matrices (broadcast as ``numpy.matmul``) through the general rule
    ``ga = gy @ b^T, gb = a^T @ gy``, each summed back to its operand's shape."""

    __slots__ = ("op", "a", "b", "shape2")

    def forward(self, a, b):
        xp = get_array_module(a, b)
        self.a, self.b = a, b
        if a.ndim == 2 and b.ndim == 2:
            self.op = ops.Matmul(needs_input_grad=self.inputs[0].requires_grad)
            return self.op.forward(a, b)
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul needs operands with at least one dimension, got shapes {a.shape} and {b.shape}")
        self.op = None
        _graph.refuse_while_recording(f"MatMul of {a.ndim}-d and {b.ndim}-d arrays calls cuBLAS through CuPy")
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
        if self.op is not None:
            ga, gb = self.op.backward(gy)
            return ga, (gb if need_b else None)
        xp = get_array_module(gy)
        a, b = self.a, self.b
        a2 = a[None] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = gy.reshape(self.shape2)
        ga = sum_to(xp.matmul(g2, xp.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape) if need_a else None
        gb = sum_to(xp.matmul(xp.swapaxes(a2, -1, -2), g2), b2.shape).reshape(b.shape) if need_b else None
        return ga, gb


class Linear(Function):
    """``x @ W + b`` (or ``x @ W`` without ``b``) through :class:`xpgrad.ops.Linear` / ``ops.Matmul``.

    ``x`` is (N, in), ``W`` is (in, out) and ``b`` is (out,). The input's
    gradient is skipped when ``x`` needs none (a first layer fed with data);
    a flat parameter's gradient is written straight into its slot of the
    flat gradient buffer.
    """

    __slots__ = ("op",)

    def forward(self, x, W, b=None):
        needs_input_grad = self.inputs[0].requires_grad
        if b is None:
            self.op = ops.Matmul(needs_input_grad=needs_input_grad)
            return self.op.forward(x, W)
        self.op = ops.Linear(needs_input_grad=needs_input_grad)
        return self.op.forward(x, W, b)

    def backward(self, gy):
        inputs = self.inputs
        out = (None, grad_destination(self, 1), grad_destination(self, 2) if len(inputs) == 3 else None)
        return _needed(self.op.backward(gy, out=out[:len(inputs)]), inputs)


def _needed(grads, inputs) -> tuple:
    """``grads`` with None for each input that needs no gradient."""
    return tuple([g if x.requires_grad else None for g, x in zip(grads, inputs)])


class LinearReLU(Linear):
    """``max(x @ W + b, 0)`` through :class:`xpgrad.ops.LinearReLU`: a Linear layer and its ReLU in one
    Function, so the bias and the ReLU take one pass each way (one kernel on a GPU).
    :class:`xpgrad.nn.Sequential` uses it for a Linear followed by a ReLU. When the backward pass hands it
    a gradient of its own (``owned``), the ReLU's mask is applied in place."""

    __slots__ = ()

    def forward(self, x, W, b):
        self.op = ops.LinearReLU(needs_input_grad=self.inputs[0].requires_grad)
        return self.op.forward(x, W, b)

    def backward(self, gy):
        out = (None, grad_destination(self, 1), grad_destination(self, 2))
        return _needed(self.op.backward(gy, out=out, overwrite_gy=self.owned), self.inputs)


# ---------------------------------------------------------------------------
# Activations and the loss, through xpgrad.ops


class Relu(Function):
    """``max(x, 0)`` through :class:`xpgrad.ops.Relu` (the fused backward kernel on a GPU)."""

    __slots__ = ("op",)

    def forward(self, x):
        self.op = ops.Relu()
        return self.op.forward(x)

    def backward(self, gy):
        return (self.op.backward(gy),)


def _to_rows(x, axis):
    """``x`` with ``axis`` moved last and flattened to (rows, C), and the shape to undo it with."""
    xp = get_array_module(x)
    if x.ndim == 0:
        raise ValueError("softmax needs at least one dimension, got a 0-d array")
    (axis,) = normalize_axes(axis, x.ndim)
    if x.ndim == 2 and axis == 1:
        return x, None
    moved = xp.moveaxis(x, axis, -1)
    return moved.reshape(-1, x.shape[axis]), (axis, moved.shape)


def _from_rows(y2, how):
    """Undo :func:`_to_rows` on an array of rows."""
    if how is None:
        return y2
    axis, moved_shape = how
    return get_array_module(y2).moveaxis(y2.reshape(moved_shape), -1, axis)


class _RowOp(Function):
    """An :mod:`xpgrad.ops` op on rows, applied along any axis."""

    __slots__ = ("axis", "op", "how")

    def __init__(self, axis=-1):
        self.axis = axis

    def forward(self, x):
        x2, self.how = _to_rows(x, self.axis)
        self.op = self.make_op()
        return _from_rows(self.op.forward(x2), self.how)

    def backward(self, gy):
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
        self.op = ops.SoftmaxCrossEntropy()
        fused = self.stats is not None and self.inputs[0].requires_grad and is_grad_enabled()
        return self.op.forward(x, self.labels, stats=self.stats, backward=fused)

    def backward(self, gy):
        return (self.op.backward(None if is_unit(gy) else gy),)
