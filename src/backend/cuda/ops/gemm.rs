//! Host side of kernels/gemm.cu: the f32 GEMM behind [`crate::backend::Backend::matmul`].
//!
//! The kernels are specialised per transpose pair (`gemm_f32_nn` … `gemm_f32_tt`); bf16-storage
//! twins (`gemm_bf16_*`, bf16 A and B, f32 C) share the launch shape below.

use super::super::{i32_of, CudaBackend, CudaBuf, KArg, LaunchCfg};
use crate::error::{Error, Result};

/// Rows of C one block computes (kernels/gemm.cu `BM`).
pub(crate) const TILE_M: usize = 128;
/// Columns of C one block computes (kernels/gemm.cu `BN`).
pub(crate) const TILE_N: usize = 64;
/// Threads per block (kernels/gemm.cu `THREADS`, its `__launch_bounds__`).
pub(crate) const THREADS: u32 = 256;

/// Name of the kernel for a storage type (`"f32"` or `"bf16"`) and transpose pair.
pub(crate) fn kernel_name(storage: &str, trans_a: bool, trans_b: bool) -> String {
    let t = |x: bool| if x { 't' } else { 'n' };
    format!("gemm_{storage}_{}{}", t(trans_a), t(trans_b))
}

/// The grid that covers C `[m, n]` with 128x64 tiles.
pub(crate) fn launch_cfg(m: usize, n: usize) -> Result<LaunchCfg> {
    let gx = u32::try_from(n.div_ceil(TILE_N)).ok();
    let gy = u32::try_from(m.div_ceil(TILE_M))
        .ok()
        .filter(|&g| g <= 65_535);
    match (gx, gy) {
        (Some(gx), Some(gy)) => Ok(LaunchCfg {
            grid: (gx, gy, 1),
            block: (THREADS, 1, 1),
            shared_bytes: 0,
        }),
        _ => Err(Error::Backend(format!(
            "matmul output [{m}x{n}] exceeds the launch grid"
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    be: &CudaBackend,
    c: &mut CudaBuf,
    a: &CudaBuf,
    b: &CudaBuf,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
) -> Result<()> {
    if c.len < m * n || a.len < m * k || b.len < k * n {
        return Err(Error::Backend(format!(
            "matmul shape [{m}x{k}]·[{k}x{n}] does not fit buffers a={}, b={}, c={}",
            a.len, b.len, c.len
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        // An empty sum: C keeps its value or becomes zero, as on the CPU.
        if !accumulate {
            be.device().zero(c.ptr(), m * n * 4, be.stream())?;
        }
        return Ok(());
    }
    let (mi, ni, ki) = (
        i32_of("matmul m", m)?,
        i32_of("matmul n", n)?,
        i32_of("matmul k", k)?,
    );
    be.launch(
        &kernel_name("f32", trans_a, trans_b),
        launch_cfg(m, n)?,
        &[
            c.arg(),
            a.arg(),
            b.arg(),
            KArg::I32(mi),
            KArg::I32(ni),
            KArg::I32(ki),
            KArg::I32(accumulate as i32),
        ],
    )
}
