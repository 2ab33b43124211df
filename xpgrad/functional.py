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
