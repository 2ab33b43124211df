"""Fused CUDA kernels for the GPU path of ops, optimizers and the training step.

The kernels are data: :mod:`.specs` says how a kernel is kept and built,
:mod:`.elementwise` holds those CuPy writes the loop for, :mod:`.tiled` the
row kernels, :mod:`.step` the training step's and :mod:`.updates` the
optimizers' (the raw kernels share :mod:`.prelude`). They are built through
:mod:`xpgrad.backend` on first call (so this package imports without CuPy),
and every one is listed in :data:`KERNELS`, so tests can compile each one
without a GPU.

The public functions here take and return CuPy arrays of float32 or float64.
Each has a twin of the same name and signature in :mod:`xpgrad.generic`,
written against ``xp``: that is the CPU code and the reference these kernels
must match. :func:`xpgrad.backend.get_ops` chooses between the two modules.

Kernels per call: one each (none for some empty inputs, but always one for
the updates, the gather and :func:`bias_relu_backward`, so that a counter
still advances), except the log-softmax and cross-entropy functions on rows
wider than a tile (C > TILE = 2048 values), which take the older
thread-per-row kernels (two, or one and CuPy's mean), and :func:`bias_grad`,
which is CuPy's own column-sum reduction. What changes from step to step
(the learning rate, the batch number) is read from device memory and the
counters are advanced on the device, so nothing syncs with the host; the
scratch the kernels keep (a ticket, partial sums) is allocated on the first
call per device and stream and reused after.
"""

from __future__ import annotations

import math

import numpy

from .. import backend
from ..generic import check_labels, check_rows
from . import elementwise as ew
from . import step as st
from . import tiled
from . import updates as up
from .specs import (  # noqa: F401
    KERNELS, MAX_BLOCKS, PER_THREAD, THREADS, TILE, TYPE_CHOICES, KernelSpec, RawKernelSpec)

#: A graph can record the training step through these functions: they read
#: step-varying numbers from device arrays and never sync with the host.
CAPTURE_SAFE = True
#: At most this many row groups share the work of a column sum in
#: :func:`bias_relu_backward`: more make its main pass wider and the last
#: block's pass over their partial sums longer (not yet tuned on a GPU).
BIAS_GROUPS = 256


def _check_float(*arrays) -> None:
    for a in arrays:
        if a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
            raise TypeError(f"fused kernels take float32 or float64 arrays, got {a.dtype}")


def _check_same_shape(param, *arrays) -> None:
    for a in arrays:
        if a.shape != param.shape:
            raise ValueError(f"optimizer arrays must match the parameter's shape {param.shape}, got {a.shape}")


def _check_contiguous(*arrays) -> None:
    for a in arrays:
        if not a.flags.c_contiguous:
            raise ValueError(f"these fused kernels take C-contiguous arrays only, got strides {a.strides}")


def _check_dtypes(first, *arrays) -> None:
    for a in arrays:
        if a.dtype != first.dtype:
            raise TypeError(f"expected {first.dtype} arrays throughout, got {a.dtype}")


def _check_counter(counter) -> None:
    if counter.dtype != numpy.int64 or counter.size != 1:
        raise TypeError(f"counters are 0-d int64 arrays, got {counter.dtype} of shape {counter.shape}")


def _rows(x):
    # The row kernels index arrays as if they were C-ordered.
    return backend.cupy.ascontiguousarray(x)


def _blocks(units: int) -> int:
    """Blocks for ``units`` blocks' worth of work: at most MAX_BLOCKS, which then loop over the rest."""
    return max(1, min(MAX_BLOCKS, units))


