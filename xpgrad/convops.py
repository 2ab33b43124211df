"""Convolution and max pooling on (N, C, H, W) images, written once against ``xp``, in :mod:`xpgrad.ops`' style.

Both are built on one strided view (:func:`windows`): for a kernel of kh x kw
at some stride, element ``[c, i, j, p, q, n]`` of the view is the input pixel
``x[n, c, p * sh + i, q * sw + j]``, the (i, j) tap of output pixel (p, q).
No pixel is copied to make the view; a convolution copies it once into a
(C * kh * kw, Ho * Wo * N) matrix (im2col) and multiplies it by the weight in
one matrix product, as Chainer and DeZero do.

**Memory layout.** The product's rows are output channels and its columns
(output row, output column, image), so the output comes out as (C, H, W, N)
in memory, the batch innermost (as cuda-convnet laid out its activations);
it is handed on as the (N, C, H, W) array PyTorch's layout asks for, a
transposed view of that memory, not a copy. Every op here reads its input
through the input's real strides, so any layout is correct; this one makes
the copies fast: a tap of a window, at a fixed (channel, output row), is a
contiguous run of Wo * N values, where in PyTorch's layout it would be runs
of Wo (1,024 values instead of 8 for the cnn's second convolution: im2col
2.3 -> 0.5 ms and col2im 4.6 -> 1.2 ms per step, measured for
bench/cnn_epoch.py). A batch norm then reduces contiguous memory per channel.

**The input gradient** is one product, ``W^T @ gy`` (the gradient of every
column of im2col), followed by col2im: ``kh * kw`` strided additions of
those columns back onto the pixels they were copied from. Writing it as a
second convolution instead (of the padded output gradient with the flipped
kernel, so a GEMM with no col2im) costs more here: its im2col copies
(O / C) * (H / Ho)^2 times as many values and its product is (H / Ho)^2
times as large (4.5x and 2.25x for the cnn's second convolution, 15.9
against 5.9 ms at batch 128); bench/cnn_epoch.py measures both.
"""

from __future__ import annotations

import numbers

import numpy

from .arguments import describe
from .backend import get_array_module
from .backend.graph import matmul
from .ops import Op


def pair(value, name: str, low: int | None = None) -> tuple[int, int]:
    """``value`` (an int, or a pair of ints) as a pair of ints, as PyTorch's ``kernel_size=3`` means (3, 3);
    a TypeError naming ``name`` for anything else, and a ValueError for an int below ``low``."""
    if type(value) is int and (low is None or value >= low):  # the common case, fast: an int in range
        return value, value
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int and (
            low is None or min(value) >= low):
        return value
    pair_ = (value, value) if _is_int(value) else _as_tuple(value)
    if pair_ is None or len(pair_) != 2 or not all(_is_int(v) for v in pair_):
        raise TypeError(f"{name} must be an int or a pair of ints, got {describe(value)}")
    if low is not None and min(pair_) < low:
        raise ValueError(f"{name} must be at least {low}, got {value!r}")
    return int(pair_[0]), int(pair_[1])


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, numpy.bool_))


def _as_tuple(value):
    try:
        return tuple(value)
    except TypeError:  # not iterable: a float, None, ...
        return None


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length along one axis: ``(size + 2 * padding - kernel) // stride + 1``, as PyTorch's."""
    return (size + 2 * padding - kernel) // stride + 1


def batch_last(shape, dtype, xp, fill=None):
    """A new (N, C, H, W) array laid out (C, H, W, N) in memory, filled with ``fill`` (None: uninitialized)."""
    N, C, H, W = shape
    memory = xp.empty((C, H, W, N), dtype=dtype) if fill is None else xp.full((C, H, W, N), fill, dtype=dtype)
    return memory.transpose(3, 0, 1, 2)


def padded(x, padding, value=0):
    """``x`` (N, C, H, W) with ``padding`` (ph, pw) rows and columns of ``value`` on each side, laid out
    batch last in memory; ``x`` itself when there is no padding and it is laid out so already."""
    ph, pw = padding
    N, C, H, W = x.shape
    if ph == 0 and pw == 0 and (x.strides[0] == x.itemsize or N == 1):
        return x
    out = batch_last((N, C, H + 2 * ph, W + 2 * pw), x.dtype, get_array_module(x), None if ph == pw == 0 else value)
    out[:, :, ph:ph + H, pw:pw + W] = x
    return out


