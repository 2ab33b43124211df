"""The notebook's ops, written once against ``xp`` (NumPy or CuPy).

Each op is a small object: ``forward`` computes the output and caches in
``self.mem`` what ``backward`` needs; ``backward(gy)`` takes the gradient of
the loss with respect to the output and returns the gradient(s) with respect
to the input(s). The signatures are the notebook's, so its cells run
unchanged after ``from xpgrad.ops import Matmul, Relu, Softmax, Log``.

The hot paths (ReLU backward, LogSoftmax, SoftmaxCrossEntropy) call the
functions of :func:`xpgrad.backend.get_ops`: on the GPU the fused CuPy
kernels of :mod:`xpgrad.kernels`, elsewhere (or with ``XPGRAD_FUSED=0``)
their generic twins in :mod:`xpgrad.generic`, which are also the reference.

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

from . import backend, generic
from .backend import get_array_module, get_ops
from .backend.graph import matmul

#: The notebook's epsilon: in :class:`Softmax`'s denominator, and in :class:`Log`'s ``log(x + 1e-12)``.
EPSILON = 1e-12


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
        return matmul(xp, x, W, out=out)

    def backward(self, gy, out=None):
        """``(gx, gW)``; ``out=(gx, gW)`` (either may be None) writes them into preallocated arrays."""
        x, W = self.mem["x"], self.mem["W"]
        xp = get_array_module(gy, x)
        gx_out, gW_out = (None, None) if out is None else out
        gx = matmul(xp, gy, W.T, out=gx_out) if self.needs_input_grad else None
        return gx, matmul(xp, x.T, gy, out=gW_out)


class Linear(Op):
    """``h = x @ W + b``; ``backward(gy)`` returns ``(gx, gW, gb)``.

    With ``needs_input_grad=False`` ``gx`` is None, as in :class:`Matmul`.
    """

    def __init__(self, needs_input_grad: bool = True):
        super().__init__()
        self.needs_input_grad = needs_input_grad

    def forward(self, x, W, b, out=None):
        """``x @ W + b``, written into ``out`` when given."""
        xp = get_array_module(x, W, b)
        self.mem = {"x": x, "W": W}
        h = matmul(xp, x, W, out=out)
        h += b
        return h

    def backward(self, gy, out=None):
        """``(gx, gW, gb)``; ``out=(gx, gW, gb)`` (any may be None) writes them into preallocated arrays."""
        x, W = self.mem["x"], self.mem["W"]
        xp = get_array_module(gy, x)
        gx_out, gW_out, gb_out = (None, None, None) if out is None else out
        gx = matmul(xp, gy, W.T, out=gx_out) if self.needs_input_grad else None
        return gx, matmul(xp, x.T, gy, out=gW_out), gy.sum(axis=0, out=gb_out)


class LinearReLU(Op):
    """``h = max(x @ W + b, 0)``: :class:`Linear` then :class:`Relu`, with the bias and the ReLU in one pass
    (one kernel each way on a GPU); ``backward(gy)`` returns ``(gx, gW, gb)``, the same numbers as the two ops'.
    With ``needs_input_grad=False`` ``gx`` is None, as in :class:`Matmul`."""

    def __init__(self, needs_input_grad: bool = True):
        super().__init__()
        self.needs_input_grad = needs_input_grad

    def forward(self, x, W, b, out=None):
        """``max(x @ W + b, 0)``, written into ``out`` when given."""
        xp = get_array_module(x, W, b)
        h = matmul(xp, x, W, out=out)
        # y > 0 exactly where x @ W + b > 0, so the output serves the backward pass.
        self.mem = {"x": x, "W": W, "y": get_ops(xp).bias_relu_forward(h, b)}
        return self.mem["y"]

    def backward(self, gy, out=None, overwrite_gy=False):
        """``(gx, gW, gb)``; ``out=(gx, gW, gb)`` (any may be None) writes them into preallocated arrays.
        With ``overwrite_gy``, the ReLU's mask is applied to ``gy`` in place rather than to a copy."""
        x, W, y = self.mem["x"], self.mem["W"], self.mem["y"]
        xp = get_array_module(gy, x)
        gx_out, gW_out, gb_out = (None, None, None) if out is None else out
        g, gb = get_ops(xp).bias_relu_backward(y, gy, gx=gy if overwrite_gy else None, gb=gb_out)
        gx = matmul(xp, g, W.T, out=gx_out) if self.needs_input_grad else None
        return gx, matmul(xp, x.T, g, out=gW_out), gb


