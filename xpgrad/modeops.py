"""The ops that behave differently in training and in evaluation: :class:`BatchNorm2d` and :class:`Dropout`,
written once against ``xp``, in :mod:`xpgrad.ops`' style.

Both keep state that changes with every training step in device memory and
update it there, in place: the batch norm's running mean and variance, and
the dropout's random-number state. So a step that uses them needs no host,
and a CUDA graph can record it: each replay draws a new mask and updates the
statistics, as an eager step does.

**Dropout's random bits** come from a counter-based generator (as
PyTorch's Philox on CUDA and JAX's threefry are): the state is two uint64s,
a key drawn once from the layer's seed and a counter of the masks drawn so
far. Mask number ``c`` is SplitMix64's stream seeded with
``mix(key ^ mix(c + golden))``, one value per element: pure integer
arithmetic, so the CPU and a GPU draw the same masks, bit for bit, and a
resumed run draws exactly the masks an uninterrupted one would.
"""

from __future__ import annotations

import numbers

import numpy

from .backend import get_array_module
from .ops import Op

_GOLDEN = numpy.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = numpy.uint64(0xBF58476D1CE4E5B9), numpy.uint64(0x94D049BB133111EB)


def _mix(z):
    """SplitMix64's finalizer, on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> numpy.uint64(30))) * _MIX1
    z = (z ^ (z >> numpy.uint64(27))) * _MIX2
    return z ^ (z >> numpy.uint64(31))


def random_bits(state, size: int):
    """``size`` random uint64s from ``state`` ((2,) uint64: key, counter), and the counter advanced by one,
    in place, on the state's device; nothing is read on the host."""
    xp = get_array_module(state)
    key = _mix(state[0:1] ^ _mix(state[1:2] + _GOLDEN))  # (1,)-shaped, so NumPy wraps instead of warning
    bits = _mix(xp.arange(1, size + 1, dtype=xp.uint64) * _GOLDEN + key)
    state[1:2] += numpy.uint64(1)
    return bits


def new_state(seed: int, xp=numpy):
    """A dropout generator's state for ``seed`` (an int in [0, 2**64)): (2,) uint64, key and counter 0."""
    return xp.asarray(numpy.array([seed, 0], dtype=numpy.uint64))


class Dropout(Op):
    """``x * mask``: each element kept with probability ``1 - p`` and scaled by ``1 / (1 - p)``, else zeroed,
    as ``torch.nn.functional.dropout`` in training. The mask is drawn from ``state`` (see :func:`random_bits`)
    and advances it. ``backward(gy)`` returns ``gy * mask``. ``p`` is the probability of a zero.
    """

    def __init__(self, p: float):
        super().__init__()
        check_probability(p)
        self.p = float(p)

    def forward(self, x, state):
        """``x * mask``, of x's shape and dtype; ``state`` (:func:`new_state`) counts one more mask drawn."""
        xp = get_array_module(x, state)
        if self.p == 1.0:  # PyTorch's special case: everything dropped (1 / (1 - p) would be inf)
            mask = xp.zeros(x.shape, dtype=x.dtype)
            random_bits(state, 0)
        else:
            # Kept where the 64 random bits, read as a fraction of 2**64, are at least p.
            threshold = numpy.uint64(min(int(self.p * 2.0**64), 2**64 - 1))
            keep = (random_bits(state, x.size) >= threshold).reshape(x.shape)
            mask = xp.multiply(keep, x.dtype.type(1.0 / (1.0 - self.p)), dtype=x.dtype)
        self.mem = {"mask": mask}
        return x * mask

    def backward(self, gy):
        """``gy * mask``: the gradient goes where forward kept x, scaled as it was."""
        return gy * self.mem["mask"]


def _channel_sums(a):
    """(C,) sums of a (C, H, W, N) array: an elementwise reduction, which a CUDA graph can record (CuPy's
    einsum may call cuBLAS, which it refuses while a graph records)."""
    return a.sum(axis=(1, 2, 3))


