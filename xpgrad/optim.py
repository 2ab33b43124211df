"""Optimizers that update parameters in place: SGD, momentum SGD and Adam.

On the GPU each update is one fused kernel per parameter (from
:mod:`xpgrad.kernels`); on the CPU it is a few in-place NumPy operations with
preallocated scratch, so a step allocates nothing. Semantics follow PyTorch's
``torch.optim`` (momentum: ``v = mu*v + g; p -= lr*v``; Adam with bias
correction), so results can be compared one to one.
"""

from __future__ import annotations

import numpy

from . import backend, kernels
from .backend import get_array_module

OPTIMIZERS = ("sgd", "momentum", "adam")


class Optimizer:
    """Holds references to the parameters (a name -> array dict) and updates them in place."""

    #: names of the per-parameter state arrays, e.g. ("velocity",)
    state_names: tuple = ()

    def __init__(self, params: dict, lr: float):
        if not lr > 0:
            raise ValueError(f"the learning rate must be positive, got {lr}")
        self.params = params
        self.lr = float(lr)
        self.step_count = 0
        self.state = {
            name: {k: _zeros_like(p) for k, p in params.items()} for name in self.state_names
        }
        self._scratch = {k: _zeros_like(p) for k, p in params.items()}

    def step(self, grads: dict) -> None:
        """Apply one update from ``grads`` (same names and shapes as the parameters)."""
        self.step_count += 1
        # Parameters live on one device: decide the path once per step.
        xp = get_array_module(*self.params.values(), *grads.values())
        if xp is not numpy and backend.fused_enabled():
            for name, p in self.params.items():
                self._fused(name, p, grads[name])
        else:
            for name, p in self.params.items():
                self._generic(xp, name, p, grads[name])

    def _state(self, name):
        return [self.state[s][name] for s in self.state_names]

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


def _zeros_like(p):
    return get_array_module(p).zeros_like(p)


class SGD(Optimizer):
    """Plain gradient descent, the notebook's: ``p -= lr * g``."""

    def _fused(self, name, p, g):
        kernels.sgd_update(p, g, self.lr)

    def _generic(self, xp, name, p, g):
        tmp = self._scratch[name]
        xp.multiply(g, self.lr, out=tmp)
        p -= tmp


class MomentumSGD(Optimizer):
    """SGD with (heavy-ball) momentum: ``v = momentum * v + g; p -= lr * v``."""

    state_names = ("velocity",)

    def __init__(self, params, lr, momentum=0.9):
        super().__init__(params, lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        self.momentum = float(momentum)

    def _fused(self, name, p, g):
        kernels.momentum_update(p, g, self.state["velocity"][name], self.lr, self.momentum)

    def _generic(self, xp, name, p, g):
        (v,) = self._state(name)
        v *= self.momentum
        v += g
        tmp = self._scratch[name]
        xp.multiply(v, self.lr, out=tmp)
        p -= tmp


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as ``torch.optim.Adam``."""

    state_names = ("m", "v")

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(params, lr)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _fused(self, name, p, g):
        m, v = self._state(name)
        kernels.adam_update(p, g, m, v, self.lr, self.beta1, self.beta2, self.eps, self.step_count)

    def _generic(self, xp, name, p, g):
        m, v = self._state(name)
        tmp = self._scratch[name]
        b1, b2, t = self.beta1, self.beta2, self.step_count
        m *= b1
        xp.multiply(g, 1 - b1, out=tmp)
        m += tmp
        v *= b2
        xp.multiply(g, g, out=tmp)
        tmp *= 1 - b2
        v += tmp
        # p -= lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps), in two scratch passes
        xp.multiply(v, 1.0 / (1 - b2**t), out=tmp)
        xp.sqrt(tmp, out=tmp)
        tmp += self.eps
        xp.divide(m, tmp, out=tmp)
        tmp *= self.lr / (1 - b1**t)
        p -= tmp


def make_optimizer(name: str, params: dict, lr: float, **kwargs) -> Optimizer:
    """Build an optimizer by name: ``sgd``, ``momentum`` or ``adam``."""
    classes = {"sgd": SGD, "momentum": MomentumSGD, "adam": Adam}
    if name not in classes:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return classes[name](params, lr, **kwargs)
