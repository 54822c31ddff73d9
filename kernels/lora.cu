// Batched multi-LoRA (SGMV style): one launch per phase serves every adapter segment of a packed
// batch. Rows [start, start + count) of the batch use adapter i: A_i [rank, d_in], B_i [d_out, rank].
//
// Forward:   u = x·A_iᵀ (lora_shrink_*),  y += scale·u·B_iᵀ (lora_expand_*).
// Backward:  dB_i += scale·dyᵀ·u (lora_bwd_db_f32),  t = scale·dy·B_i (lora_bwd_t_f32),
//            dA_i += tᵀ·x (lora_bwd_da_f32),  dx += t·A_i (lora_bwd_dx_f32).
//
// Segment table (built by src/backend/cuda/ops/lora.rs), SEG_WORDS unsigned long long per segment:
//   [row start, row count, &A_i, &B_i, &dA_i, &dB_i]   (gradient addresses 0 in the forward pass)
// The adapters are separate allocations, so the kernels read their addresses from the table and
// turn them into pointers with gmem_from_address (a cast on the GPU; a bounds lookup in the
// emulator).
// Tile table of the row-tiled kernels (shrink, expand, t, dx): two ints per block,
//   [segment index, first row]; a tile covers TR rows, clipped to its segment's end. A flat tile
// list keeps ragged segments (1 row next to 500) from leaving blocks idle.
//
// Everything accumulates in f32 in a fixed order; no atomics: each output element is owned by
// exactly one thread of one block, so results are deterministic. The gradient kernels write
// dA_i / dB_i from one block per (segment, column tile); two segments must not share a gradient
// buffer (the Rust API makes that impossible: the gradients are &mut).
#include "common.cuh"

namespace {

constexpr int SEG_WORDS = 6;
constexpr int NT = 256;           // threads per block, all kernels
constexpr int NW = NT / 32;       // warps per block
constexpr int TR = 32;            // rows per row tile (host: ROW_TILE)
constexpr int KC = 64;            // reduction chunk over d_in / d_out in the shrink kernels
constexpr int LDK = KC + 1;       // padded row of a KC-wide shared tile (conflict-free columns)
constexpr int RC = 64;            // rank chunk of the shrink and row-reduction kernels
constexpr int TC = 128;           // output columns per block in the expand kernels (host: EXPAND_COLS)
constexpr int LDC = TC + 1;
constexpr int KE = 32;            // rank chunk of the expand kernels
constexpr int LDE = KE + 1;
constexpr int TJ = 64;            // output columns per block in the row-reduction kernels (host: REDUCE_COLS)
constexpr int LDJ = TJ + 1;
constexpr int RB = 32;            // rows staged per step in the row-reduction kernels
constexpr int LDQ = RC + 1;

struct Seg {
    int start;
    int end;
};

__device__ __forceinline__ Seg seg_rows(gmem<const unsigned long long> segs, int s) {
    Seg g;
    g.start = static_cast<int>(segs[s * SEG_WORDS + 0]);
    g.end = g.start + static_cast<int>(segs[s * SEG_WORDS + 1]);
    return g;
}

// Register tiling with split reduction for the products whose output is [M, rank] with a long
// reduction (shrink: M = TR rows; gradients: M = TJ columns). Each thread accumulates a 4 × 4
// micro-tile: M indices mg + MG·i and rank indices kg + KG·q (i, q < 4), so every reduction step
// costs 8 shared loads for 16 FMAs. The P = MG·KG threads covering the tile form one group;
// the NT / P groups take interleaved reduction steps and their partial tiles are added in a fixed
// group order at the end (deterministic, no atomics). Threads beyond the last full group idle.
struct Tiling {
    int P;       // threads per group
    int groups;  // groups splitting the reduction
    int t;       // this thread's index in its group
    int grp;     // this thread's group
    int mg, kg, KG;
    bool active;
};

__device__ __forceinline__ Tiling tiling(int MG, int rc) {
    Tiling T;
    T.KG = (rc + 3) / 4;
    T.P = MG * T.KG;
    T.groups = NT / T.P;
    const int tid = threadIdx.x;
    T.t = tid % T.P;
    T.grp = tid / T.P;
    T.active = T.grp < T.groups;
    T.mg = T.t % MG;
    T.kg = T.t / MG;
    return T;
}

// acc[i][q] += Σ_s P(mg + MG·i, s) · Q(kg + KG·q, s) over this group's steps s < n, where
// P(m, s) = p[m·PM + s·PS] and Q(k, s) = q[k·QK + s·QS] are staged shared tiles (Q only for
// k < rc). No barrier inside, so inactive threads may skip it.
template <int MG, int PM, int PS, int QK, int QS, class SP>
__device__ __forceinline__ void accumulate(float (&acc)[4][4], SP p, SP q, const Tiling& T, int n,
                                           int rc) {
    if (!T.active)
        return;
    for (int s = T.grp; s < n; s += T.groups) {
        float pv[4], qv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
            pv[i] = p[(T.mg + MG * i) * PM + s * PS];
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int k = T.kg + T.KG * c;
            qv[c] = k < rc ? static_cast<float>(q[k * QK + s * QS]) : 0.f;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int c = 0; c < 4; ++c)
                acc[i][c] += pv[i] * qv[c];
    }
}

