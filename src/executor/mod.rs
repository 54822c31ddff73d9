//! The multi-tenant segment executor.
//!
//! Everything the engine trains is "run blocks a..b of the shared frozen model for a set of
//! sequences, each with its own adapter set". A client-side segment, a server-side segment and a
//! whole-model FedAvg client are all one [`SeqJob`]; a step of many clients is one call.
//!
//! The executor packs the sequences of a job into one row-major activation matrix (no padding)
//! and sweeps block by block. At block `l` the active sequences are those whose range covers
//! `l`; their rows go through one base GEMM per projection, then one small LoRA GEMM pair per
//! adapter run, then attention per sequence. The backward sweep runs in reverse; a sequence whose
//! range starts at `l` leaves its input gradient there (what a split-learning server sends back
//! to a client). Base weights are frozen: only adapters and heads get gradients.
//!
//! # Example
//!
//! ```no_run
//! use flexp::backend::cpu::Cpu;
//! use flexp::executor::{Executor, Output, SeqInput, SeqJob};
//! use flexp::model::{load_model, AdapterSet, LoraConfig, Pooling};
//! use flexp::rng::Rng;
//!
//! # fn main() -> flexp::Result<()> {
//! let be = Cpu;
//! let model = load_model(&be, "models/all-MiniLM-L6-v2".as_ref())?;
//! let cfg = &model.config;
//! let mut rng = Rng::new(0);
//! // A client adapting blocks 0..2 and the server adapting 2..6 with a 2-class head.
//! let client = AdapterSet::init_lora(&be, cfg, LoraConfig::default_for(cfg), 0..2, &mut rng)?;
//! let server = AdapterSet::init_lora(&be, cfg, LoraConfig::default_for(cfg), 2..6, &mut rng)?
//!     .with_head(&be, cfg.hidden, 2, Pooling::Mean, &mut rng)?;
//! let exec = Executor::new(&be, &model);
//!
//! // Client segment: tokens through blocks 0..2.
//! let job = SeqJob::new(SeqInput::tokens(vec![101, 2023, 2003, 102]), 0..2, 0, Output::Hidden);
//! let (out, tape) = exec.forward(&[&client], &[job], true)?;
//! let smashed = out[0].hidden.clone().unwrap();
//!
//! // Server segment: the smashed activations through blocks 2..6 and the head.
//! let job = SeqJob::new(SeqInput::Hidden(smashed), 2..6, 0, Output::Class { label: Some(1) });
//! let (out, server_tape) = exec.forward(&[&server], &[job], true)?;
//! println!("loss {:?}", out[0].loss);
//! let mut server_grads = vec![server.zeros_like(&be)?];
//! let dh = exec.backward(&server_tape.unwrap(), &[&server], &mut server_grads, &[None])?;
//!
//! // Back on the client: its segment's backward from the returned gradient.
//! let mut client_grads = vec![client.zeros_like(&be)?];
//! exec.backward(&tape.unwrap(), &[&client], &mut client_grads, &[dh[0].clone()])?;
//! # Ok(()) }
//! ```

mod block;
mod heads;
pub mod optim;

use crate::backend::{Backend, Span};
use crate::error::{Error, Result};
use crate::model::config::PositionKind;
use crate::model::{AdapterSet, Model};
use block::{BlockCtx, BlockTape};
use heads::HeadTape;
use std::ops::Range;

pub use optim::AdamWState;

/// The input of a sequence.
#[derive(Clone, Debug, PartialEq)]
pub enum SeqInput {
    /// Token ids (and optional token-type ids); the sequence must start at block 0.
    Tokens {
        /// Token ids.
        ids: Vec<u32>,
        /// Token-type ids (BERT); zeros when absent.
        type_ids: Option<Vec<u32>>,
    },
    /// Hidden states `[len, hidden]` entering the first block of the range (the output of the
    /// block before it, or of the embeddings when the range starts at 0).
    Hidden(Vec<f32>),
}

impl SeqInput {
    /// Token input without token types.
    pub fn tokens(ids: Vec<u32>) -> Self {
        SeqInput::Tokens {
            ids,
            type_ids: None,
        }
    }
}

/// What a sequence produces at the end of its range.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// The hidden states after the last block of the range (after the model's final norm when
    /// the range ends at the last block). In backward, its gradient is supplied by the caller.
    Hidden,
    /// Classification logits from the adapter set's head; with a label, the cross-entropy loss.
    /// Needs the range to end at the last block.
    Class {
        /// The class label.
        label: Option<usize>,
    },
    /// Language-model logits for every token; with labels (one per token, negative = ignored),
    /// the logits of the labelled tokens only and their mean cross-entropy. Needs the range to
    /// end at the last block.
    Lm {
        /// Per-token target ids.
        labels: Option<Vec<i64>>,
    },
}

