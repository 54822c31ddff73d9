// kernels/attn_flash.cu: FlashAttention-2 forward on the tensor cores, bf16 Q, K, V with f32
// softmax statistics and f32 output, over packed variable-length sequences.
//
// Layout as kernels/attention.cu (the SIMT kernels, whose CPU reference is
// src/backend/cpu/attention.rs): q [rows, heads*HD], k, v [rows, kv_heads*HD] (bf16 here), o
// [rows, heads*HD] and lse [rows, heads] f32; query head h reads kv head h / (heads / kv_heads);
// a token attends to the rows of its own sequence, and with `causal` to those at or before it.
// The work table is the same (3 ints per query tile: sequence start, length, tile offset), so
// one launch covers every sequence of a packed multi-client batch.
//
// A block of 4 warps takes 64 query rows of one head (16 per warp) and streams the keys in tiles
// of 64. Per key tile: K and V are staged in shared memory with cp.async (16-byte chunks, rows
// past the sequence zero-filled); S = Q Kᵀ is 8 x (HD/16) mma.m16n8k16 per warp, with Q's
// fragments loaded once (ldmatrix x4) and K's by ldmatrix x4 over rows of K (B stored [n, k]);
// the online softmax keeps the running max and sum of each row in f32 (a row's 16 score columns
// of one thread, reduced over the 4 lanes of its quad); P, rounded to bf16, becomes the A operand
// of O += P V straight from the S accumulators (the accumulator layout of two adjacent n8 tiles
// is the A fragment layout of one k16 step); V's fragments come by ldmatrix x4.trans (B stored
// [k, n]). At the end O is divided by the row sum and written with lse = m + log(sum), the
// log-sum-exp of the scaled scores.
//
// Needs HD in {32, 64, 128}, and heads * HD, kv_heads * HD multiples of 8 (they are).
#include "common.cuh"
#include "tensor_core.cuh"

namespace {

constexpr int FA_THREADS = 128;
constexpr int FA_BM = 64;  // query rows per block
constexpr int FA_BN = 64;  // keys per step

__device__ __forceinline__ float fa_neg_inf() {
    return __uint_as_float(0xff800000u);
}

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    return static_cast<unsigned>(f32_to_bf16(lo)) | (static_cast<unsigned>(f32_to_bf16(hi)) << 16);
}

// Stages `FA_BN` (or FA_BM) rows of HD bf16, rows row0.. of a [*, stride] matrix from column
// col0, into `dst` (pitch HD + 8); rows at or past `nvalid` are zero-filled.
template <int HD, class S>
__device__ __forceinline__ void fa_stage(S dst, gmem<const bf16_t> src, long long stride,
                                         long long row0, int nvalid, int col0) {
    constexpr int LD = HD + 8, CHUNKS = HD / 8;
    for (int c = threadIdx.x; c < 64 * CHUNKS; c += FA_THREADS) {
        const int r = c / CHUNKS, cc = (c % CHUNKS) * 8;
        const bool inside = r < nvalid;
        gmem<const bf16_t> from = inside ? src + ((row0 + r) * stride + col0 + cc) : src;
        cp_async<16>(dst + (r * LD + cc), from, inside ? 16 : 0);
    }
}

