"""Optimizers over Tensors: SGD, momentum SGD and Adam, with their learning-rate schedules.

Semantics follow ``torch.optim`` (momentum: ``v = mu*v + g; p -= lr*v``; Adam
with bias correction), so results compare one to one. Two things are
xpgrad's own:

* **One update for the whole model.** Given the parameters of a model made
  flat by :func:`xpgrad.nn.flatten_parameters`, ``step()`` updates all of them
  in one pass over the flat buffers: one fused kernel on a GPU. Otherwise it
  updates each parameter in turn.
* **The numbers that change per update live in device memory**, as with
  PyTorch's ``capturable=True``: the step count, the learning rate and the
  schedule's factors are arrays on the parameters' device, read there by the
  update (which also advances the count). So ``step()`` never waits for the
  GPU, a CUDA graph that recorded it replays with the current learning rate and
  the right bias corrections, and ``optimizer.lr = x`` needs no new recording.
  On the CPU the same numbers are read on the host.

The update functions come from :func:`xpgrad.backend.get_ops`: fused kernels
on the GPU (:mod:`xpgrad.kernels`), NumPy's in-place operations through
preallocated scratch on the CPU (:mod:`xpgrad.generic`), so a step allocates
nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy

from . import backend
from .backend import get_array_module, get_ops
from .backprop import bump_versions
from .nn import flat as _flat
from .tensor import Tensor

#: The optimizers by name, as ``--optimizer`` and :func:`make_optimizer` take them.
OPTIMIZERS = ("sgd", "momentum", "adam")


class Schedule:
    """A learning-rate schedule: update number ``step + 1`` uses ``lr * factor(step)``.

    ``steps``: from that many updates on, the factor no longer changes, so
    the ``steps + 1`` factors from 0 describe the whole schedule (they are kept
    in device memory). Subclass it and define both for a schedule of your own.
    """

    steps = 0

    def factor(self, step: int) -> float:
        """The learning rate's factor for update number ``step + 1`` (``step`` counts from 0)."""
        return 1.0


class ConstantSchedule(Schedule):
    """The learning rate as it is, every update."""


class CosineSchedule(Schedule):
    """Cosine decay from the learning rate to 0 over ``total_steps`` updates, then 0:
    ``0.5 * (1 + cos(pi * min(step, total_steps) / total_steps))``; ``steps`` is ``total_steps``."""

    def __init__(self, total_steps: int):
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a whole number of at least 1, got {total_steps!r}")
        self.steps = total_steps

    def factor(self, step: int) -> float:
        """``0.5 * (1 + cos(pi * min(step, steps) / steps))``."""
        return 0.5 * (1.0 + math.cos(math.pi * min(step, self.steps) / self.steps))


