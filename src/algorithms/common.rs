//! What every algorithm shares: the federation (model, clients, hyper-parameters), batch
//! sampling, packed full-model training steps, evaluation of model chains, and round logs.

use super::flat;
use super::Hyper;
use crate::backend::{AdamW, Backend};
use crate::error::{Error, Result};
use crate::executor::{AdamWState, Executor, Output, SeqInput, SeqJob, SeqResult};
use crate::federated::{CostModel, TaskHead};
use crate::model::{AdapterSet, LoraConfig, Model, Pooling};
use crate::rng::Rng;
use std::ops::Range;

/// One tokenised, labelled example.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Token ids (special tokens included).
    pub ids: Vec<u32>,
    /// What the model learns to produce from them.
    pub label: Label,
}

/// What an example teaches: a class, or the next token at each position (causal LM).
#[derive(Clone, Debug, PartialEq)]
pub enum Label {
    /// A class id (classification through a trainable head).
    Class(usize),
    /// Per position, the next token's id, or a negative value where nothing is learned (the
    /// prompt); the model's frozen LM head produces the logits.
    Tokens(Vec<i64>),
}

impl Example {
    /// A classification example.
    pub fn class(ids: Vec<u32>, class: usize) -> Self {
        Example {
            ids,
            label: Label::Class(class),
        }
    }

    /// What the model's last segment outputs for this example, with its label when `labelled`
    /// (training, and evaluation of a causal LM, whose metrics need the targets).
    pub fn output(&self, labelled: bool) -> Output {
        match &self.label {
            Label::Class(c) => Output::Class {
                label: labelled.then_some(*c),
            },
            Label::Tokens(t) => Output::Lm {
                labels: labelled.then(|| t.clone()),
            },
        }
    }

    /// Positions whose next token is learned (1 for a classification example).
    pub fn targets(&self) -> usize {
        match &self.label {
            Label::Class(_) => 1,
            Label::Tokens(t) => t.iter().filter(|&&y| y >= 0).count(),
        }
    }
}

/// One client's private data.
#[derive(Clone, Debug, Default)]
pub struct ClientData {
    /// Training examples.
    pub train: Vec<Example>,
    /// Test examples.
    pub test: Vec<Example>,
}

/// Everything an algorithm needs to know about the run, read-only during training.
pub struct Federation<'a, B: Backend> {
    /// The backend.
    pub backend: &'a B,
    /// The frozen base model.
    pub model: &'a Model<B>,
    /// LoRA settings of every adapter set.
    pub lora: LoraConfig,
    /// The task's head: a trainable classification head of this many classes on every
    /// personalized and global model, or the model's frozen LM head (causal LM).
    pub head: TaskHead,
    /// Pooling of the classification heads.
    pub pooling: Pooling,
    /// Per-client data.
    pub clients: Vec<ClientData>,
    /// Per-client cut layer s_k (client runs blocks 0..s_k) for split algorithms.
    pub splits: Vec<usize>,
    /// Hyper-parameters.
    pub hyper: Hyper,
    /// Cost model of one training step (for FLOP and byte accounting).
    pub cost: CostModel,
    /// Called with the 1-based local step number as each local step starts (progress display).
    pub on_step: Option<&'a (dyn Fn(usize) + Sync)>,
}

/// A model as a chain of (block range, adapter set) segments; the last set carries the head.
pub struct Chain<'a, B: Backend> {
    /// Consecutive segments covering blocks 0..L.
    pub parts: Vec<(Range<usize>, &'a AdapterSet<B>)>,
}

/// Cost of one client in one round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientCost {
    /// Client index.
    pub client: usize,
    /// Bytes sent by the client.
    pub bytes_up: f64,
    /// Bytes received by the client.
    pub bytes_down: f64,
    /// FLOPs computed on the client.
    pub flops: f64,
    /// Mean training loss of its accepted steps.
    pub loss: f64,
    /// Accepted steps.
    pub steps: usize,
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoundLog {
    /// Per participating client.
    pub clients: Vec<ClientCost>,
    /// FLOPs computed on the server.
    pub server_flops: f64,
    /// Rejected client steps: (client, reason).
    pub rejected: Vec<(usize, String)>,
}

