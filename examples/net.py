"""A model of your own, for ``xpgrad train --model examples/net.py:Net``.

xpgrad calls ``Net(input_shape=(1, 28, 28), num_classes=10)`` with the
dataset's real values; the model maps a (N, *input_shape) Tensor of images to
(N, num_classes) logits. Any ``xpgrad.nn`` layers and ``xpgrad.functional``
functions work here, on the CPU and on a GPU alike.
"""

import math

from xpgrad import functional as F
from xpgrad import nn


class Net(nn.Module):
    """Two hidden layers of 256 and 128 ReLU units."""

    def __init__(self, input_shape, num_classes):
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(math.prod(input_shape), 256)
        self.fc2 = nn.Linear(256, 128)
        self.out = nn.Linear(128, num_classes)

    def forward(self, x):
        x = F.relu(self.fc1(self.flatten(x)))
        x = F.relu(self.fc2(x))
        return self.out(x)
