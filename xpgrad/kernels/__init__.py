"""Fused CUDA kernels for the GPU path of ops, optimizers and the device-resident training step.

The kernels are data: :mod:`.specs` says how a kernel is kept and built,
:mod:`.elementwise` holds those CuPy writes the loop for, :mod:`.tiled` those
whose threads cooperate through shared memory. They are built through
:mod:`xpgrad.backend` on first call (so this package imports without CuPy),
and every one is listed in :data:`KERNELS`, so tests can compile each one
without a GPU.

The public functions here take and return CuPy arrays of float32 or float64.
Each has a twin of the same name and signature in :mod:`xpgrad.generic`,
written against ``xp``: that is the CPU code and the reference these kernels
must match. :func:`xpgrad.backend.get_ops` chooses between the two modules.

Kernels per call: one each, except the log-softmax and cross-entropy
functions on rows wider than a tile (C > TILE = 2048 values), which take the
older thread-per-row kernels (two, or one and CuPy's mean), and
:func:`bias_grad`, which is CuPy's own column-sum reduction.
"""

from __future__ import annotations

import numpy

from .. import backend
from ..generic import check_labels, check_rows
from . import elementwise as ew
from . import tiled
from .specs import KERNELS, MAX_BLOCKS, THREADS, TILE, TYPE_CHOICES, KernelSpec, RawKernelSpec  # noqa: F401

#: A graph can record the device-resident step through these functions: they
#: read step-varying numbers from device arrays and never sync with the host.
CAPTURE_SAFE = True


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
            raise ValueError(f"the device-resident kernels take C-contiguous arrays, got strides {a.strides}")


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


_tickets = {}


def _ticket():
    """A uint32 counter for the kernels that find their last block, one per device and stream; they leave it at 0."""
    cuda = backend.cupy.cuda
    key = (cuda.Device().id, cuda.get_current_stream().ptr)
    ticket = _tickets.get(key)
    if ticket is None:
        ticket = _tickets[key] = backend.cupy.zeros(1, dtype=numpy.uint32)
    return ticket


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
# Optimizer updates, with the learning rate as a number


