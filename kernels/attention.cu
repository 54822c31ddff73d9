// Flash-style (FlashAttention-2 structure) attention over packed variable-length sequences.
//
// Layout (see src/backend/cpu/attention.rs, the reference): q, o: [rows, heads*hd],
// k, v: [rows, kv_heads*hd], lse: [rows, heads], row-major and packed. Query head h reads kv head
// h / (heads / kv_heads). A token attends only to the rows of its own sequence, with `window` > 0
// only to the `window` keys ending at its own position (Gemma 3's local layers; the tiles are
// those of the causal case, keys before the window are masked), and with `causal`
// only to those at or before it. Rows that no sequence covers are never read or written.
//
// Work tables (built on the host, 3 ints per tile): the sequence's first row, its length, and the
// first row of the tile inside the sequence. blockIdx.x picks a tile, blockIdx.y a (query or kv)
// head, so one launch covers every sequence of the batch whatever their lengths.
//
// All kernels run 128 threads = 4 warps viewed as a 16 x 8 grid: "row group" rg = warp*4 +
// lane/8 owns the tile rows rg, rg+16, ... and "column group" cg = lane%8 owns the columns cg,
// cg+8, ... of the other operand. A row's 8 column threads are adjacent lanes, so row reductions
// are three xor shuffles. Shared tiles are stored with a row pitch of hd+1 (or BN+1) floats, which
// makes the strided row accesses of one warp fall into distinct banks.
//
// Template parameters: DC = output columns per thread (hd <= 8*DC), RM/RK = rows per thread of
// the resident tile (16*RM rows), KC/QC = columns per thread of the streamed score tile (8*KC).
// Dynamic shared memory sizes are computed by the host (src/backend/cuda/ops/attention.rs) with
// the same formulas as the carving below. All are under the 48 KiB default except
// attn_bwd_dkdv_d128 for hd >= 116 (53.9 KiB at hd = 128) and attn_bwd_dkdv_d256 for hd >= 245
// (50.5 KiB at hd = 256), which need the launcher to raise
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES.
//
// Determinism: no atomics. dK/dV of a kv head sum over the query heads of its group inside one
// block, in a fixed order; dQ has its own kernel, one block per query tile.
#include "common.cuh"

#define ATTN_THREADS 128
#define ATTN_WARPS (ATTN_THREADS / 32)
// Four resident blocks per SM (16 warps) caps registers at 128/thread; every variant's shared
// memory (at most 54 KiB) also allows four per SM on sm_80 and later.
#define ATTN_MIN_BLOCKS 4
// The hd <= 256 kernels carve 42-51 KiB, so at most three blocks fit an sm_80 SM's 164 KiB
// anyway; asking for three lifts their register cap to 168, which the dQ kernel's 32 output
// columns per thread need (at four it spilled).
#define ATTN_MIN_BLOCKS_D256 3

__device__ __forceinline__ float attn_neg_inf() {
    return __uint_as_float(0xff800000u);
}

// Max / sum over the 8 lanes of a column group (lanes 8k .. 8k+7).
__device__ __forceinline__ float group8_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
    return v;
}
__device__ __forceinline__ float group8_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    v += __shfl_xor_sync(0xffffffffu, v, 4);
    return v;
}

// Copies `nrows` rows of `hd` floats (global rows row0.., columns col0..) into a shared tile of
// pitch `ld`; rows at or past `nvalid` are filled with zeros so the math on them stays finite.
// One warp per row, lanes along the row: coalesced global reads.
template <class SP>
__device__ __forceinline__ void load_rows(SP dst, int ld, gmem<const float> src, long long stride,
                                          long long row0, int nvalid, int nrows, int col0,
                                          int hd) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int r = warp; r < nrows; r += ATTN_WARPS) {
        const bool ok = r < nvalid;
        const long long base = (row0 + r) * stride + col0;
        for (int c = lane; c < hd; c += 32)
            dst[r * ld + c] = ok ? src[base + c] : 0.f;
    }
}

