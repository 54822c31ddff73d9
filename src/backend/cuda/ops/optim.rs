//! Host side of kernels/optim.cu: the AdamW step.

use super::super::{check_len, i32_of, CudaBackend, CudaBuf, KArg, LaunchCfg};
use crate::backend::AdamW;
use crate::error::Result;

/// Threads per block of the elementwise update.
const THREADS: u32 = 256;
/// Grid cap: enough blocks to fill an H100 (132 SMs x 8 resident blocks) several times over;
/// larger tensors loop inside the kernel.
const MAX_BLOCKS: usize = 132 * 8 * 4;

/// The scalar bias corrections are computed here in f64, exactly as the CPU backend does, so
/// the kernel's per-element arithmetic is the only place the two can differ.
pub(crate) fn adamw_step(
    be: &CudaBackend,
    param: &mut CudaBuf,
    grad: &CudaBuf,
    m: &mut CudaBuf,
    v: &mut CudaBuf,
    hp: AdamW,
    step: u64,
) -> Result<()> {
    let n = param.len;
    check_len("adamw grad", grad, n)?;
    check_len("adamw m", m, n)?;
    check_len("adamw v", v, n)?;
    if n == 0 {
        return Ok(());
    }
    let t = step.clamp(1, i32::MAX as u64) as i32;
    let bc1 = 1.0 - (hp.beta1 as f64).powi(t);
    let bc2 = 1.0 - (hp.beta2 as f64).powi(t);
    let step_size = (hp.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let blocks = n.div_ceil(THREADS as usize).min(MAX_BLOCKS) as u32;
    // SAFETY: optim_adamw(param, grad, m, v, ..., n) updates all four at [0, n): n is param's
    // length and the other three were checked to hold n elements.
    unsafe {
        be.launch(
            "optim_adamw",
            LaunchCfg::linear(blocks, THREADS),
            &[
                param.arg(),
                grad.arg(),
                m.arg(),
                v.arg(),
                KArg::F32(hp.lr),
                KArg::F32(hp.beta1),
                KArg::F32(hp.beta2),
                KArg::F32(hp.eps),
                KArg::F32(hp.weight_decay),
                KArg::F32(step_size),
                KArg::F32(bc2_sqrt),
                KArg::I32(i32_of("adamw len", n)?),
            ],
        )
    }
}
