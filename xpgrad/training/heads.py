"""Loss heads: from the model's logits and the labels to the loss a training step backpropagates from.

A head is called as ``head(logits, t, stats)``: ``logits`` a Tensor, ``t`` the
labels (an array on the device), ``stats`` the epoch's sums ``(loss_sum,
correct)`` (0-d arrays on the device), to which the batch's summed loss and
number of correct predictions are added there, with no host sync. It returns
the loss as a Tensor. Its ``reduction`` says how the loss gathers the batch's
rows: ``"mean"`` or ``"sum"`` (data parallelism weighs each rank's gradient by it).
"""

from __future__ import annotations

from .. import functions, generic, ops
from ..backend import get_array_module
from ..backprop import is_unit
from ..errors import XpgradError
from ..tensor import Function

HEADS = ("cross_entropy", "notebook")


def cross_entropy(logits, t, stats):
    """Mean softmax cross-entropy, fused: in a training step the loss, its gradient and the sums are one
    kernel on a GPU (:class:`xpgrad.functions.CrossEntropy`)."""
    return functions.CrossEntropy(t, stats)(logits)


cross_entropy.reduction = "mean"


class NotebookLoss(Function):
    """The notebook's loss: Softmax then Log (``log(p + 1e-12)``), unfused, against one-hot labels.

    Its output is the loss *summed* over the batch, whose gradient is the
    notebook's ``softmax.backward(log.backward(-onehot))``: the notebook trained
    on the summed loss (and printed the mean, which ``stats`` receives).
    """

    __slots__ = ("t", "stats", "num_classes", "softmax", "log", "onehot")

    def __init__(self, t, stats, num_classes: int):
        self.t, self.stats, self.num_classes = t, stats, num_classes

    def forward(self, x):
        xp = get_array_module(x, self.t)
        n = x.shape[0]
        self.onehot = xp.zeros((n, self.num_classes), dtype=x.dtype)
        self.onehot[xp.arange(n), self.t] = 1
        self.softmax, self.log = ops.Softmax(), ops.Log()
        total = (self.log.forward(self.softmax.forward(x)) * self.onehot).sum()
        if self.stats is not None:
            generic.add_loss_stats(x, self.t, -total / n, *self.stats)
        return -total

    def backward(self, gy):
        gx = self.softmax.backward(self.log.backward(-self.onehot))
        return (gx if is_unit(gy) else gx * gy,)


def make_head(name: str, num_classes: int):
    """The head called ``name``: ``cross_entropy``, or the ``notebook``'s Softmax -> Log."""
    if name == "cross_entropy":
        return cross_entropy
    if name == "notebook":
        def notebook(logits, t, stats):
            return NotebookLoss(t, stats, num_classes)(logits)

        notebook.reduction = "sum"
        return notebook
    raise XpgradError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
