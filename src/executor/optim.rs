//! AdamW over adapter sets: the moments are adapter sets of the same structure, so parameters,
//! gradients and state line up tensor for tensor.

use crate::backend::{AdamW, Backend};
use crate::error::{Error, Result};
use crate::model::AdapterSet;

/// AdamW state for one adapter set.
pub struct AdamWState<B: Backend> {
    /// First moments.
    pub m: AdapterSet<B>,
    /// Second moments.
    pub v: AdapterSet<B>,
    /// Steps taken so far.
    pub step: u64,
}

impl<B: Backend> AdamWState<B> {
    /// Fresh state for `params`.
    pub fn new(backend: &B, params: &AdapterSet<B>) -> Result<Self> {
        Ok(AdamWState {
            m: params.zeros_like(backend)?,
            v: params.zeros_like(backend)?,
            step: 0,
        })
    }

    /// One AdamW update of `params` with `grads` (same structure).
    pub fn update(
        &mut self,
        backend: &B,
        params: &mut AdapterSet<B>,
        grads: &AdapterSet<B>,
        hp: AdamW,
    ) -> Result<()> {
        let g = grads.tensors();
        let p = params.tensors_mut();
        let m = self.m.tensors_mut();
        let v = self.v.tensors_mut();
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            return Err(Error::Job(format!(
                "optimizer: parameter set has {} tensors, gradients {}, state {}",
                p.len(),
                g.len(),
                m.len()
            )));
        }
        self.step += 1;
        for (((p, g), m), v) in p.into_iter().zip(g).zip(m).zip(v) {
            backend.adamw_step(p, g, m, v, hp, self.step)?;
        }
        Ok(())
    }
}
