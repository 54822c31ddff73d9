// kernels/align.cu (being written)
#include "common.cuh"
