"""Numerical gradient checking by central differences in float64.

Works on either backend: inputs stay on their device, and only scalars come
back to the host.

    >>> report = check_op(Relu, x)
    >>> assert report.ok, report
"""

from __future__ import annotations

from dataclasses import dataclass

from .backend import get_array_module

#: (rtol, atol) by the dtype the analytic gradient was computed in. The numeric
#: side is always float64, so the float32 tolerance reflects float32 rounding
#: in the analytic gradient, not the finite differences.
TOLERANCES = {"float16": (1e-2, 1e-3), "float32": (1e-3, 1e-4), "float64": (1e-6, 1e-9)}


@dataclass
class GradcheckReport:
    """The outcome of a gradient check, and its worst element."""

    ok: bool
    input_index: int = -1
    element: tuple = ()
    analytic: float = 0.0
    numeric: float = 0.0
    rtol: float = 0.0
    atol: float = 0.0

    @property
    def abs_error(self) -> float:
        return abs(self.analytic - self.numeric)

    @property
    def rel_error(self) -> float:
        return self.abs_error / max(abs(self.numeric), 1e-300)

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "MISMATCH"
        return (
            f"gradcheck {verdict}: worst element is input {self.input_index}{list(self.element)}: "
            f"analytic {self.analytic:.10g} vs numeric {self.numeric:.10g} "
            f"(abs err {self.abs_error:.3g}, rel err {self.rel_error:.3g}; rtol {self.rtol:g}, atol {self.atol:g})"
        )


def numerical_gradient(fn, inputs, index, gy, eps=1e-6):
    """d/d inputs[index] of ``sum(fn(*inputs) * gy)`` by central differences in float64."""
    xp = get_array_module(*inputs)
    args = [a.astype(xp.float64) if _is_float(a) else a for a in inputs]
    gy64 = gy.astype(xp.float64)
    x = args[index] = xp.ascontiguousarray(args[index])
    flat = x.reshape(-1)  # a view: writing it perturbs args[index]
    grad = xp.zeros(x.size, dtype=xp.float64)
    for k in range(x.size):
        original = float(flat[k])
        flat[k] = original + eps
        plus = float((fn(*args) * gy64).sum())
        flat[k] = original - eps
        minus = float((fn(*args) * gy64).sum())
        flat[k] = original
        grad[k] = (plus - minus) / (2 * eps)
    return grad.reshape(x.shape)


def gradcheck(fn, inputs, analytic, gy=None, *, wrt=None, eps=1e-6, rtol=None, atol=None):
    """Compare analytic gradients with central differences.

    ``fn(*inputs)`` returns an array ``y``; ``analytic`` lists the gradients of
    ``sum(y * gy)`` with respect to ``inputs[i]`` for ``i`` in ``wrt``
    (default: every floating input). ``gy`` defaults to ones. Tolerances
    default by the analytic gradients' dtype (:data:`TOLERANCES`).
    """
    xp = get_array_module(*inputs)
    if wrt is None:
        wrt = [i for i, a in enumerate(inputs) if _is_float(a)]
    if len(analytic) != len(wrt):
        raise ValueError(f"got {len(analytic)} analytic gradients for {len(wrt)} inputs")
    if gy is None:
        gy = xp.ones_like(fn(*inputs))
    worst, worst_ratio = None, -1.0
    for i, g in zip(wrt, analytic):
        r_default, a_default = TOLERANCES[str(g.dtype)]
        r, a = (r_default if rtol is None else rtol), (a_default if atol is None else atol)
        numeric = numerical_gradient(fn, inputs, i, gy, eps)
        g64 = g.astype(xp.float64)
        ratio = xp.abs(g64 - numeric) / (a + r * xp.abs(numeric))
        k = int(ratio.argmax()) if ratio.size else 0
        if ratio.size and float(ratio.reshape(-1)[k]) > worst_ratio:
            worst_ratio = float(ratio.reshape(-1)[k])
            element = tuple(int(j) for j in _unravel(k, g.shape))
            worst = GradcheckReport(
                ok=False,
                input_index=i,
                element=element,
                analytic=float(g64.reshape(-1)[k]),
                numeric=float(numeric.reshape(-1)[k]),
                rtol=r,
                atol=a,
            )
    if worst is None:
        return GradcheckReport(ok=True)
    worst.ok = worst_ratio <= 1.0
    return worst


def check_op(op_factory, *inputs, gy=None, wrt=None, **kwargs):
    """Gradient-check an op class (or factory): its ``backward`` against central differences.

    ``op.backward(gy)`` may return one gradient or a tuple; ``None`` entries
    (gradients an op was told not to compute) are dropped, and ``wrt`` says
    which inputs the rest belong to.
    """
    xp = get_array_module(*inputs)
    op = op_factory()
    y = op.forward(*inputs)
    if gy is None:
        gy = xp.ones_like(y)
    grads = op.backward(gy)
    grads = [g for g in (grads if isinstance(grads, tuple) else (grads,)) if g is not None]

    def fn(*args):
        return op_factory().forward(*args)

    return gradcheck(fn, inputs, grads, gy, wrt=wrt, **kwargs)


def _is_float(a) -> bool:
    return hasattr(a, "dtype") and a.dtype.kind == "f"


def _unravel(k, shape):
    out = []
    for n in reversed(shape):
        out.append(k % n)
        k //= n
    return tuple(reversed(out))
