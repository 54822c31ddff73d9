//! Host side of kernels/norm.cu: LayerNorm and RMSNorm, forward and input-gradient backward.

use super::super::{check_len, i32_of, CudaBackend, CudaBuf, KArg, LaunchCfg};
use crate::error::{Error, Result};

/// Most threads of one row-reduction block (the kernels size their shared partials for 8 warps).
const MAX_THREADS: usize = 256;

/// Launch shape of the row-reduction kernels (norm.cu, loss.cu): `tpr` threads per row, a power
/// of two from 32 to 256 aiming at about 4 elements per thread, and as many rows per block as
/// fit in 256 threads, so short rows still fill whole warps and blocks.
pub(super) fn row_blocks(rows: usize, dim: usize) -> Result<LaunchCfg> {
    let tpr = dim.div_ceil(4).next_power_of_two().clamp(32, MAX_THREADS);
    let rpb = MAX_THREADS / tpr;
    let blocks = u32::try_from(rows.div_ceil(rpb))
        .map_err(|_| Error::Backend(format!("{rows} rows exceed the launch grid")))?;
    Ok(LaunchCfg {
        grid: (blocks, 1, 1),
        block: (tpr as u32, rpb as u32, 1),
        shared_bytes: 0,
    })
}

/// Checks that the shorter of two buffers holds `need` elements, reporting the shorter length
/// (the CPU backend checks paired buffers such as `mean` and `rstd` this way).
fn check_pair(what: &str, a: &CudaBuf, b: &CudaBuf, need: usize) -> Result<()> {
    let held = a.len.min(b.len);
    if held < need {
        return Err(Error::Backend(format!(
            "{what}: buffer holds {held} elements, op needs {need}"
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_forward(
    be: &CudaBackend,
    y: &mut CudaBuf,
    mean: &mut CudaBuf,
    rstd: &mut CudaBuf,
    x: &CudaBuf,
    gamma: &CudaBuf,
    beta: &CudaBuf,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<()> {
    check_len("layer_norm y", y, rows * dim)?;
    check_len("layer_norm x", x, rows * dim)?;
    check_pair("layer_norm stats", mean, rstd, rows)?;
    check_pair("layer_norm params", gamma, beta, dim)?;
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    // SAFETY: norm_ln_fwd(y, mean, rstd, x, gamma, beta, rows, dim, eps) touches y and x at
    // [0, rows·dim), mean and rstd at [0, rows), gamma and beta at [0, dim): all checked
    // above, and `row_blocks` assigns each row to one thread group.
    unsafe {
        be.launch(
            "norm_ln_fwd",
            row_blocks(rows, dim)?,
            &[
                y.arg(),
                mean.arg(),
                rstd.arg(),
                x.arg(),
                gamma.arg(),
                beta.arg(),
                KArg::I32(i32_of("layer_norm rows", rows)?),
                KArg::I32(i32_of("layer_norm dim", dim)?),
                KArg::F32(eps),
            ],
        )
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_backward(
    be: &CudaBackend,
    dx: &mut CudaBuf,
    dy: &CudaBuf,
    x: &CudaBuf,
    gamma: &CudaBuf,
    mean: &CudaBuf,
    rstd: &CudaBuf,
    rows: usize,
    dim: usize,
) -> Result<()> {
    check_len("layer_norm_backward dx", dx, rows * dim)?;
    check_len("layer_norm_backward dy", dy, rows * dim)?;
    check_len("layer_norm_backward x", x, rows * dim)?;
    check_pair("layer_norm_backward stats", mean, rstd, rows)?;
    check_len("layer_norm_backward gamma", gamma, dim)?;
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    // SAFETY: norm_ln_bwd(dx, dy, x, gamma, mean, rstd, rows, dim) touches dx, dy, x at
    // [0, rows·dim), mean and rstd at [0, rows) and gamma at [0, dim), all checked above.
    unsafe {
        be.launch(
            "norm_ln_bwd",
            row_blocks(rows, dim)?,
            &[
                dx.arg(),
                dy.arg(),
                x.arg(),
                gamma.arg(),
                mean.arg(),
                rstd.arg(),
                KArg::I32(i32_of("layer_norm_backward rows", rows)?),
                KArg::I32(i32_of("layer_norm_backward dim", dim)?),
            ],
        )
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rms_norm_forward(
    be: &CudaBackend,
    y: &mut CudaBuf,
    rstd: &mut CudaBuf,
    x: &CudaBuf,
    gamma: &CudaBuf,
    rows: usize,
    dim: usize,
    eps: f32,
) -> Result<()> {
    check_len("rms_norm y", y, rows * dim)?;
    check_len("rms_norm x", x, rows * dim)?;
    check_len("rms_norm rstd", rstd, rows)?;
    check_len("rms_norm gamma", gamma, dim)?;
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    // SAFETY: norm_rms_fwd(y, rstd, x, gamma, rows, dim, eps) touches y and x at [0, rows·dim),
    // rstd at [0, rows) and gamma at [0, dim), all checked above.
    unsafe {
        be.launch(
            "norm_rms_fwd",
            row_blocks(rows, dim)?,
            &[
                y.arg(),
                rstd.arg(),
                x.arg(),
                gamma.arg(),
                KArg::I32(i32_of("rms_norm rows", rows)?),
                KArg::I32(i32_of("rms_norm dim", dim)?),
                KArg::F32(eps),
            ],
        )
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rms_norm_backward(
    be: &CudaBackend,
    dx: &mut CudaBuf,
    dy: &CudaBuf,
    x: &CudaBuf,
    gamma: &CudaBuf,
    rstd: &CudaBuf,
    rows: usize,
    dim: usize,
) -> Result<()> {
    check_len("rms_norm_backward dx", dx, rows * dim)?;
    check_len("rms_norm_backward dy", dy, rows * dim)?;
    check_len("rms_norm_backward x", x, rows * dim)?;
    check_len("rms_norm_backward rstd", rstd, rows)?;
    check_len("rms_norm_backward gamma", gamma, dim)?;
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    // SAFETY: norm_rms_bwd(dx, dy, x, gamma, rstd, rows, dim) touches dx, dy, x at
    // [0, rows·dim), rstd at [0, rows) and gamma at [0, dim), all checked above.
    unsafe {
        be.launch(
            "norm_rms_bwd",
            row_blocks(rows, dim)?,
            &[
                dx.arg(),
                dy.arg(),
                x.arg(),
                gamma.arg(),
                rstd.arg(),
                KArg::I32(i32_of("rms_norm_backward rows", rows)?),
                KArg::I32(i32_of("rms_norm_backward dim", dim)?),
            ],
        )
    }
}
