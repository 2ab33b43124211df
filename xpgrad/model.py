"""The notebook's MLP, generalized: Linear -> ReLU -> ... -> Linear, on any device.

``MLP(sizes=(784, 100, 10))`` is the notebook's model with the bias as a
separate vector per layer. ``MLP(..., input_bias=True)`` is the notebook's
exact layout: a column of ones appended to the input, folded into W1
(785 x 100, its last row multiplying the ones), and no bias on the other
layers.
"""

from __future__ import annotations

import math

import numpy

from . import backend, checkpoint
from .ops import Linear, Matmul, Relu

INITS = ("he", "glorot", "normal")


def init_weight(rng: numpy.random.Generator, fan_in: int, fan_out: int, init: str) -> numpy.ndarray:
    """A (fan_in, fan_out) float64 weight on the host.

    ``he``: N(0, 2/fan_in), for ReLU layers; ``glorot``: U(+-sqrt(6/(fan_in+fan_out)));
    ``normal``: N(0, 1), as the notebook did.
    """
    if init == "he":
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_in, fan_out))
    if init == "glorot":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=(fan_in, fan_out))
    if init == "normal":
        return rng.normal(size=(fan_in, fan_out))
    raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")


def _views(buffer, shapes: dict) -> dict:
    """Consecutive views of a 1-D ``buffer``, one per name, with the given shapes."""
    views, offset = {}, 0
    for name, shape in shapes.items():
        size = int(numpy.prod(shape))
        views[name] = buffer[offset:offset + size].reshape(shape)
        offset += size
    return views