// Adds the groups' partial tiles (through `red`, 16·NT floats) and hands each finished (m, k),
// k < rc, to store(m, k, sum). Every thread of the block must call it (it has barriers).
template <int MG, class SP, class Store>
__device__ __forceinline__ void finish(float (&acc)[4][4], SP red, const Tiling& T, int rc,
                                       Store store) {
    if (T.groups == 1) {
        if (T.active) {
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    const int k = T.kg + T.KG * c;
                    if (k < rc)
                        store(T.mg + MG * i, k, acc[i][c]);
                }
        }
        return;
    }
    const int GP = T.groups * T.P;
    if (T.active) {
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int c = 0; c < 4; ++c)
                red[(i * 4 + c) * GP + T.grp * T.P + T.t] = acc[i][c];
    }
    __syncthreads();
    for (int o = threadIdx.x; o < 16 * T.P; o += NT) {
        const int e = o / T.P;
        const int t = o - e * T.P;
        float sum = 0.f;
        for (int g = 0; g < T.groups; ++g)
            sum += red[e * GP + g * T.P + t];
        const int k = t / MG + T.KG * (e & 3);
        if (k < rc)
            store(t % MG + MG * (e >> 2), k, sum);
    }
    __syncthreads();
}

// out[r, k0 + k] = alpha · Σ_j in[r, j] · W(k, j) for the TR rows of this block's tile, all ranks.
// W(k, j) = A[k, j] (A: [rank, dim]) when !W_IS_B, or B[j, k] (B: [dim, rank]) when W_IS_B.
// The `in` tile [TR, KC] and the weight tile [rank chunk, KC] are staged in shared memory per
// reduction chunk (coalesced along the contiguous dimension of each), then reduced with the
// register tiling above (MG = 8 row groups).
template <class TX, bool W_IS_B>
__device__ __forceinline__ void shrink(gmem<const TX> in, gmem<float> out,
                                       gmem<const unsigned long long> segs, gmem<const int> tiles,
                                       int dim, int rank, float alpha) {
    constexpr int MG = TR / 4;
    SHARED(float, xs, TR * LDK);
    SHARED(float, ws, RC * LDK);
    SHARED(float, red, 16 * NT);
    const int tid = threadIdx.x;
    const int s = tiles[2 * blockIdx.x];
    const int row0 = tiles[2 * blockIdx.x + 1];
    const Seg g = seg_rows(segs, s);
    gmem<const float> w = gmem_from_address<const float>(segs[s * SEG_WORDS + (W_IS_B ? 3 : 2)]);

    for (int k0 = 0; k0 < rank; k0 += RC) {
        const int rc = min(RC, rank - k0);
        const Tiling T = tiling(MG, rc);
        float acc[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int c = 0; c < 4; ++c)
                acc[i][c] = 0.f;

        for (int j0 = 0; j0 < dim; j0 += KC) {
            const int kc = min(KC, dim - j0);
            // Rows past the segment's end stage zeros (their results are never stored).
            for (int e = tid; e < TR * kc; e += NT) {
                const int r = e / kc;
                const int jj = e - r * kc;
                const int rr = row0 + r;
                float v = 0.f;
                if (rr < g.end)
                    v = load_f32(in[static_cast<long long>(rr) * dim + j0 + jj]);
                xs[r * LDK + jj] = v;
            }
            for (int e = tid; e < rc * kc; e += NT) {
                int kk, jj;
                float v;
                if (W_IS_B) {  // B rows are rank-contiguous: walk (j, k) in memory order
                    jj = e / rc;
                    kk = e - jj * rc;
                    v = w[static_cast<long long>(j0 + jj) * rank + k0 + kk];
                } else {
                    kk = e / kc;
                    jj = e - kk * kc;
                    v = w[static_cast<long long>(k0 + kk) * dim + j0 + jj];
                }
                ws[kk * LDK + jj] = v;
            }
            __syncthreads();
            accumulate<MG, LDK, 1, LDK, 1>(acc, xs, ws, T, kc, rc);
            __syncthreads();
        }

        finish<MG>(acc, red, T, rc, [&](int m, int k, float v) {
            const int row = row0 + m;
            if (row < g.end)
                out[static_cast<long long>(row) * rank + k0 + k] = alpha * v;
        });
    }
}

