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

**Data parallelism** splits a global batch's rows over processes, and both
ops look at the whole batch: a :class:`BatchSlice`, entered around the step
(the Trainer's step enters the one that
:meth:`xpgrad.distributed.parallel.DataParallel.batch_slice` gives), says
which rows this process holds and how to sum over the others. Dropout then
draws, for each of its rows, the bits one process draws for that row of the
whole batch (the element numbers start at the slice's first element), and
BatchNorm2d in training normalizes by the global batch's statistics and sums
its backward's two per-channel terms over the processes (as PyTorch's
SyncBatchNorm). Only host integers (the slice's rows) and the sums on the
device enter the step: a recorded CUDA graph keeps the row offset and the
counts as constants, and the sums as collectives on its stream. Outside any
slice (:data:`WHOLE`) one process holds the whole batch and nothing changes.
"""

from __future__ import annotations

import contextvars
import numbers
import threading

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


def random_bits(state, size: int, offset: int = 0):
    """``size`` random uint64s from ``state`` ((2,) uint64: key, counter), and the counter advanced by one,
    in place, on the state's device; nothing is read on the host. They are numbers ``offset .. offset+size``
    of the mask's stream: ``random_bits(s, n, k)`` is ``random_bits(s, k + n)[k:]`` for the same state."""
    xp = get_array_module(state)
    key = _mix(state[0:1] ^ _mix(state[1:2] + _GOLDEN))  # (1,)-shaped, so NumPy wraps instead of warning
    bits = _mix(xp.arange(offset + 1, offset + size + 1, dtype=xp.uint64) * _GOLDEN + key)
    state[1:2] += numpy.uint64(1)
    return bits


class BatchSlice:
    """Rows ``[start, stop)`` of a global batch of ``rows`` rows, held by this process; ``allreduce(array)``
    sums a small contiguous device array over the processes that hold the other rows, in place (None: this
    process holds them all). Entered (``with``), it is the slice the ops of the block see
    (:func:`current_slice`): entering it again, as each step does, is cheap, and leaving restores the
    slice before; any number of threads may enter the same slice. An op's input must have the batch's rows
    first: (N, ...), or (N * k, ...) with each row's k rows together (a reshaped (N, k, ...))."""

    def __init__(self, start: int = 0, stop: int | None = None, rows: int | None = None, allreduce=None):
        self.start, self.stop, self.rows, self.allreduce = int(start), stop, rows, allreduce

    def per_row(self, x, op: str) -> int:
        """k, the rows of ``x``'s first axis per row of the batch (1 for an (N, ...) input); a ValueError unless
        ``x``'s first axis is this process's rows of the batch, k each."""
        mine = self.stop - self.start
        if x.ndim == 0 or mine == 0 or x.shape[0] % mine:
            raise ValueError(f"{op} under --distributed takes the batch's rows first, (N, ...) or (N * k, ...) with "
                             f"each row's k rows together, so that every process computes what one process does "
                             f"for its rows; this process holds {mine} of the batch's {self.rows} rows, but got an "
                             f"input of shape {x.shape}")
        return x.shape[0] // mine

    def __enter__(self):
        tokens = _local.__dict__.setdefault("tokens", [])  # per thread, as the slice itself
        tokens.append(_slice.set(self))
        return self

    def __exit__(self, *exc_info) -> None:
        _slice.reset(_local.tokens.pop())


#: The slice outside any other: one process holds the whole batch.
WHOLE = BatchSlice()
_slice = contextvars.ContextVar("xpgrad_batch_slice", default=WHOLE)  # per thread, as grad mode is
_local = threading.local()  # this thread's tokens of the slices it entered, innermost last


def current_slice() -> BatchSlice:
    """The :class:`BatchSlice` entered last in this thread, else :data:`WHOLE`."""
    return _slice.get()


def new_state(seed: int, xp=numpy):
    """A dropout generator's state for ``seed`` (an int in [0, 2**64)): (2,) uint64, key and counter 0."""
    return xp.asarray(numpy.array([seed, 0], dtype=numpy.uint64))


class Dropout(Op):
    """``x * mask``: each element kept with probability ``1 - p`` and scaled by ``1 / (1 - p)``, else zeroed,
    as ``torch.nn.functional.dropout`` in training. The mask is drawn from ``state`` (see :func:`random_bits`)
    and advances it. ``backward(gy)`` returns ``gy * mask``. ``p`` is the probability of a zero. In a
    :class:`BatchSlice`, the rows draw the bits one process draws for them in the whole batch.
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
            keep = (random_bits(state, x.size, _first_element(x)) >= threshold).reshape(x.shape)
            mask = xp.multiply(keep, x.dtype.type(1.0 / (1.0 - self.p)), dtype=x.dtype)
        self.mem = {"mask": mask}
        return x * mask

    def backward(self, gy):
        """``gy * mask``: the gradient goes where forward kept x, scaled as it was."""
        return gy * self.mem["mask"]


def _first_element(x) -> int:
    """The number, in the whole batch, of the first element of ``x`` (this process's rows of it)."""
    batch = current_slice()
    if batch.stop is None:
        return 0
    return batch.start * batch.per_row(x, "dropout") * (x.size // x.shape[0])


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


def _global_count(x, batch: BatchSlice) -> int:
    """Values per channel in the whole batch, of which ``x`` (N, C, H, W) holds ``batch``'s rows."""
    if batch.allreduce is None:
        return x.size // x.shape[1]
    return batch.rows * batch.per_row(x, "batch_norm") * x.shape[2] * x.shape[3]


def _batch_statistics(xc, count: int, allreduce):
    """The batch's per-channel mean (C,), ``xc - mean`` and biased variance (C,), of xc (C, H, W, N). With
    ``allreduce`` xc is this process's rows of a batch of ``count`` values a channel: two passes, each summed
    over the processes (the sums, then the squared deviations from the global mean: no cancellation)."""
    dtype = xc.dtype.type
    if allreduce is None:
        mean = xc.mean(axis=(1, 2, 3))
        xhat = xc - mean[:, None, None, None]
        return mean, xhat, _channel_sums(xhat * xhat) / dtype(count)
    mean = _channel_sums(xc)
    allreduce(mean)
    mean /= dtype(count)
    xhat = xc - mean[:, None, None, None]
    var = _channel_sums(xhat * xhat)
    allreduce(var)
    var /= dtype(count)
    return mean, xhat, var


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

    In training in a :class:`BatchSlice` that sums over processes, the
    statistics, the running estimates and gx are the global batch's; gweight
    and gbias are this process's rows' part, for the gradient's own sum.
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
        batch = current_slice() if self.training else WHOLE
        count = _global_count(x, batch)
        dtype = x.dtype.type
        if self.training:
            if count < 2:
                raise ValueError(f"batch_norm in training needs more than 1 value per channel, got input {x.shape}")
            mean, xhat, var = _batch_statistics(xc, count, batch.allreduce)
            self._update_running(running_mean, running_var, num_batches_tracked, mean, var, count)
        else:
            mean, var = running_mean, running_var
            xhat = xc - mean[:, None, None, None]
        invstd = dtype(1) / xp.sqrt(var + dtype(self.eps))
        xhat *= invstd[:, None, None, None]
        self.mem = {"xhat": xhat, "invstd": invstd, "weight": weight, "count": count, "allreduce": batch.allreduce}
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
        total_bias, total_weight = gbias, gweight
        if m["allreduce"] is not None:  # the global batch's sums; gweight and gbias stay this process's own
            totals = xp.stack([gbias, gweight])
            m["allreduce"](totals)
            total_bias, total_weight = totals
        # d/dx of (x - mean) * invstd, both of the batch: gy, less its mean and its projection on xhat.
        gx = xhat * (total_weight / n)[:, None, None, None]
        gx += (total_bias / n)[:, None, None, None]
        xp.subtract(g, gx, out=gx)
        gx *= scale[:, None, None, None]
        return gx.transpose(3, 0, 1, 2), gweight, gbias
