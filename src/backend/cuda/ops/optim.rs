use super::super::{CudaBackend, CudaBuf};
use crate::backend::AdamW;
use crate::error::{Error, Result};

pub(crate) fn adamw_step(_be: &CudaBackend, _param: &mut CudaBuf, _grad: &CudaBuf, _m: &mut CudaBuf, _v: &mut CudaBuf, _hp: AdamW, _step: u64) -> Result<()> {
    Err(Error::Backend("SCAFFOLD: cuda adamw not written yet".into()))
}