class MLP:
    """A ReLU multilayer perceptron whose parameters live on one device.

    ``params`` and ``grads`` map names (``W1``, ``b1``, ``W2``, ...) to arrays,
    views into the flat ``param_buffer`` and ``grad_buffer``; ``forward(x)``
    returns the logits, ``backward(g_logits)`` fills ``grads``.
    Initial weights are drawn on the host from ``seed`` and then moved, so
    every device starts from the same numbers.
    """

    def __init__(self, sizes=(784, 100, 10), *, init="he", input_bias=False, dtype="float32",
                 device="cpu", seed=0):
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least an input and an output size, got {sizes}")
        self.sizes = tuple(int(s) for s in sizes)
        self.input_bias = bool(input_bias)
        self.dtype = numpy.dtype(dtype)
        self.device = backend.get_device(device)
        self.xp = self.device.xp
        rng = numpy.random.default_rng(seed)
        host = {}
        for i, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:]), start=1):
            if self.input_bias and i == 1:
                fan_in += 1
            host[f"W{i}"] = init_weight(rng, fan_in, fan_out, init)
            if not self.input_bias:
                host[f"b{i}"] = numpy.zeros(fan_out)
        # All parameters are views into one flat buffer, and all gradients
        # into another, so an optimizer can update everything in one pass
        # (one kernel on the GPU) instead of one per array: at batch 128 the
        # per-array calls cost more than the arithmetic.
        with self.device:
            total = sum(a.size for a in host.values())
            self.param_buffer = self.xp.empty(total, dtype=self.dtype)
            self.grad_buffer = self.xp.zeros(total, dtype=self.dtype)
        self.params = _views(self.param_buffer, {k: v.shape for k, v in host.items()})
        self.grads = _views(self.grad_buffer, {k: v.shape for k, v in host.items()})
        for k, v in host.items():
            self.params[k][...] = self._to_device(v)
        n_layers = len(self.sizes) - 1
        # The first layer's input is data: its gradient is never needed.
        self.layers = [
            (Linear if self._has_bias(i) else Matmul)(needs_input_grad=i > 1) for i in range(1, n_layers + 1)
        ]
        # In place: each ReLU's input is a fresh layer output that nothing else keeps.
        self.relus = [Relu(inplace=True) for _ in range(n_layers - 1)]
        self._workspace = {}

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def _to_device(self, a):
        with self.device:
            return self.xp.asarray(numpy.asarray(a, dtype=self.dtype))

    def _has_bias(self, i: int) -> bool:
        return not self.input_bias or i == 1

    def _weights(self, i: int, arrays=None) -> tuple:
        """The arrays layer ``i`` multiplies by (and adds), from ``params`` or ``grads``."""
        arrays = self.params if arrays is None else arrays
        W = arrays[f"W{i}"]
        if not self.input_bias:
            return W, arrays[f"b{i}"]
        if i == 1:
            # The notebook's column of ones, folded into W1's last row:
            # x @ W1[:-1] + W1[-1] equals [x, 1] @ W1 without copying the
            # whole input to append the column.
            return W[:-1], W[-1]
        return (W,)

    def _work(self, name: str, rows: int, width: int):
        """A (rows, width) scratch array that lives across steps, grown as needed.

        Hidden activations and hidden-layer gradients go here instead of into
        fresh arrays: at the notebook's full batch each is 24-48 MB, and a
        fresh one costs its page faults every step. Only arrays that never
        leave the model use it; the logits are always a new array.
        """
        buf = self._workspace.get(name)
        if buf is None or buf.shape[0] < rows:
            with self.device:
                buf = self._workspace[name] = self.xp.empty((rows, width), dtype=self.dtype)
        return buf[:rows]

    def forward(self, x):
        """Logits for a (N, sizes[0]) batch of inputs."""
        h = x.reshape(x.shape[0], -1)
        n = h.shape[0]
        for i, layer in enumerate(self.layers, start=1):
            hidden = i < self.num_layers
            out = self._work(f"h{i}", n, self.sizes[i]) if hidden and h.dtype == self.dtype else None
            h = layer.forward(h, *self._weights(i), out=out)
            if hidden:
                h = self.relus[i - 1].forward(h)
        return h

    def backward(self, g):
        """Backpropagate the gradient of the loss w.r.t. the logits; fills ``self.grads``."""
        n = g.shape[0]
        for i in range(self.num_layers, 0, -1):
            # Weight gradients are written straight into their views of grad_buffer,
            # and the input gradient of a hidden layer into scratch space.
            gx = self._work(f"g{i - 1}", n, self.sizes[i - 1]) if i > 1 and g.dtype == self.dtype else None
            g = self.layers[i - 1].backward(g, out=(gx, *self._weights(i, self.grads)))[0]
            if i > 1:
                g = self.relus[i - 2].backward(g, out=g)
        return self.grads

    def predict(self, x):
        """Predicted class indices for a batch, on the model's device."""
        return self.forward(x).argmax(axis=1)

    # -- saving and loading -------------------------------------------------

    def state_dict(self) -> dict:
        """Parameters as host NumPy arrays, by name."""
        return {k: backend.to_numpy(v) for k, v in self.params.items()}

    def load_state_dict(self, state: dict) -> None:
        """Copy parameters in place (so optimizers holding them stay valid)."""
        missing = set(self.params) - set(state)
        unexpected = set(state) - set(self.params)
        if missing or unexpected:
            raise ValueError(f"parameter names differ: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        for k, v in state.items():
            if tuple(v.shape) != tuple(self.params[k].shape):
                raise ValueError(f"parameter {k} has shape {tuple(v.shape)}, the model expects {tuple(self.params[k].shape)}")
            self.params[k][...] = self._to_device(v)

    def save(self, path) -> None:
        """Write the parameters and the architecture to an ``.npz`` file, atomically."""
        arrays = checkpoint.param_arrays(self.state_dict())
        arrays["sizes"] = numpy.asarray(self.sizes)
        arrays["input_bias"] = numpy.asarray(self.input_bias)
        checkpoint.save_arrays(path, arrays)

    @classmethod
    def load(cls, path, device="cpu", dtype=None) -> "MLP":
        """An MLP with the architecture and parameters saved by :meth:`save`."""
        with numpy.load(path, allow_pickle=False) as data:
            state = checkpoint.params_from(data)
            sizes, input_bias = tuple(int(s) for s in data["sizes"]), bool(data["input_bias"])
        dtype = dtype or state["W1"].dtype
        model = cls(sizes, input_bias=input_bias, dtype=dtype, device=device)
        model.load_state_dict(state)
        return model
