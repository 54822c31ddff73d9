// Gradient-projection alignment for many clients at once (spec flexp-sfl.md section 2,
// `align = proj` on the clients and `server_agg = proj` on the server); host side in
// src/backend/cuda/ops/align.rs, reference in src/algorithms/flat.rs.
//
// Flat gradient buffers are cut into segments, one per (client, group). Everything is
// deterministic: no atomics, and every sum is taken in an order fixed by the launch shape.
// - align_seg_partials: each block reduces one chunk (<= ALIGN_CHUNK elements of one segment) to
//   the partial sums <g,a> and <a,a>, in double (the host reference accumulates in f64; products
//   of two f32 are exact in double, so only the summation order differs from it).
// - align_seg_reduce: one warp per segment adds its chunks' partials in chunk order and turns
//   them into the projection coefficient -<g,a>/<a,a> (0 when <g,a> >= 0 or a = 0).
// - align_seg_apply: client rule, g = g + coef·a, then g = g + lambda·a, each step rounded to f32
//   as flat::axpy does.
// - align_mean_rows / align_proj_mean: server rule over K gradients stacked [K, n]: the mean, and
//   the mean of the rows projected against it (the rows are read, never written).
//
// A chunk table entry is 4 ints: (segment, start in g, start in a, length). For the client rule
// a and g share offsets; for the server rule every row k is a segment of g whose partner is the
// mean, so "start in a" runs from 0.
#include "common.cuh"

#define ALIGN_THREADS 256
#define ALIGN_WARPS (ALIGN_THREADS / 32)

__device__ __forceinline__ double align_warp_sum(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// partials[2c] = <g, a> and partials[2c+1] = <a, a> over chunk c.
extern "C" __global__ void __launch_bounds__(ALIGN_THREADS)
    align_seg_partials(gmem<const float> g, gmem<const float> a, gmem<const int> chunks,
                       int nchunks, gmem<double> partials) {
    SHARED(double, s_ga, ALIGN_WARPS);
    SHARED(double, s_aa, ALIGN_WARPS);
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    // The chunk index is uniform over the block, so the barriers below are reached by all.
    for (int c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const long long g0 = chunks[4 * c + 1];
        const long long a0 = chunks[4 * c + 2];
        const int len = chunks[4 * c + 3];
        double ga = 0.0, aa = 0.0;
#pragma unroll 4
        for (int i = threadIdx.x; i < len; i += ALIGN_THREADS) {
            const double gv = g[g0 + i];
            const double av = a[a0 + i];
            ga += gv * av;
            aa += av * av;
        }
        ga = align_warp_sum(ga);
        aa = align_warp_sum(aa);
        if (lane == 0) {
            s_ga[warp] = ga;
            s_aa[warp] = aa;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            double tga = 0.0, taa = 0.0;
            for (int w = 0; w < ALIGN_WARPS; ++w) {
                tga += s_ga[w];
                taa += s_aa[w];
            }
            partials[2LL * c] = tga;
            partials[2LL * c + 1] = taa;
        }
        // The next chunk overwrites s_ga / s_aa.
        __syncthreads();
    }
}

// seg[3s] = <g, a>, seg[3s+1] = <a, a>, seg[3s+2] = the projection coefficient, from the partials
// of chunks seg_first[s] .. seg_first[s+1]. One warp per segment.
extern "C" __global__ void __launch_bounds__(ALIGN_THREADS)
    align_seg_reduce(gmem<const double> partials, gmem<const int> seg_first, int nseg,
                     gmem<double> seg) {
    const int lane = threadIdx.x & 31;
    const int warps = gridDim.x * ALIGN_WARPS;
    // Warp-uniform loop: every lane of a warp takes the same trip count.
    for (int s = blockIdx.x * ALIGN_WARPS + (threadIdx.x >> 5); s < nseg; s += warps) {
        const int c0 = seg_first[s];
        const int c1 = seg_first[s + 1];
        double ga = 0.0, aa = 0.0;
        for (int c = c0 + lane; c < c1; c += 32) {
            ga += partials[2LL * c];
            aa += partials[2LL * c + 1];
        }
        ga = align_warp_sum(ga);
        aa = align_warp_sum(aa);
        if (lane == 0) {
            seg[3LL * s] = ga;
            seg[3LL * s + 1] = aa;
            seg[3LL * s + 2] = (ga < 0.0 && aa > 0.0) ? -ga / aa : 0.0;
        }
    }
}

// Client rule on every chunk: if the segment conflicts, g = f32(g + coef·a); then
// g = f32(g + lambda·a). Both steps in double, rounded to f32 in between, as flat::axpy.
extern "C" __global__ void __launch_bounds__(ALIGN_THREADS)
    align_seg_apply(gmem<float> g, gmem<const float> a, gmem<const int> chunks, int nchunks,
                    gmem<const double> seg, float lambda) {
    const double lam = lambda;
    for (int c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const int s = chunks[4 * c];
        const long long g0 = chunks[4 * c + 1];
        const long long a0 = chunks[4 * c + 2];
        const int len = chunks[4 * c + 3];
        const double ga = seg[3LL * s];
        const double aa = seg[3LL * s + 1];
        const bool project = ga < 0.0 && aa > 0.0;
        const double coef = seg[3LL * s + 2];
        for (int i = threadIdx.x; i < len; i += ALIGN_THREADS) {
            const double av = a[a0 + i];
            float v = g[g0 + i];
            if (project)
                v = static_cast<float>(static_cast<double>(v) + coef * av);
            g[g0 + i] = static_cast<float>(static_cast<double>(v) + lam * av);
        }
    }
}

// m[j] = sum_k (1/K) · g[k, j], accumulated in double in row order and rounded once, as
// flat::weighted_sum.
extern "C" __global__ void __launch_bounds__(ALIGN_THREADS)
    align_mean_rows(gmem<const float> g, int k, int n, gmem<float> m) {
    const double w = 1.0 / static_cast<double>(k);
    for (long long j = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
         j += static_cast<long long>(gridDim.x) * blockDim.x) {
        double acc = 0.0;
        for (int r = 0; r < k; ++r)
            acc += w * static_cast<double>(g[static_cast<long long>(r) * n + j]);
        m[j] = static_cast<float>(acc);
    }
}

// out[j] = sum_k (1/K) · p_k[j] where p_k is row k projected against the mean m when it
// conflicts with it (seg holds row k's record, see align_seg_reduce).
extern "C" __global__ void __launch_bounds__(ALIGN_THREADS)
    align_proj_mean(gmem<const float> g, gmem<const float> m, gmem<const double> seg, int k, int n,
                    gmem<float> out) {
    const double w = 1.0 / static_cast<double>(k);
    for (long long j = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
         j += static_cast<long long>(gridDim.x) * blockDim.x) {
        const double mj = m[j];
        double acc = 0.0;
        for (int r = 0; r < k; ++r) {
            float v = g[static_cast<long long>(r) * n + j];
            const double ga = seg[3LL * r];
            const double aa = seg[3LL * r + 1];
            if (ga < 0.0 && aa > 0.0)
                v = static_cast<float>(static_cast<double>(v) + seg[3LL * r + 2] * mj);
            acc += w * static_cast<double>(v);
        }
        out[j] = static_cast<float>(acc);
    }
}

EMU_REGISTER(align_seg_partials)
EMU_REGISTER(align_seg_reduce)
EMU_REGISTER(align_seg_apply)
EMU_REGISTER(align_mean_rows)
EMU_REGISTER(align_proj_mean)
