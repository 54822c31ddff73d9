// Kernels that break CUDA's rules on purpose. tests/cuda_emulator_faults.rs launches each and
// expects the emulator to name the violation; on a GPU these would be silent garbage or hangs.
// The fault_control_* kernels do the same work correctly (they must pass under every schedule),
// and fault_fast_math exposes the fast-math intrinsics for measuring their error.
// Compiled into the emulator only (build.rs), never shipped to NVRTC.
#include "tensor_core.cuh"

// Reads one element past the end of `x` in the last thread.
extern "C" __global__ void fault_oob_read(gmem<const float> x, gmem<float> y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = x[i + 1];
}
EMU_REGISTER(fault_oob_read)

// Threads with an odd index skip the barrier.
extern "C" __global__ void fault_divergent_barrier(gmem<float> y) {
    SHARED(float, s, 64);
    s[threadIdx.x] = 1.0f;
    if (threadIdx.x % 2 == 0)
        __syncthreads();
    y[threadIdx.x] = s[threadIdx.x];
}
EMU_REGISTER(fault_divergent_barrier)

// Reads the neighbour's shared slot, which only even threads wrote.
extern "C" __global__ void fault_uninit_shared(gmem<float> y) {
    SHARED(float, s, 64);
    if (threadIdx.x % 2 == 0)
        s[threadIdx.x] = 2.0f;
    __syncthreads();
    y[threadIdx.x] = s[threadIdx.x ^ 1];
}
EMU_REGISTER(fault_uninit_shared)

// Lane 31 returns early, the rest shuffle with a full mask.
extern "C" __global__ void fault_shuffle_exited_lane(gmem<float> y) {
    if (threadIdx.x == 31)
        return;
    y[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}
EMU_REGISTER(fault_shuffle_exited_lane)

// The same barrier-free reduction done right: the control for the tests above.
extern "C" __global__ void fault_control_block_sum(gmem<const float> x, gmem<float> y, int n) {
    SHARED(float, s, 1024);
    float v = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        v += x[i];
    v = warp_sum(v);
    if (threadIdx.x % 32 == 0)
        s[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.f;
        for (int w = 0; w < (int)(blockDim.x + 31) / 32; ++w)
            t += s[w];
        y[0] = t;
    }
}
EMU_REGISTER(fault_control_block_sum)

// Tree reduction in shared memory with the __syncthreads between steps forgotten: a thread
// reads s[tid + stride] while the thread that owns it may still be writing it.
extern "C" __global__ void fault_race_missing_sync(gmem<const float> x, gmem<float> y) {
    SHARED(float, s, 256);
    const int tid = threadIdx.x;
    s[tid] = x[blockIdx.x * blockDim.x + tid];
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (tid < stride)
            s[tid] += s[tid + stride];
        // missing: __syncthreads();
    }
    if (tid == 0)
        y[blockIdx.x] = s[0];
}
EMU_REGISTER(fault_race_missing_sync)

// The same reduction done right: the control for fault_race_missing_sync.
extern "C" __global__ void fault_control_tree_sum(gmem<const float> x, gmem<float> y) {
    SHARED(float, s, 256);
    const int tid = threadIdx.x;
    s[tid] = x[blockIdx.x * blockDim.x + tid];
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (tid < stride)
            s[tid] += s[tid + stride];
        __syncthreads();
    }
    if (tid == 0)
        y[blockIdx.x] = s[0];
}
EMU_REGISTER(fault_control_tree_sum)

// Every block writes its partial sum to y[0]: blocks of one launch are unordered, so which
// value survives depends on the schedule.
extern "C" __global__ void fault_race_cross_block(gmem<const float> x, gmem<float> y) {
    if (threadIdx.x == 0)
        y[0] = x[blockIdx.x];
}
EMU_REGISTER(fault_race_cross_block)

// Atomics from every block and every thread, on global and shared memory: atomics do not race
// with each other, and the barrier orders the shared atomics before the plain read.
extern "C" __global__ void fault_control_atomics(gmem<const float> x, gmem<float> y) {
    SHARED(float, s, 1);
    if (threadIdx.x == 0)
        s[0] = 0.0f;
    __syncthreads();
    atomicAdd(s + 0, x[blockIdx.x * blockDim.x + threadIdx.x]);
    __syncthreads();
    if (threadIdx.x == 0)
        atomicAdd(&y[0], s[0]);
}
EMU_REGISTER(fault_control_atomics)

// Lanes of one warp exchange values through shared memory, ordered by __syncwarp (legal CUDA:
// __syncwarp orders memory among the lanes it names). With `sync` 0 the __syncwarp is skipped,
// which is a race.
extern "C" __global__ void fault_warp_exchange(gmem<float> y, int sync) {
    SHARED(float, s, 32);
    const int lane = threadIdx.x;
    s[lane] = -1.0f;
    __syncthreads();
    s[lane] = static_cast<float>(lane);
    if (sync)
        __syncwarp();
    y[lane] = s[(lane + 1) % 32];
}
EMU_REGISTER(fault_warp_exchange)