impl RoundLog {
    /// The entry of client `k`, created on first use.
    pub fn client(&mut self, k: usize) -> &mut ClientCost {
        if let Some(i) = self.clients.iter().position(|c| c.client == k) {
            return &mut self.clients[i];
        }
        self.clients.push(ClientCost {
            client: k,
            ..ClientCost::default()
        });
        self.clients.last_mut().expect("just pushed")
    }

    /// Records an accepted step's loss.
    pub fn loss(&mut self, k: usize, loss: f64) {
        let c = self.client(k);
        c.loss = (c.loss * c.steps as f64 + loss) / (c.steps + 1) as f64;
        c.steps += 1;
    }

    /// Mean training loss over clients with accepted steps.
    pub fn mean_loss(&self) -> f64 {
        let v: Vec<f64> = self
            .clients
            .iter()
            .filter(|c| c.steps > 0)
            .map(|c| c.loss)
            .collect();
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    }
}

/// The result of one packed training step for one item.
pub struct StepOut<B: Backend> {
    /// Gradients (same structure as the item's adapter set); `None` when the step was rejected.
    pub grads: Option<AdapterSet<B>>,
    /// Mean loss over the item's batch.
    pub loss: f64,
    /// Tokens processed.
    pub tokens: usize,
    /// Why the step was rejected.
    pub rejected: Option<String>,
}

impl<'a, B: Backend> Federation<'a, B> {
    /// Reports the start of local step `step` (1-based) to the progress observer, if any.
    pub fn step_started(&self, step: usize) {
        if let Some(f) = self.on_step {
            f(step);
        }
    }

