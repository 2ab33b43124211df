"""The Functions of the layers beyond the notebook's: convolution, max pooling, batch norm and dropout.

Each adapts an op of :mod:`xpgrad.convops` or :mod:`xpgrad.modeops` in a few
lines; the math is there. A parameter's gradient is written straight into its
view of the flat gradient buffer when the op can (:func:`grad_destination`).
"""

from __future__ import annotations

from .. import convops, modeops
from ..backprop import grad_destination
from ..tensor import Function


def _wanted(function, grads):
    """``grads`` with None for each input that needs no gradient."""
    return tuple(g if x.requires_grad else None for g, x in zip(grads, function.inputs))


class Conv2d(Function):
    """``conv2d(x, W) + b`` through :class:`xpgrad.convops.Conv2d`: x (N, C, H, W), W (O, C, kh, kw), b (O,)."""

    __slots__ = ("op", "stride", "padding")

    def __init__(self, stride=1, padding=0):
        self.stride, self.padding = stride, padding

    def forward(self, x, W, b=None):
        self.op = convops.Conv2d(self.stride, self.padding, needs_input_grad=self.inputs[0].requires_grad)
        return self.op.forward(x, W, b)

    def backward(self, gy):
        out = (None, grad_destination(self, 1), grad_destination(self, 2) if len(self.inputs) == 3 else None)
        return _wanted(self, self.op.backward(gy, out=out))


class MaxPool2d(Function):
    """Max pooling through :class:`xpgrad.convops.MaxPool2d`."""

    __slots__ = ("op",)

    def __init__(self, kernel_size, stride=None, padding=0):
        self.op = convops.MaxPool2d(kernel_size, stride, padding)

    def forward(self, x):
        return self.op.forward(x)

    def backward(self, gy):
        return (self.op.backward(gy),)


class BatchNorm2d(Function):
    """Batch normalization through :class:`xpgrad.modeops.BatchNorm2d`; inputs ``x``, and ``weight`` and
    ``bias`` when the layer has them. The running statistics are arrays updated in place, not inputs."""

    __slots__ = ("op", "stats")

    def __init__(self, running_mean, running_var, num_batches_tracked=None, *, training, momentum=0.1, eps=1e-5):
        self.op = modeops.BatchNorm2d(training, momentum, eps)
        self.stats = (running_mean, running_var, num_batches_tracked)

    def forward(self, x, weight=None, bias=None):
        return self.op.forward(x, weight, bias, *self.stats)

    def backward(self, gy):
        gx, gweight, gbias = self.op.backward(gy)
        return _wanted(self, (gx, gweight, gbias)[:len(self.inputs)])


class Dropout(Function):
    """Dropout through :class:`xpgrad.modeops.Dropout`, drawing its mask from ``state`` (advanced in place)."""

    __slots__ = ("op", "state")

    def __init__(self, p, state):
        self.op, self.state = modeops.Dropout(p), state

    def forward(self, x):
        return self.op.forward(x, self.state)

    def backward(self, gy):
        return (self.op.backward(gy),)
