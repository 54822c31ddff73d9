//! FlexP-SFL: each client trains personal adapters P_k on its first s_k blocks (and, U-shaped,
//! on its last u blocks and a personal head); the server trains global adapters G on the rest
//! for all clients in one packed sweep; alignment keeps P_k good on global representations.

pub(crate) mod remote;
mod server;

use super::common::{check_finite, whole, Chain, Example, Federation, PersonalSets, RoundLog};
use super::{flat, Algorithm, Align};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::executor::{AdamWState, Output, SeqInput, SeqJob, Tape};
use crate::model::AdapterSet;
use crate::rng::Rng;
use server::ServerState;

/// FlexP-SFL state.
pub struct FlexpSfl<B: Backend> {
    global: AdapterSet<B>,
    global_opt: AdamWState<B>,
    personal: PersonalSets<B>,
    splits: Vec<usize>,
    tail: usize,
}

impl<B: Backend> FlexpSfl<B> {
    /// Initial state: G on every block with the global head, P_k on 0..s_k (plus the tail and a
    /// personal head when U-shaped).
    pub fn new(fed: &Federation<'_, B>, rng: &mut Rng) -> Result<Self> {
        let l = fed.layers();
        let u = fed.hyper.u_tail;
        for (k, &s) in fed.splits.iter().enumerate() {
            if s == 0 || s + u >= l {
                return Err(Error::Input(format!(
                    "client {k}: cut layer {s} with {u} tail blocks leaves no server block (valid cuts: 1..{})",
                    l.saturating_sub(u + 1)
                )));
            }
        }
        let global = fed.new_set(0..l, true, rng)?;
        let global_opt = AdamWState::new(fed.backend, &global)?;
        let mut personal = Vec::new();
        for &s in &fed.splits {
            let mut p = fed.new_set(0..s, u > 0, rng)?;
            if u > 0 {
                // The tail blocks L-u..L are personal too: draw them and move them in.
                let mut tail = fed.new_set(l - u..l, false, rng)?;
                for b in l - u..l {
                    p.blocks[b] = std::mem::take(&mut tail.blocks[b]);
                }
            }
            personal.push(p);
        }
        Ok(FlexpSfl {
            global,
            global_opt,
            personal: PersonalSets::from_sets(fed.backend, personal)?,
            splits: fed.splits.clone(),
            tail: u,
        })
    }
}

/// d/dh of mean over tokens of KL(softmax(h') || softmax(h)), softmax over the hidden dimension:
/// `(softmax(h) − softmax(h')) / tokens`.
pub fn kl_alignment_grad(h: &[f32], h_global: &[f32], d: usize) -> (f64, Vec<f32>) {
    let rows = h.len() / d;
    let mut grad = vec![0.0f32; h.len()];
    let mut kl = 0.0f64;
    for r in 0..rows {
        let p = softmax(&h[r * d..(r + 1) * d]);
        let q = softmax(&h_global[r * d..(r + 1) * d]);
        for i in 0..d {
            if q[i] > 0.0 {
                kl += q[i] * (q[i].ln() - p[i].max(1e-300).ln());
            }
            grad[r * d + i] = ((p[i] - q[i]) / rows as f64) as f32;
        }
    }
    (kl / rows.max(1) as f64, grad)
}

