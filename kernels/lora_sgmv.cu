// kernels/lora_sgmv.cu: batched multi-LoRA (SGMV) forward on the tensor cores, bf16 operands
// with f32 accumulation: every adapter segment of a packed batch in one launch per phase.
//   lora_sgmv_shrink_r{16,32,64}: u = x · A_iᵀ        (u [rows, rank] f32)
//   lora_sgmv_expand_r{16,32,64}: y += scale · u · B_iᵀ (y [rows, d_out] f32)
// The suffix is the rank rounded up to 16, 32 or 64 (the n8 tiles of u, the k16 steps of the
// expand): any rank from 1 to 64 runs, its padding zero-filled.
//
// Tables as in lora.cu: the segment table (SEG_WORDS u64 per segment: row start, row count, &A_i,
// &B_i, &dA_i, &dB_i) and a tile table of (segment, first row) pairs, here one per 64 rows. The
// operands stay f32 in global memory (x, u, and the adapters, which train in f32): each block
// rounds what it stages to bf16 in shared memory, so no cast kernel runs and no shape needs to
// be a multiple of anything. That staging is plain loads (a later cp.async path for aligned
// shapes is a GPU tuning step). Fragments come by ldmatrix (tc_fragments.cuh).
#include "common.cuh"
#include "tensor_core.cuh"
#include "tc_fragments.cuh"

namespace {

constexpr int SG_SEG_WORDS = 6;
constexpr int SG_THREADS = 128;  // 4 warps x 16 rows
constexpr int SG_ROWS = 64;      // rows per block
constexpr int SG_K = 32;         // reduction step of the shrink over d_in
constexpr int SG_N = 128;        // output columns per block of the expand

// Stages rows [0, nrows) x columns [c0, c0 + ncols) of a row-major f32 matrix (row stride `ld`)
// into a bf16 tile of pitch LD, as bf16 pairs; elements outside rows < valid_rows and columns
// < valid_cols are zero. ncols is even.
template <int LD, class S>
__device__ __forceinline__ void sg_stage(S dst, gmem<const float> src, long long ld, int nrows,
                                         int ncols, int valid_rows, int c0, int valid_cols) {
    auto d32 = shared_cast<unsigned>(dst);
    const int pairs = ncols / 2;
    for (int i = threadIdx.x; i < nrows * pairs; i += SG_THREADS) {
        const int r = i / pairs, c = 2 * (i % pairs);
        const bool rok = r < valid_rows;
        const float lo = rok && c0 + c < valid_cols ? src[r * ld + c0 + c] : 0.f;
        const float hi = rok && c0 + c + 1 < valid_cols ? src[r * ld + c0 + c + 1] : 0.f;
        d32[(r * LD + c) / 2] = pack_bf16(lo, hi);
    }
}

template <int RP>
__device__ __forceinline__ void sgmv_shrink(gmem<float> u, gmem<const float> x,
                                            gmem<const unsigned long long> segs,
                                            gmem<const int> tiles, int d_in, int rank) {
    constexpr int LD = SG_K + 8, NT = RP / 8;
    SHARED(bf16_t, xs, SG_ROWS * LD);
    SHARED(bf16_t, as, RP * LD);
    const int s = tiles[2 * blockIdx.x], r0 = tiles[2 * blockIdx.x + 1];
    const int start = static_cast<int>(segs[s * SG_SEG_WORDS]);
    const int count = static_cast<int>(segs[s * SG_SEG_WORDS + 1]);
    gmem<const float> a = gmem_from_address<const float>(segs[s * SG_SEG_WORDS + 2]);
    const int nrows = min(SG_ROWS, count - r0);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float acc[NT][4];
    zero_tiles(acc);
    gmem<const float> xrows = x + (long long)(start + r0) * d_in;
    for (int k0 = 0; k0 < d_in; k0 += SG_K) {
        __syncthreads();  // the previous step's fragments are read
        sg_stage<LD>(xs, xrows, d_in, SG_ROWS, SG_K, nrows, k0, d_in);
        sg_stage<LD>(as, a, d_in, RP, SG_K, rank, k0, d_in);
        __syncthreads();
        mma_strip<LD, SG_K>(acc, xs, warp * 16, as);
    }
    const int g = lane / 4, tq = lane % 4;
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int row = warp * 16 + g + (e >= 2 ? 8 : 0), col = 8 * j + 2 * tq + (e & 1);
            if (row < nrows && col < rank)
                u[(long long)(start + r0 + row) * rank + col] = acc[j][e];
        }
}