def windows(x, kernel, stride):
    """The (C, kh, kw, Ho, Wo, N) view of ``x`` (N, C, H, W) whose element [c, i, j, p, q, n] is
    ``x[n, c, p * sh + i, q * sw + j]``: tap (i, j) of output pixel (p, q). No copy."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    Ho, Wo = output_size(H, kh, sh, 0), output_size(W, kw, sw, 0)
    s = x.strides
    return xp.lib.stride_tricks.as_strided(x, (C, kh, kw, Ho, Wo, N), (s[1], s[2], s[3], s[2] * sh, s[3] * sw, s[0]))


def im2col(x, kernel, stride, padding):
    """The (C * kh * kw, Ho * Wo * N) matrix whose column (p, q, n) holds the pixels output (p, q) of
    image n sees, tap by tap: one copy of :func:`windows` of the padded input (laid out batch last)."""
    v = windows(padded(x, padding), kernel, stride)
    C, kh, kw, Ho, Wo, N = v.shape
    return v.copy().reshape(C * kh * kw, Ho * Wo * N)


def col2im(gcol, shape, kernel, stride, padding):
    """The adjoint of :func:`im2col`: each column's entries added back onto the pixels they came from.

    ``gcol`` is (C * kh * kw, Ho * Wo * N); returns the (N, C, H, W) gradient
    of the image, laid out batch last. ``kh * kw`` strided additions.
    """
    xp = get_array_module(gcol)
    N, C, H, W = shape
    (kh, kw), (ph, pw) = kernel, padding
    g = batch_last((N, C, H + 2 * ph, W + 2 * pw), gcol.dtype, xp, 0)
    taps = windows(g, kernel, stride)  # writes through it land in g
    g6 = gcol.reshape(taps.shape)
    for i in range(kh):
        for j in range(kw):
            tap = taps[:, i, j]
            xp.add(tap, g6[:, i, j], out=tap)
    return g[:, :, ph:ph + H, pw:pw + W]


def _as_rows(y):
    """(N, C, H, W) ``y`` as the (C, H * W * N) matrix of its channels: a view when ``y`` is laid out batch last,
    as this module's outputs are, else a copy."""
    N, C, H, W = y.shape
    return y.transpose(1, 2, 3, 0).reshape(C, H * W * N)


class Conv2d(Op):
    """``y = conv2d(x, W) + b``, PyTorch's cross-correlation: x (N, C, H, W), W (O, C, kh, kw), b (O,) or None,
    of one floating-point dtype; y (N, O, Ho, Wo). ``backward(gy)`` returns ``(gx, gW, gb)``; ``gx`` is None with
    ``needs_input_grad=False`` (a first layer, fed with data), and ``gb`` without a bias.
    """

    def __init__(self, stride=1, padding=0, needs_input_grad: bool = True):
        super().__init__()
        self.stride, self.padding = pair(stride, "conv2d's stride", 1), pair(padding, "conv2d's padding", 0)
        self.needs_input_grad = needs_input_grad

    def forward(self, x, W, b=None):
        """(N, O, Ho, Wo), laid out (O, Ho, Wo, N) in memory."""
        xp = get_array_module(x, W)
        check_conv_inputs(x, W, b, self.padding)
        N, _, H, Wd = x.shape
        O, _, kh, kw = W.shape
        Ho, Wo = (output_size(n, k, s, p) for n, k, s, p in zip((H, Wd), (kh, kw), self.stride, self.padding))
        col = im2col(x, (kh, kw), self.stride, self.padding)
        y = matmul(xp, W.reshape(O, -1), col)
        if b is not None:
            y += b[:, None]
        self.mem = {"col": col, "W": W, "x_shape": x.shape, "has_bias": b is not None}
        return y.reshape(O, Ho, Wo, N).transpose(3, 0, 1, 2)

    def backward(self, gy, out=None):
        """``(gx, gW, gb)``; ``out=(gx, gW, gb)`` (any may be None) writes gW and gb into given arrays."""
        m = self.mem
        xp = get_array_module(gy, m["W"])
        W, col = m["W"], m["col"]
        O = W.shape[0]
        _, gW_out, gb_out = (None, None, None) if out is None else out
        g = _as_rows(gy)
        # (col @ g^T)^T rather than g @ col^T: the same product, and BLAS runs this shape of it faster
        # (the cnn's second convolution: 2.0 against 3.1 ms at one thread).
        gW_t = matmul(xp, col, g.T)
        if gW_out is None:
            gW = gW_t.T.reshape(W.shape)
        else:
            gW = gW_out
            gW_out.reshape(O, -1)[...] = gW_t.T
        gb = g.sum(axis=1, out=gb_out) if m["has_bias"] else None
        gx = None
        if self.needs_input_grad:
            gx = col2im(matmul(xp, W.reshape(O, -1).T, g), m["x_shape"], W.shape[2:], self.stride, self.padding)
        return gx, gW, gb


