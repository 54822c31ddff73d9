//! Backward of one transformer block, as named steps from the block output down: the MLP
//! sub-layer, then the attention sub-layer, then the input gradient.

use super::{norm_backward, norm_backward_width, BlockCtx, BlockTape};
use crate::backend::{Activation, Backend};
use crate::error::{Error, Result};
use crate::executor::Active;
use crate::model::config::{MlpKind, NormPlacement};
use crate::model::weights::Block;
use crate::model::{AdapterSet, Target};

impl<B: Backend> BlockCtx<'_, B> {
    /// Backward of block `w`: from the output gradient `dy` to the input gradient; LoRA
    /// gradients accumulate into `grads` by each run's slot.
    ///
    /// With `need_dx == false` (the lowest block of a pass whose inputs are tokens: nothing
    /// below needs the gradient) the products that only feed the input gradient (`dx = dq·W_q
    /// + dk·W_k + dv·W_v`, a quarter of the block's backward products) and the ops after them
    /// are skipped, and `None` is returned; autograd frameworks skip them the same way.
    pub fn backward(
        &self,
        w: &Block<B>,
        t: &BlockTape<B>,
        dy: B::Buf,
        act: &Active,
        grads: &mut [AdapterSet<B>],
        need_dx: bool,
    ) -> Result<Option<B::Buf>> {
        let be = self.backend;
        // MLP sub-layer, top down: the output norm (post-norm), the MLP, its residual sum.
        let dsum = self.mlp_sum_grad(w, t, dy, act.rows)?;
        // Through the post-MLP norm (Gemma 3) to the MLP's output; the residual takes dsum.
        let dmlp_out = self.post_norm_grad(w, t, &dsum, act.rows, 1)?;
        let dmlp_in = self.mlp_backward(w, t, dmlp_out.as_ref().unwrap_or(&dsum), act, grads)?;
        if let Some(b) = dmlp_out {
            be.recycle(b);
        }
        let dh = self.attn_sum_grad(w, t, dmlp_in, dsum, act.rows)?;
        // Attention sub-layer: the output projection and attention, then q, k, v.
        let dattn_out = self.post_norm_grad(w, t, &dh, act.rows, 0)?;
        let dqkv = self.attention_backward(w, t, dattn_out.as_ref().unwrap_or(&dh), act, grads)?;
        if let Some(b) = dattn_out {
            be.recycle(b);
        }
        let dattn_in = self.qkv_backward(w, t, dqkv, act, grads, need_dx)?;
        if !need_dx {
            be.recycle(dattn_in);
            be.recycle(dh);
            return Ok(None);
        }
        self.input_grad(w, t, dattn_in, dh, act.rows).map(Some)
    }

    /// The gradient of a sub-layer's output through its post-norm (`which`: 0 attention, 1
    /// MLP) from the gradient at its residual sum; `None` without post-norms.
    fn post_norm_grad(
        &self,
        w: &Block<B>,
        t: &BlockTape<B>,
        dsum: &B::Buf,
        n: usize,
        which: usize,
    ) -> Result<Option<B::Buf>> {
        let (Some(norms), Some(tapes)) = (&w.post_norms, &t.post_norms) else {
            return Ok(None);
        };
        let (norm, tape) = if which == 0 {
            (&norms.0, &tapes.0)
        } else {
            (&norms.1, &tapes.1)
        };
        norm_backward(self.backend, self.cfg, dsum, norm, tape, n).map(Some)
    }

    /// The gradient at the MLP residual sum: `dy` itself pre-norm, else through norm2.
    fn mlp_sum_grad(&self, w: &Block<B>, t: &BlockTape<B>, dy: B::Buf, n: usize) -> Result<B::Buf> {
        if self.cfg.placement == NormPlacement::Pre {
            return Ok(dy);
        }
        let be = self.backend;
        let dsum = norm_backward(be, self.cfg, &dy, &w.norm2, &t.norm2, n)?;
        be.recycle(dy);
        Ok(dsum)
    }

    /// Backward of the MLP (down, activation or SwiGLU, gate and up projections) from the
    /// gradient at its residual sum to the gradient of its input; LoRA gradients into `grads`.
    fn mlp_backward(
        &self,
        w: &Block<B>,
        t: &BlockTape<B>,
        dsum: &B::Buf,
        act: &Active,
        grads: &mut [AdapterSet<B>],
    ) -> Result<B::Buf> {
        let be = self.backend;
        let (n, d, ff) = (act.rows, self.cfg.hidden, self.cfg.intermediate);
        // Buffers below are scratch: the first product or op into each overwrites it.
        let mut da = be.scratch(n * ff)?;
        self.linear_backward(
            (false, true),
            &mut da,
            dsum,
            &t.act,
            t.u[6].as_ref(),
            &w.down,
            act,
            Target::Down,
            grads,
        )?;
        let mut dmlp_in = be.scratch(n * d)?;
        let mut dup = be.scratch(n * ff)?;
        let gated = match (&t.gate, &w.gate) {
            (Some(g), Some(gw)) => {
                let mut dg = be.scratch(n * ff)?;
                if self.cfg.mlp == MlpKind::GeGlu {
                    be.gated_backward(
                        &mut dg,
                        &mut dup,
                        &da,
                        g,
                        &t.up,
                        Activation::GeluTanh,
                        n * ff,
                    )?;
                } else {
                    be.swiglu_backward(&mut dg, &mut dup, &da, g, &t.up, n * ff)?;
                }
                self.linear_backward(
                    (false, true),
                    &mut dmlp_in,
                    &dg,
                    &t.mlp_in,
                    t.u[4].as_ref(),
                    gw,
                    act,
                    Target::Gate,
                    grads,
                )?;
                be.recycle(dg);
                true
            }
            _ => {
                let MlpKind::Plain(f) = self.cfg.mlp else {
                    return Err(Error::Backend("SwiGLU tape without gate".into()));
                };
                be.activation_backward(&mut dup, &da, &t.up, f, n * ff)?;
                false
            }
        };
        be.recycle(da);
        // The up projection's input gradient adds to the gate's where there is one.
        self.linear_backward(
            (gated, true),
            &mut dmlp_in,
            &dup,
            &t.mlp_in,
            t.u[5].as_ref(),
            &w.up,
            act,
            Target::Up,
            grads,
        )?;
        be.recycle(dup);
        Ok(dmlp_in)
    }

    /// The gradient at the attention residual sum from the MLP input's gradient and the
    /// residual's (`dsum`, consumed): through norm2 pre-norm, through norm1 post-norm.
    fn attn_sum_grad(
        &self,
        w: &Block<B>,
        t: &BlockTape<B>,
        dmlp_in: B::Buf,
        dsum: B::Buf,
        n: usize,
    ) -> Result<B::Buf> {
        let be = self.backend;
        let d = self.cfg.hidden;
        let dh = if self.cfg.placement == NormPlacement::Pre {
            let mut dh = norm_backward(be, self.cfg, &dmlp_in, &w.norm2, &t.norm2, n)?;
            be.add_assign(&mut dh, &dsum, n * d)?;
            be.recycle(dmlp_in);
            dh
        } else {
            let mut dhn = dmlp_in;
            be.add_assign(&mut dhn, &dsum, n * d)?;
            let dh = norm_backward(be, self.cfg, &dhn, &w.norm1, &t.norm1, n)?;
            be.recycle(dhn);
            dh
        };
        be.recycle(dsum);
        Ok(dh)
    }

    /// Backward of the output projection and attention (with RoPE undone) from the gradient
    /// at the attention residual sum; returns the gradients of q, k and v.
    fn attention_backward(
        &self,
        w: &Block<B>,
        t: &BlockTape<B>,
        dh: &B::Buf,
        act: &Active,
        grads: &mut [AdapterSet<B>],
    ) -> Result<[B::Buf; 3]> {
        let be = self.backend;
        let n = act.rows;
        let mut dattn = be.scratch(n * self.cfg.q_dim())?;
        self.linear_backward(
            (false, true),
            &mut dattn,
            dh,
            &t.attn,
            t.u[3].as_ref(),
            &w.o,
            act,
            Target::O,
            grads,
        )?;
        let kvd = self.cfg.kv_dim();
        let mut dq = be.scratch(n * self.cfg.q_dim())?;
        let mut dk = be.scratch(n * kvd)?;
        let mut dv = be.scratch(n * kvd)?;
        be.attention_backward(
            &mut dq,
            &mut dk,
            &mut dv,
            &dattn,
            &t.q,
            &t.k,
            &t.v,
            &t.attn,
            &t.lse,
            &act.spans,
            self.attn_shape(w),
        )?;
        if let Some(theta) = self.cfg.layer_rope_theta(self.layer) {
            be.rope(
                &mut dq,
                &act.positions,
                self.cfg.heads,
                self.cfg.head_dim,
                theta,
                true,
            )?;
            be.rope(
                &mut dk,
                &act.positions,
                self.cfg.kv_heads,
                self.cfg.head_dim,
                theta,
                true,
            )?;
        }
        be.recycle(dattn);
        if let (Some((qn, kn)), Some((qt, kt))) = (&w.qk_norm, &t.qk_norm) {
            let c = self.cfg;
            let dq_in = norm_backward_width(be, &dq, qn, qt, n * c.heads, c.head_dim)?;
            let dk_in = norm_backward_width(be, &dk, kn, kt, n * c.kv_heads, c.head_dim)?;
            be.recycle(dq);
            be.recycle(dk);
            return Ok([dq_in, dk_in, dv]);
        }
        Ok([dq, dk, dv])
    }

    /// Backward of the q, k and v projections (consuming their gradients): LoRA gradients into
    /// `grads`, and the gradient of their shared input, whose dense products run only with
    /// `need_dx`.
    fn qkv_backward(
        &self,
        w: &Block<B>,
        t: &BlockTape<B>,
        [dq, dk, dv]: [B::Buf; 3],
        act: &Active,
        grads: &mut [AdapterSet<B>],
        need_dx: bool,
    ) -> Result<B::Buf> {
        let be = self.backend;
        // Without need_dx, only the q/v LoRA gradients are wanted here: their input-gradient
        // terms still land in this scratch buffer, which is then dropped unread.
        let mut dattn_in = be.scratch(act.rows * self.cfg.hidden)?;
        let projections = [
            (&dq, &w.q, 0, Target::Q),
            (&dk, &w.k, 1, Target::K),
            (&dv, &w.v, 2, Target::V),
        ];
        for (n, (dy, lin, u, target)) in projections.into_iter().enumerate() {
            self.linear_backward(
                (n > 0, need_dx),
                &mut dattn_in,
                dy,
                &t.attn_in,
                t.u[u].as_ref(),
                lin,
                act,
                target,
                grads,
            )?;
        }
        be.recycle(dq);
        be.recycle(dk);
        be.recycle(dv);
        Ok(dattn_in)
    }

    /// The block input's gradient from the attention input's and the residual's (`dh`,
    /// consumed): through norm1 pre-norm; post-norm, norm1 was already crossed.
    fn input_grad(
        &self,
        w: &Block<B>,
        t: &BlockTape<B>,
        mut dattn_in: B::Buf,
        dh: B::Buf,
        n: usize,
    ) -> Result<B::Buf> {
        let be = self.backend;
        let d = self.cfg.hidden;
        let dx = if self.cfg.placement == NormPlacement::Pre {
            let mut dx = norm_backward(be, self.cfg, &dattn_in, &w.norm1, &t.norm1, n)?;
            be.add_assign(&mut dx, &dh, n * d)?;
            be.recycle(dattn_in);
            dx
        } else {
            be.add_assign(&mut dattn_in, &dh, n * d)?;
            dattn_in
        };
        be.recycle(dh);
        Ok(dx)
    }
}
