"""Arithmetic and elementwise functions of the tape, written once against ``xp``.

Each Function's derivative sits next to its forward. A number on either
side of an operator stays a Python (or NumPy) scalar rather than becoming an
array, so NumPy and CuPy keep the tensor's dtype (``float32 * 2.0`` is float32).
"""

from __future__ import annotations

import numbers

import numpy

from ..backend import get_array_module
from ..tensor import Function


def sum_to(g, shape):
    """``g`` summed over the axes that broadcasting added or stretched, so it has ``shape``."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    stretched = tuple(lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    g = g.sum(axis=tuple(range(lead)) + stretched, keepdims=True)
    return g.reshape(shape) if lead else g


def broadcast_shape(what: str, *shapes) -> tuple:
    """The shape ``shapes`` broadcast to, by NumPy's rule, or a ValueError naming ``what`` and the shapes."""
    try:
        return numpy.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(f"{what}: shapes {', '.join(map(str, shapes))} do not broadcast (NumPy's rule: aligned "
                         "from the last axis, each pair of lengths equal or one of them 1)") from None


def _fit(g, x):
    """The gradient ``g`` for input array ``x``: reduced to its shape, in its dtype."""
    g = sum_to(g, x.shape)
    return g if g.dtype == x.dtype else g.astype(x.dtype)


# ---------------------------------------------------------------------------
# Arithmetic between two tensors (broadcasting)


class _Binary(Function):
    """``a (op) b`` for two arrays that broadcast: subclasses give ``compute(a, b)`` and
    ``grad_a(gy)``, ``grad_b(gy)`` in the broadcast shape, which are then summed back to each
    operand's shape. An operand that needs no gradient gets none computed."""

    __slots__ = ("a", "b")

    def forward(self, a, b):
        get_array_module(a, b)  # the same device, or DeviceError
        if a.shape != b.shape:
            broadcast_shape(type(self).__name__, a.shape, b.shape)
        self.a, self.b = a, b
        return self.compute(a, b)

    def backward(self, gy):
        a, b = self.inputs
        return (_fit(self.grad_a(gy), self.a) if a.requires_grad else None,
                _fit(self.grad_b(gy), self.b) if b.requires_grad else None)


class Add(_Binary):
    """``a + b``."""

    __slots__ = ()
    saves_inputs = False

    def compute(self, a, b):
        return a + b

    def grad_a(self, gy):
        return gy

    grad_b = grad_a


class Sub(_Binary):
    """``a - b``."""

    __slots__ = ()
    saves_inputs = False

    def compute(self, a, b):
        _refuse_bool("a - b", a, b)
        return a - b

    def grad_a(self, gy):
        return gy

    def grad_b(self, gy):
        return -gy


class Mul(_Binary):
    """``a * b``."""

    __slots__ = ()

    def compute(self, a, b):
        return a * b

    def grad_a(self, gy):
        return gy * self.b

    def grad_b(self, gy):
        return gy * self.a


class Div(_Binary):
    """``a / b``."""

    __slots__ = ()

    def compute(self, a, b):
        return a / b

    def grad_a(self, gy):
        return gy / self.b

    def grad_b(self, gy):
        return -gy * self.a / (self.b * self.b)


# ---------------------------------------------------------------------------
# Arithmetic with a number (kept a Python/NumPy scalar, so the tensor's dtype is kept)


class _Scalar(Function):
    """An operation between a tensor and the number ``c``: subclasses give ``compute(x)`` and ``grad(gy)``.
    The gradient comes back in x's dtype (a NumPy float64 scalar makes a float32 tensor's result float64)."""

    __slots__ = ("c", "x", "y")
    saves_inputs = False

    def __init__(self, c):
        self.c = c

    def forward(self, x):
        self.x = x
        return self.compute(x)

    def backward(self, gy):
        g = self.grad(gy)
        return (g if g.dtype == self.x.dtype else g.astype(self.x.dtype),)


class AddScalar(_Scalar):
    """``x + c`` (and ``c + x``)."""

    __slots__ = ()

    def compute(self, x):
        return x + self.c

    def grad(self, gy):
        return gy


class SubScalar(_Scalar):
    """``x - c``."""

    __slots__ = ()

    def compute(self, x):
        _refuse_bool("x - c", x, self.c)
        return x - self.c

    def grad(self, gy):
        return gy


class RSubScalar(_Scalar):
    """``c - x``."""

    __slots__ = ()

    def compute(self, x):
        _refuse_bool("c - x", self.c, x)
        return self.c - x

    def grad(self, gy):
        return -gy


class MulScalar(_Scalar):
    """``x * c`` (and ``c * x``)."""

    __slots__ = ()

    def compute(self, x):
        return x * self.c

    def grad(self, gy):
        return gy * self.c


class DivScalar(_Scalar):
    """``x / c``."""

    __slots__ = ()

    def compute(self, x):
        return x / self.c

    def grad(self, gy):
        return gy / self.c


class RDivScalar(_Scalar):
    """``c / x``: the gradient is ``-c / x**2 = -y / x``."""

    __slots__ = ()
    saves_inputs = True

    def compute(self, x):
        self.y = self.c / x
        return self.y

    def grad(self, gy):
        return -gy * self.y / self.x


class PowScalar(_Scalar):
    """``x ** c`` for a number ``c``: the gradient is ``c * x ** (c - 1)``."""

    __slots__ = ()
    saves_inputs = True

    def compute(self, x):
        if x.dtype.kind in "biu" and isinstance(self.c, numbers.Integral) and self.c < 0:
            raise ValueError(f"an integer tensor ** a negative exponent ({self.c}) is not an integer; "
                             "make the tensor floating-point first")
        return x**self.c

    def grad(self, gy):
        if self.c == 0:  # x ** 0 is 1 everywhere, x = 0 included (where c * x ** -1 would give NaN)
            return get_array_module(gy).zeros_like(gy)
        return gy * (self.c * self.x ** (self.c - 1))


class Neg(Function):
    """``-x``."""

    __slots__ = ()
    saves_inputs = False

    def forward(self, x):
        _refuse_bool("-x", x)
        return -x

    def backward(self, gy):
        return (-gy,)


def _refuse_bool(what: str, *operands) -> None:
    """PyTorch's and NumPy's rule: no negation of a boolean, nor a difference of two (use ``~`` or ``^``)."""
    if all(a.dtype.kind == "b" if hasattr(a, "dtype") else isinstance(a, bool) for a in operands):
        raise TypeError(f"{what} on bool data is not supported (as in NumPy and PyTorch); convert it to a "
                        "number type first, or use ~ or ^ on the arrays")


# ---------------------------------------------------------------------------
# Elementwise functions


class Exp(Function):
    """``exp(x)``, whose derivative is its output."""

    __slots__ = ("y",)
    saves_inputs = False

    def forward(self, x):
        self.y = get_array_module(x).exp(x)
        return self.y

    def backward(self, gy):
        return (gy * self.y,)


class Log(Function):
    """``log(x)`` (no epsilon; ``ops.Log`` is the notebook's ``log(x + 1e-12)``)."""

    __slots__ = ("x",)

    def forward(self, x):
        self.x = x
        return get_array_module(x).log(x)

    def backward(self, gy):
        return (gy / self.x,)
