"""The training step's fused kernels (``cupy.RawKernel``), as data: the batch gather, bias + ReLU
forward and backward, and the cross-entropy end of a step.

They read what changes from one step to the next (the batch counter) from
device memory, and the gather advances that counter itself, so a captured
CUDA graph replays them unchanged. The sums across blocks (the bias
gradient, a batch's loss and correct count) are deterministic, as
:mod:`.prelude` explains.
"""

from __future__ import annotations

from .prelude import raw as _raw

# The batch order[s * batch + r], r < rows, of the rows of x (D values each) and of the labels t, into out_x and
# out_t, a block per row; s = step[0], then step[0] = s + 1 once every block has read it.
xpgrad_gather_batch = _raw("xpgrad_gather_batch", r"""
extern "C" __global__ void __launch_bounds__(XPGRAD_THREADS)
XPGRAD_KERNEL(const unsigned char* __restrict__ x, const S* __restrict__ t, const long long* __restrict__ order,
              long long* __restrict__ step, T* __restrict__ out_x, S* __restrict__ out_t,
              unsigned int* __restrict__ ticket, long long D, long long batch, int rows, T multiplier, T offset)
{
    const long long s = step[0], first = s * batch;
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const long long src = order[first + r];
        const unsigned char* from = x + src * D;
        T* to = out_x + (long long)r * D;
        for (long long c = threadIdx.x; c < D; c += XPGRAD_THREADS) {
            // Two roundings, as the generic multiply and subtract: no fused multiply-add.
            to[c] = xpgrad_sub_rn(xpgrad_mul_rn((T)from[c], multiplier), offset);
        }
        if (threadIdx.x == 0) {
            out_t[r] = t[src];
        }
    }
    xpgrad_advance(step, s, ticket);
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

# gx = gy * (y > 0) for (N, C) y and gy, a multiply as in the generic twin, so that a NaN or infinite gy gives NaN
# even where y <= 0; and gb = the column sums of gx, added in double in a fixed order and cast to T once.
# The C columns are cut into `tiles` tiles of W = ceil(C / tiles) <= XPGRAD_THREADS columns, and a block's threads
# into XPGRAD_THREADS / W lanes of W, so that a warp reads consecutive values (whole rows when C is narrow).
# A unit of work is a tile by a row group: group g takes the chunks g, g + groups, ... of lanes * PER_THREAD rows,
# each lane every lanes-th row of a chunk, its loads of a chunk all in flight together. A unit writes its
# columns' sums to partial[g * C + c]; the last block adds them up per column, the groups in a fixed order.
# gx may be gy itself: each element is read before it is written, by the same thread.
xpgrad_bias_relu_bwd = _raw("xpgrad_bias_relu_bwd", r"""
__device__ __forceinline__ double xpgrad_lanes_sum(double value, double* scratch, int lanes, int W, int col) {
    scratch[threadIdx.x] = value;
    __syncthreads();
    double total = 0;
    if (threadIdx.x < W) {
        for (int l = 0; l < lanes; ++l) {
            total += scratch[l * W + col];
        }
    }
    __syncthreads();
    return total;
}

extern "C" __global__ void __launch_bounds__(XPGRAD_THREADS)
XPGRAD_KERNEL(const T* y, const T* gy, T* gx, T* __restrict__ gb, double* __restrict__ partial,
              unsigned int* __restrict__ ticket, long long N, int C, int tiles, int groups)
{
    __shared__ double scratch[XPGRAD_THREADS];
    const int W = (C + tiles - 1) / tiles, lanes = XPGRAD_THREADS / W;
    const int lane = threadIdx.x / W, col = threadIdx.x - lane * W;
    const long long chunk = (long long)lanes * XPGRAD_PER_THREAD;
    for (int unit = blockIdx.x; unit < tiles * groups; unit += gridDim.x) {
        const int g = unit / tiles, c = (unit - g * tiles) * W + col;
        const bool mine = lane < lanes && c < C;
        double acc = 0;
        for (long long r0 = g * chunk + lane; mine && r0 < N; r0 += groups * chunk) {
            T yv[XPGRAD_PER_THREAD], gv[XPGRAD_PER_THREAD];
#pragma unroll
            for (int k = 0; k < XPGRAD_PER_THREAD; ++k) {
                const long long r = r0 + (long long)k * lanes;
                yv[k] = r < N ? y[r * C + c] : (T)0;
                gv[k] = r < N ? gy[r * C + c] : (T)0;
            }
#pragma unroll
            for (int k = 0; k < XPGRAD_PER_THREAD; ++k) {
                const long long r = r0 + (long long)k * lanes;
                if (r < N) {
                    const T v = gv[k] * (yv[k] > (T)0 ? (T)1 : (T)0);
                    gx[r * C + c] = v;
                    acc += (double)v;
                }
            }
        }
        const double total = xpgrad_lanes_sum(acc, scratch, lanes, W, col);
        if (threadIdx.x < W && c < C) {
            partial[(long long)g * C + c] = total;
        }
    }
    if (xpgrad_last_block(ticket)) {
        for (int tile = 0; tile < tiles; ++tile) {
            const int c = tile * W + col;
            double acc = 0;
            if (lane < lanes && c < C) {
#pragma unroll 8
                for (int g = lane; g < groups; g += lanes) {
                    acc += __ldcg(partial + (long long)g * C + c);
                }
            }
            const double total = xpgrad_lanes_sum(acc, scratch, lanes, W, col);
            if (threadIdx.x < W && c < C) {
                gb[c] = (T)total;
            }
        }
    }
}
""")

# The loss end of a training step, for (N, C) logits z and labels t: gz = (softmax - onehot(t)) / N; the mean
# loss into loss[0], the batch's summed loss added to loss_sum[0] and its number of correct predictions
# (argmax == label; the first maximum counts, NaN as the largest) to correct[0]. A thread per row, as a
# training batch has few. partial: two doubles per block. A batch fills a block or two, so the kernel may take
# the registers it wants (1 block per SM): with no minimum, ptxas stopped at 40 (float32) and 48 (float64) and spilled.
xpgrad_softmax_xent_step = _raw("xpgrad_softmax_xent_step", r"""
extern "C" __global__ void __launch_bounds__(XPGRAD_THREADS, 1)
XPGRAD_KERNEL(const T* __restrict__ z, const S* __restrict__ t, T* __restrict__ gz, T* __restrict__ loss,
              T* __restrict__ loss_sum, long long* __restrict__ correct, double* __restrict__ partial,
              unsigned int* __restrict__ ticket, long long N, int C)
{
    __shared__ double scratch[XPGRAD_THREADS];
    const T scale = (T)1 / (T)N;
    double nll = 0, hits = 0;
    for (long long row = (long long)blockIdx.x * XPGRAD_THREADS + threadIdx.x; row < N;
         row += (long long)gridDim.x * XPGRAD_THREADS) {
        const T* zr = z + row * C;
        T best = zr[0];
        int arg = 0;
        for (int j = 1; j < C; ++j) {
            const T v = zr[j];
            if (best == best && (v > best || v != v)) {
                best = v;
                arg = j;
            }
        }
        T s = 0;
        for (int j = 0; j < C; ++j) {
            s += exp(zr[j] - best);
        }
        const T lse = best + log(s);
        const S label = t[row];
        const bool valid = label >= 0 && label < C;
        nll += valid ? (double)(lse - zr[label]) : (double)xpgrad_nan(lse);
        hits += (valid && arg == label) ? 1.0 : 0.0;
        T* g = gz + row * C;
        for (int j = 0; j < C; ++j) {
            const T hit = j == label ? (T)1 : (T)0;
            g[j] = (exp(zr[j] - lse) - hit) * scale;
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
            loss[0] = (T)(total / (double)N);
            loss_sum[0] += (T)total;
            correct[0] += (long long)total_hits;
        }
    }
}
""", types=("T", "S"))
