//! One transformer block, forward and backward (the backward in `block/backward.rs`), over the
//! compact rows of the sequences active at that block. Base projections are one GEMM over all
//! rows; LoRA deltas are grouped per adapter run; attention runs per sequence.

mod backward;

use super::{Active, Run};
use crate::backend::{Activation, AttnShape, Backend, LoraGradSeg, LoraSeg, WeightPrecision};
use crate::error::{Error, Result};
use crate::model::config::{MlpKind, ModelConfig, NormKind, NormPlacement};
use crate::model::weights::{Block, Linear, Norm};
use crate::model::{AdapterSet, Target};

/// Saved state of a norm for its backward.
pub(crate) struct NormTape<B: Backend> {
    x: B::Buf,
    mean: Option<B::Buf>,
    rstd: B::Buf,
}

impl<B: Backend> NormTape<B> {
    /// Hands every buffer back to the backend's pool.
    pub(crate) fn recycle(self, be: &B) {
        be.recycle(self.x);
        be.recycle(self.rstd);
        if let Some(m) = self.mean {
            be.recycle(m);
        }
    }
}

/// What one block's forward keeps for its backward.
pub(crate) struct BlockTape<B: Backend> {
    /// Input of the attention projections (block input for post-norm, norm1 output for pre-norm).
    attn_in: B::Buf,
    norm1: NormTape<B>,
    /// The query and key head norms' tapes (Qwen3).
    qk_norm: Option<(NormTape<B>, NormTape<B>)>,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    attn: B::Buf,
    lse: B::Buf,
    /// Input of the MLP projections.
    mlp_in: B::Buf,
    /// The post-attention and post-MLP norms' tapes (Gemma 3).
    post_norms: Option<(NormTape<B>, NormTape<B>)>,
    norm2: NormTape<B>,
    gate: Option<B::Buf>,
    up: B::Buf,
    act: B::Buf,
    /// LoRA intermediates per target (`None` where no active run is adapted).
    u: [Option<B::Buf>; 7],
}

impl<B: Backend> BlockTape<B> {
    /// Hands every buffer back to the backend's pool.
    pub(crate) fn recycle(self, be: &B) {
        let bufs = [
            self.attn_in,
            self.q,
            self.k,
            self.v,
            self.attn,
            self.lse,
            self.mlp_in,
            self.up,
            self.act,
        ];
        for b in bufs
            .into_iter()
            .chain(self.gate)
            .chain(self.u.into_iter().flatten())
        {
            be.recycle(b);
        }
        self.norm1.recycle(be);
        self.norm2.recycle(be);
        for (a, b) in self.qk_norm.into_iter().chain(self.post_norms) {
            a.recycle(be);
            b.recycle(be);
        }
    }
}

/// Normalises `x` with `n` (the model's norm kind); keeps `x` and the statistics for backward.
pub(crate) fn norm_forward<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    x: B::Buf,
    n: &Norm<B>,
    rows: usize,
) -> Result<(B::Buf, NormTape<B>)> {
    norm_forward_width(be, cfg, x, n, rows, cfg.hidden)
}

/// [`norm_forward`] over rows of `d` values (a head's width for the query and key norms).
fn norm_forward_width<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    x: B::Buf,
    n: &Norm<B>,
    rows: usize,
    d: usize,
) -> Result<(B::Buf, NormTape<B>)> {
    let mut y = be.scratch(rows * d)?;
    let mut rstd = be.zeros(rows)?;
    let mean = match (cfg.norm, &n.beta) {
        (NormKind::LayerNorm, Some(beta)) => {
            let mut mean = be.zeros(rows)?;
            be.layer_norm_forward(
                &mut y,
                &mut mean,
                &mut rstd,
                &x,
                &n.gamma,
                beta,
                rows,
                d,
                cfg.norm_eps,
            )?;
            Some(mean)
        }
        _ => {
            be.rms_norm_forward(&mut y, &mut rstd, &x, &n.gamma, rows, d, cfg.norm_eps)?;
            None
        }
    };
    Ok((y, NormTape { x, mean, rstd }))
}

/// Input gradient of [`norm_forward`].
pub(crate) fn norm_backward<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    dy: &B::Buf,
    n: &Norm<B>,
    t: &NormTape<B>,
    rows: usize,
) -> Result<B::Buf> {
    norm_backward_width(be, dy, n, t, rows, cfg.hidden)
}

/// Input gradient of [`norm_forward_width`].
fn norm_backward_width<B: Backend>(
    be: &B,
    dy: &B::Buf,
    n: &Norm<B>,
    t: &NormTape<B>,
    rows: usize,
    d: usize,
) -> Result<B::Buf> {
    let mut dx = be.scratch(rows * d)?;
    match &t.mean {
        Some(mean) => {
            be.layer_norm_backward(&mut dx, dy, &t.x, &n.gamma, mean, &t.rstd, rows, d)?
        }
        None => be.rms_norm_backward(&mut dx, dy, &t.x, &n.gamma, &t.rstd, rows, d)?,
    }
    Ok(dx)
}

