"""The hot-path functions written once against ``xp``: the CPU code, and the reference for the kernels.

Every public function here has a twin of the same name and signature in
:mod:`xpgrad.kernels`, a fused CUDA kernel; :func:`xpgrad.backend.get_ops`
picks one of the two modules, and tests check that both compute the same
thing. Read the two files side by side to compare each formula.

The twins:

============================  ==================================================
function                      what it computes
============================  ==================================================
relu_backward                 ``gy`` where ``x > 0``, else 0
log_softmax_forward           ``x - logsumexp(x)`` per row
log_softmax_backward          ``gy - exp(y) * sum_row(gy)``
softmax_cross_entropy_*       mean ``logsumexp(x) - x[label]``, and its gradient
sgd_update                    ``p -= lr * g``
momentum_update               ``v = mu * v + g; p -= lr * v``
adam_update                   Adam with bias correction (PyTorch's)
gather_batch                  rows ``order[step * B:][:rows]`` of x (normalized) and t; ``step += 1``
bias_relu_forward             ``h = max(h + b, 0)``
bias_relu_backward            ``gx = gy * (y > 0)`` and its column sums
bias_grad                     ``g.sum(axis=0)``
softmax_cross_entropy_step    the loss, its gradient, and the loss and accuracy sums
============================  ==================================================

Everything that changes from one training step to the next is read from
device memory, never passed as a number, so that on a GPU a CUDA graph can
record a step once and replay it: the updates read the learning rate from the
optimizer's ``schedule`` table at its ``step`` counter (and advance it), and
``gather_batch`` reads the batch number from its counter (and advances it).

The row helpers (:func:`row_max`, :func:`row_sum`, :func:`logsumexp`) and the
soft-target cross-entropy are generic only: no kernel replaces them.

Speed on the CPU: at training shapes, (128, 10), NumPy's reductions over a
short last axis cost far more than the arithmetic: ``x.max(axis=1)`` takes
~17 us and ``x.sum(axis=1)`` ~9 us, against ~4 us for ``argmax`` plus a flat
``take`` and ~3 us for a BLAS matrix-vector product with a vector of ones.
The row helpers compute the same values (up to the order of a sum) that way.
The updates write through a ``work`` array (scratch of the parameter's shape)
when given, so an optimizer step allocates nothing.
"""

from __future__ import annotations

import numpy

from .backend import get_array_module
from .backend.graph import matmul

#: The functions here read counters on the host, so a CUDA graph cannot
#: record them (xpgrad.kernels' can).
CAPTURE_SAFE = False

# ---------------------------------------------------------------------------
# Argument checks, shared with xpgrad.kernels


def check_rows(x) -> tuple[int, int]:
    """(N, C) of a 2-d array of rows with C >= 1, or ValueError."""
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"expected a 2-d (N, C) array with C >= 1, got shape {x.shape}")
    return x.shape


def is_index_labels(t) -> bool:
    """Whether ``t`` holds integer class indices (one per row), rather than target probabilities."""
    return t.ndim == 1 and t.dtype.kind in "iu"


def check_labels(x, t) -> tuple[int, int]:
    """(N, C) of logits ``x``, after checking that ``t`` is N integer labels in [0, C).

    The range is checked on the host only: on a GPU it would cost a sync every
    step, so there a label out of range gives a NaN loss instead.
    """
    n, c = check_rows(x)
    if not is_index_labels(t):
        raise ValueError(f"labels must be integers of shape ({n},), got {t.dtype} {t.shape}")
    if t.shape[0] != n:
        raise ValueError(f"got {n} rows of logits but {t.shape[0]} labels")
    if n and get_array_module(t) is numpy and _labels_out_of_range(t, c):
        raise ValueError(f"labels must lie in [0, {c}); got [{t.min()}, {t.max()}]")
    return n, c


