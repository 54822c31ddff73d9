// kernels/elementwise.cu (being written)
#include "common.cuh"
