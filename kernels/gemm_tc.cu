// kernels/gemm_tc.cu: the tensor-core bf16 GEMM behind the frozen-weight products of
// precision = bf16: C[M,N] (+)= A[M,K] · op(B), A and B bf16 (row-major), C f32.
//   gemm_tc_bf16_nt: B stored [N,K] (the forward product x · Wᵀ with W [out, in]);
//   gemm_tc_bf16_nn: B stored [K,N] (the input gradient dy · W).
// Needs K % 8 == 0, and for _nn also N % 8 == 0, so every 16-byte row chunk is aligned (the host
// falls back to the SIMT kernels of gemm.cu otherwise).
//
// A block of 256 threads (8 warps, 2 x 4) computes a 128 x 128 tile of C; each warp a 64 x 32
// sub-tile as 4 x 4 mma.m16n8k16 tiles (64 f32 accumulators per thread). K advances in steps of
// 32 through two shared stages filled by cp.async (16-byte chunks, zero-filled outside the
// matrix): the next stage is in flight while the current one is multiplied. Fragments come from
// shared memory through ldmatrix: A with x4 (the four 8x8 quadrants of a 16x16 tile give
// a[0..3]), B with x4 covering two n8 tiles (plain for _nt, whose rows are n; .trans for _nn,
// whose rows are k). Shared rows are padded by 8 bf16 (16 bytes) so that the 8 row addresses of
// one ldmatrix matrix fall in 8 distinct 4-bank groups.
#include "common.cuh"
#include "tensor_core.cuh"
#include "tc_fragments.cuh"

namespace {

constexpr int BM = 128;
constexpr int BN = 128;
constexpr int BK = 32;
constexpr int THREADS = 256;
constexpr int WM = 64;          // rows of C per warp
constexpr int WN = 32;          // columns of C per warp
constexpr int MT = WM / 16;     // m16 tiles per warp
constexpr int NT = WN / 8;      // n8 tiles per warp
constexpr int PAD = 8;          // bf16 of padding per shared row
constexpr int LDK = BK + PAD;   // row length of a K-contiguous tile (A, and B of _nt)
constexpr int LDN = BN + PAD;   // row length of the N-contiguous B tile of _nn
constexpr int A_STAGE = BM * LDK;
constexpr int B_STAGE = BN * LDK > BK * LDN ? BN * LDK : BK * LDN;

// Issues the cp.async copies of one K-contiguous operand tile: `rows` x BK starting at row r0,
// depth k0 of a [R, K] matrix, into `dst` (rows of LDK). 16-byte chunks; a chunk outside the
// matrix is zero-filled (K % 8 == 0, so a chunk is either all inside or all outside).
template <class S>
__device__ __forceinline__ void load_k_tile(S dst, gmem<const bf16_t> src, int R, int K, int r0,
                                            int k0, int rows, int t) {
    constexpr int CHUNKS_PER_ROW = BK / 8;
    for (int c = t; c < rows * CHUNKS_PER_ROW; c += THREADS) {
        const int r = c / CHUNKS_PER_ROW, kc = (c % CHUNKS_PER_ROW) * 8;
        const int gr = r0 + r, gk = k0 + kc;
        const bool inside = gr < R && gk < K;
        // An outside chunk reads nothing; its source only has to be a valid address.
        gmem<const bf16_t> from = inside ? src + ((long long)gr * K + gk) : src;
        cp_async<16>(dst + (r * LDK + kc), from, inside ? 16 : 0);
    }
}

// The B tile of _nn: BK rows (k) of BN columns (n) from B [K, N], rows of LDN.
template <class S>
__device__ __forceinline__ void load_n_tile(S dst, gmem<const bf16_t> src, int K, int N, int k0,
                                            int n0, int t) {
    constexpr int CHUNKS_PER_ROW = BN / 8;
    for (int c = t; c < BK * CHUNKS_PER_ROW; c += THREADS) {
        const int r = c / CHUNKS_PER_ROW, nc = (c % CHUNKS_PER_ROW) * 8;
        const int gk = k0 + r, gn = n0 + nc;
        const bool inside = gk < K && gn < N;
        gmem<const bf16_t> from = inside ? src + ((long long)gk * N + gn) : src;
        cp_async<16>(dst + (r * LDN + nc), from, inside ? 16 : 0);
    }
}

template <bool TB>
__device__ __forceinline__ void gemm_tc(gmem<float> C, gmem<const bf16_t> A, gmem<const bf16_t> B,
                                        int M, int N, int K, int accumulate) {
    SHARED(bf16_t, As, 2 * A_STAGE);
    SHARED(bf16_t, Bs, 2 * B_STAGE);
    const int t = threadIdx.x;
    const int warp = t / 32, lane = t % 32;
    const int wm = (warp / 4) * WM;  // warp's first row in the block tile
    const int wn = (warp % 4) * WN;  // warp's first column
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
        zero_tiles(acc[i]);

    auto load_stage = [&](int stage, int k0) {
        load_k_tile(As + stage * A_STAGE, A, M, K, m0, k0, BM, t);
        if (TB)
            load_k_tile(Bs + stage * B_STAGE, B, N, K, n0, k0, BN, t);
        else
            load_n_tile(Bs + stage * B_STAGE, B, K, N, k0, n0, t);
        cp_async_commit();
    };

    const int steps = (K + BK - 1) / BK;
    load_stage(0, 0);
    for (int s = 0; s < steps; ++s) {
        const int cur = s & 1;
        if (s + 1 < steps) {
            // Buffer cur ^ 1 was last read in step s - 1, which ended with a barrier.
            load_stage(cur ^ 1, (s + 1) * BK);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const auto as = As + cur * A_STAGE;
        const auto bs = Bs + cur * B_STAGE;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            unsigned a[MT][4], b[NT][2];
#pragma unroll
            for (int i = 0; i < MT; ++i)
                frag_a<LDK>(a[i], as, wm + 16 * i, kk);
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                // n tiles j and j + 1: B stored [n][k] (_nt) or [k][n] (_nn).
                unsigned r[4];
                if (TB)
                    frag_b_rows<LDK>(r, bs, wn + 8 * j, kk);
                else
                    frag_b_trans<LDN>(r, bs, kk, wn + 8 * j);
                b[j][0] = r[0];
                b[j][1] = r[1];
                b[j + 1][0] = r[2];
                b[j + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j)
                    mma_m16n8k16_bf16(acc[i][j], a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }

    // Accumulator e of tile (i, j): row g (+8 for e >= 2), column 2t + (e & 1).
    const int g = lane / 4, tq = lane % 4;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = m0 + wm + 16 * i + g + (e >= 2 ? 8 : 0);
                const int c = n0 + wn + 8 * j + 2 * tq + (e & 1);
                if (r < M && c < N) {
                    const long long o = (long long)r * N + c;
                    C[o] = accumulate ? C[o] + acc[i][j][e] : acc[i][j][e];
                }
            }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256)
    gemm_tc_bf16_nt(gmem<float> C, gmem<const bf16_t> A, gmem<const bf16_t> B, int M, int N, int K, int accumulate) {
    gemm_tc<true>(C, A, B, M, N, K, accumulate);
}

extern "C" __global__ void __launch_bounds__(256)
    gemm_tc_bf16_nn(gmem<float> C, gmem<const bf16_t> A, gmem<const bf16_t> B, int M, int N, int K, int accumulate) {
    gemm_tc<false>(C, A, B, M, N, K, accumulate);
}

EMU_REGISTER(gemm_tc_bf16_nt)
EMU_REGISTER(gemm_tc_bf16_nn)
