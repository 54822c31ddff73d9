// kernels/attention.cu (being written)
#include "common.cuh"
