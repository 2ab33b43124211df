"""The notebook's ops, written once against ``xp`` (NumPy or CuPy).

Each op is a small object: ``forward`` computes the output and caches in
``self.mem`` what ``backward`` needs; ``backward(gy)`` takes the gradient of
the loss with respect to the output and returns the gradient(s) with respect
to the input(s). The signatures are the notebook's, so its cells run
unchanged after ``from xpgrad.ops import Matmul, Relu, Softmax, Log``.

On the GPU the hot paths (ReLU backward, LogSoftmax, SoftmaxCrossEntropy)
run as fused CuPy kernels from :mod:`xpgrad.kernels`; ``XPGRAD_FUSED=0``
switches back to the generic ``xp`` code below, which is also the CPU
implementation and the reference.

Epsilon semantics (kept from the notebook, made overflow-safe)
--------------------------------------------------------------
* ``Softmax`` returns ``exp(x - m) / (sum_j exp(x_j - m) + 1e-12)`` with
  ``m`` the row max. The notebook used ``exp(x) / (sum_j exp(x_j) + 1e-12)``,
  which overflows to inf/NaN once a logit passes ~709 (float64) or ~88
  (float32). Both are the same softmax up to where the 1e-12 lands; with the
  max subtracted the denominator is >= 1, so the epsilon changes a
  probability by at most 1e-12 relative and never matters for the gradient.
* ``Log`` returns ``log(x + 1e-12)`` and its backward ``gy / (x + 1e-12)``,
  exactly as the notebook did, so ``Log(Softmax(x))`` is finite (about
  -27.6) even when a probability underflows to 0.
* ``LogSoftmax`` and ``SoftmaxCrossEntropy`` use no epsilon: they compute
  ``x - logsumexp(x)`` directly, which is exact and cannot hit ``log(0)``.
  They agree with ``Log(Softmax(x))`` wherever no probability is below
  about 1e-10.
"""

from __future__ import annotations

from . import backend, kernels
from .backend import get_array_module

EPSILON = 1e-12


def _use_fused(xp) -> bool:
    return xp is not backend.numpy and backend.fused_enabled()


class Op:
    """Base class: ``mem`` holds what ``forward`` cached for ``backward``."""

    def __init__(self):
        self.mem = {}


class Matmul(Op):
    """``h = x @ W``; ``backward(gy)`` returns ``(gx, gW)``.

    With ``needs_input_grad=False`` (a first layer, whose input is data)
    ``gx`` is returned as ``None`` and its matrix product is skipped.
    """

    def __init__(self, needs_input_grad: bool = True):
        super().__init__()
        self.needs_input_grad = needs_input_grad

    def forward(self, x, W, out=None):
        """``x @ W``, written into ``out`` when given (as ``numpy.matmul``)."""
        xp = get_array_module(x, W)
        self.mem = {"x": x, "W": W}
        return backend.matmul(xp, x, W, out=out)

    def backward(self, gy, out=None):
        """``(gx, gW)``; ``out=(gx, gW)`` (either may be None) writes them into preallocated arrays."""
        x, W = self.mem["x"], self.mem["W"]
        xp = get_array_module(gy, x)
        gx_out, gW_out = (None, None) if out is None else out
        gx = backend.matmul(xp, gy, W.T, out=gx_out) if self.needs_input_grad else None
        return gx, backend.matmul(xp, x.T, gy, out=gW_out)


class Linear(Op):
    """``h = x @ W + b``; ``backward(gy)`` returns ``(gx, gW, gb)``."""

    def __init__(self, needs_input_grad: bool = True):
        super().__init__()
        self.needs_input_grad = needs_input_grad

    def forward(self, x, W, b, out=None):
        """``x @ W + b``, written into ``out`` when given."""
        xp = get_array_module(x, W, b)
        self.mem = {"x": x, "W": W}
        h = backend.matmul(xp, x, W, out=out)
        h += b
        return h

    def backward(self, gy, out=None):
        """``(gx, gW, gb)``; ``out=(gx, gW, gb)`` (any may be None) writes them into preallocated arrays."""
        x, W = self.mem["x"], self.mem["W"]
        xp = get_array_module(gy, x)
        gx_out, gW_out, gb_out = (None, None, None) if out is None else out
        gx = backend.matmul(xp, gy, W.T, out=gx_out) if self.needs_input_grad else None
        return gx, backend.matmul(xp, x.T, gy, out=gW_out), gy.sum(axis=0, out=gb_out)


