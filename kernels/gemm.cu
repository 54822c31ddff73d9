// kernels/gemm.cu (being written)
#include "common.cuh"
