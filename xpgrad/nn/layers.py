"""Layers, as ``torch.nn``: :class:`Linear`, :class:`ReLU`, :class:`Flatten`, :class:`Sequential` and
:class:`ModuleList`.

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10)).to("cuda")
    loss = functional.cross_entropy(model(Tensor(x)), t)
"""

from __future__ import annotations

import math
import numbers

import numpy

from .. import backend, functions
from ..arguments import flag, whole_number
from ..tensor import Tensor, as_tensor
from . import init as _init
from .module import Module


class Linear(Module):
    """``y = x @ weight + bias``, applied to the last axis of x: (in_features,), (N, in_features) or
    (N, ..., in_features), as PyTorch's, in the weight's dtype (an input of another dtype is refused, as by
    PyTorch: convert it first).

    ``weight`` is (in_features, out_features), and ``bias`` (out_features,).
    PyTorch stores (out, in) and computes ``x @ W.T``; xpgrad keeps the
    notebook's layout (``x @ W``), whose products are the notebook's own, so
    weights from PyTorch load transposed. ``in_features`` and
    ``out_features`` are whole numbers, 0 included (as PyTorch's: an empty
    weight).

    Weights are drawn on the host with ``init`` (``he``: N(0, 2/in), the
    default; ``glorot``; ``normal``: N(0, 1), as the notebook; None: zeros,
    for a caller that sets them) from ``rng`` (a seed, a
    ``numpy.random.Generator``, or None for :mod:`xpgrad.nn.init`'s
    generator); biases start at zero. ``dtype`` (floating-point) None means
    :func:`xpgrad.nn.init.default_dtype` (float32 unless changed).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, init: str | None = "he",
                 rng=None, dtype=None, device="cpu"):
        self.in_features = whole_number(in_features, "Linear's in_features", 0)
        self.out_features = whole_number(out_features, "Linear's out_features", 0)
        bias = flag(bias, "Linear's bias")
        _init.check_init(init, "Linear")
        dtype = _init.default_dtype() if dtype is None else _init.float_dtype(dtype, "Linear(dtype=...)")
        device = backend.get_device(device)
        if init is None:
            W = numpy.zeros((self.in_features, self.out_features), dtype)
        else:
            W = _init.init_weight(_init.generator(rng), self.in_features, self.out_features, init).astype(dtype)
        self.weight = Tensor(backend.to_device(W, device), requires_grad=True)
        self.bias = Tensor(backend.to_device(numpy.zeros(self.out_features, dtype), device), requires_grad=True) \
            if bias else None

    def forward(self, x):
        """x's shape with ``out_features`` for its last axis (``in_features``)."""
        x = as_tensor(x)
        if self.bias is None:
            return functions.Linear()(x, self.weight)
        return functions.Linear()(x, self.weight, self.bias)

    def __repr__(self) -> str:
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias is not None})"


class ReLU(Module):
    """``max(x, 0)`` elementwise; no parameters."""

    def forward(self, x):
        """``max(x, 0)``, x of any shape."""
        return functions.Relu()(as_tensor(x))

    def __repr__(self) -> str:
        return "ReLU()"


class Flatten(Module):
    """Dimensions ``start_dim`` to ``end_dim`` merged into one, as ``torch.nn.Flatten``: (N, 1, 28, 28) becomes
    (N, 784) with the defaults. A view of the input, not a copy."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        for what, d in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(d, (bool, numpy.bool_)) or not isinstance(d, numbers.Integral):
                raise TypeError(f"Flatten's {what} must be an int, got {type(d).__name__} {d!r:.40}")
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x):
        """The input with dimensions ``start_dim..end_dim`` merged."""
        x = as_tensor(x)
        if self.start_dim == 1 and self.end_dim == -1 and x.ndim >= 2:  # the usual case, (N, ...) to (N, -1)
            return x.reshape(x.shape[0], math.prod(x.shape[1:]))
        if x.ndim == 0:  # PyTorch's rule: a 0-d input becomes (1,)
            return x.reshape(1)
        (start,), (end,) = (functions.normalize_axes(d, x.ndim) for d in (self.start_dim, self.end_dim))
        if start > end:
            raise ValueError(f"Flatten({self.start_dim}, {self.end_dim}) on a {x.ndim}-d input: start_dim comes "
                             "after end_dim")
        return x.reshape(*x.shape[:start], math.prod(x.shape[start:end + 1]), *x.shape[end + 1:])

    def __repr__(self) -> str:
        return f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim})"


class Sequential(Module):
    """Modules applied in turn: ``Sequential(a, b, c)(x) == c(b(a(x)))``; ``model[i]`` is the i-th, of ``layers``.

    A :class:`Linear` with a bias followed by a :class:`ReLU` runs as one
    :class:`xpgrad.functions.LinearReLU` (the same numbers, in fewer passes).
    """

    def __init__(self, *modules: Module):
        for m in modules:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential takes Modules, got {type(m).__name__}")
        self.layers = list(modules)

    def named_children(self):
        """``("0", first), ("1", second), ...``: parameter names are ``0.weight``, as in PyTorch."""
        return ((str(i), m) for i, m in enumerate(self.layers))

    def forward(self, x):
        """The last module's output."""
        layers, i, n = self.layers, 0, len(self.layers)
        while i < n:
            m = layers[i]
            i += 1
            if i < n and type(m) is Linear and type(layers[i]) is ReLU and m.bias is not None \
                    and m.bias.shape == m.weight.shape[1:]:  # LinearReLU takes an (out,) bias, not a broadcast one
                x = functions.LinearReLU()(as_tensor(x), m.weight, m.bias)
                i += 1
            else:
                x = m(x)
        return x

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self) -> str:
        return "Sequential(" + ", ".join(repr(m) for m in self.layers) + ")"