// ---------------------------------------------------------------------------------------------
// Forward: one block per (query tile of 16*RM rows, head). K and V tiles of 8*KC keys stream
// through one shared buffer (K for the scores, then V for P V); the softmax is online (running
// max m and sum l per row in registers), O accumulates in registers, and only O and the
// log-sum-exp of the scaled scores are written.
// Shared: Q [BM][hd+1], K/V [BN][hd+1], P [BM][BN+1].
template <int DC, int RM, int KC>
__device__ __forceinline__ void attn_fwd_body(gmem<float> o, gmem<float> lse, gmem<const float> q,
                                              gmem<const float> k, gmem<const float> v,
                                              gmem<const int> tiles, int heads, int kv_heads,
                                              int hd, int causal, int window, float scale) {
    constexpr int BM = 16 * RM, BN = 8 * KC, LDP = BN + 1;
    const int tile = blockIdx.x, h = blockIdx.y;
    const int start = tiles[3 * tile], len = tiles[3 * tile + 1], q0 = tiles[3 * tile + 2];
    const int kvh = h / (heads / kv_heads);
    const long long qstride = (long long)heads * hd, kvstride = (long long)kv_heads * hd;
    const int ld = hd + 1;
    DYN_SHARED(float, smem);
    auto qs = smem;
    auto kvs = smem + BM * ld;
    auto ps = smem + (BM + BN) * ld;
    const int lane = threadIdx.x % 32;
    const int rg = (threadIdx.x / 32) * 4 + lane / 8, cg = lane % 8;
    const float ninf = attn_neg_inf();

    load_rows(qs, ld, q, qstride, (long long)start + q0, min(BM, len - q0), BM, h * hd, hd);

    float m[RM], l[RM], acc[RM][DC];
#pragma unroll
    for (int i = 0; i < RM; ++i) {
        m[i] = ninf;
        l[i] = 0.f;
#pragma unroll
        for (int c = 0; c < DC; ++c)
            acc[i][c] = 0.f;
    }
    // Keys past the tile's last query are invisible under causal masking.
    const int kend = causal ? min(len, q0 + BM) : len;
    for (int k0 = 0; k0 < kend; k0 += BN) {
        const int kn = min(BN, kend - k0);
        __syncthreads();  // the previous tile's P V is done with kvs and ps
        load_rows(kvs, ld, k, kvstride, (long long)start + k0, kn, BN, kvh * hd, hd);
        __syncthreads();
        float s[RM][KC];
#pragma unroll
        for (int i = 0; i < RM; ++i)
#pragma unroll
            for (int j = 0; j < KC; ++j)
                s[i][j] = 0.f;
        for (int d = 0; d < hd; ++d) {
            float a[RM], b[KC];
#pragma unroll
            for (int i = 0; i < RM; ++i)
                a[i] = qs[(rg + 16 * i) * ld + d];
#pragma unroll
            for (int j = 0; j < KC; ++j)
                b[j] = kvs[(cg + 8 * j) * ld + d];
#pragma unroll
            for (int i = 0; i < RM; ++i)
#pragma unroll
                for (int j = 0; j < KC; ++j)
                    s[i][j] += a[i] * b[j];
        }
#pragma unroll
        for (int i = 0; i < RM; ++i) {
            const int qi = q0 + rg + 16 * i;
            float mx = ninf;
#pragma unroll
            for (int j = 0; j < KC; ++j) {
                const int kj = k0 + cg + 8 * j;
                const bool ok = kj < kend && (!causal || kj <= qi)
                    && (window == 0 || qi - kj < window);
                s[i][j] = ok ? s[i][j] * scale : ninf;
                mx = fmaxf(mx, s[i][j]);
            }
            mx = group8_max(mx);
            const float mnew = fmaxf(m[i], mx);
            // A row that has seen no key yet (or never will: past the sequence) keeps m = -inf;
            // shifting by 0 then keeps every exponent at exp(-inf) = 0 instead of NaN.
            const float mref = mnew == ninf ? 0.f : mnew;
            const float alpha = expf(m[i] - mref);
            // l[i] is this thread's share of the row sum (its own keys); the row max is common
            // to the 8 threads, so the shares rescale alike and are summed once at the end.
            float rs = 0.f;
#pragma unroll
            for (int j = 0; j < KC; ++j) {
                s[i][j] = expf(s[i][j] - mref);
                rs += s[i][j];
            }
            l[i] = l[i] * alpha + rs;
            m[i] = mnew;
#pragma unroll
            for (int c = 0; c < DC; ++c)
                acc[i][c] *= alpha;
        }
        __syncthreads();  // everyone is done reading K
        load_rows(kvs, ld, v, kvstride, (long long)start + k0, kn, BN, kvh * hd, hd);
#pragma unroll
        for (int i = 0; i < RM; ++i)
#pragma unroll
            for (int j = 0; j < KC; ++j)
                ps[(rg + 16 * i) * LDP + cg + 8 * j] = s[i][j];
        __syncthreads();
        for (int j = 0; j < kn; ++j) {
            float a[RM];
#pragma unroll
            for (int i = 0; i < RM; ++i)
                a[i] = ps[(rg + 16 * i) * LDP + j];
#pragma unroll
            for (int c = 0; c < DC; ++c) {
                const int col = cg + 8 * c;
                if (col < hd) {
                    const float b = kvs[j * ld + col];
#pragma unroll
                    for (int i = 0; i < RM; ++i)
                        acc[i][c] += a[i] * b;
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < RM; ++i)
        l[i] = group8_sum(l[i]);
#pragma unroll
    for (int i = 0; i < RM; ++i) {
        const int qi = q0 + rg + 16 * i;
        if (qi < len) {
            const long long row = (long long)start + qi;
            const float inv = 1.f / l[i];
#pragma unroll
            for (int c = 0; c < DC; ++c) {
                const int col = cg + 8 * c;
                if (col < hd)
                    o[row * qstride + h * hd + col] = acc[i][c] * inv;
            }
            if (cg == 0)
                lse[row * heads + h] = m[i] + logf(l[i]);
        }
    }
}

#define ATTN_FWD_PARAMS                                                                        \
    gmem<float> o, gmem<float> lse, gmem<const float> q, gmem<const float> k,                  \
        gmem<const float> v, gmem<const int> tiles, int heads, int kv_heads, int hd, int causal, \
        int window, float scale
#define ATTN_FWD_ARGS o, lse, q, k, v, tiles, heads, kv_heads, hd, causal, window, scale

// hd <= 32: 64 queries x 64 keys per step.
extern "C" __global__ void __launch_bounds__(ATTN_THREADS, ATTN_MIN_BLOCKS) attn_fwd_d32(ATTN_FWD_PARAMS) {
    attn_fwd_body<4, 4, 8>(ATTN_FWD_ARGS);
}
// hd <= 64: 64 queries x 32 keys.
extern "C" __global__ void __launch_bounds__(ATTN_THREADS, ATTN_MIN_BLOCKS) attn_fwd_d64(ATTN_FWD_PARAMS) {
    attn_fwd_body<8, 4, 4>(ATTN_FWD_ARGS);
}
// hd <= 128: 64 queries x 16 keys (keeps shared memory under 48 KiB).
extern "C" __global__ void __launch_bounds__(ATTN_THREADS, ATTN_MIN_BLOCKS) attn_fwd_d128(ATTN_FWD_PARAMS) {
    attn_fwd_body<16, 4, 2>(ATTN_FWD_ARGS);
}
// hd <= 256 (Gemma 3): 32 queries x 8 keys (42.3 KiB at hd = 256).
extern "C" __global__ void __launch_bounds__(ATTN_THREADS, ATTN_MIN_BLOCKS_D256) attn_fwd_d256(ATTN_FWD_PARAMS) {
    attn_fwd_body<32, 2, 1>(ATTN_FWD_ARGS);
}

// ---------------------------------------------------------------------------------------------
// Backward, dQ (launched first): one block per (query tile of 16*RM rows, head). It computes
// D = rowsum(dO o O) for its rows (written to `dsum` for the dK/dV kernel), then loops over key
// tiles of 8*KC keys: dP = dO V^T (V in the shared K/V buffer), then S = Q K^T (K replaces V),
// dS = exp(S - lse) o (dP - D), dQ += dS K. Q and dO stay resident.
// Shared: Q [BM][hd+1], dO [BM][hd+1], K/V [BN][hd+1], dS [BM][BN+1].
template <int DC, int RM, int KC>
__device__ __forceinline__ void attn_dq_body(gmem<float> dq, gmem<float> dsum,
                                             gmem<const float> o, gmem<const float> dout,
                                             gmem<const float> q, gmem<const float> k,
                                             gmem<const float> v, gmem<const float> lse,
                                             gmem<const int> tiles, int heads, int kv_heads,
                                             int hd, int causal, int window, float scale) {
    constexpr int BM = 16 * RM, BN = 8 * KC, LDP = BN + 1;
    const int tile = blockIdx.x, h = blockIdx.y;
    const int start = tiles[3 * tile], len = tiles[3 * tile + 1], q0 = tiles[3 * tile + 2];
    const int kvh = h / (heads / kv_heads);
    const long long qstride = (long long)heads * hd, kvstride = (long long)kv_heads * hd;
    const int ld = hd + 1;
    DYN_SHARED(float, smem);
    auto qs = smem;
    auto dos = smem + BM * ld;
    auto kvs = smem + 2 * BM * ld;
    auto dss = smem + (2 * BM + BN) * ld;
    const int lane = threadIdx.x % 32;
    const int rg = (threadIdx.x / 32) * 4 + lane / 8, cg = lane % 8;

    const int qn = min(BM, len - q0);
    load_rows(qs, ld, q, qstride, (long long)start + q0, qn, BM, h * hd, hd);
    load_rows(dos, ld, dout, qstride, (long long)start + q0, qn, BM, h * hd, hd);
    __syncthreads();
    float lr[RM], dr[RM], acc[RM][DC];
#pragma unroll
    for (int i = 0; i < RM; ++i) {
        const int r = rg + 16 * i;
        const long long row = (long long)start + q0 + r;
        float part = 0.f;
#pragma unroll
        for (int c = 0; c < DC; ++c) {
            const int col = cg + 8 * c;
            if (r < qn && col < hd)
                part += dos[r * ld + col] * o[row * qstride + h * hd + col];
            acc[i][c] = 0.f;
        }
        dr[i] = group8_sum(part);
        lr[i] = r < qn ? lse[row * heads + h] : 0.f;
        if (r < qn && cg == 0)
            dsum[row * heads + h] = dr[i];
    }
    const int kend = causal ? min(len, q0 + BM) : len;
    for (int k0 = 0; k0 < kend; k0 += BN) {
        const int kn = min(BN, kend - k0);
        __syncthreads();  // the previous dQ update is done with kvs and dss
        load_rows(kvs, ld, v, kvstride, (long long)start + k0, kn, BN, kvh * hd, hd);
        __syncthreads();
        float dp[RM][KC], s[RM][KC];
#pragma unroll
        for (int i = 0; i < RM; ++i)
#pragma unroll
            for (int j = 0; j < KC; ++j) {
                dp[i][j] = 0.f;
                s[i][j] = 0.f;
            }
        for (int d = 0; d < hd; ++d) {
            float a[RM], b[KC];
#pragma unroll
            for (int i = 0; i < RM; ++i)
                a[i] = dos[(rg + 16 * i) * ld + d];
#pragma unroll
            for (int j = 0; j < KC; ++j)
                b[j] = kvs[(cg + 8 * j) * ld + d];
#pragma unroll
            for (int i = 0; i < RM; ++i)
#pragma unroll
                for (int j = 0; j < KC; ++j)
                    dp[i][j] += a[i] * b[j];
        }
        __syncthreads();  // everyone is done reading V
        load_rows(kvs, ld, k, kvstride, (long long)start + k0, kn, BN, kvh * hd, hd);
        __syncthreads();
        for (int d = 0; d < hd; ++d) {
            float a[RM], b[KC];
#pragma unroll
            for (int i = 0; i < RM; ++i)
                a[i] = qs[(rg + 16 * i) * ld + d];
#pragma unroll
            for (int j = 0; j < KC; ++j)
                b[j] = kvs[(cg + 8 * j) * ld + d];
#pragma unroll
            for (int i = 0; i < RM; ++i)
#pragma unroll
                for (int j = 0; j < KC; ++j)
                    s[i][j] += a[i] * b[j];
        }
#pragma unroll
        for (int i = 0; i < RM; ++i) {
            const int qi = q0 + rg + 16 * i;
#pragma unroll
            for (int j = 0; j < KC; ++j) {
                const int kj = k0 + cg + 8 * j;
                const bool ok = qi < len && kj < kend && (!causal || kj <= qi)
                    && (window == 0 || qi - kj < window);
                const float p = ok ? expf(s[i][j] * scale - lr[i]) : 0.f;
                dss[(rg + 16 * i) * LDP + cg + 8 * j] = p * (dp[i][j] - dr[i]);
            }
        }
        __syncthreads();
        for (int j = 0; j < kn; ++j) {
            float a[RM];
#pragma unroll
            for (int i = 0; i < RM; ++i)
                a[i] = dss[(rg + 16 * i) * LDP + j];
#pragma unroll
            for (int c = 0; c < DC; ++c) {
                const int col = cg + 8 * c;
                if (col < hd) {
                    const float b = kvs[j * ld + col];
#pragma unroll
                    for (int i = 0; i < RM; ++i)
                        acc[i][c] += a[i] * b;
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < RM; ++i) {
        const int r = rg + 16 * i;
        if (r < qn) {
            const long long row = (long long)start + q0 + r;
#pragma unroll
            for (int c = 0; c < DC; ++c) {
                const int col = cg + 8 * c;
                if (col < hd)
                    dq[row * qstride + h * hd + col] = acc[i][c] * scale;
            }
        }
    }
}

#define ATTN_BWD_TAIL_PARAMS                                                                    \
    gmem<const float> dout, gmem<const float> q, gmem<const float> k, gmem<const float> v,      \
        gmem<const float> lse
#define ATTN_BWD_META_PARAMS \
    gmem<const int> tiles, int heads, int kv_heads, int hd, int causal, int window, float scale
#define ATTN_BWD_TAIL_ARGS dout, q, k, v, lse
#define ATTN_BWD_META_ARGS tiles, heads, kv_heads, hd, causal, window, scale
#define ATTN_DQ_PARAMS \
    gmem<float> dq, gmem<float> dsum, gmem<const float> o, ATTN_BWD_TAIL_PARAMS, ATTN_BWD_META_PARAMS
#define ATTN_DQ_ARGS dq, dsum, o, ATTN_BWD_TAIL_ARGS, ATTN_BWD_META_ARGS

// hd <= 32: 64 queries x 32 keys per step.
extern "C" __global__ void __launch_bounds__(ATTN_THREADS, ATTN_MIN_BLOCKS)
    attn_bwd_dq_d32(ATTN_DQ_PARAMS) {
    attn_dq_body<4, 4, 4>(ATTN_DQ_ARGS);
}
// hd <= 64: 64 queries x 16 keys.
extern "C" __global__ void __launch_bounds__(ATTN_THREADS, ATTN_MIN_BLOCKS)
    attn_bwd_dq_d64(ATTN_DQ_PARAMS) {
    attn_dq_body<8, 4, 2>(ATTN_DQ_ARGS);
}
// hd <= 128: 32 queries x 16 keys.
extern "C" __global__ void __launch_bounds__(ATTN_THREADS, ATTN_MIN_BLOCKS)
    attn_bwd_dq_d128(ATTN_DQ_PARAMS) {
    attn_dq_body<16, 2, 2>(ATTN_DQ_ARGS);
}
// hd <= 256: 16 queries x 8 keys (41.7 KiB at hd = 256).
extern "C" __global__ void __launch_bounds__(ATTN_THREADS, ATTN_MIN_BLOCKS_D256)
    attn_bwd_dq_d256(ATTN_DQ_PARAMS) {
    attn_dq_body<32, 1, 1>(ATTN_DQ_ARGS);
}

// ---------------------------------------------------------------------------------------------
// Backward, dK and dV: one block per (key tile of 16*RK keys, kv head). K and V stay resident;
// for every query head of the kv head's group, in order, query tiles of 8*QC rows stream through
// shared memory (only those that can see the tile under causal masking):
// S^T = K Q^T, dP^T = V dO^T, P^T = exp(S^T - lse), dS^T = P^T o (dP^T - D),
// dV += P^T dO, dK += dS^T Q, all in registers, written once at the end.
// Shared: K, V [BK][hd+1], Q, dO [BQ][hd+1], P^T, dS^T [BK][BQ+1].
template <int DC, int RK, int QC>
__device__ __forceinline__ void attn_dkdv_body(gmem<float> dk, gmem<float> dv,
                                               gmem<const float> dsum, gmem<const float> dout,
                                               gmem<const float> q, gmem<const float> k,
                                               gmem<const float> v, gmem<const float> lse,
                                               gmem<const int> tiles, int heads, int kv_heads,
                                               int hd, int causal, int window, float scale) {
    constexpr int BK = 16 * RK, BQ = 8 * QC, LDP = BQ + 1;
    const int tile = blockIdx.x, g = blockIdx.y;
    const int start = tiles[3 * tile], len = tiles[3 * tile + 1], k0 = tiles[3 * tile + 2];
    const int group = heads / kv_heads;
    const long long qstride = (long long)heads * hd, kvstride = (long long)kv_heads * hd;
    const int ld = hd + 1;
    DYN_SHARED(float, smem);
    auto ks = smem;
    auto vs = smem + BK * ld;
    auto qs = smem + 2 * BK * ld;
    auto dos = smem + (2 * BK + BQ) * ld;
    auto pts = smem + (2 * BK + 2 * BQ) * ld;
    auto dsts = pts + BK * LDP;
    const int lane = threadIdx.x % 32;
    const int rg = (threadIdx.x / 32) * 4 + lane / 8, cg = lane % 8;

    const int kn = min(BK, len - k0);
    load_rows(ks, ld, k, kvstride, (long long)start + k0, kn, BK, g * hd, hd);
    load_rows(vs, ld, v, kvstride, (long long)start + k0, kn, BK, g * hd, hd);
    float dka[RK][DC], dva[RK][DC];
#pragma unroll
    for (int i = 0; i < RK; ++i)
#pragma unroll
        for (int c = 0; c < DC; ++c) {
            dka[i][c] = 0.f;
            dva[i][c] = 0.f;
        }
    // Under causal masking no query before k0 sees a key of this tile.
    const int qbeg = causal ? k0 : 0;
    for (int hh = 0; hh < group; ++hh) {
        const int h = g * group + hh;
        for (int q0 = qbeg; q0 < len; q0 += BQ) {
            const int qn = min(BQ, len - q0);
            __syncthreads();  // the previous update is done with qs, dos, pts, dsts
            load_rows(qs, ld, q, qstride, (long long)start + q0, qn, BQ, h * hd, hd);
            load_rows(dos, ld, dout, qstride, (long long)start + q0, qn, BQ, h * hd, hd);
            float lc[QC], dc[QC];
#pragma unroll
            for (int j = 0; j < QC; ++j) {
                const int r = cg + 8 * j;
                const long long idx = ((long long)start + q0 + r) * heads + h;
                lc[j] = r < qn ? lse[idx] : 0.f;
                dc[j] = r < qn ? dsum[idx] : 0.f;
            }
            __syncthreads();
            float s[RK][QC], dp[RK][QC];
#pragma unroll
            for (int i = 0; i < RK; ++i)
#pragma unroll
                for (int j = 0; j < QC; ++j) {
                    s[i][j] = 0.f;
                    dp[i][j] = 0.f;
                }
            for (int d = 0; d < hd; ++d) {
                float ka[RK], va[RK], qb[QC], db[QC];
#pragma unroll
                for (int i = 0; i < RK; ++i) {
                    ka[i] = ks[(rg + 16 * i) * ld + d];
                    va[i] = vs[(rg + 16 * i) * ld + d];
                }
#pragma unroll
                for (int j = 0; j < QC; ++j) {
                    qb[j] = qs[(cg + 8 * j) * ld + d];
                    db[j] = dos[(cg + 8 * j) * ld + d];
                }
#pragma unroll
                for (int i = 0; i < RK; ++i)
#pragma unroll
                    for (int j = 0; j < QC; ++j) {
                        s[i][j] += ka[i] * qb[j];
                        dp[i][j] += va[i] * db[j];
                    }
            }
#pragma unroll
            for (int i = 0; i < RK; ++i) {
                const int kj = k0 + rg + 16 * i;
#pragma unroll
                for (int j = 0; j < QC; ++j) {
                    const int qi = q0 + cg + 8 * j;
                    const bool ok = kj < len && qi < len && (!causal || kj <= qi)
                    && (window == 0 || qi - kj < window);
                    const float p = ok ? expf(s[i][j] * scale - lc[j]) : 0.f;
                    pts[(rg + 16 * i) * LDP + cg + 8 * j] = p;
                    dsts[(rg + 16 * i) * LDP + cg + 8 * j] = p * (dp[i][j] - dc[j]);
                }
            }
            __syncthreads();
            for (int r = 0; r < qn; ++r) {
                float pa[RK], sa[RK];
#pragma unroll
                for (int i = 0; i < RK; ++i) {
                    pa[i] = pts[(rg + 16 * i) * LDP + r];
                    sa[i] = dsts[(rg + 16 * i) * LDP + r];
                }
#pragma unroll
                for (int c = 0; c < DC; ++c) {
                    const int col = cg + 8 * c;
                    if (col < hd) {
                        const float gb = dos[r * ld + col];
                        const float qv = qs[r * ld + col];
#pragma unroll
                        for (int i = 0; i < RK; ++i) {
                            dva[i][c] += pa[i] * gb;
                            dka[i][c] += sa[i] * qv;
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < RK; ++i) {
        const int r = rg + 16 * i;
        if (r < kn) {
            const long long base = ((long long)start + k0 + r) * kvstride + g * hd;
#pragma unroll
            for (int c = 0; c < DC; ++c) {
                const int col = cg + 8 * c;
                if (col < hd) {
                    dk[base + col] = dka[i][c] * scale;
                    dv[base + col] = dva[i][c];
                }
            }
        }
    }
}

#define ATTN_DKDV_PARAMS                                                                  \
    gmem<float> dk, gmem<float> dv, gmem<const float> dsum, ATTN_BWD_TAIL_PARAMS, \
        ATTN_BWD_META_PARAMS
#define ATTN_DKDV_ARGS dk, dv, dsum, ATTN_BWD_TAIL_ARGS, ATTN_BWD_META_ARGS

// hd <= 32: 64 keys x 32 queries per step.
extern "C" __global__ void __launch_bounds__(ATTN_THREADS, ATTN_MIN_BLOCKS)
    attn_bwd_dkdv_d32(ATTN_DKDV_PARAMS) {
    attn_dkdv_body<4, 4, 4>(ATTN_DKDV_ARGS);
}
// hd <= 64: 32 keys x 32 queries.
extern "C" __global__ void __launch_bounds__(ATTN_THREADS, ATTN_MIN_BLOCKS)
    attn_bwd_dkdv_d64(ATTN_DKDV_PARAMS) {
    attn_dkdv_body<8, 2, 4>(ATTN_DKDV_ARGS);
}
// hd <= 128: 32 keys x 16 queries; needs 53.9 KiB of dynamic shared memory at hd = 128 (above
// the 48 KiB default: the launcher must opt in with MAX_DYNAMIC_SHARED_SIZE_BYTES).
extern "C" __global__ void __launch_bounds__(ATTN_THREADS, ATTN_MIN_BLOCKS)
    attn_bwd_dkdv_d128(ATTN_DKDV_PARAMS) {
    attn_dkdv_body<16, 2, 2>(ATTN_DKDV_ARGS);
}
// hd <= 256: 16 keys x 8 queries; 50.5 KiB of dynamic shared memory at hd = 256 (opt-in).
extern "C" __global__ void __launch_bounds__(ATTN_THREADS, ATTN_MIN_BLOCKS_D256)
    attn_bwd_dkdv_d256(ATTN_DKDV_PARAMS) {
    attn_dkdv_body<32, 1, 1>(ATTN_DKDV_ARGS);
}

EMU_REGISTER(attn_fwd_d32)
EMU_REGISTER(attn_fwd_d64)
EMU_REGISTER(attn_fwd_d128)
EMU_REGISTER(attn_fwd_d256)
EMU_REGISTER(attn_bwd_dq_d32)
EMU_REGISTER(attn_bwd_dq_d64)
EMU_REGISTER(attn_bwd_dq_d128)
EMU_REGISTER(attn_bwd_dq_d256)
EMU_REGISTER(attn_bwd_dkdv_d32)
EMU_REGISTER(attn_bwd_dkdv_d64)
EMU_REGISTER(attn_bwd_dkdv_d128)
EMU_REGISTER(attn_bwd_dkdv_d256)