def _row_blocks(N: int, C: int) -> int:
    """Blocks for the tiled row kernels: a tile holds min(THREADS, TILE // C) whole rows (xpgrad_tile_rows)."""
    return _blocks(-(-N // min(THREADS, TILE // C)))


def _binding(x, t=None) -> dict:
    return {"T": x.dtype.name} if t is None else {"T": x.dtype.name, "S": t.dtype.name}


_tickets, _partials = {}, {}


def _stream() -> tuple:
    """(device id, stream pointer) of the current CUDA stream: the key of the kernels' own scratch."""
    cuda = backend.cupy.cuda
    return cuda.Device().id, cuda.get_current_stream().ptr


def _ticket():
    """A uint32 counter for the kernels that find their last block, one per device and stream; they leave it at 0."""
    key = _stream()
    ticket = _tickets.get(key)
    if ticket is None:
        ticket = _tickets[key] = backend.cupy.zeros(1, dtype=numpy.uint32)
    return ticket


def _partial_sums(count: int):
    """float64 scratch for at least ``count`` partial sums, one per device and stream (launches on one
    stream run one after another). Grown when a call needs more; an outgrown one is kept, not freed,
    as a recorded CUDA graph may still use it."""
    kept = _partials.setdefault(_stream(), [])
    if not kept or kept[-1].size < count:
        kept.append(backend.cupy.empty(max(count, 2 * kept[-1].size if kept else 1), dtype=numpy.float64))
    return kept[-1]


# ---------------------------------------------------------------------------
# Ops


def relu_backward(x, gy, out=None):
    """Gradient of ReLU: ``gy`` where ``x > 0``, else 0. Any shape; gx has x's shape.

    ``out`` receives the result when given; it may be ``gy`` itself (each
    element is read before it is written, by the same thread)."""
    _check_float(x, gy)
    if out is None:
        return ew.xpgrad_relu_bwd(x, gy)
    _check_float(out)
    return ew.xpgrad_relu_bwd(x, gy, out)


def log_softmax_forward(x):
    """Row-wise log-softmax of (N, C) logits: ``x - logsumexp(x, axis=1)``, computed stably."""
    _check_float(x)
    N, C = check_rows(x)
    x = _rows(x)
    if C > TILE:
        lse = backend.cupy.empty(N, dtype=x.dtype)
        ew.xpgrad_logsumexp_rows(x, C, lse)
        return ew.xpgrad_log_softmax_fwd(x, lse, C)
    y = backend.cupy.empty_like(x)
    if N:
        tiled.xpgrad_log_softmax_fwd_tiled.launch(_binding(x), _row_blocks(N, C), (x, y, numpy.int64(N), numpy.int32(C)))
    return y


def log_softmax_backward(y, gy):
    """Gradient of log-softmax from its (N, C) output y: ``gy - exp(y) * gy.sum(axis=1)``."""
    _check_float(y, gy)
    N, C = check_rows(y)
    if gy.shape != y.shape:
        raise ValueError(f"gy has shape {gy.shape}, expected {y.shape}")
    gy = _rows(gy)
    if C > TILE:
        s = backend.cupy.empty(N, dtype=gy.dtype)
        ew.xpgrad_sum_rows(gy, C, s)
        return ew.xpgrad_log_softmax_bwd(y, gy, s, C)
    y = _rows(y)
    gx = backend.cupy.empty_like(gy)
    if N:
        tiled.xpgrad_log_softmax_bwd_tiled.launch(_binding(y), _row_blocks(N, C),
                                                  (y, gy, gx, numpy.int64(N), numpy.int32(C)))
    return gx


def _labels(x, t):
    """(N, C) of x, and labels t as C-ordered int32 or int64 (other integer types are widened)."""
    N, C = check_labels(x, t)
    if t.dtype.kind != "i" or t.dtype.itemsize not in (4, 8):
        t = t.astype("int64")
    return N, C, _rows(t)


def softmax_cross_entropy_forward(x, t):
    """Mean softmax cross-entropy of (N, C) logits x against (N,) integer labels t.

    Returns ``(loss, cache)``: loss is 0-d with x's dtype; cache, what
    :func:`softmax_cross_entropy_backward` needs, is the (N,) per-row log-sum-exp.
    """
    _check_float(x)
    N, C, t = _labels(x, t)
    x = _rows(x)
    cp = backend.cupy
    lse = cp.empty(N, dtype=x.dtype)
    if C > TILE or N == 0:
        nll = cp.empty(N, dtype=x.dtype)
        ew.xpgrad_softmax_xent_fwd(x, t, C, lse, nll)
        return nll.mean(), lse
    loss = cp.empty((), dtype=x.dtype)
    blocks = _row_blocks(N, C)
    partial = cp.empty(blocks, dtype=numpy.float64)
    tiled.xpgrad_softmax_xent_fwd_tiled.launch(
        _binding(x, t), blocks, (x, t, lse, loss, partial, _ticket(), numpy.int64(N), numpy.int32(C)))
    return loss, lse


def softmax_cross_entropy_backward(x, t, cache, gloss=None):
    """Gradient of ``gloss * loss`` w.r.t. the (N, C) logits: ``(softmax(x) - onehot(t)) * gloss / N``.

    ``cache`` is the (N,) log-sum-exp from the forward pass; ``gloss`` (a
    number or 0-d array, default 1) is read on the device (no host sync).
    """
    lse = cache
    _check_float(x, lse)
    N, C, t = _labels(x, t)
    cp = backend.cupy
    gloss = cp.ones((), dtype=x.dtype) if gloss is None else gloss
    gloss = cp.asarray(gloss).astype(x.dtype, copy=False).reshape(())
    if C > TILE:
        return ew.xpgrad_softmax_xent_bwd(x, _rows(lse), t, gloss, C, N)
    x = _rows(x)
    gx = cp.empty_like(x)
    if N:
        tiled.xpgrad_softmax_xent_bwd_tiled.launch(
            _binding(x, t), _row_blocks(N, C), (x, _rows(lse), t, gloss, gx, numpy.int64(N), numpy.int32(C)))
    return gx


# ---------------------------------------------------------------------------
# Optimizer updates: the learning rate from the schedule at the step counter,
# and the counter advanced, on the device (xpgrad.kernels.updates)


def _factors(schedule) -> numpy.int64:
    """K, the number of factors of a (1 + K,) float64 ``schedule`` (base rate, then factors), after checks."""
    if schedule.dtype != numpy.float64 or schedule.ndim != 1 or schedule.shape[0] < 2:
        raise ValueError(f"a schedule is a 1-d float64 array of a base rate and at least one factor, "
                         f"got {schedule.dtype} of shape {schedule.shape}")
    _check_contiguous(schedule)
    return numpy.int64(schedule.shape[0] - 1)


def _update(spec, arrays, schedule, step, advance, *hyper) -> None:
    """One launch of the update kernel ``spec`` on ``arrays`` (the parameter first, then same-shape state),
    with the hyperparameters ``hyper`` as doubles."""
    param = arrays[0]
    _check_float(*arrays)
    _check_same_shape(param, *arrays[1:])
    _check_dtypes(*arrays)
    _check_contiguous(*arrays)
    factors = _factors(schedule)
    _check_counter(step)
    n = param.size
    spec.launch(_binding(param), _blocks(-(-n // (4 * THREADS))), (
        *arrays, schedule, step, _ticket(), numpy.int64(n), factors, *(numpy.float64(h) for h in hyper),
        numpy.int32(1 if advance else 0)))


def sgd_update(param, grad, schedule, step, advance=True, work=None):
    """In place: ``param -= lr * grad`` (same shapes, C-contiguous), lr from the (1 + K,) float64 ``schedule`` at
    the 0-d int64 ``step``, ``schedule[0] * schedule[1 + min(step, K - 1)]``; then ``step += 1`` if ``advance``.
    One kernel, so ``work`` is not needed."""
    _update(up.xpgrad_sgd_update, (param, grad), schedule, step, advance)


def momentum_update(param, grad, velocity, schedule, step, momentum, advance=True, work=None):
    """In place, PyTorch semantics: ``velocity = momentum * velocity + grad; param -= lr * velocity``
    (lr, ``advance`` and ``work`` as in :func:`sgd_update`)."""
    _update(up.xpgrad_momentum_update, (param, grad, velocity), schedule, step, advance, momentum)


def adam_update(param, grad, m, v, schedule, step, beta1, beta2, eps, advance=True, work=None):
    """In place Adam update number ``t = step + 1`` (PyTorch semantics, with bias correction):

    ``m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
    param -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``,
    lr, ``advance`` and ``work`` as in :func:`sgd_update`; the bias corrections are computed on the device.
    """
    _update(up.xpgrad_adam_update, (param, grad, m, v), schedule, step, advance, beta1, beta2, eps)


# ---------------------------------------------------------------------------
# The training step's fused pieces (xpgrad.kernels.step)


def gather_batch(x, t, order, step, batch_size, out_x, out_t, multiplier, offset):
    """Batch number ``step`` of an epoch, normalized, then ``step += 1``: rows ``order[step * batch_size + r]``
    of (n, D) uint8 images x as ``x * multiplier - offset`` in out_x's dtype (two roundings, no fused
    multiply-add), and of (n,) labels t, for ``r < len(out_t)``, into (rows, D) out_x and (rows,) out_t.
    ``order`` is int64, ``step`` a 0-d int64; all C-contiguous."""
    _check_float(out_x)
    if x.dtype != numpy.uint8:
        raise TypeError(f"gather_batch reads uint8 images, got {x.dtype}")
    _check_contiguous(x, t, order, out_x, out_t)
    if t.dtype.name not in TYPE_CHOICES["S"] or out_t.dtype != t.dtype:
        raise TypeError(f"labels must be int32 or int64, the same in and out; got {t.dtype} and {out_t.dtype}")
    if order.dtype != numpy.int64:
        raise TypeError(f"the batch order must be int64, got {order.dtype}")
    _check_counter(step)
    rows = out_t.shape[0]
    if out_x.shape != (rows, *x.shape[1:]):
        raise ValueError(f"out_x has shape {out_x.shape}, expected {(rows, *x.shape[1:])}")
    scalar = out_x.dtype.type
    st.xpgrad_gather_batch.launch(_binding(out_x, t), _blocks(rows), (
        x, t, order, step, out_x, out_t, _ticket(), numpy.int64(math.prod(x.shape[1:])),
        numpy.int64(batch_size), numpy.int32(rows), scalar(multiplier), scalar(offset)))


def bias_relu_forward(h, b):
    """In place: ``h = max(h + b, 0)`` for (N, C) h and (C,) b; returns h."""
    _check_float(h, b)
    _check_contiguous(h, b)
    N, C = h.shape
    if N:
        st.xpgrad_bias_relu_fwd.launch(_binding(h), _blocks(-(-N // max(1, TILE // C))),
                                       (h, b, numpy.int64(N), numpy.int32(C)))
    return h


def _bias_grad_grid(N: int, C: int) -> tuple[int, int]:
    """(tiles, groups) of xpgrad_bias_relu_bwd for (N, C): column tiles of at most THREADS columns, and row
    groups, each a column sum's partial over chunks of (THREADS // width) * PER_THREAD rows."""
    tiles = -(-C // THREADS)
    width = -(-C // tiles)
    chunk = THREADS // width * PER_THREAD
    return tiles, max(1, min(-(-N // chunk), BIAS_GROUPS, MAX_BLOCKS // tiles))


def bias_relu_backward(y, gy, gx=None, gb=None):
    """The backward of :func:`bias_relu_forward` from its (N, C) output y: ``gx = gy * (y > 0)`` and
    ``gb = gx.sum(axis=0)``, into ``gx`` and ``gb`` when given (``gy`` itself is never written, though
    ``gx`` may be ``gy``). Returns ``(gx, gb)``. All C-contiguous, of one dtype.

    One kernel. As the generic multiply, a NaN or infinite ``gy`` gives NaN in gx even where ``y <= 0``.
    The column sums are added in double, in a fixed order (the same bits every run), and cast to the
    dtype once: as precise as CuPy's ``sum(axis=0)`` or more.
    """
    _check_float(y, gy)
    N, C = check_rows(y)
    if gy.shape != y.shape:
        raise ValueError(f"gy has shape {gy.shape}, expected {y.shape}")
    cp = backend.cupy
    gx = cp.empty_like(gy) if gx is None else gx
    gb = cp.empty(C, dtype=gy.dtype) if gb is None else gb
    if gx.shape != y.shape or gb.shape != (C,):
        raise ValueError(f"gx and gb have shapes {gx.shape} and {gb.shape}, expected {y.shape} and {(C,)}")
    _check_dtypes(y, gy, gx, gb)
    _check_contiguous(y, gy, gx, gb)
    tiles, groups = _bias_grad_grid(N, C)
    st.xpgrad_bias_relu_bwd.launch(_binding(y), _blocks(tiles * groups), (
        y, gy, gx, gb, _partial_sums(groups * C), _ticket(), numpy.int64(N), numpy.int32(C), numpy.int32(tiles),
        numpy.int32(groups)))
    return gx, gb


def bias_grad(g, out=None):
    """Column sums of (N, C) g, into (C,) out when given: the gradient of a bias added to every row
    (CuPy's reduction)."""
    return g.sum(axis=0, out=out)


def softmax_cross_entropy_step_work(z):
    """The scratch :func:`softmax_cross_entropy_step` needs for (N, C) logits like ``z``, allocated once."""
    blocks = _blocks(-(-z.shape[0] // THREADS))
    return backend.cupy.empty(2 * blocks, dtype=numpy.float64), backend.cupy.zeros(1, dtype=numpy.uint32)


def softmax_cross_entropy_step(z, t, gz, loss, loss_sum, correct, work=None):
    """The loss end of a training step, forward and backward at once, for (N, C) logits z and (N,) labels t.

    Writes the mean loss into ``loss`` (0-d, z's dtype) and its gradient into
    ``gz``, ``(softmax - onehot) / N``; adds the batch's summed loss to
    ``loss_sum`` (0-d, z's dtype) and its number of correct predictions to
    ``correct`` (0-d int64). ``work`` comes from
    :func:`softmax_cross_entropy_step_work`. One kernel, a thread per row.
    """
    _check_float(z, gz, loss, loss_sum)
    _check_dtypes(z, gz, loss, loss_sum)
    N, C, t = _labels(z, t)
    if N == 0:
        raise ValueError("a training step needs at least one row")
    _check_contiguous(z, gz)
    _check_counter(correct)
    partial, ticket = softmax_cross_entropy_step_work(z) if work is None else work
    blocks = _blocks(-(-N // THREADS))
    if partial.size < 2 * blocks:
        raise ValueError(f"work holds {partial.size} partial sums, {2 * blocks} are needed")
    st.xpgrad_softmax_xent_step.launch(_binding(z, t), blocks, (
        z, t, gz, loss, loss_sum, correct, partial, ticket, numpy.int64(N), numpy.int32(C)))