class Relu(Op):
    """``max(x, 0)``; the gradient passes where ``x > 0``.

    With ``inplace=True`` the output overwrites the input (as PyTorch's
    ``nn.ReLU(inplace=True)``), saving an allocation when nothing else needs
    the input.
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        """``max(x, 0)``, into ``x`` itself when ``inplace``."""
        xp = get_array_module(x)
        y = xp.maximum(x, 0, out=x if self.inplace else None)
        # y > 0 exactly where x > 0, so the output serves the backward pass.
        self.mem["x"] = y
        return y

    def backward(self, gy, out=None):
        """``gy`` where the input was positive, else 0; into ``out`` when given (``out=gy`` is allowed)."""
        x = self.mem["x"]
        return get_ops(get_array_module(x, gy)).relu_backward(x, gy, out=out)


class Softmax(Op):
    """Row softmax with the notebook's 1e-12 (``epsilon``) in the denominator, overflow-safe."""

    def __init__(self):
        super().__init__()
        self.epsilon = EPSILON

    def forward(self, x):
        """``exp(x - m) / (sum_j exp(x_j - m) + 1e-12)`` per row of (N, C) ``x``, ``m`` the row max."""
        xp = get_array_module(x)
        e = x - generic.row_max(x)[:, None]
        xp.exp(e, out=e)
        e /= (generic.row_sum(e) + self.epsilon)[:, None]
        self.mem["out"] = e
        return e

    def backward(self, gy):
        """``s * (gy - sum_j gy_j s_j)`` per row: the notebook's Jacobian product, without the (N, C, C) Jacobian."""
        # The notebook built the (N, C, C) Jacobian s_i(delta_ij - s_j) and
        # multiplied by it; contracting it by hand gives the same numbers in
        # O(N*C) time and memory: gx = s * (gy - sum_j gy_j s_j).
        s = self.mem["out"]
        xp = get_array_module(s, gy)
        gx = gy * s
        gx = xp.subtract(gy, generic.row_sum(gx)[:, None], out=gx)
        gx *= s
        return gx


class Log(Op):
    """``log(x + 1e-12)``, as in the notebook (``epsilon`` is the 1e-12)."""

    def __init__(self):
        super().__init__()
        self.epsilon = EPSILON

    def forward(self, x):
        """``log(x + 1e-12)``, elementwise."""
        xp = get_array_module(x)
        self.mem["x"] = x
        return xp.log(x + self.epsilon)

    def backward(self, gy):
        """``gy / (x + 1e-12)``."""
        return gy / (self.mem["x"] + self.epsilon)


class LogSoftmax(Op):
    """``x - logsumexp(x)`` per row: the fused replacement for Softmax then Log.

    ``backward(gy)`` returns ``gy - softmax(x) * sum_row(gy)``.
    """

    def forward(self, x):
        """``x - logsumexp(x)`` per row of (N, C) ``x``."""
        y = get_ops(get_array_module(x)).log_softmax_forward(x)
        self.mem["y"] = y
        return y

    def backward(self, gy):
        """``gy - softmax(x) * sum_row(gy)``."""
        y = self.mem["y"]
        return get_ops(get_array_module(y, gy)).log_softmax_backward(y, gy)


class SoftmaxCrossEntropy(Op):
    """Mean cross-entropy of row-softmaxed logits against labels.

    ``forward(logits, labels)`` returns the mean loss as a 0-d array of the
    logits' dtype. ``labels`` are integer class indices of shape (N,), or an
    (N, C) array of one-hot (or soft) target probabilities.

    ``backward(gy=1)`` returns the gradient of ``gy * loss`` with respect to
    the logits, ``(softmax - onehot) / N * gy``, without building any
    Jacobian. ``gy`` may be a 0-d array, so no host sync is needed.

    Index labels go through :func:`xpgrad.backend.get_ops` (one fused kernel
    each way on the GPU); soft targets through the generic code. ``forward``
    records which of the two ran, with the functions that run its backward.

    The loss end of a training step passes ``stats=(loss_sum, correct)``
    (0-d arrays on the logits' device): the batch's summed loss and its number
    of correct predictions are added to them. With ``backward=True`` as well,
    the gradient is computed in the same pass (one kernel on a GPU for the
    loss, its gradient and both sums) and ``backward`` only hands it out.
    """

    def forward(self, x, t, stats=None, backward=False):
        """The mean loss of (N, C) logits ``x`` against labels ``t``, a 0-d array (see the class for ``stats``)."""
        xp = get_array_module(x, t)  # the same device, or DeviceError
        if x.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropy expects (N, C) logits, got shape {x.shape}")
        if generic.is_index_labels(t):
            ops = get_ops(xp)
            if stats is not None and backward:
                gx, loss = xp.empty_like(x), xp.empty((), dtype=x.dtype)
                ops.softmax_cross_entropy_step(x, t, gx, loss, *stats, work=self._step_work(ops, x))
                self.mem = {"gx": gx}
                return loss
            loss, cache = ops.softmax_cross_entropy_forward(x, t)
            backward = ops.softmax_cross_entropy_backward
        elif t.shape == x.shape and stats is None:
            loss, cache = generic.soft_cross_entropy_forward(x, t)
            backward = generic.soft_cross_entropy_backward
        else:
            n = x.shape[0]
            raise ValueError(
                f"labels must be integer class indices of shape ({n},)"
                + ("" if stats is not None else f" or targets of shape {x.shape}") + f"; got {t.dtype} {t.shape}"
            )
        if stats is not None:
            generic.add_loss_stats(x, t, loss, *stats)
        self.mem = {"x": x, "t": t, "cache": cache, "backward": backward}
        return loss

    _step_works = {}  # the fused step's scratch, by device, shape and dtype: made once, reused every step

    @classmethod
    def _step_work(cls, ops, x):
        if ops is generic:
            return None
        key = (backend.device_of(x), x.shape, x.dtype)
        if key not in cls._step_works:
            cls._step_works[key] = ops.softmax_cross_entropy_step_work(x)
        return cls._step_works[key]

    def backward(self, gy=None):
        """The gradient of ``gy * loss`` with respect to the logits, (N, C): ``(softmax - onehot) / N * gy``."""
        m = self.mem
        if "gx" in m:  # computed by the forward pass
            return m["gx"] if gy is None else m["gx"] * gy
        return m["backward"](m["x"], m["t"], m["cache"], gy)