def _labels_out_of_range(t, c: int) -> bool:
    """Whether any integer label lies outside [0, c), in one reduction: viewed as
    unsigned, a negative label becomes huge, so ``max >= c`` catches both ends."""
    if t.dtype.kind == "i":
        t = t.view(f"u{t.dtype.itemsize}")
    return bool(t.max() >= c)


# ---------------------------------------------------------------------------
# Row helpers for (N, C) arrays


def pick(x, cols):
    """``x[i, cols[i]]`` for every row ``i``: one flat take (NumPy's ``x[arange(n), cols]`` is slower)."""
    xp = get_array_module(x, cols)
    n, c = x.shape
    return x.reshape(-1).take(xp.arange(0, n * c, c) + cols)


def row_max(x):
    """Per-row max of an (N, C) array, shape (N,); NaN wherever a row holds one, as ``max``."""
    return pick(x, x.argmax(axis=1))


def row_sum(x):
    """Per-row sum of an (N, C) array, shape (N,), as a matrix-vector product with ones."""
    xp = get_array_module(x)
    return matmul(xp, x, xp.ones(x.shape[1], dtype=x.dtype))


def logsumexp(x):
    """Stable per-row log-sum-exp of an (N, C) array, shape (N, 1)."""
    xp = get_array_module(x)
    m = row_max(x)[:, None]
    e = x - m
    xp.exp(e, out=e)
    return m + xp.log(row_sum(e))[:, None]


# ---------------------------------------------------------------------------
# The twins of xpgrad.kernels


def relu_backward(x, gy, out=None):
    """Gradient of ReLU: ``gy`` where ``x > 0``, else 0; into ``out`` when given (``out=gy`` is allowed)."""
    # A multiply by the boolean mask keeps gy's dtype and, in NumPy, runs
    # about 4x faster than xp.where(x > 0, gy, 0) at training shapes.
    return get_array_module(x, gy).multiply(gy, x > 0, out=out)


def log_softmax_forward(x):
    """Row-wise log-softmax of (N, C) logits: ``x - logsumexp(x, axis=1)``, computed stably."""
    check_rows(x)
    return x - logsumexp(x)


def log_softmax_backward(y, gy):
    """Gradient of log-softmax from its (N, C) output y: ``gy - exp(y) * gy.sum(axis=1)``."""
    xp = get_array_module(y, gy)
    gx = xp.exp(y)
    gx *= row_sum(gy)[:, None]
    return xp.subtract(gy, gx, out=gx)


def softmax_cross_entropy_forward(x, t):
    """Mean softmax cross-entropy of (N, C) logits x against (N,) integer labels t.

    Returns ``(loss, cache)``: loss is 0-d with x's dtype; cache is what
    :func:`softmax_cross_entropy_backward` needs (here ``exp(x - max)`` and
    its row sums, so the backward pass needs no exp of its own).
    """
    xp = get_array_module(x, t)
    n, _ = check_labels(x, t)
    m = row_max(x)
    e = x - m[:, None]
    xp.exp(e, out=e)
    s = row_sum(e)
    loss = (m + xp.log(s) - pick(x, t)).sum() / n
    return xp.asarray(loss, dtype=x.dtype), (e, s)


def softmax_cross_entropy_backward(x, t, cache, gloss=None):
    """Gradient of ``gloss * loss`` w.r.t. the (N, C) logits: ``(softmax(x) - onehot(t)) * gloss / N``.

    ``cache`` comes from :func:`softmax_cross_entropy_forward`; ``gloss`` (a
    number or 0-d array, default 1) is the upstream gradient.
    """
    xp = get_array_module(x, t)
    n, c = x.shape
    e, s = cache
    # (softmax - onehot) * scale, as exp * (scale / sum) with scale
    # subtracted at each row's label: two passes over (N, C) and a scatter.
    scale = xp.asarray(1.0 / n if gloss is None else gloss / n, dtype=x.dtype)
    gx = e * (scale / s)[:, None]
    gx.reshape(-1)[xp.arange(0, n * c, c) + t] -= scale
    return gx


