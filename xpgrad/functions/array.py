"""Reductions, shapes, indexing and device moves on the tape, written once against ``xp``."""

from __future__ import annotations

import numbers
import operator

import numpy

from .. import backend
from ..backend import get_array_module
from ..tensor import Function, Tensor


def normalize_axes(axis, ndim):
    """``axis`` (None, an int or a tuple or list of ints) as None or a tuple of non-negative axes, each once."""
    if axis is None:
        return None
    axes = (axis,) if _is_int(axis) else tuple(axis) if isinstance(axis, (tuple, list)) else None
    if axes is None or not all(_is_int(a) for a in axes):
        raise TypeError(f"axis must be None, an int or a tuple of ints, got {type(axis).__name__} {axis!r:.40}")
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for an array of {ndim} dimensions")
    axes = tuple(int(a) % ndim for a in axes)
    if len(set(axes)) != len(axes):
        raise ValueError(f"axis {axis!r} names an axis twice")
    return axes


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, numpy.bool_))


class Sum(Function):
    """``x.sum(axis, keepdims)``; the gradient is ``gy`` broadcast back to x's shape."""

    __slots__ = ("axis", "keepdims", "shape")
    saves_inputs = False

    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.shape, self.axis = x.shape, normalize_axes(self.axis, x.ndim)
        return x.sum(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gy):
        if self.axis is not None and not self.keepdims:  # put the summed axes back, as length 1
            gy = gy.reshape(tuple(1 if i in self.axis else n for i, n in enumerate(self.shape)))
        return (get_array_module(gy).broadcast_to(gy, self.shape),)


class Mean(Sum):
    """``x.mean(axis, keepdims)``: the gradient is :class:`Sum`'s, divided by the count averaged over."""

    __slots__ = ()

    def forward(self, x):
        self.shape, self.axis = x.shape, normalize_axes(self.axis, x.ndim)
        return x.mean(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gy):
        axes = range(len(self.shape)) if self.axis is None else self.axis
        count = 1
        for a in axes:
            count *= self.shape[a]
        return super().backward(gy / count)


class Reshape(Function):
    """``x.reshape(shape)``: a view of x's data when NumPy can make one."""

    __slots__ = ("new_shape", "shape")
    saves_inputs = False
    view = True

    def __init__(self, shape):
        try:
            self.new_shape = tuple(map(operator.index, shape))
        except TypeError:
            raise TypeError(f"reshape takes ints (one of them may be -1), got {shape!r:.60}") from None

    def forward(self, x):
        self.shape = x.shape
        try:
            return x.reshape(self.new_shape)
        except ValueError as exc:
            raise ValueError(f"cannot reshape a tensor of shape {x.shape} ({x.size} elements) into "
                             f"{self.new_shape}: {exc}") from None

    def backward(self, gy):
        return (gy.reshape(self.shape),)


class Transpose(Function):
    """``x.transpose(axes)``; the gradient is transposed back by the inverse permutation."""

    __slots__ = ("axes",)
    saves_inputs = False
    view = True

    def __init__(self, axes=None):
        self.axes = axes

    def forward(self, x):
        if self.axes is not None:
            axes = tuple(self.axes) if isinstance(self.axes, (tuple, list)) else ()
            if not all(_is_int(a) for a in axes) or sorted(a % x.ndim if -x.ndim <= a < x.ndim else -1
                                                           for a in axes) != list(range(x.ndim)):
                raise ValueError(f"transpose of a {x.ndim}-d tensor takes a permutation of its {x.ndim} axes, "
                                 f"got {self.axes!r:.60}")
            self.axes = tuple(int(a) % x.ndim for a in axes)
        return x.transpose(self.axes)

    def backward(self, gy):
        if self.axes is None:
            return (gy.transpose(),)
        return (gy.transpose(tuple(numpy.argsort(self.axes))),)


class GetItem(Function):
    """``x[index]`` for basic slicing and integer-array indexing.

    The gradient scatters ``gy`` into zeros of x's shape; with index arrays it
    adds (``xp.add.at``), so an element picked twice gets both gradients.
    """

    __slots__ = ("index", "shape", "basic", "view")
    saves_inputs = False

    def __init__(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        parts = tuple(p.data if isinstance(p, Tensor) else p for p in parts)
        self.index = parts if isinstance(index, tuple) else parts[0]
        self.basic = all(p is None or p is Ellipsis or isinstance(p, (slice, numbers.Integral)) for p in parts)
        self.view = self.basic  # basic indexing gives a view of x's data; index arrays give a copy

    def forward(self, x):
        if not self.basic:
            parts = self.index if isinstance(self.index, tuple) else (self.index,)
            xp = get_array_module(x, *parts)  # index arrays on x's device, or DeviceError
            parts = tuple(xp.asarray(p) if isinstance(p, list) else p for p in parts)
            self.index = parts if isinstance(self.index, tuple) else parts[0]
        self.shape = x.shape
        return x[self.index]

    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.zeros(self.shape, dtype=gy.dtype)
        if self.basic:
            gx[self.index] = gy
        else:
            xp.add.at(gx, self.index, gy)
        return (gx,)


class ToDevice(Function):
    """A copy on another device; the gradient is copied back."""

    __slots__ = ("device", "source")
    saves_inputs = False

    def __init__(self, device):
        self.device = device

    def forward(self, x):
        self.source = backend.device_of(x)
        return backend.to_device(x, self.device)

    def backward(self, gy):
        return (backend.to_device(gy, self.source),)
