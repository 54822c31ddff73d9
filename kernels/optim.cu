// kernels/optim.cu: the AdamW update, elementwise, f32.
//
// Same operation order as the CPU reference (src/backend/cpu/optim.rs) so both agree to a few
// ulp: decoupled decay first, then the moments, then the bias-corrected step. The host computes
// the bias corrections in f64 exactly as the CPU does and passes step_size = lr / (1 - beta1^t)
// and bc2_sqrt = sqrt(1 - beta2^t) as f32. Memory-bound (16 bytes read, 12 written per
// element); a grid-stride loop keeps every load coalesced.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
    optim_adamw(gmem<float> param, gmem<const float> grad, gmem<float> m, gmem<float> v, float lr,
                float beta1, float beta2, float eps, float weight_decay, float step_size,
                float bc2_sqrt, int n) {
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float g = grad[i];
        float p = param[i];
        p -= lr * weight_decay * p;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        p -= step_size * mi / denom;
        param[i] = p;
    }
}

EMU_REGISTER(optim_adamw)
