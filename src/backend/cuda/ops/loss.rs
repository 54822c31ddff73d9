//! Host side of kernels/loss.cu: fused softmax cross-entropy and its gradient.

use super::super::{check_len, i32_of, CudaBackend, CudaBuf, KArg};
use super::norm::row_blocks;
use crate::error::{Error, Result};

/// Labels and weights travel with the launch; the per-row losses come back as the result, the
/// gradient stays on the device in `dlogits`.
pub(crate) fn cross_entropy(
    be: &CudaBackend,
    dlogits: &mut CudaBuf,
    logits: &CudaBuf,
    labels: &[i64],
    weights: &[f32],
    classes: usize,
) -> Result<Vec<f32>> {
    let rows = labels.len();
    check_len("cross_entropy logits", logits, rows * classes)?;
    check_len("cross_entropy dlogits", dlogits, rows * classes)?;
    if weights.len() < rows {
        return Err(Error::Backend(format!(
            "cross_entropy weights: buffer holds {} elements, op needs {rows}",
            weights.len()
        )));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= classes as i64) {
        return Err(Error::Backend(format!(
            "label {bad} out of range for {classes} classes"
        )));
    }
    if rows == 0 {
        return Ok(Vec::new());
    }
    if classes == 0 {
        // Every label is then negative (checked above): all rows are ignored.
        return Ok(vec![0.0; rows]);
    }
    let labels_d = be.upload_pod(labels)?;
    let weights_d = be.upload_pod(&weights[..rows])?;
    let losses_d = be.alloc_bytes(rows * 4)?;
    // SAFETY: loss_xent(dlogits, losses, logits, labels, weights, rows, classes) touches
    // dlogits and logits at [0, rows·classes) (checked above) and the three uploads of `rows`
    // elements; labels were checked to be below `classes` (negative ones are skipped).
    unsafe {
        be.launch(
            "loss_xent",
            row_blocks(rows, classes)?,
            &[
                dlogits.arg(),
                losses_d.arg(),
                logits.arg(),
                labels_d.arg(),
                weights_d.arg(),
                KArg::I32(i32_of("cross_entropy rows", rows)?),
                KArg::I32(i32_of("cross_entropy classes", classes)?),
            ],
        )
    }?;
    let mut losses = vec![0f32; rows];
    be.read_into(&mut losses, &losses_d)?;
    Ok(losses)
}
