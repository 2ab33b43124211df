"""The row kernels, over tiles of whole rows in shared memory (``cupy.RawKernel``), as data.

The row kernels (log-softmax and softmax cross-entropy, forward and
backward) work on tiles of whole rows. A thread per row reading its own row
reads memory with a stride of C values, which kept the earlier kernels at
30-50% of copy bandwidth; here a block first copies a tile of up to
``XPGRAD_TILE`` consecutive values (``min(THREADS, TILE / C)`` whole rows)
into shared memory with coalesced loads, eight per thread in flight, a thread
per row reduces its row there, and the block writes its output coalesced. So
each array is read once and written once, in whole cache lines. Rows wider
than a tile go to the thread-per-row kernels of :mod:`.elementwise`.

The mean loss of the forward kernel is a sum across blocks, deterministic as
:mod:`.prelude` explains.
"""

from __future__ import annotations

from .prelude import raw as _raw

# y = x - logsumexp(x) per row.
xpgrad_log_softmax_fwd_tiled = _raw("xpgrad_log_softmax_fwd_tiled", r"""
extern "C" __global__ void __launch_bounds__(XPGRAD_THREADS, XPGRAD_MIN_BLOCKS)
XPGRAD_KERNEL(const T* __restrict__ x, T* __restrict__ y, long long N, int C)
{
    __shared__ T tile[XPGRAD_TILE];
    __shared__ T lse[XPGRAD_THREADS];
    const int tid = threadIdx.x, R = xpgrad_tile_rows(C);
    for (long long r0 = (long long)blockIdx.x * R; r0 < N; r0 += (long long)gridDim.x * R) {
        const int rows = (int)min((long long)R, N - r0), n = rows * C;
        xpgrad_load_tile(x + r0 * C, n, tile);
        if (tid < rows) {
            lse[tid] = xpgrad_lse(tile + tid * C, C);
        }
        __syncthreads();
        T* out = y + r0 * C;
        xpgrad_walk at(tid, C);
#pragma unroll
        for (int k = 0; k < XPGRAD_PER_THREAD; ++k, at.next()) {
            const int e = tid + k * XPGRAD_THREADS;
            if (e < n) {
                out[e] = tile[e] - lse[at.row];
            }
        }
        __syncthreads();
    }
}
""")

# gx = gy - exp(y) * sum(gy) per row: gy goes through the tile for its row sums, y is read coalesced.
# Registers for 4 blocks per SM: with no minimum, ptxas held float64 to 48 registers and spilled.
xpgrad_log_softmax_bwd_tiled = _raw("xpgrad_log_softmax_bwd_tiled", r"""
extern "C" __global__ void __launch_bounds__(XPGRAD_THREADS, 4)
XPGRAD_KERNEL(const T* __restrict__ y, const T* __restrict__ gy, T* __restrict__ gx, long long N, int C)
{
    __shared__ T tile[XPGRAD_TILE];
    __shared__ T sums[XPGRAD_THREADS];
    const int tid = threadIdx.x, R = xpgrad_tile_rows(C);
    for (long long r0 = (long long)blockIdx.x * R; r0 < N; r0 += (long long)gridDim.x * R) {
        const int rows = (int)min((long long)R, N - r0), n = rows * C;
        const T* y_tile = y + r0 * C;
        T yv[XPGRAD_PER_THREAD];  // loaded first, so that they are in flight with gy's
#pragma unroll
        for (int k = 0; k < XPGRAD_PER_THREAD; ++k) {
            const int e = tid + k * XPGRAD_THREADS;
            yv[k] = e < n ? y_tile[e] : (T)0;
        }
        xpgrad_load_tile(gy + r0 * C, n, tile);
        if (tid < rows) {
            const T* row = tile + tid * C;
            T s = 0;
            for (int j = 0; j < C; ++j) {
                s += row[j];
            }
            sums[tid] = s;
        }
        __syncthreads();
        T* out = gx + r0 * C;
        xpgrad_walk at(tid, C);
#pragma unroll
        for (int k = 0; k < XPGRAD_PER_THREAD; ++k, at.next()) {
            const int e = tid + k * XPGRAD_THREADS;
            if (e < n) {
                out[e] = tile[e] - exp(yv[k]) * sums[at.row];
            }
        }
        __syncthreads();
    }
}
""")

