"""One parameter store: a model's parameters in one contiguous buffer, and their gradients in another.

After ``flatten_parameters(model)``, every parameter's ``.data`` is a view of
``FlatParameters.data`` (one 1-D array), and its gradient has a view of its
own in ``FlatParameters.grad``. Layers keep ordinary arrays in their hands,
but an optimizer given exactly these parameters updates all of them in one
pass over the two buffers: one fused kernel on a GPU instead of one per
parameter, as the flat buffers of apex and DeepSpeed do.

The backward pass writes a parameter's gradient straight into its view (or
adds to it, as gradients accumulate), so ``.grad`` is that view once a
backward pass reached the parameter, and None after ``zero_grad()``, as in
PyTorch. A parameter replaced rather than updated in place (``p.data = new``,
or a new Tensor assigned to the layer) is refused with a clear error.
"""

from __future__ import annotations

import math
import weakref

from .. import backend
from ..backend import get_array_module

_live = weakref.WeakSet()  # every store still in use, for optimizers to find theirs


class FlatParameters:
    """The parameters ``named`` (``(name, Tensor)`` pairs) placed in one data buffer and one gradient buffer.

    ``data`` and ``grad`` are 1-D arrays of the parameters' common dtype and
    device, in ``names`` order; ``tensors`` are the parameters themselves.
    """

    def __init__(self, named):
        self.names = [name for name, _ in named]
        self.tensors = [t for _, t in named]
        first = self.tensors[0].data
        for name, t in named:
            if t.dtype != first.dtype or backend.device_of(t.data) != backend.device_of(first):
                raise ValueError(f"flatten_parameters needs every parameter on one device in one dtype: {name} is "
                                 f"{t.dtype} on {t.device}, {self.names[0]} is {first.dtype} on {backend.device_of(first)}")
        xp = get_array_module(first)
        total = sum(t.size for t in self.tensors)
        with backend.device_of(first):
            data, grad = xp.empty(total, dtype=first.dtype), xp.zeros(total, dtype=first.dtype)
        for view, t in zip(self._views(data), self.tensors):
            view[...] = t.data
        self._place(data, grad)
        _live.add(self)

    def _views(self, buffer) -> list:
        views, offset = [], 0
        for t in self.tensors:
            size = math.prod(t.shape)
            views.append(buffer[offset:offset + size].reshape(t.shape))
            offset += size
        return views

    def _place(self, data, grad) -> None:
        """Make every parameter's data a view of ``data`` and its gradient slot a view of ``grad``."""
        self.data, self.grad = data, grad
        self.views, self.grad_views = self._views(data), self._views(grad)
        for t, view, slot in zip(self.tensors, self.views, self.grad_views):
            old_grad = t.grad
            t.data, t._grad_slot, t.grad = view, slot, None
            if old_grad is not None:
                slot[...] = old_grad
                t.grad = slot

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self):
        return zip(self.names, self.tensors)

    def check(self) -> None:
        """Raise ValueError naming any parameter whose data is no longer its view of the buffer."""
        for name, t, view in zip(self.names, self.tensors, self.views):
            if t.data is not view:
                raise ValueError(
                    f"parameter {name}'s data was replaced after nn.flatten_parameters, so the optimizer's flat "
                    "update no longer reaches it; update parameters in place (with xpgrad.no_grad(): p -= lr * p.grad), "
                    "or call nn.flatten_parameters(model) again and make a new optimizer")

    def move(self, device=None, dtype=None) -> None:
        """Move both buffers to ``device`` and/or cast them to ``dtype`` (None: unchanged), keeping the views."""
        self.check()
        data, grad = self.data, self.grad
        if device is not None:
            data, grad = backend.to_device(data, device), backend.to_device(grad, device)
        if dtype is not None and data.dtype != dtype:
            data, grad = data.astype(dtype), grad.astype(dtype)
        slots = [t.grad is t._grad_slot for t in self.tensors]
        self._place(data, grad)
        for t, had_grad in zip(self.tensors, slots):
            t.grad = t._grad_slot if had_grad else None


def live_stores() -> list:
    """Every :class:`FlatParameters` still in use."""
    return list(_live)


def flatten_parameters(module) -> FlatParameters:
    """Place ``module``'s parameters in one contiguous buffer and their gradients in another (see the module
    docstring); returns the :class:`FlatParameters`. Calling it again returns the same store while the
    parameters are unchanged.

    Every parameter must be on one device in one dtype. Make the optimizer
    afterwards, from the same parameters, to get the single fused update.
    """
    named = list(module.named_parameters())
    if not named:
        raise ValueError(f"{type(module).__name__} has no parameters to flatten")
    store = module.__dict__.get("_flat")
    if store is not None and store.tensors == [t for _, t in named] and all(
            t.data is v for t, v in zip(store.tensors, store.views)):
        return store
    for name, t in named:
        t._grad_slot = None  # any earlier store of these parameters is left behind
    store = FlatParameters(named)
    object.__setattr__(module, "_flat", store)
    return store


def move_parameters(module, device, dtype) -> None:
    """``Module.to``'s work on the parameters: the flat store as a whole, or each parameter."""
    store = module.__dict__.get("_flat")
    if store is not None and store.tensors == list(module.parameters()):
        store.move(device, dtype)
        return
    for name, p in module.named_parameters():
        if p._grad_slot is not None:
            raise ValueError(f"parameter {name} lives in the flat buffer of another module (nn.flatten_parameters); "
                             "move that module instead")
        if device is not None:
            p.data = backend.to_device(p.data, device)
            p.grad = None if p.grad is None else backend.to_device(p.grad, device)
        if dtype is not None and p.dtype != dtype:
            p.data = p.data.astype(dtype)
            p.grad = None if p.grad is None else p.grad.astype(dtype)
