"""Functions on tensors, as ``torch.nn.functional``: activations, softmax and the loss.

Each takes Tensors (or arrays, treated as constants) and returns a Tensor
that records its gradient. The work is done by :mod:`xpgrad.ops`, so on a
GPU softmax cross-entropy, log-softmax and the ReLU backward are fused kernels.
"""

from __future__ import annotations

from . import functions
from .tensor import Tensor, as_tensor


def relu(x) -> Tensor:
    """``max(x, 0)`` elementwise, any shape."""
    return functions.Relu()(as_tensor(x))


def softmax(x, axis: int = -1) -> Tensor:
    """Softmax along ``axis`` (one int) of a floating-point x of any shape but 0-d, through
    :class:`xpgrad.ops.Softmax`; an empty x gives an empty result, as in PyTorch.

    The row max is subtracted first, so it cannot overflow; like the notebook,
    the denominator carries ``+ 1e-12`` (a relative change of at most 1e-12).
    """
    return functions.Softmax(axis)(as_tensor(x))


def log_softmax(x, axis: int = -1) -> Tensor:
    """``x - logsumexp(x)`` along ``axis``, exact and stable, through :class:`xpgrad.ops.LogSoftmax`; x as for
    :func:`softmax`."""
    return functions.LogSoftmax(axis)(as_tensor(x))


def cross_entropy(logits, labels) -> Tensor:
    """Mean over rows of the softmax cross-entropy: a 0-d Tensor of the logits' dtype.

    ``logits`` is (N, C), floating-point. ``labels`` is an array or Tensor
    on the same device (not a list or a number: TypeError): N integer class
    indices in [0, C) (checked on the CPU; on a GPU that would cost a host
    sync), or (N, C) target probabilities, which may be of any real dtype
    (PyTorch wants the logits'; xpgrad casts them to it). Labels get no
    gradient. This is the fused
    :class:`xpgrad.ops.SoftmaxCrossEntropy`: one kernel each way on a GPU
    (for index labels), no (N, C, C) Jacobian anywhere.
    """
    if isinstance(labels, Tensor):
        if labels.requires_grad:
            raise ValueError("cross_entropy takes labels as constants; pass labels.detach() "
                             "(gradients with respect to target probabilities are not computed)")
        labels = labels.data
    return functions.CrossEntropy(labels)(as_tensor(logits))


def linear(x, W, b=None) -> Tensor:
    """``x @ W + b`` on x's last axis, through :class:`xpgrad.ops.Linear`: x is (in,), (N, in) or (N, ..., in),
    W (in, out), b (out,) or None, as PyTorch's (whose W is (out, in)). xpgrad also takes a b that broadcasts
    to the output, such as a number or (1,): its gradient is summed back to its shape. x, W and b share
    one floating-point dtype."""
    if b is None:
        return functions.Linear()(as_tensor(x), as_tensor(W))
    return functions.Linear()(as_tensor(x), as_tensor(W), as_tensor(b))


# ---------------------------------------------------------------------------
# Images and the layers that depend on the mode (xpgrad.convops, xpgrad.modeops)


def conv2d(x, weight, bias=None, stride=1, padding=0) -> Tensor:
    """PyTorch's ``conv2d`` (a cross-correlation): x (N, C, H, W), ``weight`` (out, in, kh, kw) in PyTorch's
    layout, ``bias`` (out,) or None, of one floating-point dtype; (N, out, Ho, Wo). ``stride`` (at least 1) and
    ``padding`` (zeros, at least 0) are ints or pairs. im2col and one matrix product
    (:class:`xpgrad.convops.Conv2d`)."""
    inputs = (as_tensor(x), as_tensor(weight)) + (() if bias is None else (as_tensor(bias),))
    return functions.Conv2d(stride, padding)(*inputs)


def max_pool2d(x, kernel_size, stride=None, padding=0) -> Tensor:
    """The maximum of each window of x (N, C, H, W), as PyTorch's ``max_pool2d``: ``stride`` defaults to
    ``kernel_size``, ``padding`` is -inf (at most half the kernel); the gradient goes to each window's first
    maximum, ties as PyTorch. N (or C) may be 0. x may hold integers too (no gradient), as in PyTorch."""
    return functions.MaxPool2d(kernel_size, stride, padding)(as_tensor(x))


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5) -> Tensor:
    """PyTorch's ``batch_norm`` on floating-point x (N, C, H, W): the batch's statistics in training (and the
    running ones, (C,) arrays of x's dtype, NumPy or CuPy, updated in place), the running ones in evaluation.
    ``weight`` and ``bias`` are (C,), of x's dtype, both or neither. ``momentum`` is in [0, 1] (PyTorch does not
    check it; outside it the running statistics diverge) and ``eps`` > 0 (PyTorch refuses 0 in training too)."""
    inputs = [as_tensor(x)] + [as_tensor(t) for t in (weight, bias) if t is not None]
    if (weight is None) != (bias is None):
        raise ValueError("batch_norm takes weight and bias together, or neither")
    return functions.BatchNorm2d(running_mean, running_var, training=training, momentum=momentum, eps=eps)(*inputs)


def dropout(x, p=0.5, training=True, *, state=None) -> Tensor:
    """PyTorch's ``dropout``: in training, each element of a floating-point x zeroed with probability ``p`` (a
    number in [0, 1]) and the rest scaled by ``1 / (1 - p)``; ``x`` itself otherwise. The mask comes from
    ``state``, a generator state of :func:`xpgrad.modeops.new_state` ((2,) uint64) on x's device, advanced in
    place (``nn.Dropout`` holds one); a state given is checked even where it is not used."""
    from .arguments import flag  # noqa: PLC0415 - light modules; keep this file's imports as they were
    from .modeops import check_probability  # noqa: PLC0415

    check_probability(p)
    flag(training, "dropout's training")
    if state is not None:
        functions.layers.check_state(state)
    if not training or p == 0:
        return as_tensor(x)
    if state is None:
        raise ValueError("dropout in training needs state=, a generator state (xpgrad.modeops.new_state(seed)); "
                         "nn.Dropout keeps one for you")
    return functions.Dropout(p, state)(as_tensor(x))
