//! FlexP-SFL with its two halves in different processes (src/net): the server's half (G, its
//! optimizer, the sweep over what the clients sent) and one client's half (P_k, its optimizer,
//! its forward to the cut and its backward with the alignment term). Each half runs the very
//! functions the simulation's local step runs, so a deployment computes what the simulation
//! computes.

use super::{
    alignment_target, client_backward, client_forward, reject_non_finite_cut, server, FlexpSfl,
    SeqGrads, Step, Upload,
};
use crate::algorithms::common::{check_finite, EvalStats, Example, Federation, Label, RoundLog};
use crate::algorithms::flat;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::executor::{AdamWState, Output, SeqInput, SeqJob};
use crate::model::AdapterSet;
use crate::rng::Rng;
use server::ServerState;

impl<B: Backend> FlexpSfl<B> {
    /// Refuses what a deployment cannot run: the U-shaped split (its tail runs on the clients
    /// in the middle of the server's sweep, a second exchange per step not built yet).
    pub(crate) fn check_deployable(&self) -> Result<()> {
        if self.tail > 0 {
            return Err(Error::Input(
                "a deployment runs the vanilla split; the U-shaped split (`u_tail` > 0) runs in \
                 the simulation only for now"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Client k's initial personal adapters, flattened, as the simulation draws them.
    pub(crate) fn initial_personal(&self, be: &B, k: usize) -> Result<Vec<f32>> {
        flat::flatten(be, &self.personal.sets[k])
    }

    /// The round's alignment snapshot of G, flattened (`None` without alignment), charged to
    /// each participant as the simulation charges it.
    pub(crate) fn round_snapshot(
        &self,
        fed: &Federation<'_, B>,
        participants: &[usize],
        log: &mut RoundLog,
    ) -> Result<Option<Vec<f32>>> {
        self.download_alignment_snapshot(fed, participants, log)?
            .map(|g| flat::flatten(fed.backend, &g))
            .transpose()
    }

    /// Steps 3 and 4 on what the active clients sent: returns which of them were rejected
    /// (indexed like `up.active`) and d loss / d h per sequence (`None` for a rejected one).
    pub(crate) fn server_step(
        &mut self,
        fed: &Federation<'_, B>,
        up: &Upload,
        log: &mut RoundLog,
    ) -> Result<(Vec<bool>, SeqGrads)> {
        let mut rejected = reject_non_finite_cut(up, log);
        let reply = server::sweep(
            ServerState {
                global: &mut self.global,
                opt: &mut self.global_opt,
                personal: &self.personal.sets,
                tail: self.tail,
            },
            fed,
            up,
            &mut rejected,
            log,
        )?;
        Ok((rejected, reply.dh))
    }

    /// Charges client k's applied step (its tokens and targets) as the simulation does.
    pub(crate) fn charge_remote(
        &self,
        fed: &Federation<'_, B>,
        k: usize,
        tokens: usize,
        targets: usize,
        log: &mut RoundLog,
    ) {
        self.charge(fed, k, tokens, targets, log);
    }

    /// Client k's cut.
    pub(crate) fn cut(&self, k: usize) -> usize {
        self.splits[k]
    }

    /// The server's part of evaluating a personalized model: each sequence's activations at
    /// the cut through blocks cut..L with G to the labelled output, scored as the simulation's
    /// `evaluate` scores it.
    pub(crate) fn evaluate_from_cut(
        &self,
        fed: &Federation<'_, B>,
        cut: usize,
        hidden: Vec<Vec<f32>>,
        outputs: Vec<Output>,
    ) -> Result<EvalStats> {
        let l = fed.layers();
        let vocab = fed.model.config.vocab_size;
        let mut stats = EvalStats::default();
        let items: Vec<(Vec<f32>, Output)> = hidden.into_iter().zip(outputs).collect();
        for chunk in items.chunks(EVAL_SEQS_PER_CALL) {
            let jobs: Vec<SeqJob> = chunk
                .iter()
                .map(|(h, o)| SeqJob::new(SeqInput::Hidden(h.clone()), cut..l, 0, o.clone()))
                .collect();
            let (out, _) = fed.exec().forward(&[&self.global], &jobs, false)?;
            for (r, (_, o)) in out.iter().zip(chunk) {
                let label = match o {
                    Output::Class { label: Some(c) } => Label::Class(*c),
                    Output::Lm { labels: Some(t) } => Label::Tokens(t.clone()),
                    _ => {
                        return Err(Error::Input(
                            "an evaluation sequence without a target".into(),
                        ))
                    }
                };
                stats.add(
                    &Example {
                        ids: Vec::new(),
                        label,
                    },
                    r,
                    vocab,
                )?;
            }
        }
        Ok(stats)
    }
}

/// Sequences per executor call in a deployment's evaluation.
const EVAL_SEQS_PER_CALL: usize = 64;

/// One client's half: its personal adapters P_k on blocks 0..cut, their optimizer, and the
/// round's alignment snapshot.
pub(crate) struct ClientHalf<B: Backend> {
    cut: usize,
    set: AdapterSet<B>,
    opt: AdamWState<B>,
    snapshot: Option<AdapterSet<B>>,
}

/// A client's P_k and optimizer state, copied.
pub(crate) struct Saved<B: Backend> {
    set: AdapterSet<B>,
    m: AdapterSet<B>,
    v: AdapterSet<B>,
    step: u64,
}

/// An adapter set shaped as `FlexpSfl::new` shapes one (blocks, head), holding `values`.
fn set_from_flat<B: Backend>(
    fed: &Federation<'_, B>,
    blocks: std::ops::Range<usize>,
    head: bool,
    values: &[f32],
    what: &str,
) -> Result<AdapterSet<B>> {
    // Drawn only for its shape; every value is then overwritten.
    let mut set = fed.new_set(blocks, head, &mut Rng::new(0))?;
    let n = set.num_params(fed.backend);
    if values.len() != n {
        return Err(Error::Input(format!(
            "{what}: {} values received for an adapter set of {n}",
            values.len()
        )));
    }
    flat::assign(fed.backend, &mut set, values)?;
    Ok(set)
}

impl<B: Backend> ClientHalf<B> {
    /// The client's half at cut `cut`, starting from `initial` (P_k as the server drew it).
    pub(crate) fn new(fed: &Federation<'_, B>, cut: usize, initial: &[f32]) -> Result<Self> {
        let set = set_from_flat(fed, 0..cut, false, initial, "initial personal adapters")?;
        let opt = AdamWState::new(fed.backend, &set)?;
        Ok(ClientHalf {
            cut,
            set,
            opt,
            snapshot: None,
        })
    }

    /// Takes the round's snapshot of G (flattened), or none without alignment.
    pub(crate) fn set_snapshot(
        &mut self,
        fed: &Federation<'_, B>,
        values: Option<&[f32]>,
    ) -> Result<()> {
        self.snapshot = values
            .map(|v| set_from_flat(fed, 0..fed.layers(), true, v, "alignment snapshot"))
            .transpose()?;
        Ok(())
    }

    /// A copy of P_k and its optimizer state.
    pub(crate) fn save(&self, fed: &Federation<'_, B>) -> Result<Saved<B>> {
        Ok(Saved {
            set: fed.duplicate(&self.set)?,
            m: fed.duplicate(&self.opt.m)?,
            v: fed.duplicate(&self.opt.v)?,
            step: self.opt.step,
        })
    }

    /// Back to a state [`ClientHalf::save`] copied.
    pub(crate) fn restore(&mut self, fed: &Federation<'_, B>, s: &Saved<B>) -> Result<()> {
        self.set = fed.duplicate(&s.set)?;
        self.opt.m = fed.duplicate(&s.m)?;
        self.opt.v = fed.duplicate(&s.v)?;
        self.opt.step = s.step;
        Ok(())
    }

    /// `examples` through blocks 0..cut with P_k: the activations the client sends up to be
    /// evaluated, with each one's labelled output.
    pub(crate) fn forward_to_cut(
        &self,
        fed: &Federation<'_, B>,
        examples: &[Example],
    ) -> Result<(Vec<Vec<f32>>, Vec<Output>)> {
        let mut hidden = Vec::with_capacity(examples.len());
        for chunk in examples.chunks(EVAL_SEQS_PER_CALL) {
            let jobs: Vec<SeqJob> = chunk
                .iter()
                .map(|e| {
                    SeqJob::new(
                        SeqInput::tokens(e.ids.clone()),
                        0..self.cut,
                        0,
                        Output::Hidden,
                    )
                })
                .collect();
            let (out, _) = fed.exec().forward(&[&self.set], &jobs, false)?;
            hidden.extend(out.into_iter().map(|r| r.hidden.unwrap_or_default()));
        }
        Ok((hidden, examples.iter().map(|e| e.output(true)).collect()))
    }

    /// One local step on `batch`: the forward to the cut; `exchange` sends what goes up and
    /// returns the server's d loss / d h per sequence (`None`: the server rejected the step);
    /// then the backward with the alignment term and the AdamW update of P_k. Returns `None`
    /// when the step was applied, else why not.
    pub(crate) fn step(
        &mut self,
        fed: &Federation<'_, B>,
        batch: &[&Example],
        exchange: impl FnOnce(&Upload) -> Result<Option<SeqGrads>>,
    ) -> Result<Option<String>> {
        let grads = {
            let batches = [batch.to_vec()];
            let step = Step {
                active: &[0],
                batches: &batches,
            };
            let (pass, up) =
                client_forward(fed, std::slice::from_ref(&self.set), &[self.cut], &step)?;
            let target = self
                .snapshot
                .as_ref()
                .map(|g| alignment_target(fed, g, &pass.jobs))
                .transpose()?;
            let Some(dh) = exchange(&up)? else {
                fed.exec().recycle(pass.tape);
                return Ok(Some("the server rejected the step".into()));
            };
            if dh.len() != up.owner.len() {
                return Err(Error::Input(format!(
                    "the server returned {} gradients for {} sequences",
                    dh.len(),
                    up.owner.len()
                )));
            }
            client_backward(fed, pass, &up, target.as_deref(), &dh, &[false])?
        };
        let g = grads
            .into_iter()
            .next()
            .ok_or_else(|| Error::Backend("no client gradient".into()))?;
        if let Some(why) = check_finite(fed.backend, 0.0, &g)? {
            return Ok(Some(format!("client gradient: {why}")));
        }
        fed.apply(&mut self.opt, &mut self.set, &g)?;
        Ok(None)
    }
}

/// The server's [`Upload`] assembled from what each client sent, in the order clients are
/// pushed (the step's participant order).
#[derive(Default)]
pub(crate) struct UploadParts {
    active: Vec<usize>,
    batch_len: Vec<usize>,
    owner: Vec<usize>,
    cut: Vec<usize>,
    smashed: Vec<Vec<f32>>,
    outputs: Vec<Output>,
}

impl UploadParts {
    /// Client `k`'s sequences: activations at cut `cut` and their labelled outputs.
    pub(crate) fn push(
        &mut self,
        k: usize,
        cut: usize,
        smashed: Vec<Vec<f32>>,
        outputs: Vec<Output>,
    ) {
        let i = self.active.len();
        self.active.push(k);
        self.batch_len.push(smashed.len());
        self.owner.extend(std::iter::repeat_n(i, smashed.len()));
        self.cut.extend(std::iter::repeat_n(cut, smashed.len()));
        self.smashed.extend(smashed);
        self.outputs.extend(outputs);
    }

    /// Tokens each pushed client sent.
    pub(crate) fn tokens(&self, hidden: usize) -> Vec<usize> {
        let mut t = vec![0; self.active.len()];
        for (o, h) in self.owner.iter().zip(&self.smashed) {
            t[*o] += h.len() / hidden.max(1);
        }
        t
    }

    /// Learned targets each pushed client sent (1 a sequence for classification).
    pub(crate) fn targets(&self) -> Vec<usize> {
        let mut t = vec![0; self.active.len()];
        for (o, out) in self.owner.iter().zip(&self.outputs) {
            t[*o] += match out {
                Output::Lm { labels: Some(l) } => l.iter().filter(|&&y| y >= 0).count(),
                _ => 1,
            };
        }
        t
    }

    /// The upload.
    pub(crate) fn finish(self) -> Upload {
        Upload {
            active: self.active,
            batch_len: self.batch_len,
            owner: self.owner,
            cut: self.cut,
            smashed: self.smashed,
            outputs: self.outputs,
        }
    }
}
