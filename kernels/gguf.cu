// kernels/gguf.cu: decoding of frozen weights kept in GGML blocks (the tensor types of a GGUF
// file), for the products of src/backend/cuda/ops/quant.rs.
//
// gguf_decode_<type>(out, blocks, row_bytes, cols, r0, nr) writes rows r0 .. r0+nr of a
// [rows, cols] weight, stored as `rows` rows of `row_bytes` bytes of whole blocks, to
// out[nr, cols] in f32. The host decodes a bounded slab of rows at a time and multiplies it with
// the f32 GEMM, so no decoded copy of a whole weight ever exists.
//
// One thread per output value (grid-stride over the flat index): writes are coalesced, and the
// threads of a warp read the same block's few bytes, which stay in L1. Each value is computed
// with exactly the f32 operations of ggml's reference decoder in the same order, with explicit
// round-to-nearest intrinsics so that NVRTC cannot contract a multiply and an add into an FMA:
// the result is bit-identical to the CPU decoder (src/backend/quant/dequant.rs) and to the
// `gguf` Python package (tests/cuda_quant.rs). f16 scales are widened by bit arithmetic, which
// is exact, so no CUDA header is needed.
#include "common.cuh"

#define GGUF_THREADS 256

namespace {

__device__ __forceinline__ unsigned gguf_u8(gmem<const unsigned char> p, int at) {
    return static_cast<unsigned>(p[at]);
}

// IEEE binary16 (little-endian at p[at]) to f32, exactly; NaN comes out quiet, as the CPU's
// conversion (and the hardware's) gives it.
__device__ __forceinline__ float gguf_half(gmem<const unsigned char> p, int at) {
    const unsigned h = gguf_u8(p, at) | gguf_u8(p, at + 1) << 8;
    const unsigned sign = (h & 0x8000u) << 16;
    const unsigned exp = (h >> 10) & 0x1fu;
    const unsigned man = h & 0x3ffu;
    if (exp == 0x1fu)
        return __uint_as_float(sign | 0x7f800000u | man << 13 | (man != 0u ? 0x400000u : 0u));
    if (exp == 0u) {
        // Zero or subnormal: man · 2^-24, exact in f32 (a power-of-two scaling of an 11-bit
        // integer lands on a normal f32).
        const float v = __fmul_rn(static_cast<float>(man), 5.9604644775390625e-8f);
        return __uint_as_float(__float_as_uint(v) | sign);
    }
    return __uint_as_float(sign | (exp + 112u) << 23 | man << 13);
}

// Value i of the block at p, per type. Index arithmetic follows the layouts documented in
// src/backend/quant/dequant.rs.
template <int TY>
__device__ __forceinline__ float gguf_value(gmem<const unsigned char> p, int i);

// Type codes (match the kernel names; the host picks a kernel by name).
constexpr int F32 = 0, F16 = 1, BF16 = 2, Q4_0 = 3, Q4_1 = 4, Q5_0 = 5, Q5_1 = 6, Q8_0 = 7,
              Q2_K = 8, Q3_K = 9, Q4_K = 10, Q5_K = 11, Q6_K = 12;

template <>
__device__ __forceinline__ float gguf_value<F32>(gmem<const unsigned char> p, int) {
    return __uint_as_float(gguf_u8(p, 0) | gguf_u8(p, 1) << 8 | gguf_u8(p, 2) << 16 |
                           gguf_u8(p, 3) << 24);
}

template <>
__device__ __forceinline__ float gguf_value<F16>(gmem<const unsigned char> p, int) {
    return gguf_half(p, 0);
}

template <>
__device__ __forceinline__ float gguf_value<BF16>(gmem<const unsigned char> p, int) {
    return __uint_as_float((gguf_u8(p, 0) | gguf_u8(p, 1) << 8) << 16);
}

// The 4-bit code of value i of a 32-value block whose 16 code bytes start at q: low nibbles are
// values 0..16, high nibbles values 16..32.
__device__ __forceinline__ int gguf_nibble(gmem<const unsigned char> p, int q, int i) {
    const unsigned c = gguf_u8(p, q + (i & 15));
    return static_cast<int>(i < 16 ? c & 15u : c >> 4);
}

// The fifth bit of value i (bit i of the 32-bit field at `at`).
__device__ __forceinline__ int gguf_fifth(gmem<const unsigned char> p, int at, int i) {
    return static_cast<int>(gguf_u8(p, at + (i >> 3)) >> (i & 7) & 1u);
}

template <>
__device__ __forceinline__ float gguf_value<Q4_0>(gmem<const unsigned char> p, int i) {
    return __fmul_rn(gguf_half(p, 0), static_cast<float>(gguf_nibble(p, 2, i) - 8));
}

template <>
__device__ __forceinline__ float gguf_value<Q4_1>(gmem<const unsigned char> p, int i) {
    return __fadd_rn(__fmul_rn(gguf_half(p, 0), static_cast<float>(gguf_nibble(p, 4, i))),
                     gguf_half(p, 2));
}

template <>
__device__ __forceinline__ float gguf_value<Q5_0>(gmem<const unsigned char> p, int i) {
    const int code = gguf_nibble(p, 6, i) | gguf_fifth(p, 2, i) << 4;
    return __fmul_rn(gguf_half(p, 0), static_cast<float>(code - 16));
}

template <>
__device__ __forceinline__ float gguf_value<Q5_1>(gmem<const unsigned char> p, int i) {
    const int code = gguf_nibble(p, 8, i) | gguf_fifth(p, 4, i) << 4;
    return __fadd_rn(__fmul_rn(gguf_half(p, 0), static_cast<float>(code)), gguf_half(p, 2));
}

template <>
__device__ __forceinline__ float gguf_value<Q8_0>(gmem<const unsigned char> p, int i) {
    const int code = static_cast<int>(static_cast<signed char>(gguf_u8(p, 2 + i)));
    return __fmul_rn(gguf_half(p, 0), static_cast<float>(code));
}

// Q2_K and Q3_K share the walk: 128-value halves, each four 2-bit planes of 32 values over the
// same 32 code bytes, each plane two sub-blocks of 16 with their own scale.
template <>
__device__ __forceinline__ float gguf_value<Q2_K>(gmem<const unsigned char> p, int i) {
    const int half = i >> 7, plane = (i >> 5) & 3, s = i & 31;
    const unsigned sc = gguf_u8(p, half * 8 + plane * 2 + (s >> 4));
    const float dl = __fmul_rn(gguf_half(p, 80), static_cast<float>(sc & 15u));
    const float ml = __fmul_rn(gguf_half(p, 82), static_cast<float>(sc >> 4));
    const unsigned c = gguf_u8(p, 16 + half * 32 + s) >> (2 * plane) & 3u;
    return __fsub_rn(__fmul_rn(dl, static_cast<float>(c)), ml);
}

template <>
__device__ __forceinline__ float gguf_value<Q3_K>(gmem<const unsigned char> p, int i) {
    const int half = i >> 7, plane = (i >> 5) & 3, s = i & 31;
    const int j = half * 8 + plane * 2 + (s >> 4);  // which of the 16 six-bit scales
    const unsigned low = gguf_u8(p, 96 + (j & 7)) >> (4 * (j >> 3)) & 15u;
    const unsigned high = gguf_u8(p, 104 + (j & 3)) >> (2 * (j >> 2)) & 3u;
    const int scale = static_cast<int>(low | high << 4) - 32;
    const float dl = __fmul_rn(gguf_half(p, 108), static_cast<float>(scale));
    const int code = static_cast<int>(gguf_u8(p, 32 + half * 32 + s) >> (2 * plane) & 3u);
    const int minus = (gguf_u8(p, s) >> (half * 4 + plane) & 1u) ? 0 : 4;
    return __fmul_rn(dl, static_cast<float>(code - minus));
}

// Scale and minimum of sub-block j of Q4_K / Q5_K: six bits each, packed in the 12 bytes at 4.
__device__ __forceinline__ void gguf_k4_scale_min(gmem<const unsigned char> p, int j, unsigned& sc,
                                                  unsigned& m) {
    if (j < 4) {
        sc = gguf_u8(p, 4 + j) & 63u;
        m = gguf_u8(p, 4 + j + 4) & 63u;
    } else {
        sc = (gguf_u8(p, 4 + j + 4) & 15u) | (gguf_u8(p, 4 + j - 4) >> 6) << 4;
        m = (gguf_u8(p, 4 + j + 4) >> 4) | (gguf_u8(p, 4 + j) >> 6) << 4;
    }
}

// Q4_K and Q5_K: eight sub-blocks of 32; each 32-byte chunk of codes holds two sub-blocks, low
// nibbles first. Q5_K adds bit `sub` of qh[l] as the fifth bit.
template <bool FIVE>
__device__ __forceinline__ float gguf_k4(gmem<const unsigned char> p, int i) {
    const int sub = i >> 5, l = i & 31;
    unsigned sc, m;
    gguf_k4_scale_min(p, sub, sc, m);
    const float dl = __fmul_rn(gguf_half(p, 0), static_cast<float>(sc));
    const float ml = __fmul_rn(gguf_half(p, 2), static_cast<float>(m));
    const int qs = FIVE ? 48 : 16;
    unsigned code = gguf_u8(p, qs + (sub >> 1) * 32 + l) >> (4 * (sub & 1)) & 15u;
    if (FIVE)
        code |= (gguf_u8(p, 16 + l) >> sub & 1u) << 4;
    return __fsub_rn(__fmul_rn(dl, static_cast<float>(code)), ml);
}

template <>
__device__ __forceinline__ float gguf_value<Q4_K>(gmem<const unsigned char> p, int i) {
    return gguf_k4<false>(p, i);
}

template <>
__device__ __forceinline__ float gguf_value<Q5_K>(gmem<const unsigned char> p, int i) {
    return gguf_k4<true>(p, i);
}

// Q6_K: per 128 values, 64 bytes of low nibbles (ql), 32 bytes of 2-bit high parts (qh) and 8
// signed scales of 16 values; value l + 32k of a 128-group takes its low nibble from ql[l]
// (k = 0, 2) or ql[l + 32] (k = 1, 3), low then high nibble, and its high bits from qh[l] at
// shift 2k.
template <>
__device__ __forceinline__ float gguf_value<Q6_K>(gmem<const unsigned char> p, int i) {
    const int n = i >> 7, k = (i >> 5) & 3, l = i & 31;
    const unsigned lo = gguf_u8(p, n * 64 + l + (k & 1) * 32) >> (4 * (k >> 1)) & 15u;
    const unsigned hi = gguf_u8(p, 128 + n * 32 + l) >> (2 * k) & 3u;
    const int code = static_cast<int>(lo | hi << 4) - 32;
    const int sc = static_cast<int>(static_cast<signed char>(gguf_u8(p, 192 + n * 8 + (l >> 4) + 2 * k)));
    return __fmul_rn(__fmul_rn(gguf_half(p, 208), static_cast<float>(sc)), static_cast<float>(code));
}

// Values and bytes per block of each type.
template <int TY>
struct GgufBlock;
template <> struct GgufBlock<F32> { static constexpr int len = 1, bytes = 4; };
template <> struct GgufBlock<F16> { static constexpr int len = 1, bytes = 2; };
template <> struct GgufBlock<BF16> { static constexpr int len = 1, bytes = 2; };
template <> struct GgufBlock<Q4_0> { static constexpr int len = 32, bytes = 18; };
template <> struct GgufBlock<Q4_1> { static constexpr int len = 32, bytes = 20; };
template <> struct GgufBlock<Q5_0> { static constexpr int len = 32, bytes = 22; };
template <> struct GgufBlock<Q5_1> { static constexpr int len = 32, bytes = 24; };
template <> struct GgufBlock<Q8_0> { static constexpr int len = 32, bytes = 34; };
template <> struct GgufBlock<Q2_K> { static constexpr int len = 256, bytes = 84; };
template <> struct GgufBlock<Q3_K> { static constexpr int len = 256, bytes = 110; };
template <> struct GgufBlock<Q4_K> { static constexpr int len = 256, bytes = 144; };
template <> struct GgufBlock<Q5_K> { static constexpr int len = 256, bytes = 176; };
template <> struct GgufBlock<Q6_K> { static constexpr int len = 256, bytes = 210; };

// out[r, j] = value j of row r0 + r, for r < nr, j < cols. The host checks that `blocks` holds
// (r0 + nr) · row_bytes bytes, row_bytes = cols / len · bytes, and nr · cols < 2^31.
template <int TY>
__device__ __forceinline__ void gguf_decode(gmem<float> out, gmem<const unsigned char> blocks,
                                            long long row_bytes, int cols, int r0, int nr) {
    constexpr int LEN = GgufBlock<TY>::len, BYTES = GgufBlock<TY>::bytes;
    const int n = nr * cols;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < n; t += gridDim.x * blockDim.x) {
        const int r = t / cols, j = t - r * cols;
        const long long at = static_cast<long long>(r0 + r) * row_bytes +
                             static_cast<long long>(j / LEN) * BYTES;
        out[t] = gguf_value<TY>(blocks + at, j % LEN);
    }
}

}  // namespace

