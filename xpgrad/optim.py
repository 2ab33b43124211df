"""Optimizers that update parameters in place: SGD, momentum SGD and Adam.

Each update is one function of :func:`xpgrad.backend.get_ops`: on the GPU a
fused kernel per parameter (:mod:`xpgrad.kernels`), on the CPU a few in-place
operations (:mod:`xpgrad.generic`) through preallocated scratch, so a step
allocates nothing. Semantics follow PyTorch's
``torch.optim`` (momentum: ``v = mu*v + g; p -= lr*v``; Adam with bias
correction), so results can be compared one to one.
"""

from __future__ import annotations

import numpy

from . import backend
from .backend import get_array_module, get_ops
from .tensor import Tensor

OPTIMIZERS = ("sgd", "momentum", "adam")


class Optimizer:
    """Holds references to the parameters and updates them in place.

    ``params`` is a name -> array dict, with ``step(grads)`` given a dict of
    the same names; or an iterable of Tensors (such as ``model.parameters()``),
    with ``step()`` reading each one's ``.grad`` and ``zero_grad()`` clearing them.
    """

    #: names of the per-parameter state arrays, e.g. ("velocity",)
    state_names: tuple = ()

    def __init__(self, params, lr: float):
        params, self.tensors = _param_arrays(params)
        if not lr > 0:
            raise ValueError(f"the learning rate must be positive, got {lr}")
        self.params = params
        self.lr = float(lr)
        self.step_count = 0
        self.state = {
            name: {k: _zeros_like(p) for k, p in params.items()} for name in self.state_names
        }
        self._scratch = {k: _zeros_like(p) for k, p in params.items()}

    def step(self, grads: dict | None = None) -> None:
        """Apply one update from ``grads`` (same names and shapes as the parameters), or from the Tensors' ``.grad``."""
        if grads is None:
            grads = _tensor_grads(self.tensors, self.params)
        self.step_count += 1
        # Parameters live on one device: pick the implementation once per step.
        ops = get_ops(get_array_module(*self.params.values(), *grads.values()))
        for name, p in self.params.items():
            state = [self.state[s][name] for s in self.state_names]
            self._update(ops, p, grads[name], *state, work=self._scratch[name])

    def zero_grad(self) -> None:
        """Clear the ``.grad`` of every Tensor given to the optimizer (``.grad = None``)."""
        for t in self.tensors or ():
            t.grad = None

    def _update(self, ops, p, g, *state, work):
        """One parameter's update through ``ops`` (xpgrad.kernels or xpgrad.generic)."""
        raise NotImplementedError

    # -- device-resident updates (the step a CUDA graph replays) -------------

    def schedule_row(self, lr: float, step: int) -> tuple:
        """The numbers update number ``step`` (from 1) reads from a schedule: ``(lr, 1.0, 1.0)``;
        Adam puts its bias corrections ``1 - beta**step`` in the last two."""
        return (float(lr), 1.0, 1.0)

    def step_resident(self, grads: dict, schedule, counter) -> None:
        """Apply one update as :meth:`step` does, with lr (and Adam's bias corrections) read on the device
        from row ``counter - 1`` of ``schedule``, a (steps, 3) float64 array of :meth:`schedule_row` rows,
        at ``counter``, a 0-d int64 array. ``step_count`` is the caller's to advance."""
        ops = get_ops(get_array_module(*self.params.values(), *grads.values()))
        for name, p in self.params.items():
            state = [self.state[s][name] for s in self.state_names]
            self._update_resident(ops, p, grads[name], *state, schedule=schedule, counter=counter,
                                  work=self._scratch[name])

    def _update_resident(self, ops, p, g, *state, schedule, counter, work):
        raise NotImplementedError

    # -- checkpoints ---------------------------------------------------------

    def state_dict(self) -> dict:
        """Host arrays: ``step_count`` and each state array as ``<state>/<param>``."""
        out = {"step_count": numpy.asarray(self.step_count)}
        for s, arrays in self.state.items():
            for k, a in arrays.items():
                out[f"{s}/{k}"] = backend.to_numpy(a)
        return out

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        for s, arrays in self.state.items():
            for k, a in arrays.items():
                value = state[f"{s}/{k}"]
                if tuple(value.shape) != tuple(a.shape):
                    raise ValueError(f"optimizer state {s}/{k} has shape {value.shape}, expected {a.shape}")
                xp = get_array_module(a)
                a[...] = xp.asarray(value, dtype=a.dtype)


