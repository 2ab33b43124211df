"""The Functions of the layers beyond the notebook's: convolution, max pooling, batch norm and dropout.

Each adapts an op of :mod:`xpgrad.convops` or :mod:`xpgrad.modeops` in a few
lines; the math is there. A parameter's gradient is written straight into its
view of the flat gradient buffer when the op can (:func:`grad_destination`).
"""

from __future__ import annotations

import numpy

from .. import convops, modeops
from ..arguments import describe, flag, is_array, real_number
from ..backprop import grad_destination
from ..tensor import Function


def _wanted(function, grads):
    """``grads`` with None for each input that needs no gradient."""
    return tuple(g if x.requires_grad else None for g, x in zip(grads, function.inputs))


class Conv2d(Function):
    """``conv2d(x, W) + b`` through :class:`xpgrad.convops.Conv2d`: x (N, C, H, W), W (O, C, kh, kw), b (O,)."""

    __slots__ = ("op", "stride", "padding")

    def __init__(self, stride=1, padding=0):
        self.stride = convops.pair(stride, "conv2d's stride", 1)
        self.padding = convops.pair(padding, "conv2d's padding", 0)

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
    ``bias`` when the layer has them. The running statistics are arrays updated in place, not inputs: (C,)
    arrays of x's floating-point dtype, as ``weight`` and ``bias`` (PyTorch's rule)."""

    __slots__ = ("op", "stats")

    def __init__(self, running_mean, running_var, num_batches_tracked=None, *, training, momentum=0.1, eps=1e-5):
        self.op = modeops.BatchNorm2d(flag(training, "batch_norm's training"), check_momentum(momentum, "batch_norm"),
                                      check_eps(eps, "batch_norm"))
        for what, a in (("running_mean", running_mean), ("running_var", running_var)):
            if not is_array(a) or a.dtype.kind != "f":
                raise TypeError(f"batch_norm's {what} must be a floating-point NumPy or CuPy array (updated in place, "
                                f"so not a list or a Tensor), got {_describe_array(a)}")
        if num_batches_tracked is not None and not (is_array(num_batches_tracked) and num_batches_tracked.shape == ()
                                                    and num_batches_tracked.dtype.kind in "iu"):
            raise TypeError(f"batch_norm's num_batches_tracked must be None or a 0-d integer array, "
                            f"got {_describe_array(num_batches_tracked)}")
        self.stats = (running_mean, running_var, num_batches_tracked)

    def forward(self, x, weight=None, bias=None):
        _check_batch_norm(x, {"weight": weight, "bias": bias, "running_mean": self.stats[0],
                              "running_var": self.stats[1]})
        return self.op.forward(x, weight, bias, *self.stats)

    def backward(self, gy):
        gx, gweight, gbias = self.op.backward(gy)
        return _wanted(self, (gx, gweight, gbias)[:len(self.inputs)])


def check_momentum(momentum, owner: str) -> float:
    """``momentum`` of a batch norm, as a float in [0, 1], or a TypeError/ValueError naming it."""
    if momentum is None:
        raise TypeError(f"{owner}'s momentum must be a number in [0, 1]; None (PyTorch's cumulative average) is "
                        "not supported")
    return real_number(momentum, f"{owner}'s momentum", 0, 1, "the running statistics move that fraction of the way "
                       "to the batch's; outside [0, 1] they overshoot")


def check_eps(eps, owner: str) -> float:
    """``eps`` of a batch norm, as a float > 0 (PyTorch refuses 0 in training too), or a TypeError/ValueError
    naming it."""
    return real_number(eps, f"{owner}'s eps", 0, why="it is added to the variance under the square root, so that "
                       "a channel of constant values gives no NaN", above=True)


def _describe_array(a) -> str:
    return f"{type(a).__name__} of {a.dtype} {a.shape}" if is_array(a) else describe(a)


def _check_batch_norm(x, arrays) -> None:
    """x (N, C, H, W), C >= 1, floating-point; each of ``arrays`` (name: array or None) (C,) of x's dtype."""
    if x.ndim != 4 or x.shape[1] == 0:
        raise ValueError(f"batch_norm takes an (N, C, H, W) input x with C >= 1, got shape {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"batch_norm needs floating-point x, got {x.dtype} (as PyTorch); convert it first, "
                        "e.g. with .astype('float32')")
    C = x.shape[1]
    for what, a in arrays.items():
        if a is not None and a.shape != (C,):
            raise ValueError(f"batch_norm: x {x.shape} has {C} channels, but {what} has shape {a.shape}; it needs "
                             f"({C},), one value per channel")
        if a is not None and a.dtype != x.dtype:
            raise TypeError(f"batch_norm needs x, weight, bias, running_mean and running_var of one floating-point "
                            f"dtype (PyTorch's rule), got x {x.dtype} and {what} {a.dtype}; convert the input, e.g. "
                            "with .astype('float32')")


def check_state(state) -> None:
    """TypeError or ValueError unless ``state`` is a dropout generator's state: a (2,) uint64 NumPy or CuPy array
    (key and counter), as :func:`xpgrad.modeops.new_state` makes. On another device than x it is a DeviceError,
    raised by the op."""
    if not is_array(state) or state.dtype != numpy.uint64:
        raise TypeError(f"dropout's state must be a (2,) uint64 array, as xpgrad.modeops.new_state(seed) makes, "
                        f"got {_describe_array(state)}")
    if state.shape != (2,):
        raise ValueError(f"dropout's state must be a (2,) uint64 array (key, counter), got shape {state.shape}")


class Dropout(Function):
    """Dropout through :class:`xpgrad.modeops.Dropout`, drawing its mask from ``state`` (advanced in place) for a
    floating-point x (as PyTorch: the kept values are scaled by ``1 / (1 - p)``)."""

    __slots__ = ("op", "state")

    def __init__(self, p, state):
        check_state(state)
        self.op, self.state = modeops.Dropout(p), state

    def forward(self, x):
        if x.dtype.kind != "f":
            raise TypeError(f"dropout needs floating-point x, got {x.dtype} (as PyTorch); convert it first, "
                            "e.g. with .astype('float32')")
        return self.op.forward(x, self.state)

    def backward(self, gy):
        return (self.op.backward(gy),)
