// Shared vocabulary of every kernel in kernels/*.cu.
//
// Each kernel file is compiled two ways from the same text:
// - by NVRTC for the GPU (FLEXP_EMU undefined): gmem<T> is a plain T*, SHARED declares a
//   __shared__ array, EMU_REGISTER expands to nothing;
// - by the host C++ compiler for the SIMT emulator (FLEXP_EMU defined, see emu/simt.hpp):
//   gmem<T> carries its allocation's bounds, shared memory tracks which bytes were written, and
//   EMU_REGISTER makes the kernel launchable by name.
// Kernels therefore write global pointers as gmem<T>, shared arrays with SHARED / DYN_SHARED,
// and end each file with one EMU_REGISTER line per extern "C" kernel.
#pragma once

#ifdef FLEXP_EMU
#include "emu/simt.hpp"
typedef unsigned short bf16_t;
#else
template <class T>
using gmem = T*;
// 16-byte aligned so that ldmatrix and 16-byte cp.async (tensor_core.cuh) can address any row.
#define SHARED(T, name, n) __shared__ __align__(16) T name[(n)]
#define DYN_SHARED(T, name)                                       \
    extern __shared__ __align__(16) unsigned char name##_bytes[]; \
    T* name = reinterpret_cast<T*>(name##_bytes)
template <class U, class T>
__device__ __forceinline__ U* shared_cast(T* p) {
    return reinterpret_cast<U*>(p);
}
// A global pointer as another element type (vector loads: gmem_cast<float4>(x)); the emulator's
// version keeps the allocation's bounds and checks each access's alignment.
template <class U, class T>
__device__ __forceinline__ U* gmem_cast(T* p) {
    return reinterpret_cast<U*>(p);
}
#define EMU_REGISTER(kernel)
#define RESTRICT __restrict__
// A device address stored in device memory (a pointer table) as a global pointer; the emulator's
// version (emu/simt.hpp) also recovers the allocation's bounds.
template <class T>
__device__ __forceinline__ gmem<T> gmem_from_address(unsigned long long a) {
    return reinterpret_cast<T*>(a);
}
typedef unsigned short bf16_t;
#endif

// bf16 storage: the upper half of an f32. Conversion by bit arithmetic, identical on the GPU
// and in the emulator, so no CUDA header is needed at run time.
__device__ __forceinline__ float bf16_to_f32(bf16_t h) {
    return __uint_as_float(static_cast<unsigned>(h) << 16);
}
// Round to nearest even; NaN stays NaN (quiet bit forced).
__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return static_cast<bf16_t>((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<bf16_t>(u >> 16);
}

// Storage-type loads and stores, so one template body serves f32 and bf16 buffers.
__device__ __forceinline__ float load_f32(float v) {
    return v;
}
__device__ __forceinline__ float load_f32(bf16_t v) {
    return bf16_to_f32(v);
}
template <class T>
__device__ __forceinline__ T store_as(float v);
template <>
__device__ __forceinline__ float store_as<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ bf16_t store_as<bf16_t>(float v) {
    return f32_to_bf16(v);
}

// Sum over the 32 lanes of a full warp (every lane gets the result).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
