// kernels/optim.cu (being written)
#include "common.cuh"
