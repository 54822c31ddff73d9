use super::super::{CudaBackend, CudaBuf};
use crate::backend::{AttnShape, Span};
use crate::error::{Error, Result};

#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(_be: &CudaBackend, _o: &mut CudaBuf, _lse: &mut CudaBuf, _q: &CudaBuf, _k: &CudaBuf, _v: &CudaBuf, _seqs: &[Span], _shape: AttnShape) -> Result<()> {
    Err(Error::Backend("SCAFFOLD: cuda attention not written yet".into()))
}
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(_be: &CudaBackend, _dq: &mut CudaBuf, _dk: &mut CudaBuf, _dv: &mut CudaBuf, _do_: &CudaBuf, _q: &CudaBuf, _k: &CudaBuf, _v: &CudaBuf, _o: &CudaBuf, _lse: &CudaBuf, _seqs: &[Span], _shape: AttnShape) -> Result<()> {
    Err(Error::Backend("SCAFFOLD: cuda attention not written yet".into()))
}
