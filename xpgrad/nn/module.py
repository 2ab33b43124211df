"""The base of every layer and model: :class:`Module`, as ``torch.nn.Module``.

A module's **parameters** are the leaf Tensors with ``requires_grad=True``
among its attributes; its **buffers** are arrays registered with
:meth:`Module.register_buffer` (state that is saved but not trained, such as
running statistics); its **submodules** are the Modules among its
attributes. Each is named by the attribute path, as in PyTorch: ``0.weight``
in a Sequential, ``fc1.bias`` in a model whose ``fc1`` is a Linear.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping

import numpy

from .. import backend
from ..backprop import bump_versions
from ..tensor import Tensor
from .flat import move_parameters
from .init import float_dtype

#: What :meth:`Module.load_state_dict` returns, as PyTorch's.
IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class: ``forward(...)`` does the work, and calling the module calls it.

    Subclasses assign their parameters (``Tensor(..., requires_grad=True)``)
    and submodules as attributes; ``super().__init__()`` is not required.
    ``training`` (True unless :meth:`eval` was called) tells layers such as
    dropout which behaviour to use.
    """

    training = True

    def __call__(self, *args):
        return self.forward(*args)

    def forward(self, *args):
        """The module's output for its inputs (Tensors)."""
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __setattr__(self, name, value):
        old = self.__dict__.get(name)
        if old is not value and isinstance(old, Tensor) and old._grad_slot is not None:
            raise ValueError(
                f"{type(self).__name__}.{name} lives in the flat parameter buffer made by nn.flatten_parameters, "
                f"so replacing it would leave the optimizer updating the old one; update it in place "
                f"(with no_grad(): module.{name}.data[...] = new_values) instead")
        object.__setattr__(self, name, value)

    # -- what it holds ------------------------------------------------------

    def named_children(self):
        """``(name, module)`` for each direct submodule, in assignment order."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self):
        """Each direct submodule, in assignment order."""
        for _, module in self.named_children():
            yield module

    def named_modules(self, prefix: str = ""):
        """``(name, module)`` for this module (name ``prefix``) and every submodule below it, depth first."""
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        """This module and every submodule below it, depth first."""
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, prefix: str = ""):
        """``(name, Tensor)`` for every parameter, e.g. ``("0.weight", ...)``; a shared one once, by its first name."""
        seen = set()
        for path, module in self.named_modules(prefix):
            for name, value in vars(module).items():
                if isinstance(value, Tensor) and value.requires_grad and id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{path}.{name}" if path else name), value

    def parameters(self):
        """Every parameter (a leaf Tensor with ``requires_grad=True``), for an optimizer."""
        for _, p in self.named_parameters():
            yield p

    def register_buffer(self, name: str, array) -> None:
        """Keep ``array`` as the buffer ``name``: saved in :meth:`state_dict`, moved by :meth:`to`, never trained."""
        if not (isinstance(array, numpy.ndarray) or backend.is_cupy_array(array)):
            raise TypeError(f"register_buffer({name!r}, ...) takes a NumPy or CuPy array, got {type(array).__name__}")
        names = self.__dict__.setdefault("_buffer_names", [])
        if name not in names:
            names.append(name)
        setattr(self, name, array)

    def named_buffers(self, prefix: str = ""):
        """``(name, array)`` for every buffer, e.g. ``("1.running_mean", ...)``."""
        for path, module in self.named_modules(prefix):
            for name in module.__dict__.get("_buffer_names", ()):
                yield (f"{path}.{name}" if path else name), getattr(module, name)

    def buffers(self):
        """Every buffer array."""
        for _, b in self.named_buffers():
            yield b

    # -- saving and loading -------------------------------------------------

    def state_dict(self) -> dict:
        """Every parameter's array and every buffer, by name: the arrays themselves (on their device), not copies."""
        state = {name: p.data for name, p in self.named_parameters()}
        state.update(self.named_buffers())
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> IncompatibleKeys:
        """Copy the arrays of ``state`` (by :meth:`state_dict`'s names; host or device arrays, or Tensors)
        into this module's parameters and buffers, in place, cast to their dtypes.

        Every name, shape and dtype is checked before anything is copied. With
        ``strict``, a name missing from ``state`` or one this module does not
        have is a ValueError naming them; otherwise they are returned. A graph
        recorded before the copy can no longer run its backward pass
        (its parameters' versions move on, as with an optimizer step).
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"load_state_dict takes a mapping of names to arrays (as state_dict() returns), "
                            f"got {type(state).__name__}")
        if not isinstance(strict, (bool, numpy.bool_)):
            raise TypeError(f"load_state_dict(strict=...) takes True or False, got {strict!r:.40}")
        own = self._targets()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise ValueError(f"the state does not match the model's: missing {missing}, unexpected {unexpected}")
        arrays = {name: _state_array(name, state[name]) for name in own if name in state}
        for name, array in arrays.items():
            if tuple(array.shape) != tuple(own[name].shape):
                raise ValueError(f"{name} has shape {tuple(array.shape)} in the state, "
                                 f"but {tuple(own[name].shape)} in the model")
        for name, array in arrays.items():
            backend.copy_into(own[name], array)
        bump_versions(p for name, p in self.named_parameters() if name in arrays)
        return IncompatibleKeys(missing, unexpected)

    def _targets(self) -> dict:
        return {**{name: p.data for name, p in self.named_parameters()}, **dict(self.named_buffers())}

    # -- modes, gradients, devices ------------------------------------------

    def train(self, mode: bool = True) -> Module:
        """Set ``training`` on this module and every submodule; returns the module."""
        for module in self.modules():
            module.training = bool(mode)
        return self

    def eval(self) -> Module:
        """``train(False)``: layers behave as for evaluation (dropout off, running statistics used)."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (``.grad = None``)."""
        for p in self.parameters():
            p.grad = None

    def to(self, device=None, dtype=None) -> Module:
        """Move the parameters and buffers to ``device`` (``cpu``, ``cuda``, ``cuda:N``) and/or cast the
        floating-point ones to ``dtype`` (a floating-point dtype, as PyTorch's rule), in place; returns the module.

        The Tensors stay the same objects with new data, so make the optimizer
        afterwards: it holds the arrays it updates. Parameters made flat by
        :func:`xpgrad.nn.flatten_parameters` stay flat.
        """
        device = None if device is None else backend.get_device(device)
        dtype = None if dtype is None else float_dtype(dtype, "Module.to(dtype=...)")
        move_parameters(self, device, dtype)
        for path, module in self.named_modules():
            for name in module.__dict__.get("_buffer_names", ()):
                object.__setattr__(module, name, _moved(getattr(module, name), device, dtype))
        return self


def _state_array(name: str, value):
    """A state's entry as an array of numbers, or a TypeError naming it."""
    value = value.data if isinstance(value, Tensor) else value
    if not (isinstance(value, numpy.ndarray) or backend.is_cupy_array(value)) or value.dtype.kind not in "biuf":
        raise TypeError(f"load_state_dict: {name} must be an array of numbers (NumPy or CuPy), got "
                        f"{type(value).__name__} {getattr(value, 'dtype', '')}".rstrip())
    return value


def _moved(a, device, dtype):
    """``a`` on ``device`` and, if it is floating-point, in ``dtype`` (None: unchanged)."""
    if device is not None:
        a = backend.to_device(a, device)
    if dtype is not None and a.dtype.kind == "f" and a.dtype != dtype:
        a = a.astype(dtype)
    return a