#define GGUF_ARGS \
    gmem<float> out, gmem<const unsigned char> blocks, long long row_bytes, int cols, int r0, int nr

extern "C" __global__ void __launch_bounds__(GGUF_THREADS) gguf_decode_f32(GGUF_ARGS) {
    gguf_decode<F32>(out, blocks, row_bytes, cols, r0, nr);
}
extern "C" __global__ void __launch_bounds__(GGUF_THREADS) gguf_decode_f16(GGUF_ARGS) {
    gguf_decode<F16>(out, blocks, row_bytes, cols, r0, nr);
}
extern "C" __global__ void __launch_bounds__(GGUF_THREADS) gguf_decode_bf16(GGUF_ARGS) {
    gguf_decode<BF16>(out, blocks, row_bytes, cols, r0, nr);
}
extern "C" __global__ void __launch_bounds__(GGUF_THREADS) gguf_decode_q4_0(GGUF_ARGS) {
    gguf_decode<Q4_0>(out, blocks, row_bytes, cols, r0, nr);
}
extern "C" __global__ void __launch_bounds__(GGUF_THREADS) gguf_decode_q4_1(GGUF_ARGS) {
    gguf_decode<Q4_1>(out, blocks, row_bytes, cols, r0, nr);
}
extern "C" __global__ void __launch_bounds__(GGUF_THREADS) gguf_decode_q5_0(GGUF_ARGS) {
    gguf_decode<Q5_0>(out, blocks, row_bytes, cols, r0, nr);
}
extern "C" __global__ void __launch_bounds__(GGUF_THREADS) gguf_decode_q5_1(GGUF_ARGS) {
    gguf_decode<Q5_1>(out, blocks, row_bytes, cols, r0, nr);
}
extern "C" __global__ void __launch_bounds__(GGUF_THREADS) gguf_decode_q8_0(GGUF_ARGS) {
    gguf_decode<Q8_0>(out, blocks, row_bytes, cols, r0, nr);
}
extern "C" __global__ void __launch_bounds__(GGUF_THREADS) gguf_decode_q2_k(GGUF_ARGS) {
    gguf_decode<Q2_K>(out, blocks, row_bytes, cols, r0, nr);
}
extern "C" __global__ void __launch_bounds__(GGUF_THREADS) gguf_decode_q3_k(GGUF_ARGS) {
    gguf_decode<Q3_K>(out, blocks, row_bytes, cols, r0, nr);
}
extern "C" __global__ void __launch_bounds__(GGUF_THREADS) gguf_decode_q4_k(GGUF_ARGS) {
    gguf_decode<Q4_K>(out, blocks, row_bytes, cols, r0, nr);
}
extern "C" __global__ void __launch_bounds__(GGUF_THREADS) gguf_decode_q5_k(GGUF_ARGS) {
    gguf_decode<Q5_K>(out, blocks, row_bytes, cols, r0, nr);
}
extern "C" __global__ void __launch_bounds__(GGUF_THREADS) gguf_decode_q6_k(GGUF_ARGS) {
    gguf_decode<Q6_K>(out, blocks, row_bytes, cols, r0, nr);
}

