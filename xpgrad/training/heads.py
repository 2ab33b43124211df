"""Loss heads: what turns the model's logits and the labels into a loss and its gradient.

A head has ``forward(logits, labels) -> loss`` (a 0-d array on the device) and
``backward() -> d loss / d logits``.
"""

from __future__ import annotations

from ..errors import XpgradError
from ..notebook import NotebookHead
from ..ops import SoftmaxCrossEntropy

HEADS = ("cross_entropy", "notebook")


class CrossEntropyHead:
    """The fused SoftmaxCrossEntropy: mean loss, gradient (softmax - onehot)/N."""

    def __init__(self):
        self.op = SoftmaxCrossEntropy()

    def forward(self, logits, t):
        return self.op.forward(logits, t)

    def backward(self):
        return self.op.backward()


def make_head(name: str, num_classes: int):
    """The head called ``name``: ``cross_entropy``, or the ``notebook``'s Softmax -> Log."""
    if name == "cross_entropy":
        return CrossEntropyHead()
    if name == "notebook":
        return NotebookHead(num_classes)
    raise XpgradError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
