//! Host side of each kernel family: shape checks, metadata upload, launch configuration.
//! One file per kernels/*.cu file.

pub(super) mod align;
pub(super) mod attention;
pub(super) mod attn_flash;
pub(super) mod elementwise;
pub(super) mod gemm;
pub(super) mod gguf;
pub(super) mod lora;
pub(super) mod loss;
pub(super) mod norm;
pub(super) mod optim;