// A float4 load from x + 1: 4-byte aligned, not 16 (a misaligned-address fault on a GPU).
extern "C" __global__ void fault_misaligned_float4(gmem<const float> x, gmem<float> y, int offset) {
    gmem<const float4> v = gmem_cast<const float4>(x + offset);
    const float4 f = v[0];
    y[threadIdx.x] = f.x + f.y + f.z + f.w;
}
EMU_REGISTER(fault_misaligned_float4)

// Uses every byte of its dynamic shared memory (the launch sets how much).
extern "C" __global__ void fault_big_dynamic_smem(gmem<float> y, int n) {
    DYN_SHARED(float, s);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s[i] = 1.0f;
    __syncthreads();
    if (threadIdx.x == 0)
        y[0] = s[n - 1];
}
EMU_REGISTER(fault_big_dynamic_smem)

// The fast-math intrinsics next to their accurate counterparts, element by element:
// y[4i..4i+3] = __expf(x), __logf(|x|), __fdividef(1, x), rsqrtf(|x|).
extern "C" __global__ void fault_fast_math(gmem<const float> x, gmem<float> y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    const float v = x[i];
    y[4 * i + 0] = __expf(v);
    y[4 * i + 1] = __logf(fabsf(v));
    y[4 * i + 2] = __fdividef(1.0f, v);
    y[4 * i + 3] = rsqrtf(fabsf(v));
}
EMU_REGISTER(fault_fast_math)

// Thread 3 throws std::bad_alloc, as a host allocation inside the emulator might: the launch
// must fail with an error, never unwind into Rust.
extern "C" __global__ void fault_throws(gmem<float> y) {
    if (threadIdx.x == 3)
        throw std::bad_alloc();
    y[threadIdx.x] = 1.0f;
}
EMU_REGISTER(fault_throws)

// Block 1 stores one float into the 16 bytes block 0 loads as a float4: a cross-block race the
// detector sees only by checking each word a vector access covers.
extern "C" __global__ void fault_race_vector_vs_scalar(gmem<float> y) {
    if (blockIdx.x == 0) {
        const float4 v = gmem_cast<float4>(y)[0];
        y[4 + threadIdx.x] = v.x;
    } else {
        y[2] = 5.0f;
    }
}
EMU_REGISTER(fault_race_vector_vs_scalar)

// Tensor-core instructions (tensor_core.cuh) used wrongly.

// Only the first `lanes` lanes of the warp reach the mma (the others return): the hardware's
// behaviour is undefined (.aligned), the emulator must refuse.
extern "C" __global__ void fault_mma_partial_warp(gmem<float> y, int lanes) {
    const int lane = threadIdx.x;
    if (lane >= lanes)
        return;
    unsigned a[4] = {0x3f803f80u, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u};  // bf16 pairs of 1.0
    unsigned b[2] = {0x3f803f80u, 0x3f803f80u};
    float c[4] = {0.f, 0.f, 0.f, 0.f}, d[4];
    mma_m16n8k16_bf16(d, a, b, c);
    y[lane] = d[0];
}
EMU_REGISTER(fault_mma_partial_warp)

// ldmatrix with row addresses `offset` bf16 elements past a 16-byte boundary (offset 0 is fine).
extern "C" __global__ void fault_ldmatrix_misaligned(gmem<unsigned> y, int offset) {
    SHARED(bf16_t, tile, 40 * 8);
    const int lane = threadIdx.x;
    for (int k = lane; k < 40 * 8; k += 32)
        tile[k] = static_cast<bf16_t>(k);
    __syncthreads();
    unsigned r[1];
    ldmatrix_x1(r, tile + lane % 8 * 8 + offset);
    y[lane] = r[0];
}
EMU_REGISTER(fault_ldmatrix_misaligned)

// Two cp.async groups, then cp.async.wait_group 1: the older group has landed, the newer may
// still be in flight. Reading the newer group's data (`second` = 1) reads memory no write has
// reached yet; reading the older one's (`second` = 0) is correct.
extern "C" __global__ void fault_cp_async_unwaited(gmem<const float> x, gmem<float> y, int second) {
    SHARED(float, first_buf, 32 * 4);
    SHARED(float, second_buf, 32 * 4);
    const int lane = threadIdx.x;
    cp_async<16>(first_buf + lane * 4, x + lane * 4, 16);
    cp_async_commit();
    cp_async<16>(second_buf + lane * 4, x + lane * 4, 16);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    y[lane] = second ? second_buf[(lane * 4 + 5) % 128] : first_buf[(lane * 4 + 5) % 128];
    cp_async_wait<0>();
}
EMU_REGISTER(fault_cp_async_unwaited)

// Stage a tile with cp.async, read a neighbour's part, then refill the tile: without a barrier
// between the reads and the refill (`sync` = 0) another lane may still be reading what the
// refill overwrites, since the hardware may land a cp.async as soon as it is issued.
extern "C" __global__ void fault_cp_async_refill(gmem<const float> x, gmem<float> y, int sync) {
    SHARED(float, buf, 32 * 4);
    const int lane = threadIdx.x;
    cp_async<16>(buf + lane * 4, x + lane * 4, 16);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    y[lane] = buf[((lane + 1) % 32) * 4];
    if (sync)
        __syncthreads();
    cp_async<16>(buf + lane * 4, x + 128 + lane * 4, 16);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    y[32 + lane] = buf[((lane + 1) % 32) * 4];
}
EMU_REGISTER(fault_cp_async_refill)
