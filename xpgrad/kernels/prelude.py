"""The CUDA every raw kernel is compiled with, and how a raw kernel is registered.

:data:`PRELUDE` holds the device helpers the raw kernels of :mod:`.tiled`,
:mod:`.step` and :mod:`.updates` share: tiles of whole rows in shared memory,
block sums, and the last-block ticket.

Sums across blocks are deterministic: each block adds its part in a fixed
order and writes it to ``partial``; the last block to finish, found with an
atomic ticket that wraps back to 0, adds the parts in block order. So the
same launch on the same data gives the same bits every time. The same ticket
lets a kernel change a counter that all its threads read (the updates' and
the batch gather's ``step``) only after every block has read it.
"""

from __future__ import annotations

from .specs import RawKernelSpec, register

PRELUDE = r"""
// For the forward row kernels: ask for registers enough for three quarters of an SM of threads (6 blocks, 40
// registers) in float32 and half of one (4 blocks, 64 registers) in float64; the more blocks, the more loads in
// flight. A full SM (8 blocks, 32 registers) spilled log-softmax in float32 (NVRTC 12.9, sm_90); what the fewer
// blocks cost is not measured yet. tests/test_kernels_compile.py fails on any spill.
#define XPGRAD_MIN_BLOCKS (sizeof(T) == 4 ? 6 : 4)

__device__ __forceinline__ float xpgrad_nan(float) { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ double xpgrad_nan(double) { return __longlong_as_double(0x7ff8000000000000LL); }

// Whole rows of C values per tile: as many as XPGRAD_TILE values hold, at most one per thread.
__device__ __forceinline__ int xpgrad_tile_rows(int C) { return min(XPGRAD_THREADS, XPGRAD_TILE / C); }

// The row and column of a thread's elements first, first + XPGRAD_THREADS, ... of a tile of rows of C
// values, stepped without a division per element.
struct xpgrad_walk {
    int row, col, rows_step, cols_step, C;
    __device__ xpgrad_walk(int first, int C_) : C(C_) {
        row = first / C;
        col = first - row * C;
        rows_step = XPGRAD_THREADS / C;
        cols_step = XPGRAD_THREADS - rows_step * C;
    }
    __device__ void next() {
        row += rows_step;
        col += cols_step;
        if (col >= C) {
            col -= C;
            ++row;
        }
    }
};

// n <= XPGRAD_TILE consecutive values into the shared tile: coalesced loads, all of a thread's loads
// issued before its stores; then the block waits.
__device__ __forceinline__ void xpgrad_load_tile(const T* __restrict__ src, int n, T* tile) {
    T v[XPGRAD_PER_THREAD];
#pragma unroll
    for (int k = 0; k < XPGRAD_PER_THREAD; ++k) {
        const int e = threadIdx.x + k * XPGRAD_THREADS;
        v[k] = e < n ? src[e] : (T)0;
    }
#pragma unroll
    for (int k = 0; k < XPGRAD_PER_THREAD; ++k) {
        const int e = threadIdx.x + k * XPGRAD_THREADS;
        if (e < n) {
            tile[e] = v[k];
        }
    }
    __syncthreads();
}

// log(sum(exp(row))) of C values: the max first, then the sum, as the thread-per-row kernels do.
__device__ __forceinline__ T xpgrad_lse(const T* row, int C) {
    T m = row[0];
    for (int j = 1; j < C; ++j) {
        const T v = row[j];
        m = v > m ? v : m;
    }
    T s = 0;
    for (int j = 0; j < C; ++j) {
        s += exp(row[j] - m);
    }
    return m + log(s);
}

// The sum of value over the block's threads, added in a fixed order; every thread gets it.
// scratch: XPGRAD_THREADS doubles of shared memory.
__device__ double xpgrad_block_sum(double value, double* scratch) {
    const int tid = threadIdx.x;
    scratch[tid] = value;
    __syncthreads();
    for (int half = XPGRAD_THREADS / 2; half > 0; half >>= 1) {
        if (tid < half) {
            scratch[tid] += scratch[tid + half];
        }
        __syncthreads();
    }
    const double total = scratch[0];
    __syncthreads();
    return total;
}

// Whether this block is the last of the grid to get here; every thread calls it once, after the block's
// partial results are written. The ticket counts blocks and wraps to 0 after the last one.
__device__ bool xpgrad_last_block(unsigned int* ticket) {
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicInc(ticket, gridDim.x - 1) == gridDim.x - 1;
    }
    __syncthreads();
    return last;
}

// a * b and a - b rounded once each, never fused into one multiply-add: as NumPy computes them.
__device__ __forceinline__ float xpgrad_mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double xpgrad_mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float xpgrad_sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double xpgrad_sub_rn(double a, double b) { return __dsub_rn(a, b); }

// step[0] = s + 1, where s is the step[0] every thread read at its start: by the last block, so only after every
// block has read it. Every thread calls it once, at its end.
__device__ void xpgrad_advance(long long* step, long long s, unsigned int* ticket) {
    if (xpgrad_last_block(ticket) && threadIdx.x == 0) {
        step[0] = s + 1;
    }
}

// In the last block: the sum over blocks k, in block order, of partial[k * stride + offset].
__device__ double xpgrad_sum_partials(const double* partial, int stride, int offset, double* scratch) {
    double acc = 0;
    for (int k = threadIdx.x; k < (int)gridDim.x; k += XPGRAD_THREADS) {
        acc += __ldcg(partial + k * stride + offset);
    }
    return xpgrad_block_sum(acc, scratch);
}
"""


def raw(name: str, code: str, types=("T",)) -> RawKernelSpec:
    """Register the raw kernel ``name``, compiled after :data:`PRELUDE`."""
    return register(RawKernelSpec(name=name, code=code, types=types, prelude=PRELUDE))