def check_conv_inputs(x, W, b, padding) -> None:
    """PyTorch's rules for conv2d's x (N, C, H, W), W (O, C, kh, kw) and b (O,) or None, as a ValueError naming
    what does not fit, or a TypeError for dtypes: x, W and b share one floating-point dtype, so that each
    gradient has its input's dtype."""
    if x.ndim != 4 or W.ndim != 4:
        raise ValueError(f"conv2d takes an (N, C, H, W) input x and an (out, in, kh, kw) weight, got shapes "
                         f"{x.shape} and {W.shape}")
    if min(x.shape[2:]) < 1:
        raise ValueError(f"conv2d: the input x must be at least 1 x 1 (only N and C may be 0, as in PyTorch), "
                         f"got shape {x.shape}")
    if x.shape[1] != W.shape[1]:
        raise ValueError(f"conv2d: the input has {x.shape[1]} channels, but the weight {W.shape} expects {W.shape[1]}")
    if W.shape[0] < 1 or min(W.shape[2:]) < 1:
        raise ValueError(f"conv2d: the weight needs at least one output channel and a kernel of at least 1 x 1 "
                         f"(as PyTorch's), got shape {W.shape}")
    if b is not None and b.shape != (W.shape[0],):
        raise ValueError(f"conv2d: the bias has shape {b.shape}, expected ({W.shape[0]},)")
    dt = W.dtype
    if x.dtype != dt or (b is not None and b.dtype != dt) or dt.kind != "f":
        dtypes = (x.dtype, dt) if b is None else (x.dtype, dt, b.dtype)
        raise TypeError(f"conv2d needs x, weight{'' if b is None else ' and bias'} of one floating-point dtype "
                        f"(PyTorch's rule), got {', '.join(map(str, dtypes))}; convert the input, e.g. with "
                        ".astype('float32')")
    for n, k, p in zip(x.shape[2:], W.shape[2:], padding):
        if n + 2 * p < k:
            raise ValueError(f"conv2d: the kernel {tuple(W.shape[2:])} is larger than the padded input "
                             f"{tuple(n + 2 * p for n, p in zip(x.shape[2:], padding))}")


