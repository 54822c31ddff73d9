// kernels/gemm.cu: C[M,N] (+)= op(A)[M,K] · op(B)[K,N], row-major, f32 accumulation.
//
// op(A) is A stored [M,K], or [K,M] when transposed; op(B) is B stored [K,N], or [N,K] when
// transposed. One kernel per (storage type, transpose pair) so the tile loaders are
// specialised at compile time: gemm_<f32|bf16>_<n|t><n|t>. bf16 kernels read bf16 A and B and
// write f32 C.
//
// Shared-memory tiled SIMT GEMM: a block of 256 threads computes a 128x64 tile of C; each
// thread owns an 8x4 register tile (rows ty + 16 i, columns tx + 16 j, so shared reads and C
// writes are unit-stride across a half-warp). K advances in steps of 16 through two shared
// buffers: the next K-tile is fetched into registers while the current one is multiplied, then
// parked in the other buffer, one barrier per step. Shared tiles are stored K-major (the inner
// product reads one row of As and one row of Bs per k) and padded by 2 floats so the transposed
// stores of the K-contiguous loaders hit 32 distinct banks.
#include "common.cuh"

namespace {

constexpr int BM = 128;       // rows of C per block
constexpr int BN = 64;        // columns of C per block
constexpr int BK = 16;        // depth of one K step
constexpr int TM = 8;         // rows per thread
constexpr int TN = 4;         // columns per thread
constexpr int THREADS = 256;  // (BN / TN) x (BM / TM) = 16 x 16
constexpr int LDA = BM + 2;   // padded row length of the K-major A tile
constexpr int LDB = BN + 2;   // padded row length of the K-major B tile
constexpr int A_LOADS = BM * BK / THREADS;  // 8 elements of A per thread per K step
constexpr int B_LOADS = BN * BK / THREADS;  // 4 elements of B per thread per K step

// Fetches the A tile (rows m0.., depth k0..) into registers, zero outside the matrix.
// Not transposed: A is [M,K], K contiguous, so 16 consecutive threads read 16 consecutive k of
// one row. Transposed: A is [K,M], M contiguous, so a warp reads 32 consecutive rows of one k.
template <class T, bool TA>
__device__ __forceinline__ void fetch_a(float (&ra)[A_LOADS], gmem<const T> A, int M, int K,
                                        int m0, int k0, int t) {
#pragma unroll
    for (int p = 0; p < A_LOADS; ++p) {
        int r, kk;
        if (TA) {
            r = t % BM;
            kk = t / BM + (THREADS / BM) * p;
        } else {
            kk = t % BK;
            r = t / BK + (THREADS / BK) * p;
        }
        int gr = m0 + r, gk = k0 + kk;
        float v = 0.f;
        if (gr < M && gk < K)
            v = TA ? load_f32(A[(long long)gk * M + gr]) : load_f32(A[(long long)gr * K + gk]);
        ra[p] = v;
    }
}

// Fetches the B tile (depth k0.., columns n0..). Not transposed: B is [K,N], N contiguous.
// Transposed: B is [N,K], K contiguous.
template <class T, bool TB>
__device__ __forceinline__ void fetch_b(float (&rb)[B_LOADS], gmem<const T> B, int N, int K,
                                        int n0, int k0, int t) {
#pragma unroll
    for (int p = 0; p < B_LOADS; ++p) {
        int c, kk;
        if (TB) {
            kk = t % BK;
            c = t / BK + (THREADS / BK) * p;
        } else {
            c = t % BN;
            kk = t / BN + (THREADS / BN) * p;
        }
        int gc = n0 + c, gk = k0 + kk;
        float v = 0.f;
        if (gc < N && gk < K)
            v = TB ? load_f32(B[(long long)gc * K + gk]) : load_f32(B[(long long)gk * N + gc]);
        rb[p] = v;
    }
}

// Parks the fetched tiles in shared buffer `buf` (K-major), with the same element mapping.
template <bool TA, bool TB, class SA, class SB>
__device__ __forceinline__ void park(SA As, SB Bs, int buf, const float (&ra)[A_LOADS],
                                     const float (&rb)[B_LOADS], int t) {
#pragma unroll
    for (int p = 0; p < A_LOADS; ++p) {
        int r = TA ? t % BM : t / BK + (THREADS / BK) * p;
        int kk = TA ? t / BM + (THREADS / BM) * p : t % BK;
        As[buf * (BK * LDA) + kk * LDA + r] = ra[p];
    }
#pragma unroll
    for (int p = 0; p < B_LOADS; ++p) {
        int c = TB ? t / BK + (THREADS / BK) * p : t % BN;
        int kk = TB ? t % BK : t / BN + (THREADS / BN) * p;
        Bs[buf * (BK * LDB) + kk * LDB + c] = rb[p];
    }
}

template <class T, bool TA, bool TB>
__device__ __forceinline__ void gemm_tile(gmem<float> C, gmem<const T> A, gmem<const T> B, int M,
                                          int N, int K, int accumulate) {
    SHARED(float, As, 2 * BK * LDA);
    SHARED(float, Bs, 2 * BK * LDB);
    const int t = threadIdx.x;
    const int tx = t % (BN / TN);  // column group
    const int ty = t / (BN / TN);  // row group
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j)
            acc[i][j] = 0.f;

