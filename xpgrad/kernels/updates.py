"""The optimizer updates (``cupy.RawKernel``), as data: SGD, momentum and Adam on flat arrays.

Each reads its learning rate from the optimizer's ``schedule``, a float64
table of the base rate and K factors, at the ``step`` counter (updates
done), both in device memory, and with ``advance`` sets ``step[0] += 1``
once every block has read it (the last-block ticket of :mod:`.prelude`). So
one launch does a whole update, and a captured CUDA graph replays it with the
learning rate of each step.

Four elements per thread, at i, i + n4, i + 2 n4 and i + 3 n4 with
n4 = ceil(n / 4), so each of a warp's loads is still coalesced; all of a
thread's loads are issued before its stores, and blocks loop over the rest
of the work (at most MAX_BLOCKS of them). On an H200 the SGD ElementwiseKernel
these replace ran at 87-90% of the device-to-device copy bandwidth with this
layout, against 60-64% with one element per thread, which CuPy's per-thread
loop and index arithmetic seemed to cap (bench/README.md has the numbers);
momentum and Adam take the same layout here. These raw kernels have not been
timed on a GPU yet (bench/gpu_kernels.py does).
"""

from __future__ import annotations

from .prelude import raw as _raw

# The learning rate of update s + 1 (s = updates done): schedule[0] * schedule[1 + min(s, factors - 1)], in
# double and then cast to T, as a Python float becomes a scalar of the parameter's dtype in the generic twin.
# A negative s reads the first factor rather than memory before the table.
_HELPERS = r"""
__device__ __forceinline__ T xpgrad_lr(const double* schedule, long long s, long long factors) {
    const long long k = s < 0 ? 0 : (s < factors - 1 ? s : factors - 1);
    return (T)(schedule[0] * schedule[1 + k]);
}
"""

# p -= lr * g.
xpgrad_sgd_update = _raw("xpgrad_sgd_update", _HELPERS + r"""
extern "C" __global__ void __launch_bounds__(XPGRAD_THREADS)
XPGRAD_KERNEL(T* __restrict__ p, const T* __restrict__ g, const double* __restrict__ schedule,
              long long* __restrict__ step, unsigned int* __restrict__ ticket, long long n, long long factors,
              int advance)
{
    const long long s = step[0], n4 = (n + 3) / 4;
    const T lr = xpgrad_lr(schedule, s, factors);
    for (long long i = (long long)blockIdx.x * XPGRAD_THREADS + threadIdx.x; i < n4;
         i += (long long)gridDim.x * XPGRAD_THREADS) {
        T pv[4], gv[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const long long k = i + r * n4;
            pv[r] = k < n ? p[k] : (T)0;
            gv[r] = k < n ? g[k] : (T)0;
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const long long k = i + r * n4;
            if (k < n) {
                p[k] = pv[r] - lr * gv[r];
            }
        }
    }
    if (advance) {
        xpgrad_advance(step, s, ticket);
    }
}
""")

# v = mu * v + g; p -= lr * v (PyTorch's momentum).
xpgrad_momentum_update = _raw("xpgrad_momentum_update", _HELPERS + r"""
extern "C" __global__ void __launch_bounds__(XPGRAD_THREADS)
XPGRAD_KERNEL(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ v, const double* __restrict__ schedule,
              long long* __restrict__ step, unsigned int* __restrict__ ticket, long long n, long long factors,
              double momentum, int advance)
{
    const long long s = step[0], n4 = (n + 3) / 4;
    const T lr = xpgrad_lr(schedule, s, factors), mu = (T)momentum;
    for (long long i = (long long)blockIdx.x * XPGRAD_THREADS + threadIdx.x; i < n4;
         i += (long long)gridDim.x * XPGRAD_THREADS) {
        T pv[4], gv[4], vv[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const long long k = i + r * n4;
            pv[r] = k < n ? p[k] : (T)0;
            gv[r] = k < n ? g[k] : (T)0;
            vv[r] = k < n ? v[k] : (T)0;
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const long long k = i + r * n4;
            if (k < n) {
                const T w = mu * vv[r] + gv[r];
                v[k] = w;
                p[k] = pv[r] - lr * w;
            }
        }
    }
    if (advance) {
        xpgrad_advance(step, s, ticket);
    }
}
""")

# Adam update t = s + 1 (PyTorch's, with bias correction): m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g g;
# p -= lr (m / bc1) / (sqrt(v / bc2) + eps), with bc = 1 - beta^t. The numbers that depend on the step
# (lr, bc1, bc2) and the hyperparameters' 1 - beta are computed in double and cast to T, as the generic
# twin's Python floats are; the rest is arithmetic in T.
xpgrad_adam_update = _raw("xpgrad_adam_update", _HELPERS + r"""
extern "C" __global__ void __launch_bounds__(XPGRAD_THREADS)
XPGRAD_KERNEL(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v,
              const double* __restrict__ schedule, long long* __restrict__ step, unsigned int* __restrict__ ticket,
              long long n, long long factors, double beta1, double beta2, double eps, int advance)
{
    const long long s = step[0], n4 = (n + 3) / 4;
    const double t = (double)(s + 1);
    const T lr = xpgrad_lr(schedule, s, factors);
    const T bc1 = (T)(1.0 - pow(beta1, t)), bc2 = (T)(1.0 - pow(beta2, t));
    const T b1 = (T)beta1, b2 = (T)beta2, c1 = (T)(1.0 - beta1), c2 = (T)(1.0 - beta2), e = (T)eps;
    for (long long i = (long long)blockIdx.x * XPGRAD_THREADS + threadIdx.x; i < n4;
         i += (long long)gridDim.x * XPGRAD_THREADS) {
        T pv[4], gv[4], mv[4], vv[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const long long k = i + r * n4;
            pv[r] = k < n ? p[k] : (T)0;
            gv[r] = k < n ? g[k] : (T)0;
            mv[r] = k < n ? m[k] : (T)0;
            vv[r] = k < n ? v[k] : (T)0;
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const long long k = i + r * n4;
            if (k < n) {
                const T m1 = b1 * mv[r] + c1 * gv[r];
                const T v1 = b2 * vv[r] + c2 * gv[r] * gv[r];
                m[k] = m1;
                v[k] = v1;
                p[k] = pv[r] - lr * (m1 / bc1) / (sqrt(v1 / bc2) + e);
            }
        }
    }
    if (advance) {
        xpgrad_advance(step, s, ticket);
    }
}
""")
