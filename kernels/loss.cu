// kernels/loss.cu: softmax cross-entropy fused with its gradient, f32.
//
// No probability matrix is materialised. Per row: one pass over the logits keeps an online
// (max, sum of exp(x - max)) pair per thread, the pairs are merged across the row's threads
// (shuffles, then shared memory across warps) into the log-sum-exp, and a second pass writes
// dlogits = w * (exp(x - lse) - onehot). Rows of any length (an LM head's 50257 classes) stream
// through in strides of the row's thread count, so the kernel needs no row-sized buffer.
//
// Launch shape: blockDim = (tpr, rpb), tpr a multiple of 32 threads per row, rpb rows per block,
// tpr * rpb <= 256, grid.x = ceil(rows / rpb). Merge order depends only on (classes, tpr), so
// the result is deterministic.
#include "common.cuh"

namespace {

constexpr int MAX_WARPS = 8;

// The running max starts at the lowest finite float, not -inf, so a -inf logit (a masked class)
// adds exp(-inf) = 0 instead of exp(-inf - -inf) = NaN.
__device__ __forceinline__ float lowest() {
    return __uint_as_float(0xff7fffffu);
}

// Merges the partial softmax denominator (m2, s2) into (m, s): s is a sum of exp(x - m).
// Maxima stay finite (see lowest), so there is no exp(inf - inf). Symmetric, so both lanes of
// a shuffle pair end with the same bits.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
    const float mm = fmaxf(m, m2);
    s = s * expf(m - mm) + s2 * expf(m2 - mm);
    m = mm;
}

}  // namespace

// losses[r] = lse(logits[r]) - logits[r, labels[r]] (0 where labels[r] < 0) and
// dlogits[r, :] = weights[r] * (softmax(logits[r]) - onehot(labels[r])) (0 where ignored).
// Labels must be < classes (the host checks).
extern "C" __global__ void __launch_bounds__(256)
    loss_xent(gmem<float> dlogits, gmem<float> losses, gmem<const float> logits,
              gmem<const long long> labels, gmem<const float> weights, int rows, int classes) {
    SHARED(float, red, 2 * MAX_WARPS);
    const int row = blockIdx.x * blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const long long label = live ? labels[row] : -1;
    const bool used = label >= 0;
    const long long off = (long long)row * classes;
    const int tpr = blockDim.x;

    float m = lowest(), s = 0.f;
    if (used)
        for (int i = threadIdx.x; i < classes; i += tpr) {
            const float v = logits[off + i];
            if (v > m) {
                s = s * expf(m - v) + 1.f;
                m = v;
            } else {
                s += expf(v - m);
            }
        }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        merge(m, s, m2, s2);
    }
    const int nw = tpr / 32;
    const int base = threadIdx.y * nw;
    if (threadIdx.x % 32 == 0) {
        red[2 * (base + threadIdx.x / 32)] = m;
        red[2 * (base + threadIdx.x / 32) + 1] = s;
    }
    __syncthreads();
    m = lowest();
    s = 0.f;
    for (int w = 0; w < nw; ++w)
        merge(m, s, red[2 * (base + w)], red[2 * (base + w) + 1]);
    const float lse = m + logf(s);

    if (live) {
        if (used) {
            const float w = weights[row];
            for (int i = threadIdx.x; i < classes; i += tpr) {
                const float p = expf(logits[off + i] - lse);
                dlogits[off + i] = w * (p - (i == label ? 1.f : 0.f));
            }
        } else {
            for (int i = threadIdx.x; i < classes; i += tpr)
                dlogits[off + i] = 0.f;
        }
        if (threadIdx.x == 0)
            losses[row] = used ? lse - logits[off + label] : 0.f;
    }
}

EMU_REGISTER(loss_xent)
