"""Fused CUDA kernels for the GPU path of ops and optimizers.

Each kernel is a :class:`KernelSpec`: its CUDA source kept as data, and a
CuPy kernel object built through :mod:`xpgrad.backend` on first call (so this
module imports without CuPy). CuPy then compiles once per dtype. Every spec is
listed in :data:`KERNELS`, so tests can compile each one without a GPU.

The public functions (at the end) take and return CuPy arrays of float32 or
float64. Each has a twin of the same name and signature in
:mod:`xpgrad.generic`, written against ``xp``: that is the CPU code and the
reference these kernels must match. :func:`xpgrad.backend.get_ops` chooses
between the two modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import backend
from .generic import check_labels, check_rows

#: Dtypes each type placeholder of a kernel can be bound to (for compile checks).
TYPE_CHOICES = {"T": ("float32", "float64"), "S": ("int32", "int64")}

#: Every kernel, by CUDA name.
KERNELS: dict[str, KernelSpec] = {}


@dataclass
class KernelSpec:
    """One ``cupy.ElementwiseKernel`` as data, built on first call.

    ``scalars`` names the input parameters passed as Python scalars, and
    ``raw_ndim`` the ndim of each ``raw`` array as it is passed; both describe
    the call for checks that generate the source without calling the kernel.
    """

    name: str
    in_params: str
    out_params: str
    operation: str
    preamble: str = ""
    scalars: tuple[str, ...] = ()
    raw_ndim: dict[str, int] = field(default_factory=dict)
    _kernel: object = field(default=None, init=False, repr=False, compare=False)

    def build(self):
        """A new CuPy kernel object for this spec (needs CuPy, not a GPU)."""
        return backend.elementwise_kernel(
            self.in_params, self.out_params, self.operation, self.name, preamble=self.preamble
        )

    def __call__(self, *args, **kwargs):
        if self._kernel is None:
            self._kernel = self.build()
        return self._kernel(*args, **kwargs)


def _register(spec: KernelSpec) -> KernelSpec:
    KERNELS[spec.name] = spec
    return spec


# One thread per row: classification rows are short (C ~ 10..1000), and a
# thread per row keeps each op to one launch without a reduction kernel.
_LOGSUMEXP_ROW = """
template <typename T, typename A>
__device__ T xpgrad_logsumexp_row(const A& x, ptrdiff_t base, int C) {
    T m = x[base];
    for (int j = 1; j < C; ++j) {
        const T v = x[base + j];
        m = v > m ? v : m;
    }
    T s = 0;
    for (int j = 0; j < C; ++j) {
        s += exp(x[base + j] - m);
    }
    return m + log(s);
}
"""

_relu_bwd = _register(KernelSpec(
    name="xpgrad_relu_bwd",
    in_params="T x, T gy",
    out_params="T gx",
    operation="gx = x > (T)0 ? gy : (T)0;",
))

_logsumexp_rows = _register(KernelSpec(
    name="xpgrad_logsumexp_rows",
    in_params="raw T x, int32 C",
    out_params="T lse",
    operation="lse = xpgrad_logsumexp_row<T>(x, i * C, C);",
    preamble=_LOGSUMEXP_ROW,
    scalars=("C",),
    raw_ndim={"x": 2},
))

_log_softmax_fwd = _register(KernelSpec(
    name="xpgrad_log_softmax_fwd",
    in_params="T x, raw T lse, int32 C",
    out_params="T y",
    operation="y = x - lse[i / C];",
    scalars=("C",),
    raw_ndim={"lse": 1},
))

_sum_rows = _register(KernelSpec(
    name="xpgrad_sum_rows",
    in_params="raw T a, int32 C",
    out_params="T s",
    operation="""
    const ptrdiff_t base = i * C;
    T acc = 0;
    for (int j = 0; j < C; ++j) {
        acc += a[base + j];
    }
    s = acc;
    """,
    scalars=("C",),
    raw_ndim={"a": 2},
))

_log_softmax_bwd = _register(KernelSpec(
    name="xpgrad_log_softmax_bwd",
    in_params="T y, T gy, raw T s, int32 C",
    out_params="T gx",
    operation="gx = gy - exp(y) * s[i / C];",
    scalars=("C",),
    raw_ndim={"s": 1},
))

# A label outside [0, C) gives a NaN loss rather than reading out of bounds.
_softmax_xent_fwd = _register(KernelSpec(
    name="xpgrad_softmax_xent_fwd",
    in_params="raw T x, raw S t, int32 C",
    out_params="T lse, T nll",
    operation="""
    const ptrdiff_t base = i * C;
    lse = xpgrad_logsumexp_row<T>(x, base, C);
    const S label = t[i];
    nll = (label >= 0 && label < C) ? lse - x[base + label] : (T)CUDART_NAN;
    """,
    preamble=_LOGSUMEXP_ROW,
    scalars=("C",),
    raw_ndim={"x": 2, "t": 1},
))

_softmax_xent_bwd = _register(KernelSpec(
    name="xpgrad_softmax_xent_bwd",
    in_params="T x, raw T lse, raw S t, raw T gloss, int32 C, int64 N",
    out_params="T gx",
    operation="""
    const ptrdiff_t row = i / C;
    const T hit = t[row] == i - row * C ? (T)1 : (T)0;
    gx = (exp(x - lse[row]) - hit) * (gloss[0] / (T)N);
    """,
    scalars=("C", "N"),
    raw_ndim={"lse": 1, "t": 1, "gloss": 0},
))

# SGD, four elements per thread, at i, i + n4, i + 2 n4 and i + 3 n4 (each
# load still coalesced), on a quarter of the threads. On an H200 this ran at
# 87-90% of the device-to-device copy bandwidth against 60-64% for the
# one-element-per-thread kernel below, which CuPy's per-thread loop and index
# arithmetic seem to cap. The same change made ReLU backward slower (its
# second load depends on the first), and a thread per whole row made the
# log-softmax kernels slower: bench/README.md has the numbers.
_sgd_update_x4 = _register(KernelSpec(
    name="xpgrad_sgd_update_x4",
    in_params="raw T g, T lr, int64 n",
    out_params="raw T p",
    operation="""
    const ptrdiff_t n4 = (n + 3) / 4;
    #pragma unroll
    for (int r = 0; r < 4; ++r) {
        const ptrdiff_t k = i + r * n4;
        if (k < n) {
            p[k] -= lr * g[k];
        }
    }
    """,
    scalars=("lr", "n"),
    raw_ndim={"g": 1, "p": 1},
))

_sgd_update = _register(KernelSpec(
    name="xpgrad_sgd_update",
    in_params="T g, T lr",
    out_params="T p",
    operation="p -= lr * g;",
    scalars=("lr",),
))

_momentum_update = _register(KernelSpec(
    name="xpgrad_momentum_update",
    in_params="T g, T lr, T mu",
    out_params="T p, T v",
    operation="""
    v = mu * v + g;
    p -= lr * v;
    """,
    scalars=("lr", "mu"),
))

_adam_update = _register(KernelSpec(
    name="xpgrad_adam_update",
    in_params="T g, T lr, T beta1, T beta2, T eps, T bc1, T bc2",
    out_params="T p, T m, T v",
    operation="""
    m = beta1 * m + ((T)1 - beta1) * g;
    v = beta2 * v + ((T)1 - beta2) * g * g;
    p -= lr * (m / bc1) / (sqrt(v / bc2) + eps);
    """,
    scalars=("lr", "beta1", "beta2", "eps", "bc1", "bc2"),
))


# ---------------------------------------------------------------------------
# Public functions: the twins of xpgrad.generic


def _check_float(*arrays) -> None:
    for a in arrays:
        if a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
            raise TypeError(f"fused kernels take float32 or float64 arrays, got {a.dtype}")


def _check_same_shape(param, *arrays) -> None:
    for a in arrays:
        if a.shape != param.shape:
            raise ValueError(f"optimizer arrays must match the parameter's shape {param.shape}, got {a.shape}")


def _rows(x):
    # The row loops index raw arrays as if they were C-ordered.
    return backend.cupy.ascontiguousarray(x)


def relu_backward(x, gy, out=None):
    """Gradient of ReLU: ``gy`` where ``x > 0``, else 0. Any shape; gx has x's shape.

    ``out`` receives the result when given; it may be ``gy`` itself (each
    element is read before it is written, by the same thread)."""
    _check_float(x, gy)
    if out is None:
        return _relu_bwd(x, gy)
    _check_float(out)
    return _relu_bwd(x, gy, out)


def log_softmax_forward(x):
    """Row-wise log-softmax of (N, C) logits: ``x - logsumexp(x, axis=1)``, computed stably."""
    _check_float(x)
    N, C = check_rows(x)
    x = _rows(x)
    lse = backend.cupy.empty(N, dtype=x.dtype)
    _logsumexp_rows(x, C, lse)
    return _log_softmax_fwd(x, lse, C)


def log_softmax_backward(y, gy):
    """Gradient of log-softmax from its (N, C) output y: ``gy - exp(y) * gy.sum(axis=1)``."""
    _check_float(y, gy)
    N, C = check_rows(y)
    if gy.shape != y.shape:
        raise ValueError(f"gy has shape {gy.shape}, expected {y.shape}")
    gy = _rows(gy)
    s = backend.cupy.empty(N, dtype=gy.dtype)
    _sum_rows(gy, C, s)
    return _log_softmax_bwd(y, gy, s, C)


def _labels(x, t):
    """(N, C) of x, and labels t as C-ordered int32 or int64 (other integer types are widened)."""
    N, C = check_labels(x, t)
    if t.dtype.kind != "i" or t.dtype.itemsize not in (4, 8):
        t = t.astype("int64")
    return N, C, _rows(t)


def softmax_cross_entropy_forward(x, t):
    """Mean softmax cross-entropy of (N, C) logits x against (N,) integer labels t.

    Returns ``(loss, cache)``: loss is 0-d with x's dtype; cache, what
    :func:`softmax_cross_entropy_backward` needs, is the (N,) per-row log-sum-exp.
    """
    _check_float(x)
    N, C, t = _labels(x, t)
    x = _rows(x)
    lse = backend.cupy.empty(N, dtype=x.dtype)
    nll = backend.cupy.empty(N, dtype=x.dtype)
    _softmax_xent_fwd(x, t, C, lse, nll)
    return nll.mean(), lse


def softmax_cross_entropy_backward(x, t, cache, gloss=None):
    """Gradient of ``gloss * loss`` w.r.t. the (N, C) logits: ``(softmax(x) - onehot(t)) * gloss / N``.

    ``cache`` is the (N,) log-sum-exp from the forward pass; ``gloss`` (a
    number or 0-d array, default 1) is read on the device (no host sync).
    """
    lse = cache
    _check_float(x, lse)
    N, C, t = _labels(x, t)
    gloss = backend.cupy.ones((), dtype=x.dtype) if gloss is None else gloss
    gloss = backend.cupy.asarray(gloss).astype(x.dtype, copy=False).reshape(())
    return _softmax_xent_bwd(x, _rows(lse), t, gloss, C, N)


def sgd_update(param, grad, lr, work=None):
    """In place: ``param -= lr * grad`` (same shapes); one kernel, so ``work`` is not needed."""
    _check_float(param, grad)
    _check_same_shape(param, grad)
    if param.flags.c_contiguous and grad.flags.c_contiguous and param.size:
        _sgd_update_x4(grad.reshape(-1), lr, param.size, param.reshape(-1), size=-(-param.size // 4))
        return
    _sgd_update(grad, lr, param)


def momentum_update(param, grad, velocity, lr, momentum, work=None):
    """In place, PyTorch semantics: ``velocity = momentum * velocity + grad; param -= lr * velocity``."""
    _check_float(param, grad, velocity)
    _check_same_shape(param, grad, velocity)
    _momentum_update(grad, lr, momentum, param, velocity)


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, step, work=None):
    """In place Adam step (PyTorch semantics, with bias correction) for step = 1, 2, ...

    ``m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
    param -= lr * (m / (1 - b1**step)) / (sqrt(v / (1 - b2**step)) + eps)``.
    """
    _check_float(param, grad, m, v)
    _check_same_shape(param, grad, m, v)
    if step < 1:
        raise ValueError(f"Adam step counts from 1, got {step}")
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    _adam_update(grad, lr, beta1, beta2, eps, bc1, bc2, param, m, v)