def sgd_update(param, grad, lr, work=None):
    """In place: ``param -= lr * grad`` (same shapes); one kernel, so ``work`` is not needed."""
    _check_float(param, grad)
    _check_same_shape(param, grad)
    if param.flags.c_contiguous and grad.flags.c_contiguous and param.size:
        ew.xpgrad_sgd_update_x4(grad.reshape(-1), lr, param.size, param.reshape(-1), size=-(-param.size // 4))
        return
    ew.xpgrad_sgd_update(grad, lr, param)


def momentum_update(param, grad, velocity, lr, momentum, work=None):
    """In place, PyTorch semantics: ``velocity = momentum * velocity + grad; param -= lr * velocity``."""
    _check_float(param, grad, velocity)
    _check_same_shape(param, grad, velocity)
    ew.xpgrad_momentum_update(grad, lr, momentum, param, velocity)


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, step, work=None):
    """In place Adam step (PyTorch semantics, with bias correction) for step = 1, 2, ...

    ``m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
    param -= lr * (m / (1 - b1**step)) / (sqrt(v / (1 - b2**step)) + eps)``.
    """
    _check_float(param, grad, m, v)
    _check_same_shape(param, grad, m, v)
    if step < 1:
        raise ValueError(f"Adam step counts from 1, got {step}")
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    ew.xpgrad_adam_update(grad, lr, beta1, beta2, eps, bc1, bc2, param, m, v)


# ---------------------------------------------------------------------------
# The device-resident training step (xpgrad.training.graphstep): everything
# that changes from step to step is read from device arrays


def gather_batch(x, t, order, step, batch_size, out_x, out_t):
    """Batch ``step`` of an epoch: rows ``order[step * batch_size + r]`` of (n, D) x and (n,) t, for
    ``r < len(out_t)``, into (rows, D) out_x and (rows,) out_t. ``order`` is int64, ``step`` a 0-d int64."""
    _check_float(x, out_x)
    _check_contiguous(x, t, order, out_x, out_t)
    if t.dtype.name not in TYPE_CHOICES["S"] or out_t.dtype != t.dtype:
        raise TypeError(f"labels must be int32 or int64, the same in and out; got {t.dtype} and {out_t.dtype}")
    rows = out_t.shape[0]
    if rows:
        tiled.xpgrad_gather_batch.launch(_binding(x, t), _blocks(rows), (
            x, t, order, step, out_x, out_t, numpy.int64(x.shape[1]), numpy.int64(batch_size), numpy.int32(rows)))


def bias_relu_forward(h, b):
    """In place: ``h = max(h + b, 0)`` for (N, C) h and (C,) b; returns h."""
    _check_float(h, b)
    _check_contiguous(h, b)
    N, C = h.shape
    if N:
        tiled.xpgrad_bias_relu_fwd.launch(_binding(h), _blocks(-(-N // max(1, TILE // C))),
                                          (h, b, numpy.int64(N), numpy.int32(C)))
    return h


def bias_grad(g, out):
    """Column sums of (N, C) g into (C,) out: the gradient of a bias added to every row (CuPy's reduction)."""
    return g.sum(axis=0, out=out)


def softmax_cross_entropy_step_work(z):
    """The scratch :func:`softmax_cross_entropy_step` needs for (N, C) logits like ``z``, allocated once."""
    blocks = _blocks(-(-z.shape[0] // THREADS))
    return backend.cupy.empty(2 * blocks, dtype=numpy.float64), backend.cupy.zeros(1, dtype=numpy.uint32)


def softmax_cross_entropy_step(z, b, t, gz, loss_sum, correct, step, work=None):
    """The loss end of a training step on (N, C) logits ``z + b`` (``b`` may be None) and (N,) labels t.

    Writes the gradient of the mean loss into gz, ``(softmax - onehot) / N``;
    adds the batch's summed loss to ``loss_sum`` (0-d, z's dtype) and its
    number of correct predictions to ``correct`` (0-d int64); and counts the
    step: ``step += 1`` (0-d int64). ``work`` comes from
    :func:`softmax_cross_entropy_step_work`. ``z`` may be overwritten with
    the logits (the generic twin does; this kernel leaves it).
    """
    _check_float(z, gz)
    N, C, t = _labels(z, t)
    if N == 0:
        raise ValueError("a training step needs at least one row")
    _check_contiguous(z, gz)
    partial, ticket = softmax_cross_entropy_step_work(z) if work is None else work
    blocks = _blocks(-(-N // THREADS))
    if partial.size < 2 * blocks:
        raise ValueError(f"work holds {partial.size} partial sums, {2 * blocks} are needed")
    tiled.xpgrad_softmax_xent_step.launch(_binding(z, t), blocks, (
        z, z if b is None else b, t, gz, loss_sum, correct, step, partial, ticket,
        numpy.int64(N), numpy.int32(C), numpy.int32(b is not None)))


def sgd_step(param, grad, schedule, step, work=None):
    """:func:`sgd_update` with lr from row ``step - 1`` of the (steps, 3) float64 ``schedule``
    (``step``: a 0-d int64 counting from 1). Contiguous arrays only."""
    _check_float(param, grad)
    _check_same_shape(param, grad)
    _check_contiguous(param, grad, schedule)
    if param.size:
        ew.xpgrad_sgd_step_x4(grad.reshape(-1), schedule.reshape(-1), step, param.size, param.reshape(-1),
                              size=-(-param.size // 4))


def momentum_step(param, grad, velocity, schedule, step, momentum, work=None):
    """:func:`momentum_update` with lr from row ``step - 1`` of ``schedule`` (see :func:`sgd_step`)."""
    _check_float(param, grad, velocity)
    _check_same_shape(param, grad, velocity)
    _check_contiguous(schedule)
    ew.xpgrad_momentum_step(grad, schedule.reshape(-1), step, momentum, param, velocity)


def adam_step(param, grad, m, v, schedule, step, beta1, beta2, eps, work=None):
    """:func:`adam_update` with lr and the bias corrections from row ``step - 1`` of ``schedule``,
    ``(lr, 1 - beta1**t, 1 - beta2**t)`` for Adam's step t (see :func:`sgd_step`)."""
    _check_float(param, grad, m, v)
    _check_same_shape(param, grad, m, v)
    _check_contiguous(schedule)
    ew.xpgrad_adam_step(grad, schedule.reshape(-1), step, beta1, beta2, eps, param, m, v)
