// kernels/norm.cu: LayerNorm and RMSNorm, forward and input-gradient backward, f32.
//
// Launch shape shared by all four kernels: blockDim = (tpr, rpb) with tpr a multiple of 32
// threads per row and rpb rows per block (tpr * rpb <= 256), grid.x = ceil(rows / rpb). The host
// picks tpr from dim so that small rows do not leave most of a block idle and large rows still
// spread over 8 warps. A row's threads stride over it with step tpr (coalesced), reduce in
// registers, then across lanes with shuffles and across the row's warps through shared memory.
// The reduction order depends only on (dim, tpr), so results are deterministic.
//
// Statistics are two-pass (mean, then the sum of squared deviations) for accuracy; the second
// and third passes re-read the row, which a block has just touched, from L1/L2 rather than HBM.
#include "common.cuh"

namespace {

constexpr int MAX_WARPS = 8;  // 256 threads per block at most

// Sum of v over the threads of this block's row threadIdx.y; every thread of the row gets it.
// All threads of the block must call it (it holds barriers).
template <class S>
__device__ __forceinline__ float row_sum(float v, S red) {
    const int nw = blockDim.x / 32;
    const int w = threadIdx.x / 32;
    const int base = threadIdx.y * nw;
    v = warp_sum(v);
    if (threadIdx.x % 32 == 0)
        red[base + w] = v;
    __syncthreads();
    float t = 0.f;
    for (int i = 0; i < nw; ++i)
        t += red[base + i];
    // Lets the caller reuse `red` for its next reduction.
    __syncthreads();
    return t;
}

// Two sums at once (one barrier pair for both).
template <class S>
__device__ __forceinline__ void row_sum2(float& a, float& b, S red) {
    const int nw = blockDim.x / 32;
    const int w = threadIdx.x / 32;
    const int base = threadIdx.y * nw;
    a = warp_sum(a);
    b = warp_sum(b);
    if (threadIdx.x % 32 == 0) {
        red[2 * (base + w)] = a;
        red[2 * (base + w) + 1] = b;
    }
    __syncthreads();
    float ta = 0.f, tb = 0.f;
    for (int i = 0; i < nw; ++i) {
        ta += red[2 * (base + i)];
        tb += red[2 * (base + i) + 1];
    }
    __syncthreads();
    a = ta;
    b = tb;
}

}  // namespace

// y = (x - mean) * rstd * gamma + beta per row; writes mean[row] and rstd[row].
extern "C" __global__ void __launch_bounds__(256)
    norm_ln_fwd(gmem<float> y, gmem<float> mean, gmem<float> rstd, gmem<const float> x,
                gmem<const float> gamma, gmem<const float> beta, int rows, int dim, float eps) {
    SHARED(float, red, MAX_WARPS);
    const int row = blockIdx.x * blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const long long off = (long long)row * dim;
    const int tpr = blockDim.x;

    float s = 0.f;
    if (live)
        for (int i = threadIdx.x; i < dim; i += tpr)
            s += x[off + i];
    const float mu = row_sum(s, red) / (float)dim;

    float ss = 0.f;
    if (live)
        for (int i = threadIdx.x; i < dim; i += tpr) {
            float d = x[off + i] - mu;
            ss += d * d;
        }
    const float var = row_sum(ss, red) / (float)dim;
    const float rs = 1.0f / sqrtf(var + eps);

    if (live) {
        for (int i = threadIdx.x; i < dim; i += tpr)
            y[off + i] = (x[off + i] - mu) * rs * gamma[i] + beta[i];
        if (threadIdx.x == 0) {
            mean[row] = mu;
            rstd[row] = rs;
        }
    }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gamma, xhat = (x - mean) * rstd.
extern "C" __global__ void __launch_bounds__(256)
    norm_ln_bwd(gmem<float> dx, gmem<const float> dy, gmem<const float> x, gmem<const float> gamma,
                gmem<const float> mean, gmem<const float> rstd, int rows, int dim) {
    SHARED(float, red, 2 * MAX_WARPS);
    const int row = blockIdx.x * blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const long long off = (long long)row * dim;
    const int tpr = blockDim.x;
    const float mu = live ? mean[row] : 0.f;
    const float rs = live ? rstd[row] : 0.f;

    float sg = 0.f, sgx = 0.f;
    if (live)
        for (int i = threadIdx.x; i < dim; i += tpr) {
            float g = dy[off + i] * gamma[i];
            sg += g;
            sgx += g * ((x[off + i] - mu) * rs);
        }
    row_sum2(sg, sgx, red);
    const float mg = sg / (float)dim;
    const float mgx = sgx / (float)dim;

    if (live)
        for (int i = threadIdx.x; i < dim; i += tpr) {
            float xhat = (x[off + i] - mu) * rs;
            dx[off + i] = rs * (dy[off + i] * gamma[i] - mg - xhat * mgx);
        }
}

// y = x * rstd * gamma with rstd = 1 / sqrt(mean(x^2) + eps); writes rstd[row].
extern "C" __global__ void __launch_bounds__(256)
    norm_rms_fwd(gmem<float> y, gmem<float> rstd, gmem<const float> x, gmem<const float> gamma,
                 int rows, int dim, float eps) {
    SHARED(float, red, MAX_WARPS);
    const int row = blockIdx.x * blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const long long off = (long long)row * dim;
    const int tpr = blockDim.x;

    float ss = 0.f;
    if (live)
        for (int i = threadIdx.x; i < dim; i += tpr) {
            float v = x[off + i];
            ss += v * v;
        }
    const float ms = row_sum(ss, red) / (float)dim;
    const float rs = 1.0f / sqrtf(ms + eps);

    if (live) {
        for (int i = threadIdx.x; i < dim; i += tpr)
            y[off + i] = x[off + i] * rs * gamma[i];
        if (threadIdx.x == 0)
            rstd[row] = rs;
    }
}

// dx = rstd * (g - x * rstd^2 * mean(g * x)) with g = dy * gamma.
extern "C" __global__ void __launch_bounds__(256)
    norm_rms_bwd(gmem<float> dx, gmem<const float> dy, gmem<const float> x, gmem<const float> gamma,
                 gmem<const float> rstd, int rows, int dim) {
    SHARED(float, red, MAX_WARPS);
    const int row = blockIdx.x * blockDim.y + threadIdx.y;
    const bool live = row < rows;
    const long long off = (long long)row * dim;
    const int tpr = blockDim.x;
    const float rs = live ? rstd[row] : 0.f;

    float dot = 0.f;
    if (live)
        for (int i = threadIdx.x; i < dim; i += tpr)
            dot += dy[off + i] * gamma[i] * x[off + i];
    const float c = row_sum(dot, red) / (float)dim * rs * rs;

    if (live)
        for (int i = threadIdx.x; i < dim; i += tpr)
            dx[off + i] = rs * (dy[off + i] * gamma[i] - x[off + i] * c);
}

EMU_REGISTER(norm_ln_fwd)
EMU_REGISTER(norm_ln_bwd)
EMU_REGISTER(norm_rms_fwd)
EMU_REGISTER(norm_rms_bwd)