template <int RP>
__device__ __forceinline__ void sgmv_expand(gmem<float> y, gmem<const float> u,
                                            gmem<const unsigned long long> segs,
                                            gmem<const int> tiles, int d_out, int rank,
                                            float scale) {
    constexpr int LD = RP + 8, NT = SG_N / 8;
    SHARED(bf16_t, us, SG_ROWS * LD);
    SHARED(bf16_t, bs, SG_N * LD);
    const int s = tiles[2 * blockIdx.x], r0 = tiles[2 * blockIdx.x + 1];
    const int start = static_cast<int>(segs[s * SG_SEG_WORDS]);
    const int count = static_cast<int>(segs[s * SG_SEG_WORDS + 1]);
    gmem<const float> b = gmem_from_address<const float>(segs[s * SG_SEG_WORDS + 3]);
    const int n0 = blockIdx.y * SG_N;
    const int nrows = min(SG_ROWS, count - r0);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // u rows of this tile (all RP columns, zero past rank), B rows n0.. (d_out x rank).
    sg_stage<LD>(us, u + (long long)(start + r0) * rank, rank, SG_ROWS, RP, nrows, 0, rank);
    sg_stage<LD>(bs, b + (long long)n0 * rank, rank, SG_N, RP, d_out - n0, 0, rank);
    __syncthreads();
    float acc[NT][4];
    zero_tiles(acc);
    mma_strip<LD, RP>(acc, us, warp * 16, bs);
    const int g = lane / 4, tq = lane % 4;
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int row = warp * 16 + g + (e >= 2 ? 8 : 0), col = n0 + 8 * j + 2 * tq + (e & 1);
            if (row < nrows && col < d_out) {
                const long long o = (long long)(start + r0 + row) * d_out + col;
                y[o] = y[o] + scale * acc[j][e];
            }
        }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(SG_THREADS)
    lora_sgmv_shrink_r16(gmem<float> u, gmem<const float> x, gmem<const unsigned long long> segs,
                         gmem<const int> tiles, int d_in, int rank) {
    sgmv_shrink<16>(u, x, segs, tiles, d_in, rank);
}
extern "C" __global__ void __launch_bounds__(SG_THREADS)
    lora_sgmv_shrink_r32(gmem<float> u, gmem<const float> x, gmem<const unsigned long long> segs,
                         gmem<const int> tiles, int d_in, int rank) {
    sgmv_shrink<32>(u, x, segs, tiles, d_in, rank);
}
extern "C" __global__ void __launch_bounds__(SG_THREADS)
    lora_sgmv_shrink_r64(gmem<float> u, gmem<const float> x, gmem<const unsigned long long> segs,
                         gmem<const int> tiles, int d_in, int rank) {
    sgmv_shrink<64>(u, x, segs, tiles, d_in, rank);
}
extern "C" __global__ void __launch_bounds__(SG_THREADS)
    lora_sgmv_expand_r16(gmem<float> y, gmem<const float> u, gmem<const unsigned long long> segs,
                         gmem<const int> tiles, int d_out, int rank, float scale) {
    sgmv_expand<16>(y, u, segs, tiles, d_out, rank, scale);
}
extern "C" __global__ void __launch_bounds__(SG_THREADS)
    lora_sgmv_expand_r32(gmem<float> y, gmem<const float> u, gmem<const unsigned long long> segs,
                         gmem<const int> tiles, int d_out, int rank, float scale) {
    sgmv_expand<32>(y, u, segs, tiles, d_out, rank, scale);
}
extern "C" __global__ void __launch_bounds__(SG_THREADS)
    lora_sgmv_expand_r64(gmem<float> y, gmem<const float> u, gmem<const unsigned long long> segs,
                         gmem<const int> tiles, int d_out, int rank, float scale) {
    sgmv_expand<64>(y, u, segs, tiles, d_out, rank, scale);
}

EMU_REGISTER(lora_sgmv_shrink_r16)
EMU_REGISTER(lora_sgmv_shrink_r32)
EMU_REGISTER(lora_sgmv_shrink_r64)
EMU_REGISTER(lora_sgmv_expand_r16)
EMU_REGISTER(lora_sgmv_expand_r32)
EMU_REGISTER(lora_sgmv_expand_r64)