class MaxPool2d(Op):
    """The maximum of each kh x kw window, ``stride`` apart (default: the kernel size), of x (N, C, H, W),
    padded with ``-inf`` (integers: their lowest value); y (N, C, Ho, Wo). N and C may be 0.
    ``backward(gy)`` returns gx, with each window's gradient on its first maximum in row-major order, as
    PyTorch picks it (ties included); a window holding NaN gives NaN, and its gradient goes to its last NaN,
    as PyTorch's does.

    The window's taps are copied once into a (kh * kw, C, N, Ho, Wo) array, so
    every later pass reads contiguous memory, and the winner is found with
    arithmetic on boolean arrays: NumPy's masked copies (``copyto(where=)``,
    ``where``) run about 15x slower per element than a comparison or a sum.

    ``kernel``, ``stride`` and ``padding`` hold the (height, width) pairs the arguments give.
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel = pair(kernel_size, "max_pool2d's kernel_size", 1)
        self.stride = self.kernel if stride is None else pair(stride, "max_pool2d's stride", 1)
        self.padding = pair(padding, "max_pool2d's padding", 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel)):
            raise ValueError(f"max_pool2d: padding {self.padding} must be at most half of kernel_size {self.kernel}")

    def forward(self, x):
        """(N, C, Ho, Wo), laid out (C, Ho, Wo, N) in memory."""
        xp = get_array_module(x)
        if x.ndim != 4 or min(x.shape[2:]) < 1:
            raise ValueError(f"max_pool2d takes an (N, C, H, W) input x with H and W at least 1 (N and C may be 0), "
                             f"got shape {x.shape}")
        if x.dtype.kind == "b":
            raise TypeError("max_pool2d takes numbers, not bool (as PyTorch); convert x first, e.g. with "
                            ".astype('float32')")
        if any(n + 2 * p < k for n, k, p in zip(x.shape[2:], self.kernel, self.padding)):
            raise ValueError(f"max_pool2d: the window {self.kernel} is larger than the padded input "
                             f"{tuple(n + 2 * p for n, p in zip(x.shape[2:], self.padding))}")
        # Padding that never wins: -inf, or an integer dtype's lowest value (PyTorch pools integers too).
        lowest = -xp.inf if x.dtype.kind == "f" else xp.iinfo(x.dtype).min
        v = windows(padded(x, self.padding, lowest), self.kernel, self.stride)
        C, kh, kw, Ho, Wo, N = v.shape  # named, not -1: any of them may be 0 (an empty batch)
        taps = v.transpose(1, 2, 0, 3, 4, 5).copy().reshape(kh * kw, C, Ho, Wo, N)
        y = taps.max(axis=0)  # NaN if the window holds one
        first = first_maximum(taps, y)
        if any(self.padding):
            first = self._inside_where_all_lowest(first, y, lowest, x.shape[2:], xp)
        self.mem = {"first": first, "x_shape": x.shape}
        return y.transpose(3, 0, 1, 2)

    def _inside_where_all_lowest(self, first, y, lowest, hw, xp):
        """``first``, but a window whose maximum is the padding's own value (all -inf, say) takes its first tap
        inside the input, as PyTorch does (its search starts there and only a larger value moves it), rather
        than a tap of the padding, whose gradient would be lost."""
        inside = windows(padded(xp.ones((1, 1, *hw), dtype=xp.int8), self.padding, 0), self.kernel, self.stride)
        _, kh, kw, Ho, Wo, _ = inside.shape
        first_inside = inside.transpose(1, 2, 0, 3, 4, 5).reshape(kh * kw, 1, Ho, Wo, 1).argmax(axis=0)
        return xp.where(y == lowest, first_inside.astype(first.dtype), first)

    def backward(self, gy):
        """gx (N, C, H, W): ``gy`` of each window on the input pixel that was its maximum."""
        xp = get_array_module(gy)
        first, (N, C, H, W) = self.mem["first"], self.mem["x_shape"]
        (kh, kw), (ph, pw) = self.kernel, self.padding
        g = batch_last((N, C, H + 2 * ph, W + 2 * pw), gy.dtype, xp, 0)
        taps = windows(g, self.kernel, self.stride)  # writes through it land in g
        gy = gy.transpose(1, 2, 3, 0)
        per_tap = xp.empty((kh, kw, *gy.shape), dtype=gy.dtype)
        for k in range(kh * kw):
            xp.multiply(gy, first == k, out=per_tap[k // kw, k % kw])
        if all(s >= k for s, k in zip(self.stride, self.kernel)):  # no pixel in two windows: one copy
            taps[...] = per_tap.transpose(2, 0, 1, 3, 4, 5)
        else:
            for i in range(kh):
                for j in range(kw):
                    tap = taps[:, i, j]
                    xp.add(tap, per_tap[i, j], out=tap)
        return g[:, :, ph:ph + H, pw:pw + W]


def first_maximum(taps, y):
    """For taps (K, ...) and their maximum y (...): the index of the first tap equal to y, or, where y is NaN,
    of the last NaN tap (PyTorch's rule: a later tap wins if it is larger or NaN), as int8 (int32 for K > 127)."""
    xp = get_array_module(taps)
    K = taps.shape[0]
    dtype = xp.int8 if K <= 127 else xp.int32
    # The first hit's index is the number of taps before it that miss.
    missed = taps[0] != y
    first = missed.astype(dtype)
    last_nan = xp.zeros(y.shape, dtype=dtype)
    for k in range(1, K):
        if k < K - 1:
            missed &= taps[k] != y
            first += missed
        last_nan = xp.maximum(last_nan, xp.isnan(taps[k]) * dtype(k))
    nan = xp.isnan(y)
    return first + nan * (last_nan - first)  # y is NaN where the window holds one
