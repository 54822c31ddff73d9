// Tensor-core instructions, one wrapper each, for sm_80 and later:
// - mma_m16n8k16_bf16 / _f16: mma.sync.aligned.m16n8k16.row.col, f32 accumulators;
// - ldmatrix_x{1,2,4}[_trans]: ldmatrix.sync.aligned.m8n8.shared.b16, 8x8 tiles of 16-bit
//   elements from shared memory straight into mma fragments;
// - cp_async<4|8|16> with cp_async_commit / cp_async_wait<N>: global -> shared copies that skip
//   the registers, in commit groups, with zero fill past `src_bytes` (tile edges).
//
// Under NVRTC each is one inline-PTX instruction. Under the emulator (FLEXP_EMU) each is a C++
// model (emu/simt.hpp, emu/emu_runtime.cpp) that is stricter than the hardware: mma and ldmatrix
// need the whole warp at the same call (PTX's .aligned), ldmatrix rows and cp.async addresses
// must be aligned, and a cp.async's bytes land in shared memory only when a wait retires its
// group.
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16 with floating point type"), for
// lane l with g = l / 4 and t = l % 4. Each 32-bit register holds two 16-bit elements, the one
// with the lower column (for B: lower row) in the low half:
//   A (16x16, row major): a[0] = A[g][2t..2t+1]  a[1] = A[g+8][2t..2t+1]
//                         a[2] = A[g][2t+8..2t+9] a[3] = A[g+8][2t+8..2t+9]
//   B (16x8, k x n):      b[0] = B[2t..2t+1][g]   b[1] = B[2t+8..2t+9][g]
//   C, D (16x8, f32):     c[0], c[1] = C[g][2t], C[g][2t+1]   c[2], c[3] = C[g+8][2t], C[g+8][2t+1]
// ldmatrix: lanes 8i..8i+7 give the row addresses of matrix i (16-byte aligned); lane l receives
// in r[i] row l/4, columns 2(l%4) and 2(l%4)+1 of matrix i, or of its transpose with _trans.
// So ldmatrix_x4 over the four 8x8 quadrants of a 16x16 row-major A tile (rows 0-7/cols 0-7,
// rows 8-15/cols 0-7, rows 0-7/cols 8-15, rows 8-15/cols 8-15) yields exactly a[0..3], and
// ldmatrix_x2_trans over a 16x8 k-major B tile stored row by row yields b[0..1].
// tests/cuda_tensor_core_isa.rs holds these tables as data, transcribed from the ISA's figures,
// and checks the emulator against them; tools/gpu_check.sh runs the same probes on a GPU.
#pragma once

#ifndef FLEXP_EMU

// The 32-bit shared-window address PTX's shared-memory operands take.
__device__ __forceinline__ unsigned smem_address(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4],
                                                  const unsigned (&b)[2], const float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const unsigned (&a)[4],
                                                 const unsigned (&b)[2], const float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

template <class T>
__device__ __forceinline__ void ldmatrix_x1(unsigned (&r)[1], const T* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(smem_address(row)));
}
template <class T>
__device__ __forceinline__ void ldmatrix_x1_trans(unsigned (&r)[1], const T* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(smem_address(row)));
}
template <class T>
__device__ __forceinline__ void ldmatrix_x2(unsigned (&r)[2], const T* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_address(row)));
}
template <class T>
__device__ __forceinline__ void ldmatrix_x2_trans(unsigned (&r)[2], const T* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_address(row)));
}
template <class T>
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const T* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(row)));
}
template <class T>
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const T* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(row)));
}

// Copies BYTES bytes from global `src` to shared `dst`, of which the first `src_bytes` are read
// and the rest zero-filled (src_bytes = 0 reads nothing). Both addresses BYTES-aligned.
template <int BYTES, class D, class S>
__device__ __forceinline__ void cp_async(D* dst, const S* src, int src_bytes) {
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
    if (BYTES == 16)  // .cg: cached in L2 only, the tile is staged in shared memory anyway
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)),
                     "l"(src), "r"(src_bytes)
                     : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_address(dst)),
                     "l"(src), "n"(BYTES), "r"(src_bytes)
                     : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most N of this thread's committed groups are still in flight. Other threads'
// copies are not covered: a __syncthreads after the wait publishes the tile to the block.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

#else  // the emulator's models (emu/simt.hpp)

#define mma_m16n8k16_bf16(d, a, b, c) \
    ::emu::mma_m16n8k16(::emu::MMA_BF16, d, a, b, c, __FILE__, __LINE__)
#define mma_m16n8k16_f16(d, a, b, c) \
    ::emu::mma_m16n8k16(::emu::MMA_F16, d, a, b, c, __FILE__, __LINE__)
#define ldmatrix_x1(r, row) ::emu::ldmatrix(1, false, r, row, __FILE__, __LINE__)
#define ldmatrix_x1_trans(r, row) ::emu::ldmatrix(1, true, r, row, __FILE__, __LINE__)
#define ldmatrix_x2(r, row) ::emu::ldmatrix(2, false, r, row, __FILE__, __LINE__)
#define ldmatrix_x2_trans(r, row) ::emu::ldmatrix(2, true, r, row, __FILE__, __LINE__)
#define ldmatrix_x4(r, row) ::emu::ldmatrix(4, false, r, row, __FILE__, __LINE__)
#define ldmatrix_x4_trans(r, row) ::emu::ldmatrix(4, true, r, row, __FILE__, __LINE__)
#define cp_async_commit() ::emu::cp_async_commit()
// cp_async<BYTES>(dst, src, src_bytes) and cp_async_wait<N>() take template arguments, which a
// function-like macro cannot; these expand to a member template of an object that carries the
// call site, so faults name the kernel's file and line.
#define cp_async ::emu::Site{__FILE__, __LINE__}.cp_async
#define cp_async_wait ::emu::Site{__FILE__, __LINE__}.cp_async_wait

#endif