def schedule_lr(schedule, step) -> float:
    """The learning rate of update number ``step + 1``: ``schedule[0] * schedule[1 + min(step, K - 1)]``.

    ``schedule`` is an optimizer's float64 table on its device: the base learning
    rate, then K factors, one per update from the first (the last one holds for
    every later update); ``step`` counts the updates done. Python floats, so the
    numbers are the ones an eager ``lr * factor(step)`` gives.
    """
    factors = schedule.shape[0] - 1
    return float(schedule[0]) * float(schedule[1 + min(int(step), factors - 1)])


def sgd_update(param, grad, schedule, step, advance=True, work=None):
    """In place: ``param -= lr * grad`` (same shapes), lr from ``schedule`` at ``step`` (:func:`schedule_lr`);
    then ``step += 1`` if ``advance``. ``work`` is scratch of param's shape."""
    xp = get_array_module(param, grad)
    lr = schedule_lr(schedule, step)
    work = xp.multiply(grad, lr, out=work)
    param -= work
    if advance:
        step += 1


def momentum_update(param, grad, velocity, schedule, step, momentum, advance=True, work=None):
    """In place, PyTorch semantics: ``velocity = momentum * velocity + grad; param -= lr * velocity``
    (lr and ``advance`` as in :func:`sgd_update`)."""
    xp = get_array_module(param, grad)
    lr = schedule_lr(schedule, step)
    velocity *= momentum
    velocity += grad
    work = xp.multiply(velocity, lr, out=work)
    param -= work
    if advance:
        step += 1


def adam_update(param, grad, m, v, schedule, step, beta1, beta2, eps, advance=True, work=None):
    """In place Adam update number ``t = step + 1`` (PyTorch semantics, with bias correction):

    ``m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
    param -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``,
    lr and ``advance`` as in :func:`sgd_update`.
    """
    lr = schedule_lr(schedule, step)
    t = int(step) + 1
    _adam(param, grad, m, v, beta1, beta2, eps, 1.0 / (1 - beta2**t), lr / (1 - beta1**t), work)
    if advance:
        step += 1


def _adam(param, grad, m, v, beta1, beta2, eps, inv_bc2, step_size, work):
    """Adam's update given ``1 / (1 - b2^t)`` and ``lr / (1 - b1^t)`` as Python floats."""
    xp = get_array_module(param, grad)
    work = xp.empty_like(param) if work is None else work
    m *= beta1
    xp.multiply(grad, 1 - beta1, out=work)
    m += work
    v *= beta2
    xp.multiply(grad, grad, out=work)
    work *= 1 - beta2
    v += work
    # param -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps), in two scratch passes
    xp.multiply(v, inv_bc2, out=work)
    xp.sqrt(work, out=work)
    work += eps
    xp.divide(m, work, out=work)
    work *= step_size
    param -= work


# ---------------------------------------------------------------------------
# The training step's fused pieces. On the CPU these read the batch counter
# on the host; what they compute is exactly what the separate ops compute.


def gather_batch(x, t, order, step, batch_size, out_x, out_t, multiplier, offset):
    """Batch number ``step`` of an epoch, normalized, then ``step += 1``: rows ``order[step * batch_size + r]``
    of (n, D) uint8 images x as ``x * multiplier - offset`` in out_x's dtype, and of (n,) labels t, for
    ``r < len(out_t)``, into (rows, D) out_x and (rows,) out_t. ``order`` is int64, ``step`` a 0-d int64,
    ``multiplier`` and ``offset`` scalars of out_x's dtype."""
    xp = get_array_module(x, t, order)
    first = int(step) * batch_size
    rows = order[first:first + out_t.shape[0]]
    # The rows are a permutation's, so always in range: mode="clip" spares NumPy's buffered copy (3x faster).
    images = xp.take(x, rows, axis=0, mode="clip")
    xp.multiply(images, multiplier, out=out_x, dtype=out_x.dtype)
    xp.subtract(out_x, offset, out=out_x)
    xp.take(t, rows, axis=0, out=out_t, mode="clip")
    step += 1