    /// An executor over the model.
    pub fn exec(&self) -> Executor<'a, B> {
        Executor::new(self.backend, self.model)
    }

    /// Number of blocks.
    pub fn layers(&self) -> usize {
        self.model.layers()
    }

    /// Number of clients.
    pub fn num_clients(&self) -> usize {
        self.clients.len()
    }

    /// AdamW settings.
    pub fn adamw(&self) -> AdamW {
        AdamW {
            lr: self.hyper.lr,
            weight_decay: self.hyper.weight_decay,
            ..AdamW::default()
        }
    }

    /// A fresh adapter set on `blocks`, with the task's trainable head when `head` (a causal LM
    /// trains none: its LM head is the model's own, frozen).
    pub fn new_set(
        &self,
        blocks: Range<usize>,
        head: bool,
        rng: &mut Rng,
    ) -> Result<AdapterSet<B>> {
        let s = AdapterSet::init_lora(
            self.backend,
            &self.model.config,
            self.lora.clone(),
            blocks,
            rng,
        )?;
        match (head, self.head) {
            (true, TaskHead::Classes(classes)) => s.with_head(
                self.backend,
                self.model.config.hidden,
                classes,
                self.pooling,
                rng,
            ),
            _ => Ok(s),
        }
    }

    /// A copy of `set` (same values).
    pub fn duplicate(&self, set: &AdapterSet<B>) -> Result<AdapterSet<B>> {
        let mut out = set.zeros_like(self.backend)?;
        flat::copy(self.backend, &mut out, set)?;
        Ok(out)
    }

    /// A batch of up to `batch_size` distinct training examples of client `k`.
    pub fn sample_batch(&self, k: usize, rng: &mut Rng) -> Vec<&Example> {
        let train = &self.clients[k].train;
        sample_batch_indices(train.len(), self.hyper.batch_size, rng)
            .into_iter()
            .map(|i| &train[i])
            .collect()
    }

    /// Bytes of `set`'s tensors (what sending it costs).
    pub fn set_bytes(&self, set: &AdapterSet<B>) -> f64 {
        4.0 * set.num_params(self.backend) as f64
    }

    /// Client FLOPs of one step over blocks 0..s (s = L: the whole model and head), scaled from
    /// the cost model's nominal batch to the tokens actually processed.
    pub fn step_flops(&self, s: usize, tokens: usize) -> f64 {
        let f = if s >= self.layers() {
            self.cost.client_flops(self.layers().saturating_sub(1))
                + self.cost.server_flops(self.layers().saturating_sub(1))
        } else {
            self.cost.client_flops(s)
        };
        self.scaled(f, tokens)
    }

    /// Client FLOPs of one step of the U-shaped form: blocks 0..s and the tail of `u` blocks
    /// with the head ([`crate::federated::CostModel::client_flops_u`]), scaled to the tokens
    /// processed. `u` is the algorithm's own tail, whatever tail the cost model was built with.
    pub fn step_flops_u(&self, s: usize, u: usize, tokens: usize) -> f64 {
        self.scaled(self.cost.client_flops_u(s, u), tokens)
    }

    /// Server FLOPs of one step over blocks s..L-u (and the head when `u = 0`), scaled to the
    /// tokens processed.
    pub fn server_step_flops_u(&self, s: usize, u: usize, tokens: usize) -> f64 {
        self.scaled(self.cost.server_flops_u(s, u), tokens)
    }

    /// Server FLOPs of one step over blocks s..L and the head, scaled to the tokens processed.
    pub fn server_step_flops(&self, s: usize, tokens: usize) -> f64 {
        self.scaled(self.cost.server_flops(s), tokens)
    }

    /// `flops` of the cost model's nominal batch, scaled to `tokens` processed.
    fn scaled(&self, flops: f64, tokens: usize) -> f64 {
        flops * tokens as f64 / self.cost_tokens().max(1) as f64
    }

    fn cost_tokens(&self) -> usize {
        (self.cost.activation_bytes() / (4.0 * self.model.config.hidden as f64)) as usize
    }

    /// One packed training step of full-model items (every block, class head): each item is an
    /// adapter set and a batch; returns its gradients and mean loss. An item whose loss or
    /// gradients are not finite is rejected (its gradients dropped) without affecting the others.
    pub fn full_step(&self, items: &[(&AdapterSet<B>, Vec<&Example>)]) -> Result<Vec<StepOut<B>>> {
        let l = self.layers();
        let mut jobs = Vec::new();
        let mut owner = Vec::new();
        for (i, (_, batch)) in items.iter().enumerate() {
            let w = 1.0 / batch.len().max(1) as f32;
            for e in batch {
                let mut j = SeqJob::new(SeqInput::tokens(e.ids.clone()), 0..l, i, e.output(true));
                j.loss_weight = w;
                jobs.push(j);
                owner.push(i);
            }
        }
        let sets: Vec<&AdapterSet<B>> = items.iter().map(|(s, _)| *s).collect();
        let exec = self.exec();
        let (out, tape) = exec.forward(&sets, &jobs, true)?;
        let tape = tape.ok_or_else(|| Error::Backend("no tape".into()))?;
        let mut grads = sets
            .iter()
            .map(|s| s.zeros_like(self.backend))
            .collect::<Result<Vec<_>>>()?;
        exec.backward(&tape, &sets, &mut grads, &vec![None; jobs.len()])?;
        exec.recycle(tape);
        let mut res = Vec::with_capacity(items.len());
        for (i, g) in grads.into_iter().enumerate() {
            let mut loss = 0.0;
            let mut tokens = 0;
            for (j, o) in out.iter().enumerate() {
                if owner[j] == i {
                    loss += o.loss.unwrap_or(f32::NAN) as f64;
                    tokens += seq_tokens(&jobs[j], self.model.config.hidden);
                }
            }
            let loss = loss / items[i].1.len().max(1) as f64;
            let rejected = check_finite(self.backend, loss, &g)?;
            res.push(StepOut {
                grads: if rejected.is_none() { Some(g) } else { None },
                loss,
                tokens,
                rejected,
            });
        }
        Ok(res)
    }

    /// Applies one AdamW step.
    pub fn apply(
        &self,
        opt: &mut AdamWState<B>,
        params: &mut AdapterSet<B>,
        grads: &AdapterSet<B>,
    ) -> Result<()> {
        opt.update(self.backend, params, grads, self.adamw())
    }
}

