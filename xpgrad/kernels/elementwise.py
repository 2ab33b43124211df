"""The fused kernels CuPy writes the loop for (``cupy.ElementwiseKernel``), as data.

ReLU backward, and the thread-per-row log-softmax and cross-entropy kernels,
used for rows wider than the tiled kernels of :mod:`.tiled` take.
"""

from __future__ import annotations

from .specs import KernelSpec, register

# One thread per row, for rows too wide for the tiled kernels (C > TILE): a
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

xpgrad_relu_bwd = register(KernelSpec(
    name="xpgrad_relu_bwd",
    in_params="T x, T gy",
    out_params="T gx",
    operation="gx = x > (T)0 ? gy : (T)0;",
))

xpgrad_logsumexp_rows = register(KernelSpec(
    name="xpgrad_logsumexp_rows",
    in_params="raw T x, int32 C",
    out_params="T lse",
    operation="lse = xpgrad_logsumexp_row<T>(x, i * C, C);",
    preamble=_LOGSUMEXP_ROW,
    scalars=("C",),
    raw_ndim={"x": 2},
))

xpgrad_log_softmax_fwd = register(KernelSpec(
    name="xpgrad_log_softmax_fwd",
    in_params="T x, raw T lse, int32 C",
    out_params="T y",
    operation="y = x - lse[i / C];",
    scalars=("C",),
    raw_ndim={"lse": 1},
))

xpgrad_sum_rows = register(KernelSpec(
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

xpgrad_log_softmax_bwd = register(KernelSpec(
    name="xpgrad_log_softmax_bwd",
    in_params="T y, T gy, raw T s, int32 C",
    out_params="T gx",
    operation="gx = gy - exp(y) * s[i / C];",
    scalars=("C",),
    raw_ndim={"s": 1},
))

# A label outside [0, C) gives a NaN loss rather than reading out of bounds.
xpgrad_softmax_xent_fwd = register(KernelSpec(
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

xpgrad_softmax_xent_bwd = register(KernelSpec(
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