fn softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = x.iter().map(|v| (*v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

fn finite(v: &[f32]) -> bool {
    v.iter().all(|x| x.is_finite())
}

impl<B: Backend> Algorithm<B> for FlexpSfl<B> {
    fn name(&self) -> &'static str {
        "flexp-sfl"
    }

    /// One round: the participants download Ĝ (with alignment), then run `local_steps` local
    /// steps; a client rejected in one step sits out the rest of the round.
    fn round(
        &mut self,
        fed: &Federation<'_, B>,
        participants: &[usize],
        rng: &mut Rng,
    ) -> Result<RoundLog> {
        let mut log = RoundLog::default();
        let snapshot = self.download_alignment_snapshot(fed, participants, &mut log)?;
        let mut excluded = vec![false; fed.num_clients()];
        for step in 0..fed.hyper.local_steps {
            fed.step_started(step + 1);
            let active: Vec<usize> = participants
                .iter()
                .copied()
                .filter(|&k| !excluded[k])
                .collect();
            if active.is_empty() {
                break;
            }
            self.local_step(
                fed,
                &active,
                snapshot.as_ref(),
                rng,
                &mut excluded,
                &mut log,
            )?;
        }
        Ok(log)
    }

    fn personal(&self, k: usize) -> Chain<'_, B> {
        let l = self.global.blocks.len();
        let s = self.splits[k];
        let u = self.tail;
        let mut parts = vec![(0..s, &self.personal.sets[k]), (s..l - u, &self.global)];
        if u > 0 {
            parts.push((l - u..l, &self.personal.sets[k]));
        }
        Chain { parts }
    }

    fn global(&self) -> Option<Chain<'_, B>> {
        // U-shaped, the tail blocks and the head are the clients' own and the server never
        // trains G there: G alone would put an untrained tail and head on the global test set.
        (self.tail == 0).then(|| whole(&self.global))
    }

    fn no_global_model(&self) -> &'static str {
        "in the U-shaped split the last blocks and the head stay on the clients and are personal, \
         so the server's global adapters are never trained there and are no model on their own; \
         the personalized models' accuracy on the global test set is the comparable figure"
    }

    fn state(&mut self) -> Vec<(String, &mut AdapterSet<B>)> {
        let mut v: Vec<(String, &mut AdapterSet<B>)> = vec![
            ("global".into(), &mut self.global),
            ("global.m".into(), &mut self.global_opt.m),
            ("global.v".into(), &mut self.global_opt.v),
        ];
        v.extend(self.personal.state());
        v
    }

    fn counters(&mut self) -> Vec<(String, &mut u64)> {
        let mut v = vec![("global".to_string(), &mut self.global_opt.step)];
        v.extend(self.personal.counters());
        v
    }
}

/// Gradients of a pass's outputs, one per sequence (`None`: no gradient for it).
type SeqGrads = Vec<Option<Vec<f32>>>;

/// The clients taking part in one local step and their batches.
struct Step<'a, 'e> {
    /// Clients not rejected earlier in the round, in participant order.
    active: &'a [usize],
    /// B_k of each active client, indexed like `active`.
    batches: &'a [Vec<&'e Example>],
}

/// Step 1's outcome on the clients' side: every active client's forward over its blocks
/// 0..s_k, packed in one call, kept for the client backward of step 5.
struct ClientPass<'p, B: Backend> {
    /// P_k of each active client, indexed like `active` (the jobs' adapter index).
    sets: Vec<&'p AdapterSet<B>>,
    /// One job per sequence, clients in `active` order and each batch in order.
    jobs: Vec<SeqJob>,
    /// For each job, its client's index in `active`.
    owner: Vec<usize>,
    /// The forward's tape.
    tape: Tape<B>,
}

/// What the clients send up at a local step, and all the server sees of them: each sequence's
/// activations at its client's cut with its labelled output. A deployment sends this over the
/// network; the simulation hands it over in memory.
pub(crate) struct Upload {
    /// The active clients, in participant order.
    pub(crate) active: Vec<usize>,
    /// Sequences in each active client's batch (each one's loss is weighted 1/batch).
    pub(crate) batch_len: Vec<usize>,
    /// Per sequence, in the clients' order: its client's index in `active`.
    pub(crate) owner: Vec<usize>,
    /// Per sequence: the client's cut s_k, where the server continues.
    pub(crate) cut: Vec<usize>,
    /// Per sequence: h_k, the activations at the cut.
    pub(crate) smashed: Vec<Vec<f32>>,
    /// Per sequence: its labelled output (its class, or its next-token targets).
    pub(crate) outputs: Vec<Output>,
}

impl<B: Backend> FlexpSfl<B> {
    /// Ĝ, the copy of G the participants download at the start of the round for the alignment
    /// target (none without alignment); each participant is charged for its blocks 0..s_k of it.
    fn download_alignment_snapshot(
        &self,
        fed: &Federation<'_, B>,
        participants: &[usize],
        log: &mut RoundLog,
    ) -> Result<Option<AdapterSet<B>>> {
        if fed.hyper.align == Align::None {
            return Ok(None);
        }
        let snapshot = fed.duplicate(&self.global)?;
        let l = fed.layers();
        for &k in participants {
            let s = self.splits[k];
            log.client(k).bytes_down += fed.set_bytes(&self.global) * s as f64 / l as f64;
        }
        Ok(Some(snapshot))
    }

