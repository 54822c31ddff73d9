// Element-wise and row-indexed kernels of the CUDA backend (src/backend/cuda/ops/elementwise.rs):
// bias, residual add, row gather/scatter, embedding lookup, activations, SwiGLU, RoPE, segment
// means, and f32 <-> bf16 casts.
//
// Every kernel here moves each element once and does a handful of flops on it, so all of them are
// bound by memory bandwidth. They use grid-stride loops over the flat element index (consecutive
// threads touch consecutive addresses, so every warp access is one or a few 128-byte
// transactions) with a grid sized by the host to a few waves of the GPU. Row-indexed kernels
// derive (row, column) from the flat index with one 32-bit division (the host refuses element
// counts beyond the i32 range); the row's index is then a broadcast load that stays in L1.
//
// GPU TODO: 16-byte vector loads (float4) when dim % 4 == 0 would cut the instruction count by 4;
// the emulator's bounds-checked pointers cannot be reinterpreted, so they are not used yet.
#include "common.cuh"

#define EW_THREADS 256

// Activation codes shared with the host (ops/elementwise.rs, `act_code`).
#define EW_GELU_ERF 0
#define EW_GELU_TANH 1
#define EW_SILU 2
#define EW_RELU 3

#define EW_SQRT_2_OVER_PI 0.7978845608f
#define EW_INV_SQRT_2 0.7071067812f
#define EW_INV_SQRT_2PI 0.3989422804f
#define EW_TWO_PI 6.283185307179586
#define EW_INV_TWO_PI 0.15915494309189535

__device__ __forceinline__ long long ew_first() {
    return static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long ew_stride() {
    return static_cast<long long>(gridDim.x) * blockDim.x;
}

// Exact library functions (the CPU reference uses polynomial approximations accurate to ~5e-7).
__device__ __forceinline__ float ew_sigmoid(float x) {
    return 1.0f / (1.0f + expf(-x));
}

__device__ __forceinline__ float ew_act(int act, float x) {
    switch (act) {
        case EW_GELU_ERF: return 0.5f * x * (1.0f + erff(x * EW_INV_SQRT_2));
        case EW_GELU_TANH:
            return 0.5f * x * (1.0f + tanhf(EW_SQRT_2_OVER_PI * (x + 0.044715f * x * x * x)));
        case EW_SILU: return x * ew_sigmoid(x);
        default: return fmaxf(x, 0.0f);
    }
}

__device__ __forceinline__ float ew_act_grad(int act, float x) {
    switch (act) {
        case EW_GELU_ERF:
            return 0.5f * (1.0f + erff(x * EW_INV_SQRT_2)) + x * EW_INV_SQRT_2PI * expf(-0.5f * x * x);
        case EW_GELU_TANH: {
            float t = tanhf(EW_SQRT_2_OVER_PI * (x + 0.044715f * x * x * x));
            return 0.5f * (1.0f + t) +
                   0.5f * x * (1.0f - t * t) * EW_SQRT_2_OVER_PI * (1.0f + 3.0f * 0.044715f * x * x);
        }
        case EW_SILU: {
            float s = ew_sigmoid(x);
            return s * (1.0f + x * (1.0f - s));
        }
        default: return x > 0.0f ? 1.0f : 0.0f;
    }
}

// y[r, c] += bias[c] over rows * dim elements.
extern "C" __global__ void __launch_bounds__(EW_THREADS)
    ew_add_bias(gmem<float> y, gmem<const float> bias, int rows, int dim) {
    const long long n = static_cast<long long>(rows) * dim;
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        const int c = static_cast<int>(i) % dim;
        y[i] = y[i] + bias[c];
    }
}

// y += x over n elements.
extern "C" __global__ void __launch_bounds__(EW_THREADS)
    ew_add_assign(gmem<float> y, gmem<const float> x, int n) {
    for (long long i = ew_first(); i < n; i += ew_stride())
        y[i] = y[i] + x[i];
}

// dst[i, :] (+)= src[idx[i], :] for i < nrows: gather_rows and embedding (ids validated on the
// host).
extern "C" __global__ void __launch_bounds__(EW_THREADS)
    ew_gather_rows(gmem<float> dst, gmem<const float> src, gmem<const unsigned> idx, int nrows,
                   int dim, int accumulate) {
    const long long n = static_cast<long long>(nrows) * dim;
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        const int r = static_cast<int>(i) / dim;
        const int c = static_cast<int>(i) - r * dim;
        const float v = src[static_cast<long long>(idx[r]) * dim + c];
        dst[i] = accumulate ? dst[i] + v : v;
    }
}