// out[r, j] += alpha · Σ_k in[r, k] · W(j, k) for this block's TR rows × TC columns (blockIdx.y).
// W(j, k) = B[j, k] (B: [dim, rank]) when W_IS_B, or A[k, j] (A: [rank, dim]) otherwise.
// Thread: 4 rows (warp + 8i) × 4 columns (lane + 32q); per rank step it reads 4 weight values
// (consecutive across lanes) and 4 broadcast `in` values for 16 FMAs; the output row segments
// are read and written coalesced.
template <class TY, bool W_IS_B>
__device__ __forceinline__ void expand(gmem<const float> in, gmem<TY> out,
                                       gmem<const unsigned long long> segs, gmem<const int> tiles,
                                       int dim, int rank, float alpha) {
    SHARED(float, us, TR * LDE);
    SHARED(float, ws, KE * LDC);
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int s = tiles[2 * blockIdx.x];
    const int row0 = tiles[2 * blockIdx.x + 1];
    const int j0 = blockIdx.y * TC;
    const Seg g = seg_rows(segs, s);
    gmem<const float> w = gmem_from_address<const float>(segs[s * SEG_WORDS + (W_IS_B ? 3 : 2)]);

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int q = 0; q < 4; ++q)
            acc[i][q] = 0.f;

    for (int k0 = 0; k0 < rank; k0 += KE) {
        const int kc = min(KE, rank - k0);
        for (int e = tid; e < TR * kc; e += NT) {
            const int r = e / kc;
            const int kk = e - r * kc;
            const int rr = row0 + r;
            float v = 0.f;
            if (rr < g.end)
                v = in[static_cast<long long>(rr) * rank + k0 + kk];
            us[r * LDE + kk] = v;
        }
        for (int e = tid; e < kc * TC; e += NT) {
            int kk, jj;
            if (W_IS_B) {
                jj = e / kc;
                kk = e - jj * kc;
            } else {
                kk = e / TC;
                jj = e - kk * TC;
            }
            const int j = j0 + jj;
            float v = 0.f;
            if (j < dim)
                v = W_IS_B ? w[static_cast<long long>(j) * rank + k0 + kk]
                           : w[static_cast<long long>(k0 + kk) * dim + j];
            ws[kk * LDC + jj] = v;
        }
        __syncthreads();
        for (int k = 0; k < kc; ++k) {
            float wv[4], uv[4];
#pragma unroll
            for (int q = 0; q < 4; ++q)
                wv[q] = ws[k * LDC + lane + 32 * q];
#pragma unroll
            for (int i = 0; i < 4; ++i)
                uv[i] = us[(warp + NW * i) * LDE + k];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int q = 0; q < 4; ++q)
                    acc[i][q] += uv[i] * wv[q];
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = row0 + warp + NW * i;
        if (r < g.end) {
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int j = j0 + lane + 32 * q;
                if (j < dim) {
                    const long long o = static_cast<long long>(r) * dim + j;
                    out[o] = store_as<TY>(load_f32(out[o]) + alpha * acc[i][q]);
                }
            }
        }
    }
}

