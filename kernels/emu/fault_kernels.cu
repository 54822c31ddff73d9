// Kernels that break CUDA's rules on purpose. tests/cuda_emulator_faults.rs launches each and
// expects the emulator to name the violation; on a GPU these would be silent garbage or hangs.
// Compiled into the emulator only (build.rs), never shipped to NVRTC.

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
