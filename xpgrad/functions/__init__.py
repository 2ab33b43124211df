"""The operations of the tape: each :class:`xpgrad.tensor.Function` with its forward next to its derivative.

* :mod:`.arithmetic`: ``+ - * /``, powers, ``exp`` and ``log``, broadcasting, written once against ``xp``;
* :mod:`.array`: sums and means, reshapes, transposes, indexing and device moves, against ``xp``;
* :mod:`.network`: matrix products, ReLU, softmax, log-softmax and cross-entropy, each around an op
  of :mod:`xpgrad.ops`, so that on a GPU the tape runs the same fused kernels as the hand-written model;
* :mod:`.layers`: convolution, max pooling, batch norm and dropout, each around an op of
  :mod:`xpgrad.convops` or :mod:`xpgrad.modeops`.

Every ``backward`` returns new arrays (or views) and never writes into its
``gy``: the same ``gy`` may have been handed to another input too.
"""

from .arithmetic import (Add, AddScalar, Div, DivScalar, Exp, Log, Mul, MulScalar, Neg, PowScalar, RDivScalar,
                         RSubScalar, Sub, SubScalar, sum_to)
from .array import GetItem, Mean, Reshape, Sum, ToDevice, Transpose, normalize_axes
from .layers import BatchNorm2d, Conv2d, Dropout, MaxPool2d
from .network import CrossEntropy, Linear, LinearReLU, LogSoftmax, Matmul, Relu, Softmax

__all__ = ["Add", "AddScalar", "CrossEntropy", "Div", "DivScalar", "Exp", "GetItem", "Linear", "LinearReLU", "Log", "LogSoftmax",
           "Matmul", "Mean", "Mul", "MulScalar", "Neg", "PowScalar", "RDivScalar", "RSubScalar", "Relu", "Reshape",
           "Softmax", "Sub", "SubScalar", "Sum", "ToDevice", "Transpose", "normalize_axes", "sum_to"]
__all__ += ["BatchNorm2d", "Conv2d", "Dropout", "MaxPool2d"]