    /// One local step of every active client, in the order of docs/algorithms.md.
    fn local_step(
        &mut self,
        fed: &Federation<'_, B>,
        active: &[usize],
        snapshot: Option<&AdapterSet<B>>,
        rng: &mut Rng,
        excluded: &mut [bool],
        log: &mut RoundLog,
    ) -> Result<()> {
        let batches: Vec<Vec<&Example>> =
            active.iter().map(|&k| fed.sample_batch(k, rng)).collect();
        let step = Step {
            active,
            batches: &batches,
        };
        // 1. Client forward: h_k = F_{0..s_k}(x; P_k).
        let (pass, up) = client_forward(fed, &self.personal.sets, &self.splits, &step)?;
        // 2. Alignment target: h'_k = F_{0..s_k}(x; Ĝ).
        let target = snapshot
            .map(|g| alignment_target(fed, g, &pass.jobs))
            .transpose()?;
        // 3.-4. Server sweep over every client's server segment, then the G update.
        let mut rejected = reject_non_finite_cut(&up, log);
        let reply = server::sweep(
            ServerState {
                global: &mut self.global,
                opt: &mut self.global_opt,
                personal: &self.personal.sets,
                tail: self.tail,
            },
            fed,
            &up,
            &mut rejected,
            log,
        )?;
        // 5. Client backward with the alignment loss.
        let mut grads = client_backward(fed, pass, &up, target.as_deref(), &reply.dh, &rejected)?;
        // U-shaped: the tail and head gradients the clients computed during the server sweep.
        add_tail_gradients(fed.backend, &mut grads, reply.tail_grads)?;
        // P_k ← AdamW(P_k, g), and what the step cost each client.
        self.update_clients(fed, &step, grads, &rejected, excluded, log)
    }

    /// Applies each accepted client's gradient to P_k and charges the step's traffic and FLOPs;
    /// a client rejected in this step (or whose gradient is not finite) is excluded from the
    /// rest of the round.
    fn update_clients(
        &mut self,
        fed: &Federation<'_, B>,
        step: &Step<'_, '_>,
        grads: Vec<AdapterSet<B>>,
        rejected: &[bool],
        excluded: &mut [bool],
        log: &mut RoundLog,
    ) -> Result<()> {
        for (i, g) in grads.into_iter().enumerate() {
            let k = step.active[i];
            if rejected[i] {
                excluded[k] = true;
                continue;
            }
            if let Some(why) = check_finite(fed.backend, 0.0, &g)? {
                log.rejected.push((k, format!("client gradient: {why}")));
                excluded[k] = true;
                continue;
            }
            fed.apply(&mut self.personal.opts[k], &mut self.personal.sets[k], &g)?;
            self.charge_step(fed, k, &step.batches[i], log);
        }
        Ok(())
    }

    /// Client k's cost of one accepted step: h up with the labels and d loss / d h down
    /// (U-shaped: also z down and d loss / d z up), and the FLOPs of its client blocks (and
    /// tail).
    fn charge_step(
        &self,
        fed: &Federation<'_, B>,
        k: usize,
        batch: &[&Example],
        log: &mut RoundLog,
    ) {
        let tokens: usize = batch.iter().map(|e| e.ids.len()).sum();
        let targets: usize = batch.iter().map(|e| e.targets()).sum();
        self.charge(fed, k, tokens, targets, log);
    }

