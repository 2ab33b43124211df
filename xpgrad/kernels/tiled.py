"""The fused kernels whose threads cooperate (``cupy.RawKernel``), as data.

The row kernels (log-softmax and softmax cross-entropy, forward and
backward) work on tiles of whole rows. A thread per row reading its own row
reads memory with a stride of C values, which kept the earlier kernels at
30-50% of copy bandwidth; here a block first copies a tile of up to
``XPGRAD_TILE`` consecutive values (``min(THREADS, TILE / C)`` whole rows)
into shared memory with coalesced loads, eight per thread in flight, a thread
per row reduces its row there, and the block writes its output coalesced. So
each array is read once and written once, in whole cache lines. Rows wider
than a tile go to the thread-per-row kernels of :mod:`.elementwise`.

The training-step kernels (gather, bias + ReLU, the cross-entropy end of a
step) read what changes from step to step (the step counter) from device
memory, so a captured CUDA graph replays them unchanged.

Sums across blocks (the mean loss, a batch's loss and correct count) are
deterministic: each block adds its part in a fixed order, writes it to
``partial``, and the last block to finish, found with an atomic ticket that
wraps back to 0, adds the parts in block order.
"""

from __future__ import annotations

from .specs import RawKernelSpec, register

PRELUDE = r"""
// For the forward row kernels: ask for registers enough for a full SM of threads (2048) in float32 and
// half of one in float64, which the compiler reaches without spilling; the more blocks, the more loads in flight.
#define XPGRAD_MIN_BLOCKS (2048 / XPGRAD_THREADS / (sizeof(T) / 4))

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

// In the last block: the sum over blocks k, in block order, of partial[k * stride + offset].
__device__ double xpgrad_sum_partials(const double* partial, int stride, int offset, double* scratch) {
    double acc = 0;
    for (int k = threadIdx.x; k < (int)gridDim.x; k += XPGRAD_THREADS) {
        acc += __ldcg(partial + k * stride + offset);
    }
    return xpgrad_block_sum(acc, scratch);
}
"""


def _raw(name: str, code: str, types=("T",)) -> RawKernelSpec:
    return register(RawKernelSpec(name=name, code=code, types=types, prelude=PRELUDE))


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
xpgrad_log_softmax_bwd_tiled = _raw("xpgrad_log_softmax_bwd_tiled", r"""
extern "C" __global__ void __launch_bounds__(XPGRAD_THREADS)
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

# The batch order[step[0] * batch + r], r < rows, of the rows of x (D values each) and of the labels t,
# into out_x and out_t: a block per row.
xpgrad_gather_batch = _raw("xpgrad_gather_batch", r"""
extern "C" __global__ void __launch_bounds__(XPGRAD_THREADS)
XPGRAD_KERNEL(const T* __restrict__ x, const S* __restrict__ t, const long long* __restrict__ order,
              const long long* __restrict__ step, T* __restrict__ out_x, S* __restrict__ out_t,
              long long D, long long batch, int rows)
{
    const long long first = step[0] * batch;
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const long long src = order[first + r];
        const T* from = x + src * D;
        T* to = out_x + (long long)r * D;
        for (long long c = threadIdx.x; c < D; c += XPGRAD_THREADS) {
            to[c] = from[c];
        }
        if (threadIdx.x == 0) {
            out_t[r] = t[src];
        }
    }
}
""", types=("T", "S"))

# h = max(h + b, 0) in place, for (N, C) h and (C,) b; NaN stays NaN, as with maximum. Tiles of
# max(1, TILE / C) whole rows, the threads over their values.
xpgrad_bias_relu_fwd = _raw("xpgrad_bias_relu_fwd", r"""
extern "C" __global__ void __launch_bounds__(XPGRAD_THREADS)
XPGRAD_KERNEL(T* __restrict__ h, const T* __restrict__ b, long long N, int C)
{
    const int R = max(1, XPGRAD_TILE / C);
    for (long long r0 = (long long)blockIdx.x * R; r0 < N; r0 += (long long)gridDim.x * R) {
        const int n = (int)min((long long)R, N - r0) * C;
        T* tile = h + r0 * C;
        xpgrad_walk at(threadIdx.x, C);
        for (int e = threadIdx.x; e < n; e += XPGRAD_THREADS, at.next()) {
            const T v = tile[e] + b[at.col];
            tile[e] = v < (T)0 ? (T)0 : v;
        }
    }
}
""")

# The loss end of a training step, for (N, C) logits z + b (b only if has_bias) and labels t:
# gz = (softmax - onehot(t)) / N; the batch's summed loss added to loss_sum[0] and its number of
# correct predictions (argmax == label; the first maximum counts, NaN as the largest) to correct[0];
# and step[0] += 1, once every thread has read it. A thread per row, as a training batch has few.
# partial: two doubles per block.
xpgrad_softmax_xent_step = _raw("xpgrad_softmax_xent_step", r"""
__device__ __forceinline__ T xpgrad_logit(const T* z, const T* b, int has_bias, int j) {
    return has_bias ? z[j] + b[j] : z[j];
}

extern "C" __global__ void __launch_bounds__(XPGRAD_THREADS)
XPGRAD_KERNEL(const T* __restrict__ z, const T* __restrict__ b, const S* __restrict__ t, T* __restrict__ gz,
              T* __restrict__ loss_sum, long long* __restrict__ correct, long long* __restrict__ step,
              double* __restrict__ partial, unsigned int* __restrict__ ticket, long long N, int C, int has_bias)
{
    __shared__ double scratch[XPGRAD_THREADS];
    const T scale = (T)1 / (T)N;
    double nll = 0, hits = 0;
    for (long long row = (long long)blockIdx.x * XPGRAD_THREADS + threadIdx.x; row < N;
         row += (long long)gridDim.x * XPGRAD_THREADS) {
        const T* zr = z + row * C;
        T best = xpgrad_logit(zr, b, has_bias, 0);
        int arg = 0;
        for (int j = 1; j < C; ++j) {
            const T v = xpgrad_logit(zr, b, has_bias, j);
            if (best == best && (v > best || v != v)) {
                best = v;
                arg = j;
            }
        }
        T s = 0;
        for (int j = 0; j < C; ++j) {
            s += exp(xpgrad_logit(zr, b, has_bias, j) - best);
        }
        const T lse = best + log(s);
        const S label = t[row];
        const bool valid = label >= 0 && label < C;
        nll += valid ? (double)(lse - xpgrad_logit(zr, b, has_bias, (int)label)) : (double)xpgrad_nan(lse);
        hits += (valid && arg == label) ? 1.0 : 0.0;
        T* g = gz + row * C;
        for (int j = 0; j < C; ++j) {
            const T hit = j == label ? (T)1 : (T)0;
            g[j] = (exp(xpgrad_logit(zr, b, has_bias, j) - lse) - hit) * scale;
        }
    }
    nll = xpgrad_block_sum(nll, scratch);
    hits = xpgrad_block_sum(hits, scratch);
    if (threadIdx.x == 0) {
        partial[2 * blockIdx.x] = nll;
        partial[2 * blockIdx.x + 1] = hits;
    }
    if (xpgrad_last_block(ticket)) {
        const double total = xpgrad_sum_partials(partial, 2, 0, scratch);
        const double total_hits = xpgrad_sum_partials(partial, 2, 1, scratch);
        if (threadIdx.x == 0) {
            loss_sum[0] += (T)total;
            correct[0] += (long long)total_hits;
            step[0] += 1;
        }
    }
}
""", types=("T", "S"))
