//! The end of the model: the final norm, classification heads (per adapter set) and the shared
//! frozen LM head, with the fused cross-entropy losses and their backward.

use super::block::{norm_backward, norm_forward, NormTape};
use super::{Executor, Layout, Output, SeqJob, SeqResult};
use crate::backend::{Backend, Span};
use crate::error::{Error, Result};
use crate::model::{AdapterSet, Pooling};

/// Classification sequences sharing an adapter set and gradient slot.
struct ClassGroup<B: Backend> {
    adapter: usize,
    slot: usize,
    pooling: Pooling,
    /// Spans of the group's sequences in the final-rows matrix.
    spans: Vec<Span>,
    pooled: B::Buf,
    dlogits: B::Buf,
    classes: usize,
}

struct LmPart<B: Backend> {
    /// Rows of the final-rows matrix that carry an LM output.
    rows: Vec<u32>,
    dlogits: B::Buf,
}

/// What the heads keep for backward.
pub(crate) struct HeadTape<B: Backend> {
    /// Global rows of the sequences that end at the last block, in packed order.
    final_rows: Vec<u32>,
    /// For each original sequence ending at the last block, its span in the final-rows matrix.
    final_span: Vec<Option<Span>>,
    norm: Option<NormTape<B>>,
    classes: Vec<ClassGroup<B>>,
    lm: Option<LmPart<B>>,
}

impl<B: Backend> HeadTape<B> {
    /// Hands every buffer back to the backend's pool.
    pub(crate) fn recycle(self, be: &B) {
        if let Some(n) = self.norm {
            n.recycle(be);
        }
        for g in self.classes {
            be.recycle(g.pooled);
            be.recycle(g.dlogits);
        }
        if let Some(lm) = self.lm {
            be.recycle(lm.dlogits);
        }
    }
}

/// Forward of the model's end for the sequences of a pass: the final norm over the rows of
/// every sequence that ends at the last block, then each sequence's output (hidden states, a
/// classification head, or the LM head) with its loss where labels are given. Keeps what the
/// backward needs.
pub(crate) fn forward<B: Backend>(
    ex: &Executor<'_, B>,
    adapters: &[&AdapterSet<B>],
    seqs: &[SeqJob],
    lay: &Layout,
    h: &B::Buf,
) -> Result<(Vec<SeqResult>, HeadTape<B>)> {
    let (final_rows, final_span) = final_rows(ex.model.layers(), seqs, lay);
    let (f, norm) = final_norm(ex, h, &final_rows)?;
    let mut results = vec![SeqResult::default(); seqs.len()];
    hidden_outputs(ex, seqs, lay, h, &f, &final_span, &mut results)?;
    let groups = class_groups(ex.backend, adapters, seqs, lay, &final_span)?;
    let mut classes = Vec::with_capacity(groups.len());
    for (mut g, idx) in groups {
        class_head_forward(ex, adapters, seqs, &f, &mut g, &idx, &mut results)?;
        classes.push(g);
    }
    let lm = lm_head_forward(ex, seqs, lay, &f, &final_span, &mut results)?;
    Ok((
        results,
        HeadTape {
            final_rows,
            final_span,
            norm,
            classes,
            lm,
        },
    ))
}

/// The global rows of the sequences that end at the last block, in packed order, and each such
/// sequence's span among them (`None` for a sequence that stops earlier).
fn final_rows(last: usize, seqs: &[SeqJob], lay: &Layout) -> (Vec<u32>, Vec<Option<Span>>) {
    let mut final_rows = Vec::new();
    let mut final_span = vec![None; seqs.len()];
    for &i in &lay.order {
        if seqs[i].blocks.end == last {
            let g = lay.spans[i];
            final_span[i] = Some(Span {
                start: final_rows.len(),
                len: g.len,
            });
            final_rows.extend((g.start..g.end()).map(|r| r as u32));
        }
    }
    (final_rows, final_span)
}

