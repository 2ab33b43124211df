"""Batch normalization, as ``torch.nn``: :class:`BatchNorm2d`."""

from __future__ import annotations

import numpy

from .. import backend, functions
from ..arguments import flag, whole_number
from ..tensor import Tensor, as_tensor
from . import init as _init
from .module import Module


class BatchNorm2d(Module):
    """PyTorch's ``BatchNorm2d(num_features, eps=1e-5, momentum=0.1, affine=True)`` on (N, C, H, W).

    In training mode each channel is normalized by the batch's mean and
    biased variance, and the buffers ``running_mean`` and ``running_var``
    (the unbiased variance) move towards them by ``momentum``;
    ``num_batches_tracked`` counts the batches. In eval mode
    (:meth:`Module.eval`) the running estimates normalize and nothing
    changes. The buffers are saved in ``state_dict`` and never trained;
    ``weight`` (ones) and ``bias`` (zeros) are parameters when ``affine``.
    The names are PyTorch's, so a PyTorch ``BatchNorm2d``'s state loads as it is.
    ``num_features`` is 1 or more, ``eps`` > 0 (PyTorch refuses 0 in
    training too) and ``momentum`` in [0, 1] (PyTorch does not check it:
    outside it the running statistics overshoot and diverge); the input has
    the parameters' floating-point dtype.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True, *,
                 dtype=None, device="cpu"):
        num_features = whole_number(num_features, "BatchNorm2d's num_features", 1)
        self.num_features, self.eps = num_features, functions.layers.check_eps(eps, "BatchNorm2d")
        self.momentum = functions.layers.check_momentum(momentum, "BatchNorm2d")
        self.affine = affine = flag(affine, "BatchNorm2d's affine")
        dtype = _init.default_dtype() if dtype is None else _init.float_dtype(dtype, "BatchNorm2d(dtype=...)")
        device = backend.get_device(device)
        self.weight = Tensor(backend.to_device(numpy.ones(num_features, dtype), device), requires_grad=True) \
            if affine else None
        self.bias = Tensor(backend.to_device(numpy.zeros(num_features, dtype), device), requires_grad=True) \
            if affine else None
        self.register_buffer("running_mean", backend.to_device(numpy.zeros(num_features, dtype), device))
        self.register_buffer("running_var", backend.to_device(numpy.ones(num_features, dtype), device))
        self.register_buffer("num_batches_tracked", backend.to_device(numpy.zeros((), numpy.int64), device))

    def forward(self, x):
        """(N, C, H, W), normalized per channel."""
        stats = functions.BatchNorm2d(self.running_mean, self.running_var, self.num_batches_tracked,
                                      training=self.training, momentum=self.momentum, eps=self.eps)
        return stats(as_tensor(x), *((self.weight, self.bias) if self.affine else ()))

    def __repr__(self) -> str:
        return f"BatchNorm2d({self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine})"