/// The indices of a batch of `batch_size` (at most `n`) distinct examples out of `n`, as
/// [`Federation::sample_batch`] draws them: a deployment's server draws a client's batch with
/// this from the client's example count alone.
pub fn sample_batch_indices(n: usize, batch_size: usize, rng: &mut Rng) -> Vec<usize> {
    let b = batch_size.min(n);
    // Partial Fisher-Yates: the first b entries of a random permutation.
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..b {
        let j = i + rng.below(n - i);
        idx.swap(i, j);
    }
    idx.truncate(b);
    idx
}

/// Tokens of a job's input.
pub(crate) fn seq_tokens(j: &SeqJob, hidden: usize) -> usize {
    match &j.input {
        SeqInput::Tokens { ids, .. } => ids.len(),
        SeqInput::Hidden(h) => h.len() / hidden.max(1),
    }
}

/// `None` if the loss and every gradient value are finite, else the reason.
pub(crate) fn check_finite<B: Backend>(
    be: &B,
    loss: f64,
    g: &AdapterSet<B>,
) -> Result<Option<String>> {
    if !loss.is_finite() {
        return Ok(Some(format!("non-finite loss ({loss})")));
    }
    for t in g.tensors() {
        if be.download(t)?.iter().any(|v| !v.is_finite()) {
            return Ok(Some("non-finite gradient".into()));
        }
    }
    Ok(None)
}

/// What a model scored on a set of examples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EvalStats {
    /// Examples got right: the predicted class is the label, or (causal LM) every target token
    /// is the model's most likely next token, i.e. greedy decoding reproduces the response.
    pub correct: usize,
    /// Examples.
    pub total: usize,
    /// Summed negative log-likelihood (natural log) of the targets.
    pub nll: f64,
    /// Targets scored: one per classification example, the response tokens of a causal LM.
    pub targets: usize,
}

impl EvalStats {
    /// `correct / total` (NaN without examples): accuracy, or exact match for a causal LM.
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            f64::NAN
        } else {
            self.correct as f64 / self.total as f64
        }
    }

    /// `exp(nll / targets)` (NaN without targets): the perplexity of the targets.
    pub fn perplexity(&self) -> f64 {
        if self.targets == 0 {
            f64::NAN
        } else {
            (self.nll / self.targets as f64).exp()
        }
    }

    pub(crate) fn add(&mut self, e: &Example, r: &SeqResult, vocab: usize) -> Result<()> {
        let logits = r
            .logits
            .as_deref()
            .ok_or_else(|| Error::Job("evaluation produced no logits".into()))?;
        let loss = r
            .loss
            .ok_or_else(|| Error::Job("evaluation produced no loss".into()))?;
        let n = e.targets();
        let right = match &e.label {
            Label::Class(c) => argmax(logits) == *c,
            Label::Tokens(t) => {
                let rows = logits.chunks_exact(vocab.max(1));
                let wanted = t.iter().filter(|&&y| y >= 0);
                rows.len() == n && rows.zip(wanted).all(|(row, &y)| argmax(row) as i64 == y)
            }
        };
        self.total += 1;
        self.correct += usize::from(right);
        self.nll += loss as f64 * n as f64;
        self.targets += n;
        Ok(())
    }
}