template <int HD>
__device__ __forceinline__ void attn_flash_fwd(gmem<float> o, gmem<float> lse, gmem<const bf16_t> q,
                                               gmem<const bf16_t> k, gmem<const bf16_t> v,
                                               gmem<const int> tiles, int heads, int kv_heads,
                                               int causal, float scale) {
    constexpr int LD = HD + 8;   // shared row pitch (bf16): 16 bytes of padding per row
    constexpr int KS = HD / 16;  // k16 steps over the head dimension
    constexpr int DT = HD / 8;   // n8 tiles of the output
    constexpr int ST = FA_BN / 8;  // n8 tiles of one score tile
    const int tile = blockIdx.x, h = blockIdx.y;
    const int start = tiles[3 * tile], len = tiles[3 * tile + 1], q0 = tiles[3 * tile + 2];
    const int kvh = h / (heads / kv_heads);
    const long long qstride = (long long)heads * HD, kvstride = (long long)kv_heads * HD;
    DYN_SHARED(bf16_t, smem);
    auto qs = smem;
    auto ks = smem + FA_BM * LD;
    auto vs = smem + (FA_BM + FA_BN) * LD;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, tq = lane % 4;
    const int mat = lane / 8, mrow = lane % 8;
    const float ninf = fa_neg_inf();

    fa_stage<HD>(qs, q, qstride, (long long)start + q0, min(FA_BM, len - q0), h * HD);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    // This warp's 16 query rows as A fragments, one per k16 step of the head dimension.
    unsigned qa[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
        const int row = warp * 16 + mrow + 8 * (mat & 1);
        ldmatrix_x4(qa[kk], qs + (row * LD + 16 * kk + 8 * (mat >> 1)));
    }

    // Rows g and g + 8 of the warp's 16: running max, sum and output accumulators.
    float m[2] = {ninf, ninf}, l[2] = {0.f, 0.f};
    float acc[DT][4];
#pragma unroll
    for (int j = 0; j < DT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            acc[j][e] = 0.f;
    const int qi[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};

    const int kend = causal ? min(len, q0 + FA_BM) : len;
    for (int k0 = 0; k0 < kend; k0 += FA_BN) {
        const int kn = min(FA_BN, kend - k0);
        __syncthreads();  // every warp is done with the previous K and V tiles
        fa_stage<HD>(ks, k, kvstride, (long long)start + k0, kn, kvh * HD);
        fa_stage<HD>(vs, v, kvstride, (long long)start + k0, kn, kvh * HD);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();

        // S = Q Kᵀ for 16 rows x 64 keys.
        float s[ST][4];
#pragma unroll
        for (int j = 0; j < ST; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                s[j][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
#pragma unroll
            for (int j = 0; j < ST; j += 2) {
                // Matrices: d 0-7 / 8-15 (mat & 1) of key tiles j / j + 1 (mat >> 1).
                unsigned r[4];
                const int key = 8 * (j + (mat >> 1)) + mrow;
                ldmatrix_x4(r, ks + (key * LD + 16 * kk + 8 * (mat & 1)));
                unsigned b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                mma_m16n8k16_bf16(s[j], qa[kk], b0, s[j]);
                mma_m16n8k16_bf16(s[j + 1], qa[kk], b1, s[j + 1]);
            }
        }

        // Online softmax: scale, mask, new row maxima over the quad, rescale what came before.
        float mx[2] = {ninf, ninf};
#pragma unroll
        for (int j = 0; j < ST; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = k0 + 8 * j + 2 * tq + (e & 1);
                const int row = e >> 1;
                const bool ok = key < kend && (!causal || key <= qi[row]);
                s[j][e] = ok ? s[j][e] * scale : ninf;
                mx[row] = fmaxf(mx[row], s[j][e]);
            }
        float corr[2];
#pragma unroll
        for (int row = 0; row < 2; ++row) {
            mx[row] = fmaxf(mx[row], __shfl_xor_sync(0xffffffffu, mx[row], 1));
            mx[row] = fmaxf(mx[row], __shfl_xor_sync(0xffffffffu, mx[row], 2));
            const float mnew = fmaxf(m[row], mx[row]);
            // A row with nothing visible yet keeps max -inf: leave its (zero) state alone.
            corr[row] = mnew == ninf ? 1.f : expf(m[row] - mnew);
            m[row] = mnew;
        }
        float rs[2] = {0.f, 0.f};
#pragma unroll
        for (int j = 0; j < ST; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int row = e >> 1;
                const float p = m[row] == ninf ? 0.f : expf(s[j][e] - m[row]);
                s[j][e] = p;
                rs[row] += p;
            }
#pragma unroll
        for (int row = 0; row < 2; ++row) {
            rs[row] += __shfl_xor_sync(0xffffffffu, rs[row], 1);
            rs[row] += __shfl_xor_sync(0xffffffffu, rs[row], 2);
            l[row] = l[row] * corr[row] + rs[row];
        }
#pragma unroll
        for (int j = 0; j < DT; ++j) {
            acc[j][0] *= corr[0];
            acc[j][1] *= corr[0];
            acc[j][2] *= corr[1];
            acc[j][3] *= corr[1];
        }

        // O += P V: key tiles 2c and 2c + 1 of S are the A fragment of k16 step c.
#pragma unroll
        for (int c = 0; c < ST / 2; ++c) {
            unsigned pa[4] = {pack_bf16(s[2 * c][0], s[2 * c][1]), pack_bf16(s[2 * c][2], s[2 * c][3]),
                              pack_bf16(s[2 * c + 1][0], s[2 * c + 1][1]),
                              pack_bf16(s[2 * c + 1][2], s[2 * c + 1][3])};
#pragma unroll
            for (int j = 0; j < DT; j += 2) {
                // Matrices: keys 0-7 / 8-15 (mat & 1) of output tiles j / j + 1 (mat >> 1).
                unsigned r[4];
                const int key = 16 * c + 8 * (mat & 1) + mrow;
                ldmatrix_x4_trans(r, vs + (key * LD + 8 * (j + (mat >> 1))));
                unsigned b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
                mma_m16n8k16_bf16(acc[j], pa, b0, acc[j]);
                mma_m16n8k16_bf16(acc[j + 1], pa, b1, acc[j + 1]);
            }
        }
    }

#pragma unroll
    for (int row = 0; row < 2; ++row) {
        if (qi[row] >= len)
            continue;
        const long long r = (long long)start + qi[row];
        const float inv = l[row] > 0.f ? 1.f / l[row] : 0.f;
#pragma unroll
        for (int j = 0; j < DT; ++j) {
            const long long base = r * qstride + (long long)h * HD + 8 * j + 2 * tq;
            o[base] = acc[j][2 * row] * inv;
            o[base + 1] = acc[j][2 * row + 1] * inv;
        }
        if (tq == 0)
            lse[r * heads + h] = m[row] + logf(l[row]);
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(FA_THREADS)
    attn_flash_fwd_d32(gmem<float> o, gmem<float> lse, gmem<const bf16_t> q, gmem<const bf16_t> k,
                       gmem<const bf16_t> v, gmem<const int> tiles, int heads, int kv_heads,
                       int causal, float scale) {
    attn_flash_fwd<32>(o, lse, q, k, v, tiles, heads, kv_heads, causal, scale);
}

extern "C" __global__ void __launch_bounds__(FA_THREADS)
    attn_flash_fwd_d64(gmem<float> o, gmem<float> lse, gmem<const bf16_t> q, gmem<const bf16_t> k,
                       gmem<const bf16_t> v, gmem<const int> tiles, int heads, int kv_heads,
                       int causal, float scale) {
    attn_flash_fwd<64>(o, lse, q, k, v, tiles, heads, kv_heads, causal, scale);
}

extern "C" __global__ void __launch_bounds__(FA_THREADS)
    attn_flash_fwd_d128(gmem<float> o, gmem<float> lse, gmem<const bf16_t> q, gmem<const bf16_t> k,
                        gmem<const bf16_t> v, gmem<const int> tiles, int heads, int kv_heads,
                        int causal, float scale) {
    attn_flash_fwd<128>(o, lse, q, k, v, tiles, heads, kv_heads, causal, scale);
}

EMU_REGISTER(attn_flash_fwd_d32)
EMU_REGISTER(attn_flash_fwd_d64)
EMU_REGISTER(attn_flash_fwd_d128)