/// The final-rows matrix: those rows of `h` gathered, through the model's final norm where it
/// has one (with the norm's tape).
fn final_norm<B: Backend>(
    ex: &Executor<'_, B>,
    h: &B::Buf,
    final_rows: &[u32],
) -> Result<(B::Buf, Option<NormTape<B>>)> {
    let be = ex.backend;
    let m = ex.model;
    let d = m.config.hidden;
    let nf = final_rows.len();
    let mut f = be.zeros(nf * d)?;
    if nf > 0 {
        be.gather_rows(&mut f, h, final_rows, d)?;
    }
    let norm = match (&m.final_norm, nf) {
        (Some(n), 1..) => {
            let (y, t) = norm_forward(be, &m.config, f, n, nf)?;
            f = y;
            Some(t)
        }
        _ => None,
    };
    Ok((f, norm))
}

/// Hidden outputs: from the final-rows matrix (normed) when the sequence ends at the last
/// block, else its rows of `h`.
fn hidden_outputs<B: Backend>(
    ex: &Executor<'_, B>,
    seqs: &[SeqJob],
    lay: &Layout,
    h: &B::Buf,
    f: &B::Buf,
    final_span: &[Option<Span>],
    results: &mut [SeqResult],
) -> Result<()> {
    let be = ex.backend;
    let d = ex.model.config.hidden;
    if !seqs.iter().any(|s| s.output == Output::Hidden) {
        return Ok(());
    }
    let fh = be.download(f)?;
    let hh = be.download(h)?;
    for (i, s) in seqs.iter().enumerate() {
        if s.output != Output::Hidden {
            continue;
        }
        results[i].hidden = Some(match final_span[i] {
            Some(sp) => fh[sp.start * d..sp.end() * d].to_vec(),
            None => {
                let g = lay.spans[i];
                hh[g.start * d..g.end() * d].to_vec()
            }
        });
    }
    Ok(())
}

/// The classification sequences grouped by consecutive (adapter, slot) in packed order, one
/// head GEMM per group; returns each group (buffers still empty) with its sequences.
fn class_groups<B: Backend>(
    be: &B,
    adapters: &[&AdapterSet<B>],
    seqs: &[SeqJob],
    lay: &Layout,
    final_span: &[Option<Span>],
) -> Result<Vec<(ClassGroup<B>, Vec<usize>)>> {
    let mut groups: Vec<(ClassGroup<B>, Vec<usize>)> = Vec::new();
    for &i in &lay.order {
        if let Output::Class { .. } = seqs[i].output {
            let (a, s) = (seqs[i].adapter, seqs[i].grad_slot);
            let sp = final_span[i]
                .ok_or_else(|| Error::Job("class output before the last block".into()))?;
            match groups.last_mut() {
                Some((g, members)) if g.adapter == a && g.slot == s => {
                    g.spans.push(sp);
                    members.push(i);
                }
                _ => {
                    let head = adapters[a].head.as_ref().ok_or_else(|| {
                        Error::Job(format!("adapter set {a} has no classification head"))
                    })?;
                    let g = ClassGroup {
                        adapter: a,
                        slot: s,
                        pooling: head.pooling,
                        spans: vec![sp],
                        pooled: be.zeros(0)?,
                        dlogits: be.zeros(0)?,
                        classes: head.classes,
                    };
                    groups.push((g, vec![i]));
                }
            }
        }
    }
    Ok(groups)
}