class ModuleList(Module):
    """Modules held in a list, as ``torch.nn.ModuleList``: their parameters and buffers are the list's, named by
    position (``0.weight``, or ``blocks.0.weight`` in a model whose ``blocks`` it is), so ``parameters()``
    gives them to an optimizer and ``state_dict()`` saves them. Layers in a plain Python list are neither: the
    list is not a Module, so they are never trained.

    It indexes (an int; a slice gives a new ModuleList), assigns, deletes, iterates and has a ``len``, as a
    list, and takes Modules only: ``append``, ``extend`` (any iterable of Modules) and ``insert``. It has no
    ``forward``: a model calls its modules in its own. The modules are ``layers``, a Python list, as in
    :class:`Sequential`.
    """

    def __init__(self, modules=None):
        self.layers = []
        if modules is not None:
            self._extend(modules, "ModuleList")

    def named_children(self):
        """``("0", first), ("1", second), ...``: parameter names are ``0.weight``, as in PyTorch."""
        return ((str(i), m) for i, m in enumerate(self.layers))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ModuleList(self.layers[index])
        return self.layers[self._position(index)]

    def __setitem__(self, index, module) -> None:
        if isinstance(index, slice):  # as PyTorch's ModuleList
            raise TypeError("ModuleList[i] = module takes one integer index, not a slice; use extend or insert")
        self.layers[self._position(index)] = _checked(module, "ModuleList[i] = ...")

    def __delitem__(self, index) -> None:
        del self.layers[index if isinstance(index, slice) else self._position(index)]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def append(self, module: Module) -> ModuleList:
        """Add ``module`` at the end; returns the list."""
        self.layers.append(_checked(module, "ModuleList.append"))
        return self

    def extend(self, modules) -> ModuleList:
        """Add each of ``modules`` (an iterable of Modules) at the end; returns the list."""
        return self._extend(modules, "ModuleList.extend")

    def _extend(self, modules, where: str) -> ModuleList:
        if isinstance(modules, Module) or not hasattr(modules, "__iter__"):
            raise TypeError(f"{where} takes an iterable of Modules, got {type(modules).__name__}")
        self.layers.extend([_checked(m, where) for m in modules])
        return self

    def insert(self, index: int, module: Module) -> None:
        """Put ``module`` before position ``index``, as ``list.insert``."""
        self.layers.insert(_integer(index), _checked(module, "ModuleList.insert"))

    def _position(self, index) -> int:
        """``index`` (an int, negative from the end) checked against the length."""
        if not -len(self.layers) <= _integer(index) < len(self.layers):
            raise IndexError(f"index {index} is out of range for a ModuleList of {len(self.layers)} modules")
        return int(index)

    def __repr__(self) -> str:
        return "ModuleList(" + ", ".join(repr(m) for m in self.layers) + ")"


def _integer(index) -> int:
    if isinstance(index, (bool, numpy.bool_)) or not isinstance(index, numbers.Integral):
        raise TypeError(f"ModuleList indices must be integers or slices, got {type(index).__name__}")
    return int(index)


def _checked(module, where: str) -> Module:
    if not isinstance(module, Module):
        raise TypeError(f"{where} takes Modules, got {type(module).__name__}")
    return module