/// Scores each chain on its examples (`examples[c]` for chain `c`): accuracy or exact match,
/// and the negative log-likelihood of the targets.
///
/// All chains run packed: stage j runs every sequence's j-th segment in one executor call, so
/// clients with different cuts share the same sweeps.
pub fn evaluate<B: Backend>(
    fed: &Federation<'_, B>,
    chains: &[Chain<'_, B>],
    examples: &[&[Example]],
) -> Result<Vec<EvalStats>> {
    // Sequences per executor call, and LM rows (each a vocabulary of logits) per call.
    const SEQS_PER_CALL: usize = 256;
    const LM_ROWS_PER_CALL: usize = 1024;
    let exec = fed.exec();
    let vocab = fed.model.config.vocab_size;
    let mut items: Vec<(usize, &Example)> = Vec::new();
    for (c, ex) in examples.iter().enumerate() {
        items.extend(ex.iter().map(|e| (c, e)));
    }
    let mut res = vec![EvalStats::default(); chains.len()];
    let mut rest = items.as_slice();
    while !rest.is_empty() {
        let mut take = 0;
        let mut rows = 0;
        for (_, e) in rest.iter().take(SEQS_PER_CALL) {
            let r = match e.label {
                Label::Class(_) => 0,
                Label::Tokens(_) => e.targets(),
            };
            if take > 0 && rows + r > LM_ROWS_PER_CALL {
                break;
            }
            rows += r;
            take += 1;
        }
        let (batch, tail) = rest.split_at(take);
        rest = tail;
        let stages = batch
            .iter()
            .map(|(c, _)| chains[*c].parts.len())
            .max()
            .unwrap_or(0);
        let mut hidden: Vec<Option<Vec<f32>>> = vec![None; batch.len()];
        for stage in 0..stages {
            let mut sets: Vec<&AdapterSet<B>> = Vec::new();
            let mut jobs = Vec::new();
            let mut who = Vec::new();
            for (i, (c, e)) in batch.iter().enumerate() {
                let Some((range, set)) = chains[*c].parts.get(stage) else {
                    continue;
                };
                let a = match sets.iter().position(|s| std::ptr::eq(*s, *set)) {
                    Some(a) => a,
                    None => {
                        sets.push(set);
                        sets.len() - 1
                    }
                };
                let input = match hidden[i].take() {
                    Some(h) => SeqInput::Hidden(h),
                    None => SeqInput::tokens(e.ids.clone()),
                };
                let last = stage + 1 == chains[*c].parts.len();
                let output = if last { e.output(true) } else { Output::Hidden };
                jobs.push(SeqJob::new(input, range.clone(), a, output));
                who.push(i);
            }
            let (out, _) = exec.forward(&sets, &jobs, false)?;
            for (r, i) in out.into_iter().zip(who) {
                if r.logits.is_some() {
                    let (c, e) = batch[i];
                    res[c].add(e, &r, vocab)?;
                } else {
                    hidden[i] = r.hidden;
                }
            }
        }
    }
    Ok(res)
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// A model that is one adapter set over every block.
pub fn whole<B: Backend>(set: &AdapterSet<B>) -> Chain<'_, B> {
    Chain {
        parts: vec![(0..set.blocks.len(), set)],
    }
}

/// One adapter set and its AdamW state per client: the personal state of most algorithms.
pub struct PersonalSets<B: Backend> {
    /// Per-client adapter sets.
    pub sets: Vec<AdapterSet<B>>,
    /// Their optimizer states.
    pub opts: Vec<AdamWState<B>>,
}

impl<B: Backend> PersonalSets<B> {
    /// `n` copies of `init`, each with fresh optimizer state.
    pub fn copies(fed: &Federation<'_, B>, init: &AdapterSet<B>, n: usize) -> Result<Self> {
        Self::from_sets(
            fed.backend,
            (0..n).map(|_| fed.duplicate(init)).collect::<Result<_>>()?,
        )
    }

    /// The given sets, each with fresh optimizer state.
    pub fn from_sets(be: &B, sets: Vec<AdapterSet<B>>) -> Result<Self> {
        let opts = sets
            .iter()
            .map(|s| AdamWState::new(be, s))
            .collect::<Result<_>>()?;
        Ok(PersonalSets { sets, opts })
    }

    /// Checkpoint entries `client{k}`, `client{k}.m`, `client{k}.v`.
    pub fn state(&mut self) -> Vec<(String, &mut AdapterSet<B>)> {
        let mut v: Vec<(String, &mut AdapterSet<B>)> = Vec::new();
        for (k, (s, o)) in self.sets.iter_mut().zip(self.opts.iter_mut()).enumerate() {
            v.push((format!("client{k}"), s));
            v.push((format!("client{k}.m"), &mut o.m));
            v.push((format!("client{k}.v"), &mut o.v));
        }
        v
    }

    /// Step counters `client{k}`.
    pub fn counters(&mut self) -> Vec<(String, &mut u64)> {
        self.opts
            .iter_mut()
            .enumerate()
            .map(|(k, o)| (format!("client{k}"), &mut o.step))
            .collect()
    }
}
