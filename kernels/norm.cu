// kernels/norm.cu (being written)
#include "common.cuh"
