// kernels/loss.cu (being written)
#include "common.cuh"
