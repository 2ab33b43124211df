"""Layers that hold parameters, as ``torch.nn``: :class:`Module`, :class:`Linear`, :class:`ReLU`, :class:`Sequential`.

    model = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10)).to("cuda")
    loss = functional.cross_entropy(model(Tensor(x)), t)

A module's parameters are the leaf Tensors (``requires_grad=True``) among its
attributes, and those of the modules among its attributes, in the order they
were assigned.
"""

from __future__ import annotations

import numpy

from . import backend, functions
from .model import init_weight
from .tensor import Tensor, as_tensor


class Module:
    """Base class: ``forward(...)`` does the work; calling the module calls it."""

    def __call__(self, *args):
        return self.forward(*args)

    def forward(self, *args):
        """The module's output for its inputs (Tensors)."""
        raise NotImplementedError

    def children(self):
        """``(name, module)`` for each direct submodule, in assignment order."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def named_parameters(self, prefix: str = ""):
        """``(name, Tensor)`` for every parameter, e.g. ``("0.weight", ...)``; shared ones once."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            path, module = stack.pop(0)
            for name, value in vars(module).items():
                if isinstance(value, Tensor) and value.requires_grad and id(value) not in seen:
                    seen.add(id(value))
                    yield path + name, value
            stack[:0] = [(f"{path}{name}.", child) for name, child in module.children()]

    def parameters(self):
        """Every parameter (a leaf Tensor with ``requires_grad=True``), for an optimizer."""
        for _, p in self.named_parameters():
            yield p

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (``.grad = None``)."""
        for p in self.parameters():
            p.grad = None

    def to(self, device) -> Module:
        """Move every parameter (and its gradient) to ``device`` (``cpu``, ``cuda``, ``cuda:N``), in place.

        The Tensors stay the same objects with new data, so make the optimizer afterwards:
        it holds the arrays it updates.
        """
        device = backend.get_device(device)
        for p in self.parameters():
            p.data = backend.to_device(p.data, device)
            if p.grad is not None:
                p.grad = backend.to_device(p.grad, device)
        return self


class Linear(Module):
    """``y = x @ weight + bias`` for x of shape (N, in_features).

    ``weight`` is (in_features, out_features), and ``bias`` (out_features,).
    PyTorch stores (out, in) and computes ``x @ W.T``; xpgrad keeps the layout
    of :class:`xpgrad.model.MLP` and the notebook (``x @ W``), so a layer runs
    exactly the products of :class:`xpgrad.ops.Linear`, gives the MLP's
    gradients bit for bit from the same weights, and loads its parameters
    unchanged (weights from PyTorch need a transpose).

    Weights are drawn on the host with ``init`` (``he``: N(0, 2/in), as the
    MLP's default; ``glorot``; ``normal``) from ``rng`` (a seed or a
    ``numpy.random.Generator``); biases start at zero.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, init: str = "he",
                 rng=None, dtype="float32", device="cpu"):
        generator = numpy.random.default_rng(rng)
        dtype = numpy.dtype(dtype)
        device = backend.get_device(device)
        W = init_weight(generator, in_features, out_features, init).astype(dtype)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Tensor(backend.to_device(W, device), requires_grad=True)
        self.bias = Tensor(backend.to_device(numpy.zeros(out_features, dtype), device), requires_grad=True) \
            if bias else None

    def forward(self, x):
        """(N, out_features) from (N, in_features)."""
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


class Sequential(Module):
    """Modules applied in turn: ``Sequential(a, b, c)(x) == c(b(a(x)))``; ``model[i]`` is the i-th."""

    def __init__(self, *modules: Module):
        for m in modules:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential takes Modules, got {type(m).__name__}")
        self.layers = list(modules)

    def children(self):
        """``("0", first), ("1", second), ...``: parameter names are ``0.weight``, as in PyTorch."""
        return ((str(i), m) for i, m in enumerate(self.layers))

    def forward(self, x):
        """The last module's output."""
        for m in self.layers:
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