// grad(j, k) += alpha · Σ_{r in segment} p[r, j] · q[r, k] for one segment (blockIdx.x / jtiles)
// and TJ columns j of p (blockIdx.x % jtiles), all ranks; the gradient is dA ([rank, pdim], address
// in table word 4) when K_MAJOR, else dB ([pdim, rank], word 5). One block owns its outputs and
// loops over the segment's rows in order (RB rows staged per step, coalesced along j), so the sum
// is deterministic without atomics; the reduction over rows uses the register tiling above
// (MG = 16 column groups).
template <class TP, bool K_MAJOR>
__device__ __forceinline__ void reduce_rows(gmem<const TP> p, gmem<const float> q,
                                            gmem<const unsigned long long> segs, int pdim, int rank,
                                            float alpha, int jtiles) {
    constexpr int MG = TJ / 4;
    SHARED(float, ps, RB * LDJ);
    SHARED(float, qs, RB * LDQ);
    SHARED(float, red, 16 * NT);
    const int tid = threadIdx.x;
    const int s = blockIdx.x / jtiles;
    const int j0 = (blockIdx.x - s * jtiles) * TJ;
    const Seg g = seg_rows(segs, s);
    const int nrows = g.end - g.start;
    gmem<float> grad = gmem_from_address<float>(segs[s * SEG_WORDS + (K_MAJOR ? 4 : 5)]);
    // An empty segment adds nothing (uniform across the block, so no barrier is skipped unevenly).
    if (nrows <= 0)
        return;

    for (int k0 = 0; k0 < rank; k0 += RC) {
        const int rc = min(RC, rank - k0);
        const Tiling T = tiling(MG, rc);
        float acc[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int c = 0; c < 4; ++c)
                acc[i][c] = 0.f;

        for (int r0 = 0; r0 < nrows; r0 += RB) {
            const int nr = min(RB, nrows - r0);
            const long long base = static_cast<long long>(g.start) + r0;
            for (int e = tid; e < nr * TJ; e += NT) {
                const int r = e / TJ;
                const int jj = e - r * TJ;
                const int j = j0 + jj;
                float v = 0.f;
                if (j < pdim)
                    v = load_f32(p[(base + r) * pdim + j]);
                ps[r * LDJ + jj] = v;
            }
            for (int e = tid; e < nr * rc; e += NT) {
                const int r = e / rc;
                const int kk = e - r * rc;
                qs[r * LDQ + kk] = q[(base + r) * rank + k0 + kk];
            }
            __syncthreads();
            accumulate<MG, 1, LDJ, 1, LDQ>(acc, ps, qs, T, nr, rc);
            __syncthreads();
        }

        finish<MG>(acc, red, T, rc, [&](int m, int k, float v) {
            const int j = j0 + m;
            if (j < pdim) {
                const long long o = K_MAJOR ? static_cast<long long>(k0 + k) * pdim + j
                                            : static_cast<long long>(j) * rank + k0 + k;
                grad[o] += alpha * v;
            }
        });
    }
}

}  // namespace

