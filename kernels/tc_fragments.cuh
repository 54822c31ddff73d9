// Fragment helpers shared by the tensor-core kernels (attn_flash.cu, lora_sgmv.cu): ldmatrix
// addressing for A and B fragments from shared tiles, a pair of mma.m16n8k16 over two n8 tiles,
// and the accumulator-to-A-fragment repacking that lets a product's result feed the next product
// without touching shared memory. Layouts as in tensor_core.cuh's header.
#pragma once

// Two f32 values as one register of two bf16 (the lower column in the low half).
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    return static_cast<unsigned>(f32_to_bf16(lo)) | (static_cast<unsigned>(f32_to_bf16(hi)) << 16);
}

// Fragment loads from a shared tile with row pitch LD (bf16), lane addressing as ldmatrix wants
// it (lane l gives row l % 8 of matrix l / 8):
// - frag_a: the A fragment of the 16 x 16 block at (row0, col0) of a row-major tile;
// - frag_b_rows: B fragments of two n8 tiles (n0.., n0+8..) over k16 (k0..) of a tile stored
//   [n][k] (rows are n: K for S = QKᵀ);
// - frag_b_trans: the same from a tile stored [k][n] (rows are k: V for O = PV).
// r[0], r[1] are the first n8 tile's b[0], b[1]; r[2], r[3] the second's.
template <int LD, class S>
__device__ __forceinline__ void frag_a(unsigned (&a)[4], S t, int row0, int col0) {
    const int lane = threadIdx.x % 32, mat = lane / 8, mrow = lane % 8;
    ldmatrix_x4(a, t + ((row0 + mrow + 8 * (mat & 1)) * LD + col0 + 8 * (mat >> 1)));
}
template <int LD, class S>
__device__ __forceinline__ void frag_b_rows(unsigned (&r)[4], S t, int n0, int k0) {
    const int lane = threadIdx.x % 32, mat = lane / 8, mrow = lane % 8;
    ldmatrix_x4(r, t + ((n0 + 8 * (mat >> 1) + mrow) * LD + k0 + 8 * (mat & 1)));
}
template <int LD, class S>
__device__ __forceinline__ void frag_b_trans(unsigned (&r)[4], S t, int k0, int n0) {
    const int lane = threadIdx.x % 32, mat = lane / 8, mrow = lane % 8;
    ldmatrix_x4_trans(r, t + ((k0 + 8 * (mat & 1) + mrow) * LD + n0 + 8 * (mat >> 1)));
}
// acc += A · (the pair of n8 tiles r loaded above), into acc tiles j and j + 1.
__device__ __forceinline__ void mma_pair(float (&c0)[4], float (&c1)[4], const unsigned (&a)[4],
                                         const unsigned (&r)[4]) {
    unsigned b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
    mma_m16n8k16_bf16(c0, a, b0, c0);
    mma_m16n8k16_bf16(c1, a, b1, c1);
}
// One warp's 16-row strip of A · Bᵀ over K columns, both tiles stored with k contiguous (pitch
// LD): acc[j] += A[row0 .. row0 + 16, 0 .. K) · B[8j .. 8j + 8, 0 .. K)ᵀ for the NT n8 tiles.
template <int LD, int K, int NT, class S>
__device__ __forceinline__ void mma_strip(float (&acc)[NT][4], S a, int row0, S b) {
#pragma unroll
    for (int kk = 0; kk < K; kk += 16) {
        unsigned af[4];
        frag_a<LD>(af, a, row0, kk);
#pragma unroll
        for (int j = 0; j < NT; j += 2) {
            unsigned r[4];
            frag_b_rows<LD>(r, b, 8 * j, kk);
            mma_pair(acc[j], acc[j + 1], af, r);
        }
    }
}
// Zeroes N n8 accumulator tiles.
template <int N>
__device__ __forceinline__ void zero_tiles(float (&t)[N][4]) {
#pragma unroll
    for (int j = 0; j < N; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
            t[j][e] = 0.f;
}
// Two adjacent n8 accumulator tiles (16 rows x 16 columns, f32) as the bf16 A fragment of one
// k16 step: the accumulator layout of tiles j, j + 1 is exactly A's register layout.
__device__ __forceinline__ void acc_to_a(unsigned (&a)[4], const float (&t0)[4],
                                         const float (&t1)[4]) {
    a[0] = pack_bf16(t0[0], t0[1]);
    a[1] = pack_bf16(t0[2], t0[3]);
    a[2] = pack_bf16(t1[0], t1[1]);
    a[3] = pack_bf16(t1[2], t1[3]);
}