pub(crate) struct BlockCtx<'a, B: Backend> {
    pub backend: &'a B,
    pub cfg: &'a ModelConfig,
    pub layer: usize,
    pub adapters: &'a [&'a AdapterSet<B>],
}

impl<B: Backend> BlockCtx<'_, B> {
    /// The attention shape of this block; its operands are bf16 when the block's frozen weights
    /// are (precision = "bf16"), so attention runs on the same tensor-core path as the products.
    fn attn_shape(&self, w: &Block<B>) -> AttnShape {
        AttnShape {
            heads: self.cfg.heads,
            kv_heads: self.cfg.kv_heads,
            head_dim: self.cfg.head_dim,
            causal: self.cfg.causal,
            window: self.cfg.layer_window(self.layer),
            scale: self.cfg.attn_scale(),
            bf16: self.backend.weight_precision(&w.q.w) == WeightPrecision::Bf16,
        }
    }

    /// The adapter runs of `act` that carry a LoRA pair for target `t` at this block.
    fn lora_segs<'s>(&'s self, act: &Active, t: Target) -> Vec<(Run, LoraSeg<'s, B>)> {
        act.runs
            .iter()
            .filter_map(|r| {
                let p = self.adapters[r.adapter].pair(self.layer, t)?;
                Some((
                    *r,
                    LoraSeg {
                        rows: r.rows,
                        a: &p.a,
                        b: &p.b,
                    },
                ))
            })
            .collect()
    }

    /// `y = x·Wᵀ + b + LoRA deltas`; returns `y` and the LoRA intermediate.
    fn linear(
        &self,
        x: &B::Buf,
        lin: &Linear<B>,
        act: &Active,
        t: Target,
    ) -> Result<(B::Buf, Option<B::Buf>)> {
        let be = self.backend;
        let n = act.rows;
        // Overwritten by the (non-accumulating) product.
        let mut y = be.scratch(n * lin.d_out)?;
        match &lin.b {
            Some(b) => be.linear_bias(&mut y, x, &lin.w, b, n)?,
            None => be.linear(&mut y, x, &lin.w, n, false)?,
        }
        let segs: Vec<LoraSeg<'_, B>> =
            self.lora_segs(act, t).into_iter().map(|(_, s)| s).collect();
        if segs.is_empty() {
            return Ok((y, None));
        }
        let shape = self.adapters[act.runs[0].adapter].shape(self.cfg, t);
        let mut u = be.zeros(n * shape.rank)?;
        be.lora_forward(&mut y, x, &mut u, &segs, shape)?;
        Ok((y, Some(u)))
    }

    /// `dx (+)= dy·W`, `dx += LoRA input gradient`, and LoRA parameter gradients into `grads`;
    /// `dx` is overwritten by the dense product unless `accumulate`. With `dense == false` the
    /// dense product is skipped (the caller discards `dx`) and only the LoRA work runs.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        (accumulate, dense): (bool, bool),
        dx: &mut B::Buf,
        dy: &B::Buf,
        x: &B::Buf,
        u: Option<&B::Buf>,
        lin: &Linear<B>,
        act: &Active,
        t: Target,
        grads: &mut [AdapterSet<B>],
    ) -> Result<()> {
        let be = self.backend;
        if dense {
            be.linear_backward_input(dx, dy, &lin.w, act.rows, accumulate)?;
        }
        let Some(u) = u else { return Ok(()) };
        let segs = self.lora_segs(act, t);
        let shape = self.adapters[act.runs[0].adapter].shape(self.cfg, t);
        let mut slots: Vec<_> = grads
            .iter_mut()
            .map(|g| g.pair_mut(self.layer, t))
            .collect();
        let mut gsegs = Vec::with_capacity(segs.len());
        for (run, seg) in segs {
            let g = slots
                .get_mut(run.slot)
                .and_then(Option::take)
                .ok_or_else(|| {
                    Error::Job(format!(
                        "gradient slot {} has no `{}` adapter at block {} (or is shared by two adapter sets)",
                        run.slot,
                        t.name(),
                        self.layer
                    ))
                })?;
            gsegs.push(LoraGradSeg {
                rows: seg.rows,
                a: seg.a,
                b: seg.b,
                da: &mut g.a,
                db: &mut g.b,
            });
        }
        be.lora_backward(dx, dy, x, u, &mut gsegs, shape)
    }

    /// Forward of block `w` on the compact rows `x`; returns the output and the tape.
    pub fn forward(&self, w: &Block<B>, x: B::Buf, act: &Active) -> Result<(B::Buf, BlockTape<B>)> {
        let be = self.backend;
        let (n, d) = (act.rows, self.cfg.hidden);
        let pre = self.cfg.placement == NormPlacement::Pre;
        let mut u: [Option<B::Buf>; 7] = Default::default();

        // Attention sub-layer. Residual inputs are read from buffers the tape keeps anyway (a
        // norm's input, or a projection's input) rather than copied.
        let (attn_in, norm1_pre) = if pre {
            let (h, t) = norm_forward(be, self.cfg, x, &w.norm1, n)?;
            (h, Some(t))
        } else {
            (x, None)
        };
        let (mut q, uq) = self.linear(&attn_in, &w.q, act, Target::Q)?;
        let (mut k, uk) = self.linear(&attn_in, &w.k, act, Target::K)?;
        let (v, uv) = self.linear(&attn_in, &w.v, act, Target::V)?;
        (u[0], u[1], u[2]) = (uq, uk, uv);
        let qk_norm = match &w.qk_norm {
            Some((qn, kn)) => {
                let c = self.cfg;
                let (qy, qt) = norm_forward_width(be, c, q, qn, n * c.heads, c.head_dim)?;
                let (ky, kt) = norm_forward_width(be, c, k, kn, n * c.kv_heads, c.head_dim)?;
                (q, k) = (qy, ky);
                Some((qt, kt))
            }
            None => None,
        };
        if let Some(theta) = self.cfg.layer_rope_theta(self.layer) {
            be.rope(
                &mut q,
                &act.positions,
                self.cfg.heads,
                self.cfg.head_dim,
                theta,
                false,
            )?;
            be.rope(
                &mut k,
                &act.positions,
                self.cfg.kv_heads,
                self.cfg.head_dim,
                theta,
                false,
            )?;
        }
        let mut attn = be.scratch(n * self.cfg.q_dim())?;
        let mut lse = be.scratch(n * self.cfg.heads)?;
        be.attention_forward(
            &mut attn,
            &mut lse,
            &q,
            &k,
            &v,
            &act.spans,
            self.attn_shape(w),
        )?;
        let (h, uo) = self.linear(&attn, &w.o, act, Target::O)?;
        u[3] = uo;
        let (mut h, post_attn) = match &w.post_norms {
            Some((pa, _)) => {
                let (hn, t) = norm_forward(be, self.cfg, h, pa, n)?;
                (hn, Some(t))
            }
            None => (h, None),
        };
        let x_res = match &norm1_pre {
            Some(t) => &t.x,
            None => &attn_in,
        };
        be.add_assign(&mut h, x_res, n * d)?;
        let (mlp_in, norm1, norm2_pre) = if pre {
            let (m, t) = norm_forward(be, self.cfg, h, &w.norm2, n)?;
            (
                m,
                norm1_pre.ok_or_else(|| Error::Backend("pre-norm tape".into()))?,
                Some(t),
            )
        } else {
            let (hn, t1) = norm_forward(be, self.cfg, h, &w.norm1, n)?;
            (hn, t1, None)
        };

        // MLP sub-layer.
        let ff = self.cfg.intermediate;
        let (up, uu) = self.linear(&mlp_in, &w.up, act, Target::Up)?;
        u[5] = uu;
        let mut a = be.scratch(n * ff)?;
        let gate = match (self.cfg.mlp, &w.gate) {
            (MlpKind::SwiGlu, Some(gw)) => {
                let (g, ug) = self.linear(&mlp_in, gw, act, Target::Gate)?;
                u[4] = ug;
                be.swiglu_forward(&mut a, &g, &up, n * ff)?;
                Some(g)
            }
            (MlpKind::GeGlu, Some(gw)) => {
                let (g, ug) = self.linear(&mlp_in, gw, act, Target::Gate)?;
                u[4] = ug;
                be.gated_forward(&mut a, &g, &up, Activation::GeluTanh, n * ff)?;
                Some(g)
            }
            (MlpKind::Plain(f), _) => {
                be.activation_forward(&mut a, &up, f, n * ff)?;
                None
            }
            (MlpKind::SwiGlu | MlpKind::GeGlu, None) => {
                return Err(Error::Backend("gated MLP block without gate".into()))
            }
        };
        let (y, ud) = self.linear(&a, &w.down, act, Target::Down)?;
        u[6] = ud;
        let (mut y, post_mlp) = match &w.post_norms {
            Some((_, pm)) => {
                let (yn, t) = norm_forward(be, self.cfg, y, pm, n)?;
                (yn, Some(t))
            }
            None => (y, None),
        };
        let post_norms = post_attn.zip(post_mlp);
        let h_res = match &norm2_pre {
            Some(t) => &t.x,
            None => &mlp_in,
        };
        be.add_assign(&mut y, h_res, n * d)?;
        let (y, norm2) = match norm2_pre {
            Some(t) => (y, t),
            None => norm_forward(be, self.cfg, y, &w.norm2, n)?,
        };
        Ok((
            y,
            BlockTape {
                attn_in,
                norm1,
                qk_norm,
                q,
                k,
                v,
                attn,
                lse,
                mlp_in,
                post_norms,
                norm2,
                gate,
                up,
                act: a,
                u,
            },
        ))
    }
}