    float ra[A_LOADS];
    float rb[B_LOADS];
    const int steps = (K + BK - 1) / BK;
    if (steps > 0) {
        fetch_a<T, TA>(ra, A, M, K, m0, 0, t);
        fetch_b<T, TB>(rb, B, N, K, n0, 0, t);
        park<TA, TB>(As, Bs, 0, ra, rb, t);
    }
    __syncthreads();
    for (int s = 0; s < steps; ++s) {
        const int cur = s & 1;
        const bool more = s + 1 < steps;
        if (more) {
            fetch_a<T, TA>(ra, A, M, K, m0, (s + 1) * BK, t);
            fetch_b<T, TB>(rb, B, N, K, n0, (s + 1) * BK, t);
        }
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float a[TM], b[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i)
                a[i] = As[cur * (BK * LDA) + kk * LDA + ty + 16 * i];
#pragma unroll
            for (int j = 0; j < TN; ++j)
                b[j] = Bs[cur * (BK * LDB) + kk * LDB + tx + 16 * j];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j)
                    acc[i][j] += a[i] * b[j];
        }
        // The other buffer was last read in step s-1, which every thread finished before the
        // barrier that ended it.
        if (more)
            park<TA, TB>(As, Bs, cur ^ 1, ra, rb, t);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < TM; ++i) {
        int r = m0 + ty + 16 * i;
        if (r < M) {
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                int c = n0 + tx + 16 * j;
                if (c < N) {
                    long long o = (long long)r * N + c;
                    C[o] = accumulate ? C[o] + acc[i][j] : acc[i][j];
                }
            }
        }
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(256)
    gemm_f32_nn(gmem<float> C, gmem<const float> A, gmem<const float> B, int M, int N, int K, int accumulate) {
    gemm_tile<float, false, false>(C, A, B, M, N, K, accumulate);
}

extern "C" __global__ void __launch_bounds__(256)
    gemm_f32_nt(gmem<float> C, gmem<const float> A, gmem<const float> B, int M, int N, int K, int accumulate) {
    gemm_tile<float, false, true>(C, A, B, M, N, K, accumulate);
}

extern "C" __global__ void __launch_bounds__(256)
    gemm_f32_tn(gmem<float> C, gmem<const float> A, gmem<const float> B, int M, int N, int K, int accumulate) {
    gemm_tile<float, true, false>(C, A, B, M, N, K, accumulate);
}

extern "C" __global__ void __launch_bounds__(256)
    gemm_f32_tt(gmem<float> C, gmem<const float> A, gmem<const float> B, int M, int N, int K, int accumulate) {
    gemm_tile<float, true, true>(C, A, B, M, N, K, accumulate);
}

extern "C" __global__ void __launch_bounds__(256)
    gemm_bf16_nn(gmem<float> C, gmem<const bf16_t> A, gmem<const bf16_t> B, int M, int N, int K, int accumulate) {
    gemm_tile<bf16_t, false, false>(C, A, B, M, N, K, accumulate);
}

extern "C" __global__ void __launch_bounds__(256)
    gemm_bf16_nt(gmem<float> C, gmem<const bf16_t> A, gmem<const bf16_t> B, int M, int N, int K, int accumulate) {
    gemm_tile<bf16_t, false, true>(C, A, B, M, N, K, accumulate);
}

extern "C" __global__ void __launch_bounds__(256)
    gemm_bf16_tn(gmem<float> C, gmem<const bf16_t> A, gmem<const bf16_t> B, int M, int N, int K, int accumulate) {
    gemm_tile<bf16_t, true, false>(C, A, B, M, N, K, accumulate);
}

extern "C" __global__ void __launch_bounds__(256)
    gemm_bf16_tt(gmem<float> C, gmem<const bf16_t> A, gmem<const bf16_t> B, int M, int N, int K, int accumulate) {
    gemm_tile<bf16_t, true, true>(C, A, B, M, N, K, accumulate);
}

EMU_REGISTER(gemm_f32_nn)
EMU_REGISTER(gemm_f32_nt)
EMU_REGISTER(gemm_f32_tn)
EMU_REGISTER(gemm_f32_tt)
EMU_REGISTER(gemm_bf16_nn)
EMU_REGISTER(gemm_bf16_nt)
EMU_REGISTER(gemm_bf16_tn)
EMU_REGISTER(gemm_bf16_tt)