/// One classification group `g` with sequences `idx`: pooling, logits = pooled·Wᵀ + b, and the
/// cross-entropy with its logit gradient; keeps the pooled rows and the logit gradient in `g`
/// for the backward.
fn class_head_forward<B: Backend>(
    ex: &Executor<'_, B>,
    adapters: &[&AdapterSet<B>],
    seqs: &[SeqJob],
    f: &B::Buf,
    g: &mut ClassGroup<B>,
    idx: &[usize],
    results: &mut [SeqResult],
) -> Result<()> {
    let be = ex.backend;
    let d = ex.model.config.hidden;
    let head = adapters[g.adapter]
        .head
        .as_ref()
        .ok_or_else(|| Error::Job("head vanished".into()))?;
    let n = g.spans.len();
    let mut pooled = be.zeros(n * d)?;
    match g.pooling {
        Pooling::Mean => be.segment_mean(&mut pooled, f, &g.spans, d)?,
        Pooling::First | Pooling::Last => {
            be.gather_rows(&mut pooled, f, &pool_rows(g.pooling, &g.spans), d)?
        }
    }
    let c = g.classes;
    let mut logits = be.zeros(n * c)?;
    be.matmul(
        &mut logits,
        &pooled,
        &head.weight,
        n,
        c,
        d,
        false,
        true,
        false,
    )?;
    be.add_bias(&mut logits, &head.bias, n, c)?;
    let mut labels = Vec::with_capacity(n);
    let mut weights = Vec::with_capacity(n);
    for &i in idx {
        let Output::Class { label } = &seqs[i].output else {
            unreachable!("grouped as class")
        };
        labels.push(label.map_or(-1, |y| y as i64));
        weights.push(seqs[i].loss_weight);
    }
    let mut dlogits = be.zeros(n * c)?;
    let losses = be.cross_entropy(&mut dlogits, &logits, &labels, &weights, c)?;
    let host = be.download(&logits)?;
    for (j, &i) in idx.iter().enumerate() {
        results[i].logits = Some(host[j * c..(j + 1) * c].to_vec());
        results[i].loss = (labels[j] >= 0).then_some(losses[j]);
    }
    g.pooled = pooled;
    g.dlogits = dlogits;
    Ok(())
}

/// The LM head: one GEMM over the rows of every LM sequence and the token cross-entropy (each
/// sequence's loss the mean over its labelled tokens); `None` without LM sequences.
fn lm_head_forward<B: Backend>(
    ex: &Executor<'_, B>,
    seqs: &[SeqJob],
    lay: &Layout,
    f: &B::Buf,
    final_span: &[Option<Span>],
    results: &mut [SeqResult],
) -> Result<Option<LmPart<B>>> {
    let be = ex.backend;
    let m = ex.model;
    let d = m.config.hidden;
    let mut lm_rows = Vec::new();
    let mut lm_labels = Vec::new();
    let mut lm_weights = Vec::new();
    let mut lm_seqs = Vec::new();
    for &i in &lay.order {
        if let Output::Lm { labels } = &seqs[i].output {
            let sp = final_span[i]
                .ok_or_else(|| Error::Job("LM output before the last block".into()))?;
            let start = lm_rows.len();
            match labels {
                // Only the labelled positions reach the LM head: the others add nothing to the
                // loss or its gradient, and a vocabulary-wide row of logits is the largest
                // buffer of a step.
                // `validate` checked one label per token.
                Some(y) => {
                    for (t, &label) in y.iter().enumerate() {
                        if label >= 0 {
                            lm_rows.push((sp.start + t) as u32);
                            lm_labels.push(label);
                        }
                    }
                }
                None => {
                    lm_rows.extend((sp.start..sp.end()).map(|r| r as u32));
                    lm_labels.extend(std::iter::repeat_n(-1, sp.len));
                }
            }
            let rows = lm_rows.len() - start;
            let labelled = if labels.is_some() { rows } else { 0 };
            let w = if labelled > 0 {
                seqs[i].loss_weight / labelled as f32
            } else {
                0.0
            };
            lm_seqs.push((i, start, rows, labelled));
            lm_weights.extend(std::iter::repeat_n(w, rows));
        }
    }
    if lm_rows.is_empty() {
        return Ok(None);
    }
    let n = lm_rows.len();
    let v = m.config.vocab_size;
    let mut x = be.zeros(n * d)?;
    be.gather_rows(&mut x, f, &lm_rows, d)?;
    let mut logits = be.zeros(n * v)?;
    be.matmul(&mut logits, &x, m.lm_head(), n, v, d, false, true, false)?;
    let mut dlogits = be.zeros(n * v)?;
    let losses = be.cross_entropy(&mut dlogits, &logits, &lm_labels, &lm_weights, v)?;
    let host = be.download(&logits)?;
    for &(i, start, len, labelled) in &lm_seqs {
        results[i].logits = Some(host[start * v..(start + len) * v].to_vec());
        if labelled > 0 {
            let sum: f64 = (start..start + len).map(|r| losses[r] as f64).sum();
            results[i].loss = Some((sum / labelled as f64) as f32);
        }
    }
    Ok(Some(LmPart {
        rows: lm_rows,
        dlogits,
    }))
}