class Relu(Op):
    """``max(x, 0)``; the gradient passes where ``x > 0``.

    With ``inplace=True`` the output overwrites the input (as PyTorch's
    ``nn.ReLU(inplace=True)``), saving an allocation when nothing else needs
    the input, as inside :class:`xpgrad.model.MLP`.
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        xp = get_array_module(x)
        y = xp.maximum(x, 0, out=x if self.inplace else None)
        # y > 0 exactly where x > 0, so the output serves the backward pass.
        self.mem["x"] = y
        return y

    def backward(self, gy, out=None):
        """``gy`` where the input was positive, else 0; into ``out`` when given (``out=gy`` is allowed)."""
        x = self.mem["x"]
        xp = get_array_module(x, gy)
        if _use_fused(xp):
            return kernels.relu_backward(x, gy, out=out)
        # A multiply by the boolean mask keeps gy's dtype and, in NumPy, runs
        # about 4x faster than xp.where(x > 0, gy, 0) at training shapes.
        return xp.multiply(gy, x > 0, out=out)


class Softmax(Op):
    """Row softmax with the notebook's 1e-12 in the denominator, overflow-safe."""

    def __init__(self):
        super().__init__()
        self.epsilon = EPSILON

    def forward(self, x):
        xp = get_array_module(x)
        e = x - _row_max(xp, x)[:, None]
        xp.exp(e, out=e)
        e /= (_row_sum(xp, e) + self.epsilon)[:, None]
        self.mem["out"] = e
        return e

    def backward(self, gy):
        # The notebook built the (N, C, C) Jacobian s_i(delta_ij - s_j) and
        # multiplied by it; contracting it by hand gives the same numbers in
        # O(N*C) time and memory: gx = s * (gy - sum_j gy_j s_j).
        s = self.mem["out"]
        xp = get_array_module(s, gy)
        gx = gy * s
        gx = xp.subtract(gy, _row_sum(xp, gx)[:, None], out=gx)
        gx *= s
        return gx


class Log(Op):
    """``log(x + 1e-12)``, as in the notebook."""

    def __init__(self):
        super().__init__()
        self.epsilon = EPSILON

    def forward(self, x):
        xp = get_array_module(x)
        self.mem["x"] = x
        return xp.log(x + self.epsilon)

    def backward(self, gy):
        return gy / (self.mem["x"] + self.epsilon)


# Row helpers for the generic (N, C) code. At training shapes, (128, 10), NumPy's
# reductions over a short last axis cost far more than the arithmetic: x.max(axis=1)
# takes ~17 us and x.sum(axis=1) ~9 us, against ~4 us for argmax plus a flat take,
# and ~3 us for a BLAS matrix-vector product with a vector of ones. These three
# helpers compute the same values (up to the order of a sum) in a few calls each.


def _pick(xp, x, cols):
    """``x[i, cols[i]]`` for every row ``i``: one flat take (NumPy's ``x[arange(n), cols]`` is slower)."""
    n, c = x.shape
    return x.reshape(-1).take(xp.arange(0, n * c, c) + cols)


def _row_max(xp, x):
    """Per-row max of an (N, C) array, shape (N,); NaN wherever a row holds one, as ``max``."""
    return _pick(xp, x, x.argmax(axis=1))


def _row_sum(xp, x):
    """Per-row sum of an (N, C) array, shape (N,), as a matrix-vector product with ones."""
    return backend.matmul(xp, x, xp.ones(x.shape[1], dtype=x.dtype))


def _logsumexp(xp, x):
    """Stable per-row log-sum-exp of an (N, C) array, shape (N, 1)."""
    m = _row_max(xp, x)[:, None]
    e = x - m
    xp.exp(e, out=e)
    return m + xp.log(_row_sum(xp, e))[:, None]