// u[rows] = x[rows]·A_iᵀ. Grid: (tiles); x: [rows, d_in], u: [rows, rank].
extern "C" __global__ void __launch_bounds__(NT)
    lora_shrink_f32(gmem<const float> x, gmem<float> u, gmem<const unsigned long long> segs,
                    gmem<const int> tiles, int d_in, int rank) {
    shrink<float, false>(x, u, segs, tiles, d_in, rank, 1.0f);
}

// As lora_shrink_f32 with bf16 activations (f32 adapters, f32 u, f32 accumulation).
extern "C" __global__ void __launch_bounds__(NT)
    lora_shrink_bf16(gmem<const bf16_t> x, gmem<float> u, gmem<const unsigned long long> segs,
                     gmem<const int> tiles, int d_in, int rank) {
    shrink<bf16_t, false>(x, u, segs, tiles, d_in, rank, 1.0f);
}

// y[rows] += scale·u[rows]·B_iᵀ. Grid: (tiles, ceil(d_out / 128)); y: [rows, d_out].
extern "C" __global__ void __launch_bounds__(NT)
    lora_expand_f32(gmem<const float> u, gmem<float> y, gmem<const unsigned long long> segs,
                    gmem<const int> tiles, int d_out, int rank, float scale) {
    expand<float, true>(u, y, segs, tiles, d_out, rank, scale);
}

// As lora_expand_f32 with a bf16 output (read, add in f32, round once).
extern "C" __global__ void __launch_bounds__(NT)
    lora_expand_bf16(gmem<const float> u, gmem<bf16_t> y, gmem<const unsigned long long> segs,
                     gmem<const int> tiles, int d_out, int rank, float scale) {
    expand<bf16_t, true>(u, y, segs, tiles, d_out, rank, scale);
}

// t[rows] = scale·dy[rows]·B_i. Grid: (tiles); dy: [rows, d_out], t: [rows, rank].
extern "C" __global__ void __launch_bounds__(NT)
    lora_bwd_t_f32(gmem<const float> dy, gmem<float> t, gmem<const unsigned long long> segs,
                   gmem<const int> tiles, int d_out, int rank, float scale) {
    shrink<float, true>(dy, t, segs, tiles, d_out, rank, scale);
}

// dx[rows] += t[rows]·A_i. Grid: (tiles, ceil(d_in / 128)); dx: [rows, d_in].
extern "C" __global__ void __launch_bounds__(NT)
    lora_bwd_dx_f32(gmem<const float> t, gmem<float> dx, gmem<const unsigned long long> segs,
                    gmem<const int> tiles, int d_in, int rank) {
    expand<float, false>(t, dx, segs, tiles, d_in, rank, 1.0f);
}

// dB_i += scale·dy[rows_i]ᵀ·u[rows_i]. Grid: (segments · jtiles), jtiles = ceil(d_out / 64).
extern "C" __global__ void __launch_bounds__(NT)
    lora_bwd_db_f32(gmem<const float> dy, gmem<const float> u, gmem<const unsigned long long> segs,
                    int d_out, int rank, float scale, int jtiles) {
    reduce_rows<float, false>(dy, u, segs, d_out, rank, scale, jtiles);
}

// dA_i += t[rows_i]ᵀ·x[rows_i]. Grid: (segments · jtiles), jtiles = ceil(d_in / 64).
extern "C" __global__ void __launch_bounds__(NT)
    lora_bwd_da_f32(gmem<const float> x, gmem<const float> t, gmem<const unsigned long long> segs,
                    int d_in, int rank, int jtiles) {
    reduce_rows<float, true>(x, t, segs, d_in, rank, 1.0f, jtiles);
}

EMU_REGISTER(lora_shrink_f32)
EMU_REGISTER(lora_shrink_bf16)
EMU_REGISTER(lora_expand_f32)
EMU_REGISTER(lora_expand_bf16)
EMU_REGISTER(lora_bwd_t_f32)
EMU_REGISTER(lora_bwd_dx_f32)
EMU_REGISTER(lora_bwd_db_f32)
EMU_REGISTER(lora_bwd_da_f32)
