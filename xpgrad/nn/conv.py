"""Convolution and pooling layers, as ``torch.nn``: :class:`Conv2d` and :class:`MaxPool2d`.

    model = nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 12 * 12, 10))
"""

from __future__ import annotations

import math

import numpy

from .. import backend, functions
from ..arguments import flag, whole_number
from ..convops import pair
from ..tensor import Tensor, as_tensor
from . import init as _init
from .module import Module


class Conv2d(Module):
    """PyTorch's ``Conv2d``: (N, in_channels, H, W) to (N, out_channels, Ho, Wo), a cross-correlation with
    ``kernel_size`` (an int or a pair), ``stride`` and zero ``padding``.

    ``weight`` is (out_channels, in_channels, kh, kw), **PyTorch's layout**, and
    ``bias`` (out_channels,) or None, so
    a PyTorch ``Conv2d``'s weight and bias load as they are (unlike
    :class:`xpgrad.nn.Linear`, whose weight is (in, out), the notebook's
    layout). The weight is drawn as Linear's, with fan-in ``in_channels * kh *
    kw`` (``init="he"``: N(0, 2 / fan_in), the default; ``glorot``;
    ``normal``; None: zeros), from ``rng`` or :mod:`xpgrad.nn.init`'s
    generator; the bias starts at zero. ``dtype`` (floating-point) None means
    the default dtype. ``in_channels`` is 0 or more and ``out_channels`` 1 or
    more (PyTorch's conv2d refuses a weight of no output channel),
    ``kernel_size`` and ``stride`` at least 1, ``padding`` at least 0. The
    input has the weight's dtype (PyTorch's rule: convert it first).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True, *,
                 init: str | None = "he", rng=None, dtype=None, device="cpu"):
        self.in_channels = whole_number(in_channels, "Conv2d's in_channels", 0)
        self.out_channels = whole_number(out_channels, "Conv2d's out_channels", 1)
        self.kernel_size = pair(kernel_size, "Conv2d's kernel_size", 1)
        self.stride, self.padding = pair(stride, "Conv2d's stride", 1), pair(padding, "Conv2d's padding", 0)
        bias = flag(bias, "Conv2d's bias")
        _init.check_init(init, "Conv2d")
        dtype = _init.default_dtype() if dtype is None else _init.float_dtype(dtype, "Conv2d(dtype=...)")
        device = backend.get_device(device)
        shape = (self.out_channels, self.in_channels, *self.kernel_size)
        fan_in = math.prod(shape[1:])
        if init is None:
            W = numpy.zeros(shape, dtype)
        else:  # drawn (fan_in, out) as Linear's, then laid out (out, in, kh, kw)
            W = _init.init_weight(_init.generator(rng), fan_in, self.out_channels, init).T.reshape(shape).astype(dtype)
        self.weight = Tensor(backend.to_device(numpy.ascontiguousarray(W), device), requires_grad=True)
        self.bias = Tensor(backend.to_device(numpy.zeros(self.out_channels, dtype), device), requires_grad=True) \
            if bias else None

    def forward(self, x):
        """(N, out_channels, Ho, Wo) from (N, in_channels, H, W)."""
        inputs = (as_tensor(x), self.weight) + (() if self.bias is None else (self.bias,))
        return functions.Conv2d(self.stride, self.padding)(*inputs)

    def __repr__(self) -> str:
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None})")


class MaxPool2d(Module):
    """PyTorch's ``MaxPool2d(kernel_size, stride=None, padding=0)``: the maximum of each window, ``stride``
    (default: ``kernel_size``) apart, the input padded by ``padding`` (with -inf) on each side; the gradient
    goes to each window's first maximum, as PyTorch's."""

    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size = pair(kernel_size, "MaxPool2d's kernel_size", 1)
        self.stride = self.kernel_size if stride is None else pair(stride, "MaxPool2d's stride", 1)
        self.padding = pair(padding, "MaxPool2d's padding", 0)
        functions.MaxPool2d(self.kernel_size, self.stride, self.padding)  # the arguments checked now

    def forward(self, x):
        """(N, C, Ho, Wo) from (N, C, H, W)."""
        return functions.MaxPool2d(self.kernel_size, self.stride, self.padding)(as_tensor(x))

    def __repr__(self) -> str:
        return f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"