class LogSoftmax(Op):
    """``x - logsumexp(x)`` per row: the fused replacement for Softmax then Log.

    ``backward(gy)`` returns ``gy - softmax(x) * sum_row(gy)``.
    """

    def forward(self, x):
        xp = get_array_module(x)
        if _use_fused(xp):
            y = kernels.log_softmax_forward(x)
        else:
            y = x - _logsumexp(xp, x)
        self.mem["y"] = y
        return y

    def backward(self, gy):
        y = self.mem["y"]
        xp = get_array_module(y, gy)
        if _use_fused(xp):
            return kernels.log_softmax_backward(y, gy)
        gx = xp.exp(y)
        gx *= _row_sum(xp, gy)[:, None]
        return xp.subtract(gy, gx, out=gx)


def _labels_out_of_range(t, c: int) -> bool:
    """Whether any integer label lies outside [0, c), in one reduction: viewed as
    unsigned, a negative label becomes huge, so ``max >= c`` catches both ends."""
    if t.dtype.kind == "i":
        t = t.view(f"u{t.dtype.itemsize}")
    return bool(t.max() >= c)


class SoftmaxCrossEntropy(Op):
    """Mean cross-entropy of row-softmaxed logits against labels.

    ``forward(logits, labels)`` returns the mean loss as a 0-d array of the
    logits' dtype. ``labels`` are integer class indices of shape (N,), or an
    (N, C) array of one-hot (or soft) target probabilities.

    ``backward(gy=1)`` returns the gradient of ``gy * loss`` with respect to
    the logits, ``(softmax - onehot) / N * gy``, without building any
    Jacobian. ``gy`` may be a 0-d array, so no host sync is needed.
    """

    def forward(self, x, t):
        xp = get_array_module(x, t)
        if x.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropy expects (N, C) logits, got shape {x.shape}")
        n = x.shape[0]
        if t.ndim == 1 and t.dtype.kind in "iu":
            if t.shape[0] != n:
                raise ValueError(f"got {n} rows of logits but {t.shape[0]} labels")
            if xp is backend.numpy and n and _labels_out_of_range(t, x.shape[1]):
                raise ValueError(f"labels must lie in [0, {x.shape[1]}); got [{t.min()}, {t.max()}]")
            if _use_fused(xp):
                loss, lse = kernels.softmax_cross_entropy_forward(x, t)
                self.mem = {"x": x, "t": t, "lse": lse}
                return loss
            # Keep exp(x - max) and its row sums: the backward pass is
            # exp(x - max) / sum - onehot, so it needs no exp of its own.
            m = _row_max(xp, x)
            e = x - m[:, None]
            xp.exp(e, out=e)
            s = _row_sum(xp, e)
            loss = (m + xp.log(s) - _pick(xp, x, t)).sum() / n
            self.mem = {"x": x, "t": t, "exp": e, "expsum": s}
            return xp.asarray(loss, dtype=x.dtype)
        elif t.shape == x.shape:
            lse = _logsumexp(xp, x)[:, 0]
            loss = -(t * (x - lse[:, None])).sum() / n
        else:
            raise ValueError(
                f"labels must be integer class indices of shape ({n},) or targets of shape {x.shape}; "
                f"got {t.dtype} {t.shape}"
            )
        self.mem = {"x": x, "t": t, "lse": lse}
        return xp.asarray(loss, dtype=x.dtype)

    def backward(self, gy=None):
        x, t, lse = self.mem["x"], self.mem["t"], self.mem.get("lse")
        xp = get_array_module(x)
        n = x.shape[0]
        if t.ndim == 1:
            if "exp" not in self.mem:  # the fused forward ran
                g = xp.ones((), dtype=x.dtype) if gy is None else xp.asarray(gy, dtype=x.dtype)
                return kernels.softmax_cross_entropy_backward(x, t, self.mem["lse"], g)
            # (softmax - onehot) * scale, as exp * (scale / sum) with scale
            # subtracted at each row's label: two passes over (N, C) and a scatter.
            scale = xp.asarray(1.0 / n if gy is None else gy / n, dtype=x.dtype)
            gx = self.mem["exp"] * (scale / self.mem["expsum"])[:, None]
            gx.reshape(-1)[xp.arange(0, n * x.shape[1], x.shape[1]) + t] -= scale
            return gx
        else:
            gx = xp.exp(x - lse[:, None]) * t.sum(axis=1, keepdims=True) - t
        scale = 1.0 / n if gy is None else gy / n
        gx *= xp.asarray(scale, dtype=x.dtype)
        return gx
