"""Define-by-run autodiff: :class:`Tensor`, :class:`Function` and :func:`no_grad`.

Every operation on tensors that need gradients records a :class:`Function`
node (the tape): the node keeps its input tensors and what its ``backward``
needs. ``loss.backward()`` hands the graph to :mod:`xpgrad.backprop`, which
runs each node's ``backward`` once, in topological order, and accumulates the
gradients of leaf tensors (those made with ``requires_grad=True``) into ``.grad``.
The Function classes are in :mod:`xpgrad.functions`.

A training step is a few dozen operations on small arrays, so bookkeeping is
kept lean: ``__slots__`` everywhere, and nothing is recorded under
:func:`no_grad` or when no input needs a gradient (data, labels, frozen weights).
"""

from __future__ import annotations

import contextlib
import importlib
import numbers
import weakref

import numpy

from . import backend
from .backend import graph as _graph
from .backprop import accumulate, run_backward, unit_seed

_grad_enabled = True  # read on every operation: a module global is the cheapest lookup


@contextlib.contextmanager
def no_grad():
    """``with no_grad(): ...`` runs the block without recording a graph (also usable as a decorator).

    Inside it, results have ``requires_grad=False`` and keep nothing alive for
    a backward pass: use it for evaluation and for updates made by hand. The
    switch is process-wide (not per thread).
    """
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    """Whether operations are being recorded (False inside :func:`no_grad`)."""
    return _grad_enabled


