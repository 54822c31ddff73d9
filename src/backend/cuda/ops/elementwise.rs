use super::super::{CudaBackend, CudaBuf};
use crate::backend::{Activation, Span};
use crate::error::{Error, Result};

fn todo() -> Result<()> {
    Err(Error::Backend("SCAFFOLD: cuda elementwise op not written yet".into()))
}

pub(crate) fn add_bias(_be: &CudaBackend, _y: &mut CudaBuf, _bias: &CudaBuf, _rows: usize, _dim: usize) -> Result<()> { todo() }
pub(crate) fn add_assign(_be: &CudaBackend, _y: &mut CudaBuf, _x: &CudaBuf, _len: usize) -> Result<()> { todo() }
pub(crate) fn gather_rows(_be: &CudaBackend, _dst: &mut CudaBuf, _src: &CudaBuf, _rows: &[u32], _dim: usize) -> Result<()> { todo() }
pub(crate) fn scatter_rows(_be: &CudaBackend, _dst: &mut CudaBuf, _src: &CudaBuf, _rows: &[u32], _dim: usize) -> Result<()> { todo() }
pub(crate) fn embedding(_be: &CudaBackend, _out: &mut CudaBuf, _table: &CudaBuf, _ids: &[u32], _dim: usize, _accumulate: bool) -> Result<()> { todo() }
pub(crate) fn activation_forward(_be: &CudaBackend, _y: &mut CudaBuf, _x: &CudaBuf, _act: Activation, _len: usize) -> Result<()> { todo() }
pub(crate) fn activation_backward(_be: &CudaBackend, _dx: &mut CudaBuf, _dy: &CudaBuf, _x: &CudaBuf, _act: Activation, _len: usize) -> Result<()> { todo() }
pub(crate) fn swiglu_forward(_be: &CudaBackend, _y: &mut CudaBuf, _gate: &CudaBuf, _up: &CudaBuf, _len: usize) -> Result<()> { todo() }
pub(crate) fn swiglu_backward(_be: &CudaBackend, _dgate: &mut CudaBuf, _dup: &mut CudaBuf, _dy: &CudaBuf, _gate: &CudaBuf, _up: &CudaBuf, _len: usize) -> Result<()> { todo() }
pub(crate) fn rope(_be: &CudaBackend, _x: &mut CudaBuf, _positions: &[u32], _heads: usize, _head_dim: usize, _theta: f32, _inverse: bool) -> Result<()> { todo() }
pub(crate) fn segment_mean(_be: &CudaBackend, _out: &mut CudaBuf, _x: &CudaBuf, _spans: &[Span], _dim: usize) -> Result<()> { todo() }
pub(crate) fn segment_mean_backward(_be: &CudaBackend, _dx: &mut CudaBuf, _dout: &CudaBuf, _spans: &[Span], _dim: usize) -> Result<()> { todo() }
