use super::super::{CudaBackend, CudaBuf};
use crate::backend::{LoraGradSeg, LoraSeg, LoraShape};
use crate::error::{Error, Result};

pub(crate) fn forward(_be: &CudaBackend, _y: &mut CudaBuf, _x: &CudaBuf, _u: &mut CudaBuf, _segs: &[LoraSeg<'_, CudaBackend>], _shape: LoraShape) -> Result<()> {
    Err(Error::Backend("SCAFFOLD: cuda lora not written yet".into()))
}
pub(crate) fn backward(_be: &CudaBackend, _dx: &mut CudaBuf, _dy: &CudaBuf, _x: &CudaBuf, _u: &CudaBuf, _segs: &mut [LoraGradSeg<'_, CudaBackend>], _shape: LoraShape) -> Result<()> {
    Err(Error::Backend("SCAFFOLD: cuda lora not written yet".into()))
}