/// One sequence of a job.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqJob {
    /// Input tokens or hidden states.
    pub input: SeqInput,
    /// Blocks `start..end` to run.
    pub blocks: Range<usize>,
    /// Index of the adapter set (in the slice passed to `forward`) that parameterises it.
    pub adapter: usize,
    /// Index of the gradient set (in the slice passed to `backward`) that receives its adapter
    /// gradients. Several slots may share one adapter set (e.g. per-client gradients of a shared
    /// server adapter); one slot must not receive gradients of two different adapter sets.
    pub grad_slot: usize,
    /// What the sequence produces.
    pub output: Output,
    /// Multiplier of this sequence's loss in the total the backward differentiates (e.g.
    /// `1/batch` for a mean over a client's batch).
    pub loss_weight: f32,
}

impl SeqJob {
    /// A job with `grad_slot = adapter` and loss weight 1.
    pub fn new(input: SeqInput, blocks: Range<usize>, adapter: usize, output: Output) -> Self {
        SeqJob {
            input,
            blocks,
            adapter,
            grad_slot: adapter,
            output,
            loss_weight: 1.0,
        }
    }
}

/// The result of one sequence's forward.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeqResult {
    /// Hidden states `[len, hidden]` for [`Output::Hidden`].
    pub hidden: Option<Vec<f32>>,
    /// Logits: `[classes]` for [`Output::Class`]; for [`Output::Lm`], `[len, vocab]` without
    /// labels, and with labels `[labelled, vocab]`, one row per labelled position in order (the
    /// others are never computed).
    pub logits: Option<Vec<f32>>,
    /// Unweighted loss when labels were given.
    pub loss: Option<f32>,
}

/// A run of consecutive active sequences sharing adapter set and gradient slot: one LoRA segment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Run {
    pub rows: Span,
    pub adapter: usize,
    pub slot: usize,
}

/// The sequences active at one block, in compact row coordinates.
pub(crate) struct Active {
    /// Number of compact rows.
    pub rows: usize,
    /// Global row of each compact row (`None` when compact = global).
    pub gather: Option<Vec<u32>>,
    /// Per active sequence, its compact span.
    pub spans: Vec<Span>,
    /// Position of each compact row within its sequence.
    pub positions: Vec<u32>,
    /// Adapter runs.
    pub runs: Vec<Run>,
}

/// Saved state of a forward pass, consumed by [`Executor::backward`].
pub struct Tape<B: Backend> {
    layout: Layout,
    blocks: Vec<Option<(Active, BlockTape<B>)>>,
    heads: HeadTape<B>,
}

/// Where every sequence lives in the packed global matrix.
struct Layout {
    /// Sequence indices in packed order (sorted by adapter, slot).
    order: Vec<usize>,
    /// Global span of each sequence, indexed by original sequence index.
    spans: Vec<Span>,
    /// Total rows.
    rows: usize,
    /// What the sweeps need to know of each job, indexed by original sequence index.
    jobs: Vec<JobInfo>,
}

struct JobInfo {
    blocks: Range<usize>,
    adapter: usize,
    slot: usize,
    hidden_input: bool,
    output_hidden: bool,
}

/// Runs jobs on one model and backend.
pub struct Executor<'a, B: Backend> {
    backend: &'a B,
    model: &'a Model<B>,
}

impl<'a, B: Backend> Executor<'a, B> {
    /// An executor for `model` on `backend`.
    pub fn new(backend: &'a B, model: &'a Model<B>) -> Self {
        Executor { backend, model }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        self.backend
    }

    /// The model.
    pub fn model(&self) -> &Model<B> {
        self.model
    }