fn pool_rows(p: Pooling, spans: &[Span]) -> Vec<u32> {
    spans
        .iter()
        .map(|s| match p {
            Pooling::Last => (s.end() - 1) as u32,
            _ => s.start as u32,
        })
        .collect()
}

/// Backward of the heads and the final norm: writes the gradient of every sequence's output
/// (head inputs, or the caller's `out_grads`) into `dh` at the sequence's global rows, and
/// accumulates head gradients into `grads`.
pub(crate) fn backward<B: Backend>(
    ex: &Executor<'_, B>,
    adapters: &[&AdapterSet<B>],
    grads: &mut [AdapterSet<B>],
    lay: &Layout,
    t: &HeadTape<B>,
    out_grads: &[Option<Vec<f32>>],
    dh: &mut B::Buf,
) -> Result<()> {
    let be = ex.backend;
    let m = ex.model;
    let d = m.config.hidden;
    let nf = t.final_rows.len();
    let mut df = be.zeros(nf * d)?;

    for g in &t.classes {
        let n = g.spans.len();
        let c = g.classes;
        let head = adapters[g.adapter]
            .head
            .as_ref()
            .ok_or_else(|| Error::Job(format!("adapter set {} has no head", g.adapter)))?;
        let gh = grads[g.slot]
            .head
            .as_mut()
            .ok_or_else(|| Error::Job(format!("gradient slot {} has no head", g.slot)))?;
        be.matmul(
            &mut gh.weight,
            &g.dlogits,
            &g.pooled,
            c,
            d,
            n,
            true,
            false,
            true,
        )?;
        let ones = be.upload(&vec![1.0; n])?;
        be.matmul(&mut gh.bias, &ones, &g.dlogits, 1, c, n, false, false, true)?;
        let mut dpooled = be.zeros(n * d)?;
        be.matmul(
            &mut dpooled,
            &g.dlogits,
            &head.weight,
            n,
            d,
            c,
            false,
            false,
            false,
        )?;
        match g.pooling {
            Pooling::Mean => be.segment_mean_backward(&mut df, &dpooled, &g.spans, d)?,
            Pooling::First | Pooling::Last => {
                // Each sequence owns its rows, so these rows of `df` are still zero.
                be.scatter_rows(&mut df, &dpooled, &pool_rows(g.pooling, &g.spans), d)?
            }
        }
    }

    if let Some(lm) = &t.lm {
        let n = lm.rows.len();
        let v = m.config.vocab_size;
        let mut dx = be.zeros(n * d)?;
        be.matmul(
            &mut dx,
            &lm.dlogits,
            m.lm_head(),
            n,
            d,
            v,
            false,
            false,
            false,
        )?;
        be.scatter_rows(&mut df, &dx, &lm.rows, d)?;
    }

    // Caller-supplied gradients of hidden outputs.
    for (i, g) in out_grads.iter().enumerate() {
        let Some(g) = g else { continue };
        let s = lay.spans[i];
        if g.len() != s.len * d {
            return Err(Error::Job(format!(
                "output gradient of sequence {i} has {} values, expected {}",
                g.len(),
                s.len * d
            )));
        }
        if !lay.jobs[i].output_hidden {
            return Err(Error::Job(format!(
                "sequence {i} has a head output; it takes no output gradient"
            )));
        }
        let buf = be.upload(g)?;
        match t.final_span[i] {
            Some(sp) => {
                let rows: Vec<u32> = (sp.start..sp.end()).map(|r| r as u32).collect();
                be.scatter_rows(&mut df, &buf, &rows, d)?;
            }
            None => {
                let rows: Vec<u32> = (s.start..s.end()).map(|r| r as u32).collect();
                be.scatter_rows(dh, &buf, &rows, d)?;
            }
        }
    }

    if nf > 0 {
        let dx = match (&t.norm, &m.final_norm) {
            (Some(nt), Some(n)) => norm_backward(be, &m.config, &df, n, nt, nf)?,
            _ => df,
        };
        be.scatter_rows(dh, &dx, &t.final_rows, d)?;
    }
    Ok(())
}
