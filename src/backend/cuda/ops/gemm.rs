use super::super::{CudaBackend, CudaBuf};
use crate::error::{Error, Result};

#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    _be: &CudaBackend,
    _c: &mut CudaBuf,
    _a: &CudaBuf,
    _b: &CudaBuf,
    _m: usize,
    _n: usize,
    _k: usize,
    _trans_a: bool,
    _trans_b: bool,
    _accumulate: bool,
) -> Result<()> {
    Err(Error::Backend("SCAFFOLD: cuda matmul not written yet".into()))
}
