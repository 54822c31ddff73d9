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
#include "tc_fragments.cuh"

namespace {

constexpr int FA_THREADS = 128;
constexpr int FA_BM = 64;  // query rows per block
constexpr int FA_BN = 64;  // keys per step

__device__ __forceinline__ float fa_neg_inf() {
    return __uint_as_float(0xff800000u);
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
    const float ninf = fa_neg_inf();

    fa_stage<HD>(qs, q, qstride, (long long)start + q0, min(FA_BM, len - q0), h * HD);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    // This warp's 16 query rows as A fragments, one per k16 step of the head dimension.
    unsigned qa[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; ++kk)
        frag_a<LD>(qa[kk], qs, warp * 16, 16 * kk);

    // Rows g and g + 8 of the warp's 16: running max, sum and output accumulators.
    float m[2] = {ninf, ninf}, l[2] = {0.f, 0.f};
    float acc[DT][4];
    zero_tiles(acc);
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
        zero_tiles(s);
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
#pragma unroll
            for (int j = 0; j < ST; j += 2) {
                unsigned r[4];
                frag_b_rows<LD>(r, ks, 8 * j, 16 * kk);
                mma_pair(s[j], s[j + 1], qa[kk], r);
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
            unsigned pa[4];
            acc_to_a(pa, s[2 * c], s[2 * c + 1]);
#pragma unroll
            for (int j = 0; j < DT; j += 2) {
                unsigned r[4];
                frag_b_trans<LD>(r, vs, 16 * c, 8 * j);
                mma_pair(acc[j], acc[j + 1], pa, r);
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


// ---------------------------------------------------------------------------------------------
// Backward, two kernels and no atomics (as attention.cu): with P = exp(scale·QKᵀ − lse),
// D = rowsum(dO ∘ O), dP = dO Vᵀ and dS = P ∘ (dP − D):
//   attn_flash_bwd_dq:   dQ = scale · dS K, one block per (64-query tile, head); also writes D;
//   attn_flash_bwd_dkdv: dV = Σ Pᵀ dO, dK = scale · Σ dSᵀ Q, one block per (64-key tile, kv
//                        head), summing the query heads of its group in a fixed order.
// The dK/dV kernel works in the transposed orientation (Sᵀ = K Qᵀ, dPᵀ = V dOᵀ with the warp's 16
// keys as rows), so Pᵀ and dSᵀ leave their accumulators directly as A fragments, as P does in
// the forward. Q, K, V, dO are bf16; O, lse, D and all accumulation f32; P and dS are rounded to
// bf16 as the A operands of their products.

template <int HD>
__device__ __forceinline__ void attn_flash_bwd_dq(gmem<float> dq, gmem<float> delta,
                                                  gmem<const bf16_t> q, gmem<const bf16_t> k,
                                                  gmem<const bf16_t> v, gmem<const bf16_t> dout,
                                                  gmem<const float> o, gmem<const float> lse,
                                                  gmem<const int> tiles, int heads, int kv_heads,
                                                  int causal, float scale) {
    constexpr int LD = HD + 8, KS = HD / 16, DT = HD / 8, ST = FA_BN / 8;
    const int tile = blockIdx.x, h = blockIdx.y;
    const int start = tiles[3 * tile], len = tiles[3 * tile + 1], q0 = tiles[3 * tile + 2];
    const int kvh = h / (heads / kv_heads);
    const long long qstride = (long long)heads * HD, kvstride = (long long)kv_heads * HD;
    DYN_SHARED(bf16_t, smem);
    auto qs = smem;
    auto dos = smem + FA_BM * LD;
    auto ks = smem + 2 * FA_BM * LD;
    auto vs = smem + (2 * FA_BM + FA_BN) * LD;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, tq = lane % 4;
    const int nq = min(FA_BM, len - q0);

    fa_stage<HD>(qs, q, qstride, (long long)start + q0, nq, h * HD);
    fa_stage<HD>(dos, dout, qstride, (long long)start + q0, nq, h * HD);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    // D of the warp's 16 rows, one row at a time across the lanes; rows g and g + 8 kept.
    float dr[2] = {0.f, 0.f};
    for (int i = 0; i < 16; ++i) {
        const int r = warp * 16 + i;
        float part = 0.f;
        if (r < nq)
            for (int d = lane; d < HD; d += 32)
                part += bf16_to_f32(dos[r * LD + d]) *
                        o[((long long)start + q0 + r) * qstride + (long long)h * HD + d];
        const float dsum = warp_sum(part);
        if (i == g)
            dr[0] = dsum;
        if (i == g + 8)
            dr[1] = dsum;
        if (lane == 0 && r < nq)
            delta[((long long)start + q0 + r) * heads + h] = dsum;
    }
    const int qi[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
    float lr[2];
#pragma unroll
    for (int row = 0; row < 2; ++row)
        lr[row] = qi[row] < len ? lse[((long long)start + qi[row]) * heads + h] : 0.f;

    float acc[DT][4];
    zero_tiles(acc);

    const int kend = causal ? min(len, q0 + FA_BM) : len;
    for (int k0 = 0; k0 < kend; k0 += FA_BN) {
        const int kn = min(FA_BN, kend - k0);
        __syncthreads();
        fa_stage<HD>(ks, k, kvstride, (long long)start + k0, kn, kvh * HD);
        fa_stage<HD>(vs, v, kvstride, (long long)start + k0, kn, kvh * HD);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        float sc[ST][4], dp[ST][4];
        zero_tiles(sc);
        zero_tiles(dp);
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
            unsigned qa[4], da[4];
            frag_a<LD>(qa, qs, warp * 16, 16 * kk);
            frag_a<LD>(da, dos, warp * 16, 16 * kk);
#pragma unroll
            for (int j = 0; j < ST; j += 2) {
                unsigned r[4];
                frag_b_rows<LD>(r, ks, 8 * j, 16 * kk);
                mma_pair(sc[j], sc[j + 1], qa, r);
                frag_b_rows<LD>(r, vs, 8 * j, 16 * kk);
                mma_pair(dp[j], dp[j + 1], da, r);
            }
        }
        // dS = P ∘ (dP − D), zero where masked.
#pragma unroll
        for (int j = 0; j < ST; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = k0 + 8 * j + 2 * tq + (e & 1);
                const int row = e >> 1;
                const bool ok = key < kend && qi[row] < len && (!causal || key <= qi[row]);
                const float p = ok ? expf(sc[j][e] * scale - lr[row]) : 0.f;
                sc[j][e] = p * (dp[j][e] - dr[row]);
            }
        // dQ += dS K.
#pragma unroll
        for (int c = 0; c < ST / 2; ++c) {
            unsigned sa[4];
            acc_to_a(sa, sc[2 * c], sc[2 * c + 1]);
#pragma unroll
            for (int j = 0; j < DT; j += 2) {
                unsigned r[4];
                frag_b_trans<LD>(r, ks, 16 * c, 8 * j);
                mma_pair(acc[j], acc[j + 1], sa, r);
            }
        }
    }
#pragma unroll
    for (int row = 0; row < 2; ++row) {
        if (qi[row] >= len)
            continue;
        const long long base = ((long long)start + qi[row]) * qstride + (long long)h * HD + 2 * tq;
#pragma unroll
        for (int j = 0; j < DT; ++j) {
            dq[base + 8 * j] = scale * acc[j][2 * row];
            dq[base + 8 * j + 1] = scale * acc[j][2 * row + 1];
        }
    }
}

template <int HD>
__device__ __forceinline__ void attn_flash_bwd_dkdv(gmem<float> dk, gmem<float> dv,
                                                    gmem<const bf16_t> q, gmem<const bf16_t> k,
                                                    gmem<const bf16_t> v,
                                                    gmem<const bf16_t> dout,
                                                    gmem<const float> lse,
                                                    gmem<const float> delta,
                                                    gmem<const int> tiles, int heads,
                                                    int kv_heads, int causal, float scale) {
    constexpr int LD = HD + 8, KS = HD / 16, DT = HD / 8, QT = FA_BM / 8;
    const int tile = blockIdx.x, kvh = blockIdx.y;
    const int start = tiles[3 * tile], len = tiles[3 * tile + 1], k0 = tiles[3 * tile + 2];
    const int group = heads / kv_heads;
    const long long qstride = (long long)heads * HD, kvstride = (long long)kv_heads * HD;
    DYN_SHARED(bf16_t, smem);
    auto ks = smem;
    auto vs = smem + FA_BN * LD;
    auto qs = smem + 2 * FA_BN * LD;
    auto dos = smem + (2 * FA_BN + FA_BM) * LD;
    auto stats = shared_cast<float>(smem + (2 * FA_BN + 2 * FA_BM) * LD);  // lse[64], D[64]
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, tq = lane % 4;
    const int nk = min(FA_BN, len - k0);

    fa_stage<HD>(ks, k, kvstride, (long long)start + k0, nk, kvh * HD);
    fa_stage<HD>(vs, v, kvstride, (long long)start + k0, nk, kvh * HD);
    cp_async_commit();
    // The warp's keys: rows g and g + 8 of its 16.
    const int kj[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};

    float dka[DT][4], dva[DT][4];
    zero_tiles(dka);
    zero_tiles(dva);

    // Under causal masking no query before the tile's first key sees it.
    const int qfirst = causal ? k0 - k0 % FA_BM : 0;
    for (int i = 0; i < group; ++i) {
        const int h = kvh * group + i;
        for (int q0 = qfirst; q0 < len; q0 += FA_BM) {
            const int nq = min(FA_BM, len - q0);
            __syncthreads();  // every warp is done with the previous Q, dO and statistics
            fa_stage<HD>(qs, q, qstride, (long long)start + q0, nq, h * HD);
            fa_stage<HD>(dos, dout, qstride, (long long)start + q0, nq, h * HD);
            cp_async_commit();
            for (int r = threadIdx.x; r < FA_BM; r += FA_THREADS) {
                const bool ok = r < nq;
                const long long at = ((long long)start + q0 + r) * heads + h;
                stats[r] = ok ? lse[at] : 0.f;
                stats[FA_BM + r] = ok ? delta[at] : 0.f;
            }
            cp_async_wait<0>();
            __syncthreads();
            // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ: the warp's 16 keys x 64 queries.
            float st[QT][4], dpt[QT][4];
            zero_tiles(st);
            zero_tiles(dpt);
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) {
                unsigned ka[4], va[4];
                frag_a<LD>(ka, ks, warp * 16, 16 * kk);
                frag_a<LD>(va, vs, warp * 16, 16 * kk);
#pragma unroll
                for (int j = 0; j < QT; j += 2) {
                    unsigned r[4];
                    frag_b_rows<LD>(r, qs, 8 * j, 16 * kk);
                    mma_pair(st[j], st[j + 1], ka, r);
                    frag_b_rows<LD>(r, dos, 8 * j, 16 * kk);
                    mma_pair(dpt[j], dpt[j + 1], va, r);
                }
            }
            // Pᵀ and dSᵀ = Pᵀ ∘ (dPᵀ − D), zero where masked; st keeps Pᵀ, dpt becomes dSᵀ.
#pragma unroll
            for (int j = 0; j < QT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int qc = 8 * j + 2 * tq + (e & 1);  // query within the tile
                    const int key = kj[e >> 1];
                    const bool ok = qc < nq && key < len && (!causal || key <= q0 + qc);
                    const float p = ok ? expf(st[j][e] * scale - stats[qc]) : 0.f;
                    st[j][e] = p;
                    dpt[j][e] = p * (dpt[j][e] - stats[FA_BM + qc]);
                }
            // dV += Pᵀ dO and dK += dSᵀ Q.
#pragma unroll
            for (int c = 0; c < QT / 2; ++c) {
                unsigned pa[4], sa[4];
                acc_to_a(pa, st[2 * c], st[2 * c + 1]);
                acc_to_a(sa, dpt[2 * c], dpt[2 * c + 1]);
#pragma unroll
                for (int j = 0; j < DT; j += 2) {
                    unsigned r[4];
                    frag_b_trans<LD>(r, dos, 16 * c, 8 * j);
                    mma_pair(dva[j], dva[j + 1], pa, r);
                    frag_b_trans<LD>(r, qs, 16 * c, 8 * j);
                    mma_pair(dka[j], dka[j + 1], sa, r);
                }
            }
        }
    }
    cp_async_wait<0>();  // a tile with no query tiles still retires its K/V copies
#pragma unroll
    for (int row = 0; row < 2; ++row) {
        if (kj[row] >= len)
            continue;
        const long long base = ((long long)start + kj[row]) * kvstride + (long long)kvh * HD + 2 * tq;
#pragma unroll
        for (int j = 0; j < DT; ++j) {
            dk[base + 8 * j] = scale * dka[j][2 * row];
            dk[base + 8 * j + 1] = scale * dka[j][2 * row + 1];
            dv[base + 8 * j] = dva[j][2 * row];
            dv[base + 8 * j + 1] = dva[j][2 * row + 1];
        }
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

extern "C" __global__ void __launch_bounds__(FA_THREADS)
    attn_flash_bwd_dq_d32(gmem<float> dq, gmem<float> delta, gmem<const bf16_t> q,
                          gmem<const bf16_t> k, gmem<const bf16_t> v, gmem<const bf16_t> dout,
                          gmem<const float> o, gmem<const float> lse, gmem<const int> tiles,
                          int heads, int kv_heads, int causal, float scale) {
    attn_flash_bwd_dq<32>(dq, delta, q, k, v, dout, o, lse, tiles, heads, kv_heads, causal, scale);
}

extern "C" __global__ void __launch_bounds__(FA_THREADS)
    attn_flash_bwd_dkdv_d32(gmem<float> dk, gmem<float> dv, gmem<const bf16_t> q,
                            gmem<const bf16_t> k, gmem<const bf16_t> v, gmem<const bf16_t> dout,
                            gmem<const float> lse, gmem<const float> delta, gmem<const int> tiles,
                            int heads, int kv_heads, int causal, float scale) {
    attn_flash_bwd_dkdv<32>(dk, dv, q, k, v, dout, lse, delta, tiles, heads, kv_heads, causal, scale);
}

extern "C" __global__ void __launch_bounds__(FA_THREADS)
    attn_flash_bwd_dq_d64(gmem<float> dq, gmem<float> delta, gmem<const bf16_t> q,
                          gmem<const bf16_t> k, gmem<const bf16_t> v, gmem<const bf16_t> dout,
                          gmem<const float> o, gmem<const float> lse, gmem<const int> tiles,
                          int heads, int kv_heads, int causal, float scale) {
    attn_flash_bwd_dq<64>(dq, delta, q, k, v, dout, o, lse, tiles, heads, kv_heads, causal, scale);
}

extern "C" __global__ void __launch_bounds__(FA_THREADS)
    attn_flash_bwd_dkdv_d64(gmem<float> dk, gmem<float> dv, gmem<const bf16_t> q,
                            gmem<const bf16_t> k, gmem<const bf16_t> v, gmem<const bf16_t> dout,
                            gmem<const float> lse, gmem<const float> delta, gmem<const int> tiles,
                            int heads, int kv_heads, int causal, float scale) {
    attn_flash_bwd_dkdv<64>(dk, dv, q, k, v, dout, lse, delta, tiles, heads, kv_heads, causal, scale);
}

extern "C" __global__ void __launch_bounds__(FA_THREADS)
    attn_flash_bwd_dq_d128(gmem<float> dq, gmem<float> delta, gmem<const bf16_t> q,
                          gmem<const bf16_t> k, gmem<const bf16_t> v, gmem<const bf16_t> dout,
                          gmem<const float> o, gmem<const float> lse, gmem<const int> tiles,
                          int heads, int kv_heads, int causal, float scale) {
    attn_flash_bwd_dq<128>(dq, delta, q, k, v, dout, o, lse, tiles, heads, kv_heads, causal, scale);
}

extern "C" __global__ void __launch_bounds__(FA_THREADS)
    attn_flash_bwd_dkdv_d128(gmem<float> dk, gmem<float> dv, gmem<const bf16_t> q,
                            gmem<const bf16_t> k, gmem<const bf16_t> v, gmem<const bf16_t> dout,
                            gmem<const float> lse, gmem<const float> delta, gmem<const int> tiles,
                            int heads, int kv_heads, int causal, float scale) {
    attn_flash_bwd_dkdv<128>(dk, dv, q, k, v, dout, lse, delta, tiles, heads, kv_heads, causal, scale);
}

EMU_REGISTER(attn_flash_fwd_d32)
EMU_REGISTER(attn_flash_fwd_d64)
EMU_REGISTER(attn_flash_fwd_d128)
EMU_REGISTER(attn_flash_bwd_dq_d32)
EMU_REGISTER(attn_flash_bwd_dkdv_d32)
EMU_REGISTER(attn_flash_bwd_dq_d64)
EMU_REGISTER(attn_flash_bwd_dkdv_d64)
EMU_REGISTER(attn_flash_bwd_dq_d128)
EMU_REGISTER(attn_flash_bwd_dkdv_d128)
