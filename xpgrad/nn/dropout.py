"""Dropout, as ``torch.nn``: :class:`Dropout`, with its random state in device memory and in ``state_dict``."""

from __future__ import annotations

from .. import backend, functions, modeops
from ..tensor import as_tensor
from . import init as _init
from .module import Module


class Dropout(Module):
    """PyTorch's ``Dropout(p=0.5)``: in training mode each element is zeroed with probability ``p`` and the
    others scaled by ``1 / (1 - p)``; in eval mode (:meth:`Module.eval`) the input passes unchanged.

    The masks come from a generator of the layer's own (see
    :mod:`xpgrad.modeops`) whose state, the buffer ``generator_state`` ((2,)
    uint64: a key drawn from ``rng`` or :mod:`xpgrad.nn.init`'s generator
    when the layer is made, and a count of masks drawn), lives on the
    layer's device and is saved in ``state_dict``. So a run's masks follow
    from its seed, a resumed run draws the masks an uninterrupted one would,
    the CPU and a GPU draw the same masks, and a step recorded as a CUDA
    graph draws a new mask at each replay. PyTorch's Dropout has no such
    buffer: load a PyTorch state with ``strict=False``.
    """

    def __init__(self, p: float = 0.5, *, rng=None, device="cpu"):
        modeops.check_probability(p)
        self.p = float(p)
        seed = int(_init.generator(rng).integers(0, 2**63))
        self.register_buffer("generator_state", backend.to_device(modeops.new_state(seed), device))

    def forward(self, x):
        """``x`` with dropout in training mode; ``x`` itself in eval mode or with ``p == 0``."""
        x = as_tensor(x)
        if not self.training or self.p == 0:
            return x
        return functions.Dropout(self.p, self.generator_state)(x)

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"