def bias_relu_forward(h, b):
    """In place: ``h = max(h + b, 0)`` for (N, C) h and (C,) b; returns h."""
    xp = get_array_module(h, b)
    h += b
    return xp.maximum(h, 0, out=h)


def bias_relu_backward(y, gy, gx=None, gb=None):
    """The backward of :func:`bias_relu_forward` from its (N, C) output y: ``gx = gy`` where ``y > 0``, else 0,
    and ``gb = gx.sum(axis=0)``, into ``gx`` and ``gb`` when given (``gy`` itself is never written).
    Returns ``(gx, gb)``."""
    xp = get_array_module(y, gy)
    gx = xp.multiply(gy, y > 0, out=gx)
    return gx, gx.sum(axis=0, out=gb)


def bias_grad(g, out=None):
    """Column sums of (N, C) g, into (C,) out when given: the gradient of a bias added to every row."""
    return g.sum(axis=0, out=out)


def add_loss_stats(x, t, loss, loss_sum, correct):
    """Add a batch's summed loss (its mean ``loss`` times N) to ``loss_sum`` and its number of correct
    predictions (``argmax(x) == t``) to ``correct``: what :func:`softmax_cross_entropy_step` adds, for a
    loss computed on its own (generic only)."""
    loss_sum += loss * t.shape[0]
    correct += (x.argmax(axis=1) == t).sum()


def softmax_cross_entropy_step_work(z):
    """The scratch :func:`softmax_cross_entropy_step` needs: none here."""
    return None


def softmax_cross_entropy_step(z, t, gz, loss, loss_sum, correct, work=None):
    """The loss end of a training step, forward and backward at once, for (N, C) logits z and (N,) labels t.

    Writes the mean loss into ``loss`` (0-d, z's dtype) and its gradient into
    ``gz``, ``(softmax - onehot) / N``; adds the batch's summed loss to
    ``loss_sum`` (0-d, z's dtype) and its number of correct predictions to
    ``correct`` (0-d int64). The numbers are those of
    :func:`softmax_cross_entropy_forward`, :func:`softmax_cross_entropy_backward`
    and :func:`add_loss_stats`, with the row maxima, the labels' flat indices
    and the exponentials computed once for all three.
    """
    xp = get_array_module(z, t)
    n, c = check_labels(z, t)
    best = z.argmax(axis=1)
    starts = xp.arange(0, n * c, c)
    at_label = starts + t
    flat = z.reshape(-1)
    m = flat.take(starts + best)
    e = z - m[:, None]
    xp.exp(e, out=e)
    s = row_sum(e)
    mean = xp.asarray((m + xp.log(s) - flat.take(at_label)).sum() / n, dtype=z.dtype)
    loss[...] = mean
    scale = xp.asarray(1.0 / n, dtype=z.dtype)
    xp.multiply(e, (scale / s)[:, None], out=gz)
    gz.reshape(-1)[at_label] -= scale
    loss_sum += mean * n
    correct += (best == t).sum()


# ---------------------------------------------------------------------------
# Soft targets: generic only


def soft_cross_entropy_forward(x, t):
    """Mean cross-entropy of (N, C) logits against (N, C) target probabilities; ``(loss, lse)``."""
    xp = get_array_module(x, t)
    n, _ = check_rows(x)
    lse = logsumexp(x)[:, 0]
    loss = -(t * (x - lse[:, None])).sum() / n
    return xp.asarray(loss, dtype=x.dtype), lse


def soft_cross_entropy_backward(x, t, lse, gloss=None):
    """Gradient w.r.t. the logits: ``(softmax(x) * sum_row(t) - t) * gloss / N``."""
    xp = get_array_module(x, t)
    n = x.shape[0]
    gx = xp.exp(x - lse[:, None]) * t.sum(axis=1, keepdims=True) - t
    gx *= xp.asarray(1.0 / n if gloss is None else gloss / n, dtype=x.dtype)
    return gx
