// Probes of the tensor-core wrappers (tensor_core.cuh): each kernel moves data through one
// instruction and nothing else, so that tests/cuda_tensor_core_isa.rs can check the emulator's
// models against the PTX ISA's fragment tables, and tools/gpu_check.sh can check the same tables
// on a GPU. One warp (32 threads) per launch.
#include "common.cuh"
#include "tensor_core.cuh"

// d = a * b + c for one m16n8k16 tile, fragments given per lane: a[lane * 4 + i],
// b[lane * 2 + i], c[lane * 4 + i], d[lane * 4 + i]. `f16` picks f16 inputs over bf16.
extern "C" __global__ void tc_probe_mma(gmem<const unsigned> a, gmem<const unsigned> b,
                                        gmem<const float> c, gmem<float> d, int f16) {
    const int lane = threadIdx.x;
    unsigned ra[4], rb[2];
    float rc[4], rd[4];
    for (int i = 0; i < 4; ++i) {
        ra[i] = a[lane * 4 + i];
        rc[i] = c[lane * 4 + i];
    }
    for (int i = 0; i < 2; ++i)
        rb[i] = b[lane * 2 + i];
    if (f16)
        mma_m16n8k16_f16(rd, ra, rb, rc);
    else
        mma_m16n8k16_bf16(rd, ra, rb, rc);
    for (int i = 0; i < 4; ++i)
        d[lane * 4 + i] = rd[i];
}

// Stages `rows` (32 rows of 8 bf16) in shared memory, then lane l gives row `row_of_lane[l]` as
// its ldmatrix address; out[lane * 4 + i] receives register i. `count` is 1, 2 or 4 matrices,
// `trans` selects .trans.
extern "C" __global__ void tc_probe_ldmatrix(gmem<const bf16_t> rows, gmem<const int> row_of_lane,
                                             gmem<unsigned> out, int count, int trans) {
    SHARED(bf16_t, tile, 32 * 8);
    const int lane = threadIdx.x;
    for (int k = 0; k < 8; ++k)
        tile[lane * 8 + k] = rows[lane * 8 + k];
    __syncthreads();
    const int row = row_of_lane[lane];
    unsigned r[4] = {0u, 0u, 0u, 0u};
    if (count == 1) {
        unsigned one[1];
        if (trans)
            ldmatrix_x1_trans(one, tile + row * 8);
        else
            ldmatrix_x1(one, tile + row * 8);
        r[0] = one[0];
    } else if (count == 2) {
        unsigned two[2];
        if (trans)
            ldmatrix_x2_trans(two, tile + row * 8);
        else
            ldmatrix_x2(two, tile + row * 8);
        r[0] = two[0];
        r[1] = two[1];
    } else {
        if (trans)
            ldmatrix_x4_trans(r, tile + row * 8);
        else
            ldmatrix_x4(r, tile + row * 8);
    }
    for (int i = 0; i < 4; ++i)
        out[lane * 4 + i] = r[i];
}

// Lane l copies `bytes` (4, 8 or 16) bytes from src + l * bytes into shared memory with
// cp.async, of which only the part below byte `valid` of src is read (the rest zero-filled);
// after wait and barrier, out[j] = the shared float j + 1 (another lane's, through the barrier).
extern "C" __global__ void tc_probe_cp_async(gmem<const float> src, gmem<float> out, int bytes,
                                             int valid) {
    SHARED(float, buf, 32 * 4);
    const int lane = threadIdx.x;
    const int per = bytes / 4;  // floats per lane
    const int first = lane * bytes;
    const int keep = min(max(valid - first, 0), bytes);
    if (bytes == 16)
        cp_async<16>(buf + lane * per, src + lane * per, keep);
    else if (bytes == 8)
        cp_async<8>(buf + lane * per, src + lane * per, keep);
    else
        cp_async<4>(buf + lane * per, src + lane * per, keep);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    const int n = 32 * per;
    for (int j = lane; j < n; j += 32)
        out[j] = buf[(j + 1) % n];
}

EMU_REGISTER(tc_probe_mma)
EMU_REGISTER(tc_probe_ldmatrix)
EMU_REGISTER(tc_probe_cp_async)
