"""The fused kernels CuPy writes the loop for (``cupy.ElementwiseKernel``), as data.

ReLU backward; the thread-per-row log-softmax and cross-entropy kernels,
used for rows wider than the tiled kernels of :mod:`.tiled` take; and the
optimizer updates, each in two forms: with the learning rate (and Adam's bias
corrections) passed as numbers (``*_update``), and read on the device from a
per-step schedule at a step counter (``*_step``), so that a CUDA graph can
replay the same launch every step.
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

# SGD, four elements per thread, at i, i + n4, i + 2 n4 and i + 3 n4 (each
# load still coalesced), on a quarter of the threads. On an H200 this ran at
# 87-90% of the device-to-device copy bandwidth against 60-64% for the
# one-element-per-thread kernel below, which CuPy's per-thread loop and index
# arithmetic seem to cap. The same change made ReLU backward slower (its
# second load depends on the first), and a thread per whole row made the
# log-softmax kernels slower: bench/README.md has the numbers.
xpgrad_sgd_update_x4 = register(KernelSpec(
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

xpgrad_sgd_update = register(KernelSpec(
    name="xpgrad_sgd_update",
    in_params="T g, T lr",
    out_params="T p",
    operation="p -= lr * g;",
    scalars=("lr",),
))

xpgrad_momentum_update = register(KernelSpec(
    name="xpgrad_momentum_update",
    in_params="T g, T lr, T mu",
    out_params="T p, T v",
    operation="""
    v = mu * v + g;
    p -= lr * v;
    """,
    scalars=("lr", "mu"),
))

xpgrad_adam_update = register(KernelSpec(
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


# The device-resident updates: the same arithmetic as the updates above, with
# the step-varying numbers read from row step[0] - 1 of the schedule, a
# (steps, 3) float64 table of (lr, 1 - beta1**t, 1 - beta2**t) passed flat,
# cast to T as CuPy casts a Python float passed for a T parameter.
xpgrad_sgd_step_x4 = register(KernelSpec(
    name="xpgrad_sgd_step_x4",
    in_params="raw T g, raw float64 schedule, raw int64 step, int64 n",
    out_params="raw T p",
    operation="""
    const T lr = (T)schedule[3 * (step[0] - 1)];
    const ptrdiff_t n4 = (n + 3) / 4;
    #pragma unroll
    for (int r = 0; r < 4; ++r) {
        const ptrdiff_t k = i + r * n4;
        if (k < n) {
            p[k] -= lr * g[k];
        }
    }
    """,
    scalars=("n",),
    raw_ndim={"g": 1, "schedule": 1, "step": 0, "p": 1},
))

xpgrad_momentum_step = register(KernelSpec(
    name="xpgrad_momentum_step",
    in_params="T g, raw float64 schedule, raw int64 step, T mu",
    out_params="T p, T v",
    operation="""
    const T lr = (T)schedule[3 * (step[0] - 1)];
    v = mu * v + g;
    p -= lr * v;
    """,
    scalars=("mu",),
    raw_ndim={"schedule": 1, "step": 0},
))

xpgrad_adam_step = register(KernelSpec(
    name="xpgrad_adam_step",
    in_params="T g, raw float64 schedule, raw int64 step, T beta1, T beta2, T eps",
    out_params="T p, T m, T v",
    operation="""
    const ptrdiff_t k = 3 * (step[0] - 1);
    const T lr = (T)schedule[k], bc1 = (T)schedule[k + 1], bc2 = (T)schedule[k + 2];
    m = beta1 * m + ((T)1 - beta1) * g;
    v = beta2 * v + ((T)1 - beta2) * g * g;
    p -= lr * (m / bc1) / (sqrt(v / bc2) + eps);
    """,
    scalars=("beta1", "beta2", "eps"),
    raw_ndim={"schedule": 1, "step": 0},
))