    fn validate(&self, adapters: &[&AdapterSet<B>], seqs: &[SeqJob]) -> Result<()> {
        let cfg = &self.model.config;
        let l = self.model.layers();
        if seqs.is_empty() {
            return Err(Error::Job("a job needs at least one sequence".into()));
        }
        let mut lora = None;
        for (i, s) in seqs.iter().enumerate() {
            let bad = |m: String| Error::Job(format!("sequence {i}: {m}"));
            let len = seq_len(s, cfg.hidden).map_err(bad)?;
            if len == 0 {
                return Err(bad("is empty".into()));
            }
            if s.blocks.start >= s.blocks.end || s.blocks.end > l {
                return Err(bad(format!(
                    "block range {:?} is empty or outside the model's 0..{l}",
                    s.blocks
                )));
            }
            if len > cfg.max_positions {
                return Err(bad(format!(
                    "{len} tokens exceed the model's {} positions",
                    cfg.max_positions
                )));
            }
            let a = adapters.get(s.adapter).ok_or_else(|| {
                bad(format!(
                    "adapter {} does not exist ({} given)",
                    s.adapter,
                    adapters.len()
                ))
            })?;
            if a.blocks.len() != l {
                return Err(bad(format!(
                    "adapter set has {} blocks, model has {l}",
                    a.blocks.len()
                )));
            }
            let key = (a.lora.rank, a.lora.alpha.to_bits());
            if *lora.get_or_insert(key) != key {
                return Err(bad(
                    "all adapter sets of one job must share LoRA rank and alpha".into(),
                ));
            }
            if !s.loss_weight.is_finite() {
                return Err(bad(format!("loss weight {} is not finite", s.loss_weight)));
            }
            if let SeqInput::Tokens { ids, type_ids } = &s.input {
                if s.blocks.start != 0 {
                    return Err(bad("token input must start at block 0".into()));
                }
                if let Some(&t) = ids.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                    return Err(bad(format!(
                        "token id {t} outside the vocabulary of {}",
                        cfg.vocab_size
                    )));
                }
                if let Some(tt) = type_ids {
                    if tt.len() != ids.len() {
                        return Err(bad("type_ids and ids differ in length".into()));
                    }
                    if tt.iter().any(|&t| t as usize >= cfg.type_vocab_size.max(1)) {
                        return Err(bad(
                            "token type id outside the model's type vocabulary".into()
                        ));
                    }
                }
            }
            match &s.output {
                Output::Hidden => {}
                Output::Class { label } => {
                    if s.blocks.end != l {
                        return Err(bad(
                            "a classification output needs the range to end at the last block"
                                .into(),
                        ));
                    }
                    let head = a
                        .head
                        .as_ref()
                        .ok_or_else(|| bad("its adapter set has no classification head".into()))?;
                    if let Some(y) = label {
                        if *y >= head.classes {
                            return Err(bad(format!(
                                "label {y} outside the head's {} classes",
                                head.classes
                            )));
                        }
                    }
                }
                Output::Lm { labels } => {
                    if s.blocks.end != l {
                        return Err(bad(
                            "an LM output needs the range to end at the last block".into()
                        ));
                    }
                    if let Some(y) = labels {
                        if y.len() != len {
                            return Err(bad(format!("{} labels for {len} tokens", y.len())));
                        }
                        if y.iter().any(|&t| t >= cfg.vocab_size as i64) {
                            return Err(bad("LM label outside the vocabulary".into()));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn layout(&self, seqs: &[SeqJob]) -> Layout {
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| (seqs[i].adapter, seqs[i].grad_slot, i));
        let mut spans = vec![Span::default(); seqs.len()];
        let mut row = 0;
        for &i in &order {
            let len = seq_len(&seqs[i], self.model.config.hidden).unwrap_or(0);
            spans[i] = Span { start: row, len };
            row += len;
        }
        Layout {
            order,
            spans,
            rows: row,
            jobs: seqs
                .iter()
                .map(|s| JobInfo {
                    blocks: s.blocks.clone(),
                    adapter: s.adapter,
                    slot: s.grad_slot,
                    hidden_input: matches!(s.input, SeqInput::Hidden(_)),
                    output_hidden: s.output == Output::Hidden,
                })
                .collect(),
        }
    }

    fn active(&self, lay: &Layout, l: usize) -> Active {
        let mut rows = 0;
        let mut gather = Vec::new();
        let mut spans = Vec::new();
        let mut positions = Vec::new();
        let mut runs: Vec<Run> = Vec::new();
        for &i in &lay.order {
            let JobInfo {
                blocks,
                adapter,
                slot,
                ..
            } = &lay.jobs[i];
            if !blocks.contains(&l) {
                continue;
            }
            let g = lay.spans[i];
            let span = Span {
                start: rows,
                len: g.len,
            };
            gather.extend((g.start..g.end()).map(|r| r as u32));
            positions.extend(0..g.len as u32);
            spans.push(span);
            match runs.last_mut() {
                Some(r) if r.adapter == *adapter && r.slot == *slot => r.rows.len += g.len,
                _ => runs.push(Run {
                    rows: span,
                    adapter: *adapter,
                    slot: *slot,
                }),
            }
            rows += g.len;
        }
        let identity = rows == lay.rows && gather.iter().enumerate().all(|(i, &g)| i as u32 == g);
        Active {
            rows,
            gather: if identity { None } else { Some(gather) },
            spans,
            positions,
            runs,
        }
    }

    /// Runs the forward pass of every sequence. With `keep_tape`, also returns what
    /// [`Executor::backward`] needs; without it, nothing is kept (evaluation).
    pub fn forward(
        &self,
        adapters: &[&AdapterSet<B>],
        seqs: &[SeqJob],
        keep_tape: bool,
    ) -> Result<(Vec<SeqResult>, Option<Tape<B>>)> {
        self.validate(adapters, seqs)?;
        let be = self.backend;
        let cfg = &self.model.config;
        let d = cfg.hidden;
        let lay = self.layout(seqs);
        let mut h = be.zeros(lay.rows * d)?;
        self.embed_inputs(&mut h, &lay, seqs)?;

        let mut blocks = Vec::with_capacity(self.model.layers());
        for (l, w) in self.model.blocks.iter().enumerate() {
            let act = self.active(&lay, l);
            if act.rows == 0 {
                blocks.push(None);
                continue;
            }
            let x = match &act.gather {
                None => std::mem::replace(&mut h, be.zeros(0)?),
                Some(g) => {
                    let mut x = be.zeros(act.rows * d)?;
                    be.gather_rows(&mut x, &h, g, d)?;
                    x
                }
            };
            let ctx = BlockCtx {
                backend: be,
                cfg,
                layer: l,
                adapters,
            };
            let (y, tape) = ctx.forward(w, x, &act)?;
            match &act.gather {
                None => h = y,
                Some(g) => be.scatter_rows(&mut h, &y, g, d)?,
            }
            blocks.push(if keep_tape { Some((act, tape)) } else { None });
        }

        let (results, heads) = heads::forward(self, adapters, seqs, &lay, &h)?;
        let tape = keep_tape.then(|| Tape {
            layout: lay,
            blocks,
            heads,
        });
        Ok((results, tape))
    }

    /// Hands the buffers of a tape no backward will read again back to the backend
    /// ([`Backend::recycle`]), so that the next forward's outputs reuse them instead of
    /// allocating (and zero-filling) as much memory again. Dropping the tape is also correct,
    /// only slower.
    pub fn recycle(&self, tape: Tape<B>) {
        for (_, bt) in tape.blocks.into_iter().flatten() {
            bt.recycle(self.backend);
        }
        tape.heads.recycle(self.backend);
    }

    /// Puts every sequence's input into the packed matrix `h`: embeddings for token inputs,
    /// copies for hidden inputs.
    fn embed_inputs(&self, h: &mut B::Buf, lay: &Layout, seqs: &[SeqJob]) -> Result<()> {
        let be = self.backend;
        let m = self.model;
        let d = m.config.hidden;
        let mut rows = Vec::new();
        let mut ids = Vec::new();
        let mut types = Vec::new();
        let mut positions = Vec::new();
        for &i in &lay.order {
            let span = lay.spans[i];
            match &seqs[i].input {
                SeqInput::Tokens { ids: t, type_ids } => {
                    rows.extend((span.start..span.end()).map(|r| r as u32));
                    ids.extend_from_slice(t);
                    match type_ids {
                        Some(tt) => types.extend_from_slice(tt),
                        None => types.extend(std::iter::repeat_n(0, t.len())),
                    }
                    positions.extend(0..t.len() as u32);
                }
                SeqInput::Hidden(x) => {
                    let src = be.upload(x)?;
                    let idx: Vec<u32> = (span.start..span.end()).map(|r| r as u32).collect();
                    be.scatter_rows(h, &src, &idx, d)?;
                }
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        let n = ids.len();
        let mut e = be.zeros(n * d)?;
        be.embedding(&mut e, &m.word_emb, &ids, d, false)?;
        if let Some(s) = m.config.embed_scale {
            be.scale(&mut e, s, n * d)?;
        }
        if let (Some(pos), PositionKind::Learned) = (&m.pos_emb, m.config.positions) {
            be.embedding(&mut e, pos, &positions, d, true)?;
        }
        if let Some(tt) = &m.type_emb {
            be.embedding(&mut e, tt, &types, d, true)?;
        }
        if let Some(norm) = &m.emb_norm {
            let mut y = be.zeros(n * d)?;
            let mut mean = be.zeros(n)?;
            let mut rstd = be.zeros(n)?;
            let beta = norm
                .beta
                .as_ref()
                .ok_or_else(|| Error::Backend("embedding LayerNorm without bias".into()))?;
            be.layer_norm_forward(
                &mut y,
                &mut mean,
                &mut rstd,
                &e,
                &norm.gamma,
                beta,
                n,
                d,
                m.config.norm_eps,
            )?;
            e = y;
        }
        be.scatter_rows(h, &e, &rows, d)
    }

    /// Backward pass of a forward made with `keep_tape`. The tape is only read, so one forward
    /// can be differentiated for several output gradients (e.g. a loss and an alignment term
    /// kept apart). `out_grads[i]` is the gradient of the
    /// loss with respect to sequence i's [`Output::Hidden`] output (`None` = zero). Adapter and
    /// head gradients accumulate into `grads[job.grad_slot]` (build them with
    /// [`AdapterSet::zeros_like`]). Returns, for each sequence with a hidden-state input, the
    /// gradient with respect to that input.
    pub fn backward(
        &self,
        tape: &Tape<B>,
        adapters: &[&AdapterSet<B>],
        grads: &mut [AdapterSet<B>],
        out_grads: &[Option<Vec<f32>>],
    ) -> Result<Vec<Option<Vec<f32>>>> {
        let be = self.backend;
        let cfg = &self.model.config;
        let d = cfg.hidden;
        let lay = &tape.layout;
        let n_seq = lay.spans.len();
        if out_grads.len() != n_seq {
            return Err(Error::Job(format!(
                "{} output gradients for {n_seq} sequences",
                out_grads.len()
            )));
        }
        for (i, JobInfo { adapter, slot, .. }) in lay.jobs.iter().enumerate() {
            let g = grads.get(*slot).ok_or_else(|| {
                Error::Job(format!(
                    "sequence {i}: gradient slot {slot} does not exist ({} given)",
                    grads.len()
                ))
            })?;
            if adapters.get(*adapter).is_none() {
                return Err(Error::Job(format!(
                    "sequence {i}: adapter {adapter} does not exist"
                )));
            }
            if g.blocks.len() != self.model.layers() {
                return Err(Error::Job(format!(
                    "gradient slot {slot} has the wrong number of blocks"
                )));
            }
        }
        let mut dh = be.zeros(lay.rows * d)?;
        heads::backward(self, adapters, grads, lay, &tape.heads, out_grads, &mut dh)?;

        // The input gradient of the lowest block is needed only by sequences that came in as
        // hidden states (a split's server side): for token inputs it would be dropped.
        let any_hidden = lay.jobs.iter().any(|j| j.hidden_input);
        let lowest = tape.blocks.iter().position(Option::is_some);
        for (l, entry) in tape.blocks.iter().enumerate().rev() {
            let Some((act, bt)) = entry else { continue };
            let dy = match &act.gather {
                None => std::mem::replace(&mut dh, be.zeros(0)?),
                Some(g) => {
                    let mut x = be.zeros(act.rows * d)?;
                    be.gather_rows(&mut x, &dh, g, d)?;
                    x
                }
            };
            let ctx = BlockCtx {
                backend: be,
                cfg,
                layer: l,
                adapters,
            };
            let need_dx = any_hidden || lowest != Some(l);
            let Some(dx) = ctx.backward(&self.model.blocks[l], bt, dy, act, grads, need_dx)? else {
                break; // the lowest block: nothing below needs its input gradient
            };
            match &act.gather {
                None => dh = dx,
                Some(g) => be.scatter_rows(&mut dh, &dx, g, d)?,
            }
        }

        if !any_hidden {
            return Ok(vec![None; n_seq]);
        }
        let host = be.download(&dh)?;
        Ok((0..n_seq)
            .map(|i| {
                let s = lay.spans[i];
                lay.jobs[i]
                    .hidden_input
                    .then(|| host[s.start * d..s.end() * d].to_vec())
            })
            .collect())
    }
}

/// The number of tokens of a sequence.
fn seq_len(s: &SeqJob, hidden: usize) -> std::result::Result<usize, String> {
    match &s.input {
        SeqInput::Tokens { ids, .. } => Ok(ids.len()),
        SeqInput::Hidden(x) => {
            if x.len() % hidden != 0 {
                Err(format!(
                    "hidden input of {} values is not a multiple of hidden size {hidden}",
                    x.len()
                ))
            } else if let Some(v) = x.iter().find(|v| !v.is_finite()) {
                Err(format!("hidden input contains a non-finite value ({v})"))
            } else {
                Ok(x.len() / hidden)
            }
        }
    }
}