class Optimizer:
    """Updates the given parameters in place from their ``.grad``.

    ``params``: Tensors (``model.parameters()``), named pairs
    (``model.named_parameters()``, which name the state in ``state_dict``; plain
    Tensors are named ``"0"``, ``"1"``, ...), or a
    :class:`~xpgrad.nn.FlatParameters`. All on one device. Unlike PyTorch, a
    parameter without a gradient at ``step()`` is an error rather than skipped.

    ``schedule`` is the :class:`Schedule` (constant when none is given);
    ``flat`` the parameters' :class:`~xpgrad.nn.FlatParameters` when they are
    flat (one update for them all), else None; ``state`` the state arrays by
    state name, then parameter name (``state["m"]["0.weight"]`` for Adam).
    """

    #: names of the per-parameter state arrays, e.g. ("velocity",)
    state_names: tuple = ()

    def __init__(self, params, lr: float, schedule: Schedule | None = None):
        self.names, self.tensors = _named_parameters(params)
        _check_number("learning rate", lr, "lr must be a number >= 0", low=0.0)
        self.schedule = ConstantSchedule() if schedule is None else schedule
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"schedule must be an xpgrad.optim.Schedule, got {type(schedule).__name__}")
        steps = self.schedule.steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"{type(self.schedule).__name__}.steps must be a whole number >= 0, got {steps!r:.40}")
        first = self.tensors[0].data
        self.device, self.xp = backend.device_of(first), get_array_module(first)
        for name, t in zip(self.names, self.tensors):
            if backend.device_of(t.data) != self.device:
                raise ValueError(f"every parameter must be on one device: {name} is on {t.device}, "
                                 f"{self.names[0]} on {self.device}")
        self.flat = _flat_store(self.tensors)
        self._flat_data = None if self.flat is None else self.flat.data
        self._layout = [(t.shape, t.dtype) for t in self.tensors]  # what step() expects of each parameter
        table = [float(lr)] + _factors(self.schedule)
        with self.device:
            self._table = self.xp.asarray(numpy.array(table, dtype=numpy.float64))
            self._step = self.xp.zeros((), dtype=numpy.int64)
        self._lr = float(lr)
        self._flat_state = {}
        self.state = {s: self._state_arrays(s) for s in self.state_names}
        # Scratch for the CPU's in-place updates (a GPU kernel needs none): one flat array, or one per parameter.
        on_cpu = self.xp is numpy
        self._flat_scratch = numpy.empty_like(self.flat.data) if on_cpu and self.flat is not None else None
        self._scratch = {n: numpy.empty_like(t.data) if on_cpu and self.flat is None else None
                         for n, t in zip(self.names, self.tensors)}

    def _state_arrays(self, state_name) -> dict:
        """Zeros like each parameter, by name: views of one flat array when the parameters are flat."""
        if self.flat is None:
            return {n: self.xp.zeros_like(t.data) for n, t in zip(self.names, self.tensors)}
        buffer = self.xp.zeros_like(self.flat.data)
        self._flat_state[state_name] = buffer
        return dict(zip(self.names, self.flat._views(buffer)))

    # -- the numbers in device memory ---------------------------------------

    @property
    def lr(self) -> float:
        """The base learning rate (update ``t`` uses ``lr * schedule.factor(t - 1)``); setting it takes effect
        from the next update, recorded CUDA graphs included."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        _check_number("learning rate", value, "lr must be a number >= 0", low=0.0)
        self._lr = float(value)
        backend.copy_from_host(self._table[:1], numpy.array([self._lr]))

    @property
    def step_count(self) -> int:
        """Updates done so far (read from the device: a host sync on a GPU)."""
        return int(self._step)

    def lr_at(self, step: int) -> float:
        """The learning rate of update number ``step + 1``."""
        return self._lr * float(self.schedule.factor(step))

    # -- updating -------------------------------------------------------------

    def step(self) -> None:
        """Apply one update from the parameters' ``.grad``, count it, and bump each parameter's version (so a
        graph recorded before it refuses a second backward pass, as PyTorch's)."""
        ops = get_ops(self.xp)
        flat = self.flat
        if flat is not None:
            if flat.data is not self._flat_data:
                raise ValueError(f"the parameters moved (to {backend.device_of(flat.data)}, "
                                 f"{flat.data.dtype}) after the optimizer was made on {self.device}; "
                                 "make the optimizer after model.to(...)")
            for t, view in zip(self.tensors, flat.views):
                if t.data is not view or t.grad is not t._grad_slot:  # else nothing to check
                    flat.check()
                    _check_grad(self.names[self.tensors.index(t)], t, t._grad_slot)
            state = [self._flat_state[s] for s in self.state_names]
            self._update(ops, flat.data, flat.grad, *state, advance=True, work=self._flat_scratch)
        else:
            for name, t, layout in zip(self.names, self.tensors, self._layout):
                if (t.shape, t.dtype) != layout:
                    raise ValueError(f"parameter {name} is now {t.dtype} {t.shape}, but was {layout[1]} {layout[0]} "
                                     "when the optimizer was made; make a new optimizer for it")
                if backend.device_of(t.data) != self.device:
                    raise ValueError(f"parameter {name} moved to {t.device} after the optimizer was made on "
                                     f"{self.device}; make the optimizer after model.to(...)")
                _check_grad(name, t, None)
            last = len(self.tensors) - 1
            for i, (name, t) in enumerate(zip(self.names, self.tensors)):
                state = [self.state[s][name] for s in self.state_names]
                self._update(ops, t.data, t.grad, *state, advance=i == last, work=self._scratch[name])
        bump_versions(self.tensors)

    def zero_grad(self) -> None:
        """Clear every parameter's ``.grad`` (``.grad = None``)."""
        for t in self.tensors:
            t.grad = None

    def _update(self, ops, p, g, *state, advance, work):
        """One update of ``p`` through ``ops`` (xpgrad.kernels or xpgrad.generic)."""
        raise NotImplementedError

    # -- checkpoints ---------------------------------------------------------

    def state_dict(self) -> dict:
        """Host arrays: ``step_count``, ``lr``, and each state array as ``<state>/<parameter name>``."""
        out = {"step_count": numpy.asarray(self.step_count), "lr": numpy.asarray(self._lr)}
        for s, arrays in self.state.items():
            for name, a in arrays.items():
                out[f"{s}/{name}"] = backend.to_numpy(a)
        return out

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s arrays (names and shapes must match; ``lr`` is optional)."""
        if not isinstance(state, Mapping):
            raise TypeError(f"load_state_dict takes a mapping of names to arrays (as state_dict() returns), "
                            f"got {type(state).__name__}")
        expected = {f"{s}/{name}": a for s, arrays in self.state.items() for name, a in arrays.items()}
        missing = [k for k in ("step_count", *expected) if k not in state]
        unexpected = [k for k in state if k not in ("step_count", "lr", *expected)]
        if missing or unexpected:
            raise ValueError(f"the optimizer state does not match: missing {missing}, unexpected {unexpected}")
        for key, a in expected.items():
            got = state[key]
            if not (isinstance(got, numpy.ndarray) or backend.is_cupy_array(got)) or got.dtype.kind not in "biuf":
                raise TypeError(f"optimizer state {key} must be an array of numbers, got {type(got).__name__}")
            if tuple(got.shape) != tuple(a.shape):
                raise ValueError(f"optimizer state {key} has shape {tuple(got.shape)}, expected {a.shape}")
        count = numpy.asarray(backend.to_numpy(state["step_count"]))
        if count.shape != () or count.dtype.kind not in "iu":
            raise TypeError(f"the optimizer's step_count must be one whole number, got {count.dtype} {count.shape}")
        if int(count) < 0:
            raise ValueError(f"the optimizer's step count is negative: {int(count)}")
        lr = state.get("lr")
        if lr is not None:
            lr = backend.to_numpy(lr).item() if getattr(lr, "shape", None) == () else lr  # a saved 0-d array
            _check_number("learning rate", lr, "lr must be a number >= 0", low=0.0)
        for key, a in expected.items():
            backend.copy_into(a, state[key])
        backend.copy_from_host(self._step, numpy.asarray(int(count)))
        if lr is not None:
            self.lr = lr


def _named_parameters(params) -> tuple[list, list]:
    """``(names, tensors)`` from Tensors, ``(name, Tensor)`` pairs or a FlatParameters."""
    if isinstance(params, dict) or backend.is_cupy_array(params) or isinstance(params, (numpy.ndarray, Tensor)):
        raise TypeError("the optimizer takes an iterable of parameters (model.parameters() or "
                        f"model.named_parameters()), got {type(params).__name__}")
    items = list(params)
    if not items:
        raise ValueError("the optimizer got no parameters")
    names, tensors = [], []
    for i, item in enumerate(items):
        name, t = item if isinstance(item, tuple) and len(item) == 2 else (str(i), item)
        if not isinstance(t, Tensor) or not t.requires_grad or not t.is_leaf or t.dtype.kind != "f":
            raise TypeError(f"parameter {name} must be a leaf Tensor with requires_grad=True and floating-point "
                            f"data, got {t!r:.80}")
        names.append(str(name))
        tensors.append(t)
    if len(set(map(id, tensors))) != len(tensors):
        raise ValueError("a parameter was given to the optimizer twice")
    return names, tensors


def _flat_store(tensors) -> _flat.FlatParameters | None:
    """The flat store holding exactly ``tensors``, in order, if there is one."""
    if any(t._grad_slot is None for t in tensors):
        return None
    for store in _flat.live_stores():
        if len(store.tensors) == len(tensors) and all(a is b for a, b in zip(store.tensors, tensors)):
            return store
    return None


def _factors(schedule: Schedule) -> list:
    """The schedule's ``steps + 1`` factors, each a finite number, or a ValueError naming the first that is not."""
    factors = []
    for step in range(schedule.steps + 1):
        f = schedule.factor(step)
        try:
            factors.append(float(f))
        except (TypeError, ValueError):
            factors.append(math.nan)
        if not math.isfinite(factors[-1]):
            raise ValueError(f"{type(schedule).__name__}.factor({step}) must be a finite number, got {f!r:.40}")
    return factors


def _check_grad(name: str, t: Tensor, slot) -> None:
    """``t.grad`` is an array of the parameter's shape, dtype and device; one set by hand is copied into the
    flat gradient buffer's ``slot`` (which the flat update reads)."""
    g = t.grad
    if g is None:
        raise ValueError(f"parameter {name} (shape {t.shape}) has no gradient; call loss.backward() "
                         "before step(), or leave that parameter out of the optimizer")
    if not (isinstance(g, numpy.ndarray) or backend.is_cupy_array(g)):
        raise TypeError(f"parameter {name}'s .grad must be an array like its data, got {type(g).__name__}")
    if g.shape != t.shape:
        raise ValueError(f"parameter {name}'s gradient has shape {g.shape}, the parameter {t.shape}")
    if g.dtype != t.dtype:
        raise TypeError(f"parameter {name}'s gradient is {g.dtype}, the parameter {t.dtype}; they must match")
    get_array_module(t.data, g)  # on the parameter's device, or DeviceError
    if slot is not None and g is not slot:  # set by hand: the flat update reads the slot
        backend.copy_into(slot, g)
        t.grad = slot


def _check_number(what: str, value, rule: str, low: float, high: float | None = None) -> None:
    """PyTorch's rule and words (``Invalid learning rate: -1``), and ours after them: TypeError for what is
    not a number, ValueError for one out of range."""
    if isinstance(value, bool) or not isinstance(value, (int, float, numpy.floating, numpy.integer)):
        raise TypeError(f"Invalid {what}: {value!r:.40} ({rule}, got {type(value).__name__})")
    if not math.isfinite(value) or value < low or (high is not None and value >= high):
        raise ValueError(f"Invalid {what}: {value!r} ({rule})")


class SGD(Optimizer):
    """Plain gradient descent, the notebook's: ``p -= lr * g``."""

    def _update(self, ops, p, g, *, advance, work):
        ops.sgd_update(p, g, self._table, self._step, advance, work=work)


class MomentumSGD(Optimizer):
    """SGD with (heavy-ball) momentum ``momentum``: ``v = momentum * v + g; p -= lr * v``; its state
    (``state_names``) is ``velocity``, ``v``. ``momentum`` is in [0, 1) (PyTorch takes any value >= 0;
    from 1 on the velocity never decays)."""

    state_names = ("velocity",)

    def __init__(self, params, lr, momentum=0.9, schedule=None):
        _check_number("momentum value", momentum, "momentum must be in [0, 1)", low=0.0, high=1.0)
        self.momentum = float(momentum)
        super().__init__(params, lr, schedule)

    def _update(self, ops, p, g, v, *, advance, work):
        ops.momentum_update(p, g, v, self._table, self._step, self.momentum, advance, work=work)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as ``torch.optim.Adam``; its state (``state_names``) is ``m`` and
    ``v``, the moving averages of the gradient and of its square."""

    state_names = ("m", "v")

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, schedule=None):
        _check_number("epsilon value", eps, "eps must be a number >= 0", low=0.0)
        for i, beta in enumerate((beta1, beta2)):
            _check_number(f"beta parameter at index {i}", beta, f"beta{i + 1} must be in [0, 1)", 0.0, high=1.0)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        super().__init__(params, lr, schedule)

    def _update(self, ops, p, g, m, v, *, advance, work):
        ops.adam_update(p, g, m, v, self._table, self._step, self.beta1, self.beta2, self.eps, advance, work=work)


def make_optimizer(name: str, params, lr: float, schedule: Schedule | None = None, **kwargs) -> Optimizer:
    """Build an optimizer by name: ``sgd``, ``momentum`` or ``adam``."""
    classes = {"sgd": SGD, "momentum": MomentumSGD, "adam": Adam}
    if name not in classes:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return classes[name](params, lr, schedule=schedule, **kwargs)