// dst[pairs[2p+1], :] = src[pairs[2p], :] for p < npairs. The host keeps only the last write to
// each destination row (the CPU's sequential semantics), so no two pairs share a destination and
// the result does not depend on scheduling.
extern "C" __global__ void __launch_bounds__(EW_THREADS)
    ew_scatter_rows(gmem<float> dst, gmem<const float> src, gmem<const unsigned> pairs, int npairs,
                    int dim) {
    const long long n = static_cast<long long>(npairs) * dim;
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        const int p = static_cast<int>(i) / dim;
        const int c = static_cast<int>(i) - p * dim;
        const long long s = pairs[2LL * p];
        const long long d = pairs[2LL * p + 1];
        dst[d * dim + c] = src[s * dim + c];
    }
}

extern "C" __global__ void __launch_bounds__(EW_THREADS)
    ew_act_fwd(gmem<float> y, gmem<const float> x, int n, int act) {
    for (long long i = ew_first(); i < n; i += ew_stride())
        y[i] = ew_act(act, x[i]);
}

extern "C" __global__ void __launch_bounds__(EW_THREADS)
    ew_act_bwd(gmem<float> dx, gmem<const float> dy, gmem<const float> x, int n, int act) {
    for (long long i = ew_first(); i < n; i += ew_stride())
        dx[i] = dy[i] * ew_act_grad(act, x[i]);
}

extern "C" __global__ void __launch_bounds__(EW_THREADS)
    ew_swiglu_fwd(gmem<float> y, gmem<const float> gate, gmem<const float> up, int n) {
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        const float g = gate[i];
        y[i] = g * ew_sigmoid(g) * up[i];
    }
}

extern "C" __global__ void __launch_bounds__(EW_THREADS)
    ew_swiglu_bwd(gmem<float> dgate, gmem<float> dup, gmem<const float> dy, gmem<const float> gate,
                  gmem<const float> up, int n) {
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        const float g = gate[i];
        const float d = dy[i];
        const float s = ew_sigmoid(g);
        dup[i] = d * g * s;
        dgate[i] = d * up[i] * s * (1.0f + g * (1.0f - s));
    }
}

extern "C" __global__ void __launch_bounds__(EW_THREADS)
    ew_gated_fwd(gmem<float> y, gmem<const float> gate, gmem<const float> up, int n, int act) {
    for (long long i = ew_first(); i < n; i += ew_stride())
        y[i] = ew_act(act, gate[i]) * up[i];
}

extern "C" __global__ void __launch_bounds__(EW_THREADS)
    ew_gated_bwd(gmem<float> dgate, gmem<float> dup, gmem<const float> dy, gmem<const float> gate,
                 gmem<const float> up, int n, int act) {
    for (long long i = ew_first(); i < n; i += ew_stride()) {
        const float g = gate[i];
        const float d = dy[i];
        dup[i] = d * ew_act(act, g);
        dgate[i] = d * up[i] * ew_act_grad(act, g);
    }
}

extern "C" __global__ void __launch_bounds__(EW_THREADS)
    ew_scale(gmem<float> x, float alpha, int n) {
    for (long long i = ew_first(); i < n; i += ew_stride())
        x[i] *= alpha;
}

// Rotary embedding in place on x: [rows, heads * head_dim], half-split pairing (i, i + half).
// One thread per (row, i): the angle pos * inv_freq[i] is formed in double (positions reach
// 1e5 and more, where an f32 angle would be off by ~1e-2 rad) and reduced to [-pi, pi] in double,
// so that the f32 sinf/cosf see an exact small argument; the rotation is then applied to every
// head, amortising the trig over `heads` pairs. `sign` is -1 for the inverse rotation.
extern "C" __global__ void __launch_bounds__(EW_THREADS)
    ew_rope(gmem<float> x, gmem<const unsigned> positions, gmem<const double> inv_freq, int rows,
            int heads, int head_dim, float sign) {
    const int half = head_dim / 2;
    const long long n = static_cast<long long>(rows) * half;
    for (long long t = ew_first(); t < n; t += ew_stride()) {
        const int r = static_cast<int>(t) / half;
        const int i = static_cast<int>(t) - r * half;
        const double ang = static_cast<double>(positions[r]) * inv_freq[i];
        const double red = ang - rint(ang * EW_INV_TWO_PI) * EW_TWO_PI;
        const float s = sign * sinf(static_cast<float>(red));
        const float c = cosf(static_cast<float>(red));
        gmem<float> row = x + static_cast<long long>(r) * heads * head_dim;
        for (int h = 0; h < heads; ++h) {
            const int b = h * head_dim + i;
            const float x1 = row[b];
            const float x2 = row[b + half];
            row[b] = x1 * c - x2 * s;
            row[b + half] = x2 * c + x1 * s;
        }
    }
}

