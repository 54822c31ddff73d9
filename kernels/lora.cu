// kernels/lora.cu (being written)
#include "common.cuh"