    /// [`FlexpSfl::charge_step`] from the step's token and target counts.
    fn charge(
        &self,
        fed: &Federation<'_, B>,
        k: usize,
        tokens: usize,
        targets: usize,
        log: &mut RoundLog,
    ) {
        let u = self.tail;
        let s = self.splits[k];
        let act_bytes = 4.0 * (tokens * fed.model.config.hidden) as f64;
        let c = log.client(k);
        c.bytes_up += act_bytes + 8.0 * targets as f64;
        c.bytes_down += act_bytes;
        if u > 0 {
            // The server's output goes down, its gradient comes back up.
            c.bytes_up += act_bytes;
            c.bytes_down += act_bytes;
        }
        // One cost-model call for both ends: adding the tail's own `step_flops(u)` charged it a
        // second block-0 discount and, with a tail-aware cost model, the tail twice.
        c.flops += fed.step_flops_u(s, u, tokens);
    }
}

/// Step 1: every active client's batch through its blocks 0..s_k with P_k, in one packed
/// executor call that keeps the tape for step 5; and what the clients send up.
fn client_forward<'p, B: Backend>(
    fed: &Federation<'_, B>,
    personal: &'p [AdapterSet<B>],
    splits: &[usize],
    step: &Step<'_, '_>,
) -> Result<(ClientPass<'p, B>, Upload)> {
    let sets: Vec<&AdapterSet<B>> = step.active.iter().map(|&k| &personal[k]).collect();
    let mut jobs = Vec::new();
    let mut owner = Vec::new();
    let mut outputs = Vec::new();
    for (i, b) in step.batches.iter().enumerate() {
        for e in b {
            jobs.push(SeqJob::new(
                SeqInput::tokens(e.ids.clone()),
                0..splits[step.active[i]],
                i,
                Output::Hidden,
            ));
            owner.push(i);
            outputs.push(e.output(true));
        }
    }
    let (out, tape) = fed.exec().forward(&sets, &jobs, true)?;
    let tape = tape.ok_or_else(|| Error::Backend("no tape".into()))?;
    let smashed = out
        .into_iter()
        .map(|r| r.hidden.unwrap_or_default())
        .collect();
    let up = Upload {
        active: step.active.to_vec(),
        batch_len: step.batches.iter().map(Vec::len).collect(),
        owner: owner.clone(),
        cut: jobs.iter().map(|j| j.blocks.end).collect(),
        smashed,
        outputs,
    };
    Ok((
        ClientPass {
            sets,
            jobs,
            owner,
            tape,
        },
        up,
    ))
}

/// Step 2: h' = F_{0..s_k}(x; Ĝ) for every client job, the same blocks run with the round's
/// snapshot of G instead of P_k; no gradient.
fn alignment_target<B: Backend>(
    fed: &Federation<'_, B>,
    snapshot: &AdapterSet<B>,
    client_jobs: &[SeqJob],
) -> Result<Vec<Vec<f32>>> {
    let jobs: Vec<SeqJob> = client_jobs
        .iter()
        .map(|j| SeqJob {
            adapter: 0,
            grad_slot: 0,
            ..j.clone()
        })
        .collect();
    let (out, _) = fed.exec().forward(&[snapshot], &jobs, false)?;
    Ok(out
        .into_iter()
        .map(|r| r.hidden.unwrap_or_default())
        .collect())
}

/// Rejects every client whose activations at the cut are not finite, before anything reaches
/// the server; returns the rejection flags indexed like `active`.
fn reject_non_finite_cut(up: &Upload, log: &mut RoundLog) -> Vec<bool> {
    let mut rejected = vec![false; up.active.len()];
    for (j, hv) in up.smashed.iter().enumerate() {
        let i = up.owner[j];
        if !finite(hv) && !rejected[i] {
            rejected[i] = true;
            log.rejected
                .push((up.active[i], "non-finite activations at the cut".into()));
        }
    }
    rejected
}

/// The output gradients of the client forward for every job of an accepted client: d CE / d h
/// as the server returned it, and (with an alignment target) d A_k / d h.
fn cut_output_gradients<B: Backend>(
    fed: &Federation<'_, B>,
    pass: &ClientPass<'_, B>,
    up: &Upload,
    target: Option<&[Vec<f32>]>,
    dh: &[Option<Vec<f32>>],
    rejected: &[bool],
) -> (SeqGrads, SeqGrads) {
    let d = fed.model.config.hidden;
    let mut out_ce: SeqGrads = vec![None; pass.jobs.len()];
    let mut out_al: SeqGrads = vec![None; pass.jobs.len()];
    for j in 0..pass.jobs.len() {
        let i = pass.owner[j];
        if rejected[i] {
            continue;
        }
        out_ce[j] = dh[j].clone();
        if let Some(gr) = target {
            let (_, g) = kl_alignment_grad(&up.smashed[j], &gr[j], d);
            let n = up.batch_len[i] as f32;
            // The per-sequence KL means are averaged over the client's batch.
            out_al[j] = Some(g.into_iter().map(|v| v / n).collect());
        }
    }
    (out_ce, out_al)
}