def _param_arrays(params) -> tuple[dict, list | None]:
    """``(name -> array, tensors)``: a dict passes through (no tensors); Tensors are named "0", "1", ..."""
    if isinstance(params, dict):
        return params, None
    tensors = list(params)
    if not tensors:
        raise ValueError("the optimizer got no parameters")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor) or not t.requires_grad or not t.is_leaf:
            raise TypeError(f"parameter {i} must be a leaf Tensor with requires_grad=True, got {t!r:.80}")
    return {str(i): t.data for i, t in enumerate(tensors)}, tensors


def _tensor_grads(tensors, params: dict) -> dict:
    """The ``.grad`` of each Tensor, by the names :func:`_param_arrays` gave them."""
    if tensors is None:
        raise TypeError("step() needs the gradients: this optimizer was given a dict of arrays, not Tensors")
    grads = {}
    for (name, p), t in zip(params.items(), tensors):
        if t.data is not p:
            raise ValueError(f"parameter {name}'s data was replaced after the optimizer was made "
                             "(e.g. by model.to(device)); make the optimizer after moving the model")
        if t.grad is None:
            raise ValueError(f"parameter {name} (shape {t.shape}) has no gradient; call loss.backward() "
                             "before step(), or leave that parameter out of the optimizer")
        grads[name] = t.grad
    return grads


def _zeros_like(p):
    return get_array_module(p).zeros_like(p)


class SGD(Optimizer):
    """Plain gradient descent, the notebook's: ``p -= lr * g``."""

    def _update(self, ops, p, g, *, work):
        ops.sgd_update(p, g, self.lr, work=work)

    def _update_resident(self, ops, p, g, *, schedule, counter, work):
        ops.sgd_step(p, g, schedule, counter, work=work)


class MomentumSGD(Optimizer):
    """SGD with (heavy-ball) momentum: ``v = momentum * v + g; p -= lr * v``."""

    state_names = ("velocity",)

    def __init__(self, params, lr, momentum=0.9):
        super().__init__(params, lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        self.momentum = float(momentum)

    def _update(self, ops, p, g, v, *, work):
        ops.momentum_update(p, g, v, self.lr, self.momentum, work=work)

    def _update_resident(self, ops, p, g, v, *, schedule, counter, work):
        ops.momentum_step(p, g, v, schedule, counter, self.momentum, work=work)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as ``torch.optim.Adam``."""

    state_names = ("m", "v")

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(params, lr)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _update(self, ops, p, g, m, v, *, work):
        ops.adam_update(p, g, m, v, self.lr, self.beta1, self.beta2, self.eps, self.step_count, work=work)

    def schedule_row(self, lr: float, step: int) -> tuple:
        # As adam_update computes them from the step count, in Python floats.
        return (float(lr), 1.0 - self.beta1**step, 1.0 - self.beta2**step)

    def _update_resident(self, ops, p, g, m, v, *, schedule, counter, work):
        ops.adam_step(p, g, m, v, schedule, counter, self.beta1, self.beta2, self.eps, work=work)


def make_optimizer(name: str, params: dict, lr: float, **kwargs) -> Optimizer:
    """Build an optimizer by name: ``sgd``, ``momentum`` or ``adam``."""
    classes = {"sgd": SGD, "momentum": MomentumSGD, "adam": Adam}
    if name not in classes:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return classes[name](params, lr, **kwargs)