def check_probability(p) -> None:
    """TypeError unless ``p`` is a real number (not a bool), ValueError unless it is in [0, 1] (PyTorch's words)."""
    if isinstance(p, (bool, numpy.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"dropout probability p must be a number between 0 and 1, got {type(p).__name__} {p!r:.40}")
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p} (the argument p)")


class BatchNorm2d(Op):
    """Batch normalization over the (N, H, W) of each channel of x (N, C, H, W), as
    ``torch.nn.functional.batch_norm``: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    In training (``training=True``) mean and var are the batch's (var
    biased), and the running estimates are updated in place:
    ``running = (1 - momentum) * running + momentum * batch``, with the
    unbiased variance, as PyTorch does; ``num_batches_tracked`` (0-d int64,
    or None) counts the updates. In evaluation the running estimates
    normalize and nothing changes. ``weight`` and ``bias`` may be None (no
    affine step). ``backward(gy)`` returns ``(gx, gweight, gbias)``.
    """

    def __init__(self, training: bool, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.training, self.momentum, self.eps = bool(training), float(momentum), float(eps)

    def forward(self, x, weight, bias, running_mean, running_var, num_batches_tracked=None):
        """y (N, C, H, W); in training the running estimates and ``num_batches_tracked`` change in place."""
        xp = get_array_module(x, running_mean)
        if x.ndim != 4 or running_mean.shape != (x.shape[1],):
            raise ValueError(f"batch_norm takes an (N, C, H, W) input and (C,) statistics, got shapes {x.shape} "
                             f"and {running_mean.shape}")
        xc = x.transpose(1, 2, 3, 0)  # (C, H, W, N): contiguous per channel when x comes from a convolution
        count = x.size // x.shape[1]
        dtype = x.dtype.type
        if self.training:
            if count < 2:
                raise ValueError(f"batch_norm in training needs more than 1 value per channel, got input {x.shape}")
            mean = xc.mean(axis=(1, 2, 3))
            xhat = xc - mean[:, None, None, None]
            var = _channel_sums(xhat * xhat) / dtype(count)
            self._update_running(running_mean, running_var, num_batches_tracked, mean, var, count)
        else:
            mean, var = running_mean, running_var
            xhat = xc - mean[:, None, None, None]
        invstd = dtype(1) / xp.sqrt(var + dtype(self.eps))
        xhat *= invstd[:, None, None, None]
        self.mem = {"xhat": xhat, "invstd": invstd, "weight": weight, "count": count}
        y = xhat * weight[:, None, None, None] if weight is not None else xhat.copy()
        if bias is not None:
            y += bias[:, None, None, None]
        return y.transpose(3, 0, 1, 2)

    def _update_running(self, running_mean, running_var, num_batches_tracked, mean, var, count) -> None:
        m = running_mean.dtype.type(self.momentum)
        running_mean *= 1 - m
        running_mean += m * mean.astype(running_mean.dtype)
        running_var *= 1 - m
        running_var += (m * count / (count - 1)) * var.astype(running_var.dtype)
        if num_batches_tracked is not None:
            num_batches_tracked += 1

    def backward(self, gy):
        """``(gx, gweight, gbias)``, gweight and gbias of shape (C,); in evaluation gx treats the statistics as
        constants, in training it includes their dependence on x."""
        xp = get_array_module(gy)
        m = self.mem
        xhat, invstd, weight = m["xhat"], m["invstd"], m["weight"]
        g = gy.transpose(1, 2, 3, 0)
        gbias = g.sum(axis=(1, 2, 3))
        gweight = _channel_sums(g * xhat)
        scale = invstd if weight is None else invstd * weight
        if not self.training:  # the statistics are constants
            return (g * scale[:, None, None, None]).transpose(3, 0, 1, 2), gweight, gbias
        n = gy.dtype.type(m["count"])
        # d/dx of (x - mean) * invstd, both of the batch: gy, less its mean and its projection on xhat.
        gx = xhat * (gweight / n)[:, None, None, None]
        gx += (gbias / n)[:, None, None, None]
        xp.subtract(g, gx, out=gx)
        gx *= scale[:, None, None, None]
        return gx.transpose(3, 0, 1, 2), gweight, gbias