/// Step 5: the client backward over the tape of step 1, combining CE and alignment as `align`
/// says (none: ∇CE; kl: ∇(CE + λA) in one backward; proj: two backwards, conflict projection,
/// then g_ce + λ g_a). Returns the gradient of each active client's P_k.
fn client_backward<B: Backend>(
    fed: &Federation<'_, B>,
    pass: ClientPass<'_, B>,
    up: &Upload,
    target: Option<&[Vec<f32>]>,
    dh: &[Option<Vec<f32>>],
    rejected: &[bool],
) -> Result<Vec<AdapterSet<B>>> {
    let be = fed.backend;
    let exec = fed.exec();
    let h = &fed.hyper;
    let (mut out_ce, out_al) = cut_output_gradients(fed, &pass, up, target, dh, rejected);
    let mut g_ce: Vec<AdapterSet<B>> = pass
        .sets
        .iter()
        .map(|s| s.zeros_like(be))
        .collect::<Result<_>>()?;
    match h.align {
        Align::None | Align::Kl => {
            if h.align == Align::Kl {
                for j in 0..pass.jobs.len() {
                    if let (Some(c), Some(a)) = (&mut out_ce[j], &out_al[j]) {
                        flat::axpy(c, h.align_lambda as f64, a);
                    }
                }
            }
            exec.backward(&pass.tape, &pass.sets, &mut g_ce, &out_ce)?;
        }
        Align::Proj => {
            exec.backward(&pass.tape, &pass.sets, &mut g_ce, &out_ce)?;
            let mut g_a: Vec<AdapterSet<B>> = pass
                .sets
                .iter()
                .map(|s| s.zeros_like(be))
                .collect::<Result<_>>()?;
            exec.backward(&pass.tape, &pass.sets, &mut g_a, &out_al)?;
            project_alignment(fed, &mut g_ce, &g_a, rejected)?;
        }
    }
    exec.recycle(pass.tape);
    Ok(g_ce)
}

/// `align = proj`: per group, removes from g_ce its component against g_a where they conflict,
/// then adds λ g_a; for every accepted client.
fn project_alignment<B: Backend>(
    fed: &Federation<'_, B>,
    g_ce: &mut [AdapterSet<B>],
    g_a: &[AdapterSet<B>],
    rejected: &[bool],
) -> Result<()> {
    let be = fed.backend;
    let h = &fed.hyper;
    for i in 0..g_ce.len() {
        if rejected[i] {
            continue;
        }
        let mut gc = flat::flatten(be, &g_ce[i])?;
        let ga = flat::flatten(be, &g_a[i])?;
        for r in flat::groups(be, &g_ce[i], h.proj_granularity) {
            flat::project_conflict(&mut gc[r.clone()], &ga[r]);
        }
        flat::axpy(&mut gc, h.align_lambda as f64, &ga);
        flat::assign(be, &mut g_ce[i], &gc)?;
    }
    Ok(())
}

/// U-shaped: adds each client's gradient of its tail blocks and head (computed during the
/// server sweep) to its client-block gradient, so P_k takes one AdamW step on both.
fn add_tail_gradients<B: Backend>(
    be: &B,
    grads: &mut [AdapterSet<B>],
    tail_grads: Vec<Option<AdapterSet<B>>>,
) -> Result<()> {
    for (i, g) in tail_grads.into_iter().enumerate() {
        if let Some(g) = g {
            let mut a = flat::flatten(be, &grads[i])?;
            flat::axpy(&mut a, 1.0, &flat::flatten(be, &g)?);
            flat::assign(be, &mut grads[i], &a)?;
        }
    }
    Ok(())
}
