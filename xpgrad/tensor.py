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

Grad mode (:func:`no_grad`, in :mod:`xpgrad.grad_mode`) is per thread, as PyTorch's.
In-place updates are counted, as PyTorch's ``_version``: an optimizer step (or
``Module.load_state_dict``) bumps each parameter it writes, a view shares the
counter of what it views, and a node refuses to run its backward if an input
it saved has a newer version than at its forward pass.
"""

from __future__ import annotations

import importlib
import numbers
import weakref

import numpy

from . import backend
from . import backprop as _backprop
from . import grad_mode as _mode
from .backend import graph as _graph
from .grad_mode import is_grad_enabled, no_grad  # noqa: F401 (xpgrad.no_grad, and where callers found them)

class Tensor:
    """An array (NumPy or CuPy) that records how it was computed, so gradients can flow back.

    ``Tensor(data, requires_grad=False)``: ``data`` is a NumPy or CuPy array
    and is kept as is (not copied); anything else array-like (a number, a
    nested list) becomes a NumPy array: bool, integer or floating-point data,
    and only floating-point data may require gradients. A leaf made with
    ``requires_grad=True`` (a parameter) receives its gradient in ``.grad``
    after ``backward``, an array like its data, or None before any. ``.creator`` is the
    :class:`Function` whose output this is (None for a leaf).

    Operators ``+ - * / @``, unary ``-`` and ``** number`` broadcast as NumPy
    does, with a Python number or an array allowed on either side.
    ``bool(t)`` is NumPy's: the truth of a one-element tensor, else ValueError.
    ``+= -= *= /=`` write into the data in place and bump its version, as
    PyTorch's (``p -= lr * p.grad`` under :func:`no_grad`); where the tape would
    have to record them they compute ``h = h + x`` (see :func:`xpgrad.backprop.in_place`).
    """

    __slots__ = ("data", "grad", "requires_grad", "creator", "_grad_slot", "_counter", "__weakref__")
    # NumPy defers to Tensor's reflected operators (array + tensor -> Tensor.__radd__).
    __array_ufunc__ = None

    def __init__(self, data, requires_grad: bool = False):
        if requires_grad is not False and requires_grad is not True and not isinstance(requires_grad, numpy.bool_):
            raise TypeError(f"Tensor(requires_grad=...) takes True or False, got {requires_grad!r:.40}")
        counter = None
        if isinstance(data, Tensor):
            counter, data = data._shared_counter(), data.data  # the same data: the same versions
        elif not (isinstance(data, numpy.ndarray) or backend.is_cupy_array(data)):
            data = _as_array(data)
        if data.dtype.kind not in "biuf" or (requires_grad and data.dtype.kind != "f"):
            raise TypeError(("only floating-point tensors can require gradients" if requires_grad else "a Tensor "
                             "holds bool, integer or floating-point data") + f", got {data.dtype} data; convert "
                            "it first, e.g. with .astype('float32')")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.creator = None
        self._grad_slot = None  # this parameter's view of a flat gradient buffer (xpgrad.nn.flatten_parameters)
        self._counter = counter

    # -- versions of the data: [updates, tick of the last], shared with views, made on first need ----

    @property
    def _version(self) -> int:
        """How many in-place updates the data has seen (PyTorch's name)."""
        return 0 if self._counter is None else self._counter[0]

    def _shared_counter(self) -> list:
        if self._counter is None:
            self._counter = [0, 0]
        return self._counter

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

    def __bool__(self) -> bool:
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor of {self.data.size} elements (shape {self.shape}) is "
                             "ambiguous; use .data.any() or .data.all()")
        _graph.refuse_while_recording("bool(Tensor) reads a value on the host")
        return bool(self.data)

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
        """A new leaf sharing this data (and its version counter), outside any graph."""
        return _view_of(self, self.data)

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
        if isinstance(grad, Tensor):
            grad = grad.data
        _backprop.backward(self, grad)

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
        return _f.Matmul()(self, as_tensor(other))

    def __rmatmul__(self, other):
        return _f.Matmul()(as_tensor(other), self)

    def __neg__(self):
        return _f.Neg()(self)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor) or not isinstance(exponent, numbers.Real):
            raise TypeError(f"tensor ** exponent takes a Python number as the exponent, got {type(exponent).__name__}")
        return _f.PowScalar(exponent)(self)

    def __getitem__(self, index):
        return _f.GetItem(index)(self)

    # In place, as PyTorch's: ``p -= lr * p.grad`` under no_grad() updates p's data (and its views).
    def __iadd__(self, other):
        return _backprop.in_place(self, *_unwrap(other), "+=")

    def __isub__(self, other):
        return _backprop.in_place(self, *_unwrap(other), "-=")

    def __imul__(self, other):
        return _backprop.in_place(self, *_unwrap(other), "*=")

    def __itruediv__(self, other):
        return _backprop.in_place(self, *_unwrap(other), "/=")

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
        if not (self.requires_grad and (_mode.grad_enabled or _mode.local.enabled)):  # nothing to record
            try:
                return _view_of(self, self.data.reshape(shape))  # a view, as NumPy's
            except (TypeError, ValueError):  # xpgrad's error, which names the shapes
                return _view_of(self, _f.Reshape(shape).forward(self.data))
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
        if not isinstance(device, (str, backend.Device)):
            raise TypeError(f"to(device) takes a device name ('cpu', 'cuda', 'cuda:N') or a Device, "
                            f"got {type(device).__name__} {device!r:.40}")
        device = backend.get_device(device)
        if device == self.device:
            return self
        return _f.ToDevice(device)(self)