// out[s, c] = mean of x[spans[2s] .. spans[2s] + spans[2s+1], c]. blockIdx.y walks the spans,
// x-threads the columns (coalesced rows); each thread sums its column over the span's rows in row
// order, the same order as the CPU, so the result is bit-identical to it.
extern "C" __global__ void __launch_bounds__(EW_THREADS)
    ew_segment_mean(gmem<float> out, gmem<const float> x, gmem<const int> spans, int nspans,
                    int dim) {
    for (int s = blockIdx.y; s < nspans; s += gridDim.y) {
        const long long start = spans[2 * s];
        const int len = spans[2 * s + 1];
        const float inv = 1.0f / static_cast<float>(len > 1 ? len : 1);
        for (long long c = ew_first(); c < dim; c += ew_stride()) {
            float acc = 0.0f;
            // Unrolled so that several rows' loads are in flight; the adds stay in row order.
#pragma unroll 4
            for (int r = 0; r < len; ++r)
                acc += x[(start + r) * dim + c];
            out[static_cast<long long>(s) * dim + c] = acc * inv;
        }
    }
}

// dx[row, :] += dout[span, :] / len(span) for every span covering the row. The host lists, per
// covered row (a "group"), the spans that cover it in span order, so overlapping spans add in the
// CPU's order and no two threads write the same element. Layout of `meta` (int):
// [group_row (ngroups) | group_first (ngroups + 1) | entry_span (nentries) | span_len (nspans)].
extern "C" __global__ void __launch_bounds__(EW_THREADS)
    ew_segment_mean_bwd(gmem<float> dx, gmem<const float> dout, gmem<const int> meta, int ngroups,
                        int nentries, int dim) {
    gmem<const int> group_row = meta;
    gmem<const int> group_first = meta + ngroups;
    gmem<const int> entry_span = meta + (2 * ngroups + 1);
    gmem<const int> span_len = meta + (2 * ngroups + 1 + nentries);
    for (int g = blockIdx.y; g < ngroups; g += gridDim.y) {
        const long long row = group_row[g];
        const int e0 = group_first[g];
        const int e1 = group_first[g + 1];
        for (long long c = ew_first(); c < dim; c += ew_stride()) {
            float acc = dx[row * dim + c];
            for (int e = e0; e < e1; ++e) {
                const int s = entry_span[e];
                const int len = span_len[s];
                const float inv = 1.0f / static_cast<float>(len > 1 ? len : 1);
                acc += dout[static_cast<long long>(s) * dim + c] * inv;
            }
            dx[row * dim + c] = acc;
        }
    }
}

// Round to nearest even; NaN stays NaN (common.cuh's f32_to_bf16).
extern "C" __global__ void __launch_bounds__(EW_THREADS)
    ew_cast_f32_to_bf16(gmem<bf16_t> dst, gmem<const float> src, int n) {
    for (long long i = ew_first(); i < n; i += ew_stride())
        dst[i] = f32_to_bf16(src[i]);
}

extern "C" __global__ void __launch_bounds__(EW_THREADS)
    ew_cast_bf16_to_f32(gmem<float> dst, gmem<const bf16_t> src, int n) {
    for (long long i = ew_first(); i < n; i += ew_stride())
        dst[i] = bf16_to_f32(src[i]);
}

EMU_REGISTER(ew_add_bias)
EMU_REGISTER(ew_add_assign)
EMU_REGISTER(ew_gather_rows)
EMU_REGISTER(ew_scatter_rows)
EMU_REGISTER(ew_act_fwd)
EMU_REGISTER(ew_act_bwd)
EMU_REGISTER(ew_swiglu_fwd)
EMU_REGISTER(ew_swiglu_bwd)
EMU_REGISTER(ew_gated_fwd)
EMU_REGISTER(ew_gated_bwd)
EMU_REGISTER(ew_scale)
EMU_REGISTER(ew_rope)
EMU_REGISTER(ew_segment_mean)
EMU_REGISTER(ew_segment_mean_bwd)
EMU_REGISTER(ew_cast_f32_to_bf16)
EMU_REGISTER(ew_cast_bf16_to_f32)