class Tensor:
    """An array (NumPy or CuPy) that records how it was computed, so gradients can flow back.

    ``Tensor(data, requires_grad=False)``: ``data`` is a NumPy or CuPy array
    and is kept as is (not copied); anything else array-like becomes a NumPy
    array. A leaf made with ``requires_grad=True`` (a parameter) receives its
    gradient in ``.grad`` after ``backward``: an array of the data's module,
    shape and dtype, or None before any backward pass. ``.creator`` is the
    :class:`Function` whose output this is (None for a leaf).

    Operators ``+ - * / @``, unary ``-`` and ``** number`` broadcast as NumPy
    does, with a Python number or an array allowed on either side.
    """

    __slots__ = ("data", "grad", "requires_grad", "creator", "_grad_slot", "__weakref__")
    # NumPy defers to Tensor's reflected operators (array + tensor -> Tensor.__radd__).
    __array_ufunc__ = None

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            data = data.data
        elif not (isinstance(data, numpy.ndarray) or backend.is_cupy_array(data)):
            data = numpy.asarray(data)
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, got {data.dtype} data; "
                            "convert it first, e.g. with .astype('float32')")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.creator = None
        self._grad_slot = None  # this parameter's view of a flat gradient buffer (xpgrad.nn.flatten_parameters)

    # -- what it is ---------------------------------------------------------

    @property
    def shape(self) -> tuple:
        """The data's shape."""
        return self.data.shape

    @property
    def dtype(self):
        """The data's dtype."""
        return self.data.dtype

    @property
    def ndim(self) -> int:
        """The number of dimensions."""
        return self.data.ndim

    @property
    def size(self) -> int:
        """The number of elements."""
        return self.data.size

    @property
    def device(self) -> backend.Device:
        """Where the data lives: ``Device('cpu')`` or ``Device('cuda:N')`` (``str()`` gives the name)."""
        return backend.device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        """True for tensors made by the user rather than computed by a recorded operation."""
        return self.creator is None

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{grad})"

    def item(self):
        """The value of a one-element tensor as a Python number (a host sync on the GPU)."""
        _graph.refuse_while_recording("Tensor.item() reads a value on the host")
        return self.data.item()

    def numpy(self) -> numpy.ndarray:
        """The data as a NumPy array (copied from the GPU if needed)."""
        _graph.refuse_while_recording("Tensor.numpy() copies the data to the host")
        return backend.to_numpy(self.data)

    def detach(self) -> Tensor:
        """A new leaf sharing this data, outside any graph."""
        return _new(self.data)

    def retain_grad(self) -> None:
        """Keep this (computed) tensor's gradient in ``.grad`` after backward, as leaves do."""
        if self.creator is not None:
            self.creator.retained = weakref.ref(self)

    # -- gradients ----------------------------------------------------------

    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf), times ``grad``, into the ``.grad`` of every leaf that requires it.

        ``grad`` (an array or Tensor of this tensor's shape, on its device)
        defaults to 1, which needs a one-element tensor such as a loss.
        Gradients add up: across several ``backward`` calls, and over every
        path by which a leaf reaches this tensor. The graph is kept, so
        ``backward`` may be called again.
        """
        if not self.requires_grad:
            raise ValueError("backward() on a tensor that does not require gradients: no input of the "
                             "computation had requires_grad=True, or it ran under no_grad()")
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"backward() without a gradient needs a one-element tensor (a loss), got shape "
                                 f"{self.shape}; pass grad= (an array of that shape) or reduce it first, e.g. .sum()")
            # A leaf keeps its gradient as .grad, which must not be the shared seed.
            seed = unit_seed(self.data) if self.creator is not None else backend.get_array_module(
                self.data).ones_like(self.data)
        else:
            seed = grad.data if isinstance(grad, Tensor) else grad
            xp = backend.get_array_module(self.data, seed)  # the same device, or DeviceError
            seed = xp.array(seed, dtype=self.dtype)  # a copy: .grad never aliases the caller's array
            if seed.shape != self.shape:
                raise ValueError(f"grad has shape {seed.shape}, but the tensor has shape {self.shape}")
        if self.creator is None:
            accumulate(self, seed)
        else:
            run_backward(self.creator, seed)

    # -- operators (the Function classes are in xpgrad.functions) ------------

    def __add__(self, other):
        return _binary(_f.Add, _f.AddScalar, self, other)

    def __radd__(self, other):
        return _binary(_f.Add, _f.AddScalar, other, self)

    def __sub__(self, other):
        return _binary(_f.Sub, _f.SubScalar, self, other)

    def __rsub__(self, other):
        return _binary(_f.Sub, _f.RSubScalar, other, self)

    def __mul__(self, other):
        return _binary(_f.Mul, _f.MulScalar, self, other)

    def __rmul__(self, other):
        return _binary(_f.Mul, _f.MulScalar, other, self)

    def __truediv__(self, other):
        return _binary(_f.Div, _f.DivScalar, self, other)

    def __rtruediv__(self, other):
        return _binary(_f.Div, _f.RDivScalar, other, self)

    def __matmul__(self, other):
        return _f.MatMul()(self, as_tensor(other))

    def __rmatmul__(self, other):
        return _f.MatMul()(as_tensor(other), self)

    def __neg__(self):
        return _f.Neg()(self)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor) or not isinstance(exponent, numbers.Real):
            raise TypeError(f"tensor ** exponent takes a Python number as the exponent, got {type(exponent).__name__}")
        return _f.PowScalar(exponent)(self)

    def __getitem__(self, index):
        return _f.GetItem(index)(self)

    # -- methods --------------------------------------------------------------

    def sum(self, axis=None, keepdims: bool = False) -> Tensor:
        """Sum over ``axis`` (an int, a tuple, or None for all), as ``numpy.sum``."""
        return _f.Sum(axis, keepdims)(self)

    def mean(self, axis=None, keepdims: bool = False) -> Tensor:
        """Mean over ``axis`` (an int, a tuple, or None for all), as ``numpy.mean``."""
        return _f.Mean(axis, keepdims)(self)

    def reshape(self, *shape) -> Tensor:
        """The same elements in a new shape: ``t.reshape(2, -1)`` or ``t.reshape((2, -1))``."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if not (self.requires_grad and _grad_enabled):  # nothing to record: a view, as NumPy's
            return _new(self.data.reshape(shape))
        return _f.Reshape(shape)(self)

    def transpose(self, *axes) -> Tensor:
        """Axes permuted as ``numpy.transpose`` (reversed when none are given)."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _f.Transpose(axes or None)(self)

    @property
    def T(self) -> Tensor:
        """The transpose (axes reversed)."""
        return _f.Transpose(None)(self)

    def relu(self) -> Tensor:
        """``max(x, 0)`` elementwise."""
        return _f.Relu()(self)

    def exp(self) -> Tensor:
        """``e ** x`` elementwise."""
        return _f.Exp()(self)

    def log(self) -> Tensor:
        """The natural logarithm, elementwise (no epsilon: ``log(0)`` is ``-inf``)."""
        return _f.Log()(self)

    def to(self, device) -> Tensor:
        """This tensor on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``); itself when already there.

        Differentiable: the gradient flows back to the original device.
        """
        device = backend.get_device(device)
        if device == self.device:
            return self
        return _f.ToDevice(device)(self)


class Function:
    """A node of the graph: one operation with one output.

    Subclasses implement ``forward(*arrays) -> array`` and ``backward(gy) ->
    tuple`` (one gradient per input, None for an input that needs none, in
    the input's shape and dtype). ``fn(*tensors)`` runs ``forward`` on the
    tensors' data and, when recording, links the result to this node.
    ``self.inputs`` (the tensors) is set before ``forward`` runs, so it may
    look at which inputs require gradients.
    """

    __slots__ = ("inputs", "gy", "owned", "retained")

    def __call__(self, *inputs: Tensor) -> Tensor:
        self.inputs = inputs
        if _graph.recording:  # name this op if it cannot be recorded in a CUDA graph
            with _graph.recording_op(type(self).__name__):
                data = self.forward(*[x.data for x in inputs])
        else:
            data = self.forward(*[x.data for x in inputs])
        out = object.__new__(Tensor)  # as _new, inlined: this runs for every operation
        out.data, out.grad, out.requires_grad, out.creator, out._grad_slot = data, None, False, None, None
        if _grad_enabled:
            for x in inputs:
                if x.requires_grad:
                    out.requires_grad = True
                    out.creator = self
                    self.gy = self.retained = None
                    self.owned = False
                    break
        return out

    def forward(self, *arrays):
        """The output array, from the inputs' arrays."""
        raise NotImplementedError

    def backward(self, gy):
        """The inputs' gradients (a tuple), from the output's gradient ``gy``."""
        raise NotImplementedError


def as_tensor(value) -> Tensor:
    """``value`` itself when it is a Tensor, else a new Tensor (no gradient) holding it."""
    return value if isinstance(value, Tensor) else Tensor(value)


# ---------------------------------------------------------------------------
# Internals


def _new(data) -> Tensor:
    """A Tensor around an array produced here: no checks, no gradient."""
    t = object.__new__(Tensor)
    t.data = data
    t.grad = None
    t.requires_grad = False
    t.creator = None
    t._grad_slot = None
    return t


def _is_scalar(value) -> bool:
    """A Python or NumPy number (not a 0-d array): it stays a scalar, so NumPy keeps the tensor's dtype."""
    return isinstance(value, (numbers.Number, numpy.generic))


def _binary(tensor_op, scalar_op, a, b):
    """``a (op) b`` where at least one side is a Tensor and the other may be a number or an array."""
    if _is_scalar(b):
        return scalar_op(b)(a)
    if _is_scalar(a):
        return scalar_op(a)(b)
    return tensor_op()(as_tensor(a), as_tensor(b))


class _Functions:
    """``xpgrad.functions``, looked up when an operator first runs rather than imported here: the
    Function classes build on this module, so importing them here would be a cycle (DeZero does
    the same with ``dezero.functions``)."""

    def __getattr__(self, name):
        module = importlib.import_module("xpgrad.functions")
        globals()["_f"] = module  # later lookups go straight to the module
        return getattr(module, name)


_f = _Functions()