# Per row of logits x with label t: lse = logsumexp(x); the mean over rows of lse - x[t] (NaN for a
# label outside [0, C)) into loss[0]. partial: one double per block.
xpgrad_softmax_xent_fwd_tiled = _raw("xpgrad_softmax_xent_fwd_tiled", r"""
extern "C" __global__ void __launch_bounds__(XPGRAD_THREADS, XPGRAD_MIN_BLOCKS)
XPGRAD_KERNEL(const T* __restrict__ x, const S* __restrict__ t, T* __restrict__ lse, T* __restrict__ loss,
              double* __restrict__ partial, unsigned int* __restrict__ ticket, long long N, int C)
{
    __shared__ T tile[XPGRAD_TILE];
    __shared__ double scratch[XPGRAD_THREADS];
    const int tid = threadIdx.x, R = xpgrad_tile_rows(C);
    double acc = 0;
    for (long long r0 = (long long)blockIdx.x * R; r0 < N; r0 += (long long)gridDim.x * R) {
        const int rows = (int)min((long long)R, N - r0), n = rows * C;
        const S label = tid < rows ? t[r0 + tid] : (S)0;  // in flight with the tile's loads
        xpgrad_load_tile(x + r0 * C, n, tile);
        if (tid < rows) {
            const T* row = tile + tid * C;
            const T l = xpgrad_lse(row, C);
            lse[r0 + tid] = l;
            acc += (label >= 0 && label < C) ? (double)(l - row[label]) : (double)xpgrad_nan(l);
        }
        __syncthreads();
    }
    const double block_total = xpgrad_block_sum(acc, scratch);
    if (tid == 0) {
        partial[blockIdx.x] = block_total;
    }
    if (xpgrad_last_block(ticket)) {
        const double total = xpgrad_sum_partials(partial, 1, 0, scratch);
        if (tid == 0) {
            loss[0] = (T)(total / (double)N);
        }
    }
}
""", types=("T", "S"))

# gx = (softmax(x) - onehot(t)) * gloss[0] / N from the forward pass's lse; elementwise, in tiles of whole
# rows so that a thread finds its elements' rows without dividing.
xpgrad_softmax_xent_bwd_tiled = _raw("xpgrad_softmax_xent_bwd_tiled", r"""
extern "C" __global__ void __launch_bounds__(XPGRAD_THREADS)
XPGRAD_KERNEL(const T* __restrict__ x, const T* __restrict__ lse, const S* __restrict__ t,
              const T* __restrict__ gloss, T* __restrict__ gx, long long N, int C)
{
    const int tid = threadIdx.x, R = xpgrad_tile_rows(C);
    const T scale = gloss[0] / (T)N;
    for (long long r0 = (long long)blockIdx.x * R; r0 < N; r0 += (long long)gridDim.x * R) {
        const int rows = (int)min((long long)R, N - r0), n = rows * C;
        const T* x_tile = x + r0 * C;
        T* out = gx + r0 * C;
        T xv[XPGRAD_PER_THREAD], lv[XPGRAD_PER_THREAD];
        bool hit[XPGRAD_PER_THREAD];
        xpgrad_walk at(tid, C);
#pragma unroll
        for (int k = 0; k < XPGRAD_PER_THREAD; ++k, at.next()) {  // every load of the tile first
            const int e = tid + k * XPGRAD_THREADS;
            const bool inside = e < n;
            xv[k] = inside ? x_tile[e] : (T)0;
            lv[k] = inside ? lse[r0 + at.row] : (T)0;
            hit[k] = inside && t[r0 + at.row] == at.col;
        }
#pragma unroll
        for (int k = 0; k < XPGRAD_PER_THREAD; ++k) {
            const int e = tid + k * XPGRAD_THREADS;
            if (e < n) {
                out[e] = (exp(xv[k] - lv[k]) - (hit[k] ? (T)1 : (T)0)) * scale;
            }
        }
    }
}
""", types=("T", "S"))