class Function:
    """A node of the graph: one operation with one output.

    Subclasses implement ``forward(*arrays) -> array`` and ``backward(gy) ->
    tuple`` (one gradient per input, None for an input that needs none, in
    exactly the input's shape and dtype: the backward pass checks). ``fn(*tensors)``
    runs ``forward`` on the tensors' data and, when recording, links the result
    to this node; ``self.inputs`` is set before ``forward`` runs. A backward
    that reads no input's values sets ``saves_inputs = False`` (its inputs may
    then change in place); a forward whose output may view its first input's
    data sets ``view = True`` (the two then share a version counter).
    """

    __slots__ = ("inputs", "gy", "owned", "retained", "tick")
    saves_inputs = True
    view = False

    def __call__(self, *inputs: Tensor) -> Tensor:
        self.inputs = inputs
        if _graph.recording:  # name this op if it cannot be recorded in a CUDA graph
            with _graph.recording_op(type(self).__name__):
                data = self.forward(*[x.data for x in inputs])
        else:
            data = self.forward(*[x.data for x in inputs])
        out = object.__new__(Tensor)  # as _new, inlined: this runs for every operation
        out.data, out.grad, out.requires_grad, out.creator, out._grad_slot = data, None, False, None, None
        out._counter = inputs[0]._shared_counter() if self.view else None
        if _mode.grad_enabled or _mode.local.enabled:  # one read while no thread is in no_grad
            for x in inputs:
                if x.requires_grad:
                    out.requires_grad = True
                    out.creator = self
                    self.gy = self.retained = None
                    self.owned = False
                    # The clock now: backward refuses an input updated in place after it (a later tick).
                    self.tick = _backprop.ticks if self.saves_inputs else None
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
    t.data, t.grad, t.requires_grad, t.creator, t._grad_slot, t._counter = data, None, False, None, None, None
    return t


def _view_of(base: Tensor, data) -> Tensor:
    """A new leaf around ``data``, a view of ``base``'s data: it shares base's version counter."""
    t = _new(data)
    t._counter = base._shared_counter()
    return t


def _as_array(value):
    """``value`` (a number, a nested list, ...) as a NumPy array of real numbers, or a TypeError saying why not."""
    try:
        data = numpy.asarray(value)
    except (ValueError, TypeError) as exc:
        data = exc
    if isinstance(data, Exception) or data.dtype.kind not in "biuf":
        raise TypeError(f"Tensor(data) takes an array, a real number or a nested list of them of one shape; got "
                        f"{type(value).__name__} {value!r:.60}" + (f" ({data})" if isinstance(data, Exception) else ""))
    return data


# A number stays a scalar (not a 0-d array), so NumPy keeps the tensor's dtype. Concrete types: a fast isinstance.
_REALS = (float, int, numpy.floating, numpy.integer, numpy.bool_)


def _binary(tensor_op, scalar_op, a, b):
    """``a (op) b`` where at least one side is a Tensor and the other may be a real number or an array."""
    if isinstance(b, _REALS):
        return scalar_op(b)(a)
    if isinstance(a, _REALS):
        return scalar_op(a)(b)
    for c in (a, b):
        if isinstance(c, (numbers.Number, numpy.generic)):  # a Fraction, say, or a complex number
            if not isinstance(c, numbers.Real):
                raise TypeError(f"a tensor's operand may be a Tensor, an array or a real number, got "
                                f"{type(c).__name__} {c!r:.40}")
            return scalar_op(float(c))(b if c is a else a)
    return tensor_op()(as_tensor(a), as_tensor(b))


def _unwrap(other):
    """(data, requires_grad) of a Tensor; (other, False) for anything else."""
    return (other.data, other.requires_grad) if isinstance(other, Tensor) else (other, False)


class _Functions:
    """``xpgrad.functions``, looked up when an operator first runs: importing it here would be a cycle
    (DeZero does the same with ``dezero.functions``)."""

    def __getattr__(self, name):
        module = importlib.import_module("xpgrad.functions")
        globals()["_f"] = module  # later lookups go straight to the module
        return getattr(module, name)


_f = _Functions()