// dst[r, c_dst + j] (+)= src[r, c_src + j] for r < rows, j < width, with row strides ld_dst and
// ld_src: gathers a column slab of dY for the input gradient and scatters a slab's output
// columns into Y. The host checks both extents and rows · width < 2^31.
extern "C" __global__ void __launch_bounds__(GGUF_THREADS)
    gguf_copy_cols(gmem<float> dst, gmem<const float> src, int rows, int width, int ld_dst,
                   int c_dst, int ld_src, int c_src, int accumulate) {
    const int n = rows * width;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < n; t += gridDim.x * blockDim.x) {
        const int r = t / width, j = t - r * width;
        const long long d = static_cast<long long>(r) * ld_dst + c_dst + j;
        const float v = src[static_cast<long long>(r) * ld_src + c_src + j];
        dst[d] = accumulate ? dst[d] + v : v;
    }
}

EMU_REGISTER(gguf_decode_f32);
EMU_REGISTER(gguf_decode_f16);
EMU_REGISTER(gguf_decode_bf16);
EMU_REGISTER(gguf_decode_q4_0);
EMU_REGISTER(gguf_decode_q4_1);
EMU_REGISTER(gguf_decode_q5_0);
EMU_REGISTER(gguf_decode_q5_1);
EMU_REGISTER(gguf_decode_q8_0);
EMU_REGISTER(gguf_decode_q2_k);
EMU_REGISTER(gguf_decode_q3_k);
EMU_REGISTER(gguf_decode_q4_k);
EMU_REGISTER(gguf_decode_q5_k);
EMU_REGISTER(gguf_decode_q6_k);
EMU_REGISTER(gguf_copy_cols);
