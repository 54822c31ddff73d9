//! FlexP-SFL: each client trains personal adapters P_k on its first s_k blocks (and, U-shaped,
//! on its last u blocks and a personal head); the server trains global adapters G on the rest
//! for all clients in one packed sweep; alignment keeps P_k good on global representations.

use super::common::{check_finite, whole, Chain, Example, Federation, PersonalSets, RoundLog};
use super::{flat, Algorithm, Align, ServerAgg, ServerUpdate};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::executor::{AdamWState, Output, SeqInput, SeqJob, SeqResult};
use crate::model::AdapterSet;
use crate::rng::Rng;

/// What the server step reads and updates.
struct ServerState<'s, B: Backend> {
    global: &'s mut AdapterSet<B>,
    opt: &'s mut AdamWState<B>,
    personal: &'s [AdapterSet<B>],
    splits: &'s [usize],
    tail: usize,
}

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

    fn round(
        &mut self,
        fed: &Federation<'_, B>,
        participants: &[usize],
        rng: &mut Rng,
    ) -> Result<RoundLog> {
        let be = fed.backend;
        let exec = fed.exec();
        let l = fed.layers();
        let u = self.tail;
        let d = fed.model.config.hidden;
        let h = &fed.hyper;
        let mut log = RoundLog::default();
        // Clients download G for their blocks once per round (for the alignment target).
        let snapshot = if h.align != Align::None {
            Some(fed.duplicate(&self.global)?)
        } else {
            None
        };
        if h.align != Align::None {
            for &k in participants {
                let s = self.splits[k];
                log.client(k).bytes_down += fed.set_bytes(&self.global) * s as f64 / l as f64;
            }
        }
        let mut excluded = vec![false; fed.num_clients()];

        for step in 0..h.local_steps {
            fed.step_started(step + 1);
            let active: Vec<usize> = participants
                .iter()
                .copied()
                .filter(|&k| !excluded[k])
                .collect();
            if active.is_empty() {
                break;
            }
            let batches: Vec<Vec<&Example>> =
                active.iter().map(|&k| fed.sample_batch(k, rng)).collect();

            // 1. Client forward of every active client, packed: blocks 0..s_k with P_k.
            let psets: Vec<&AdapterSet<B>> =
                active.iter().map(|&k| &self.personal.sets[k]).collect();
            let mut jobs = Vec::new();
            let mut owner = Vec::new();
            for (i, b) in batches.iter().enumerate() {
                for e in b {
                    jobs.push(SeqJob::new(
                        SeqInput::tokens(e.ids.clone()),
                        0..self.splits[active[i]],
                        i,
                        Output::Hidden,
                    ));
                    owner.push(i);
                }
            }
            let (client_out, client_tape) = exec.forward(&psets, &jobs, true)?;
            let client_tape = client_tape.ok_or_else(|| Error::Backend("no tape".into()))?;
            let smashed: Vec<Vec<f32>> = client_out
                .into_iter()
                .map(|r| r.hidden.unwrap_or_default())
                .collect();

            // 2. Alignment target h' = F(x; G_round) on the client blocks, no gradient.
            let global_repr: Option<Vec<Vec<f32>>> = match &snapshot {
                Some(g) => {
                    let gj: Vec<SeqJob> = jobs
                        .iter()
                        .map(|j| SeqJob {
                            adapter: 0,
                            grad_slot: 0,
                            ..j.clone()
                        })
                        .collect();
                    let (o, _) = exec.forward(&[g], &gj, false)?;
                    Some(
                        o.into_iter()
                            .map(|r| r.hidden.unwrap_or_default())
                            .collect(),
                    )
                }
                None => None,
            };

            // 3. Server: forward and backward of every client's server segment.
            let mut rejected = vec![false; active.len()];
            for (j, hv) in smashed.iter().enumerate() {
                if !finite(hv) && !rejected[owner[j]] {
                    rejected[owner[j]] = true;
                    log.rejected
                        .push((active[owner[j]], "non-finite activations at the cut".into()));
                }
            }
            let (dh, tail_grads) = Self::server(
                ServerState {
                    global: &mut self.global,
                    opt: &mut self.global_opt,
                    personal: &self.personal.sets,
                    splits: &self.splits,
                    tail: self.tail,
                },
                fed,
                &active,
                &batches,
                &jobs,
                &owner,
                &smashed,
                &mut rejected,
                &mut log,
            )?;

            // 4. Client backward and update.
            let mut out_ce: Vec<Option<Vec<f32>>> = vec![None; jobs.len()];
            let mut out_al: Vec<Option<Vec<f32>>> = vec![None; jobs.len()];
            for j in 0..jobs.len() {
                let i = owner[j];
                if rejected[i] {
                    continue;
                }
                out_ce[j] = dh[j].clone();
                if let Some(gr) = &global_repr {
                    let (_, g) = kl_alignment_grad(&smashed[j], &gr[j], d);
                    let n = batches[i].len() as f32;
                    // The per-sequence KL means are averaged over the client's batch.
                    out_al[j] = Some(g.into_iter().map(|v| v / n).collect());
                }
            }
            let mut g_ce: Vec<AdapterSet<B>> = psets
                .iter()
                .map(|s| s.zeros_like(be))
                .collect::<Result<_>>()?;
            match h.align {
                Align::None | Align::Kl => {
                    if h.align == Align::Kl {
                        for j in 0..jobs.len() {
                            if let (Some(c), Some(a)) = (&mut out_ce[j], &out_al[j]) {
                                flat::axpy(c, h.align_lambda as f64, a);
                            }
                        }
                    }
                    exec.backward(&client_tape, &psets, &mut g_ce, &out_ce)?;
                }
                Align::Proj => {
                    exec.backward(&client_tape, &psets, &mut g_ce, &out_ce)?;
                    let mut g_a: Vec<AdapterSet<B>> = psets
                        .iter()
                        .map(|s| s.zeros_like(be))
                        .collect::<Result<_>>()?;
                    exec.backward(&client_tape, &psets, &mut g_a, &out_al)?;
                    for i in 0..active.len() {
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
                }
            }
            exec.recycle(client_tape);
            // U-shaped: add the tail's gradients (computed during the server step).
            for (i, g) in tail_grads.into_iter().enumerate() {
                if let Some(g) = g {
                    let mut a = flat::flatten(be, &g_ce[i])?;
                    flat::axpy(&mut a, 1.0, &flat::flatten(be, &g)?);
                    flat::assign(be, &mut g_ce[i], &a)?;
                }
            }
            drop(psets);
            for (i, g) in g_ce.into_iter().enumerate() {
                let k = active[i];
                if rejected[i] {
                    excluded[k] = true;
                    continue;
                }
                if let Some(why) = check_finite(be, 0.0, &g)? {
                    log.rejected.push((k, format!("client gradient: {why}")));
                    excluded[k] = true;
                    continue;
                }
                fed.apply(&mut self.personal.opts[k], &mut self.personal.sets[k], &g)?;
                let tokens: usize = batches[i].iter().map(|e| e.ids.len()).sum();
                let s = self.splits[k];
                let act_bytes = 4.0 * (tokens * d) as f64;
                let c = log.client(k);
                c.bytes_up += act_bytes + 8.0 * batches[i].len() as f64;
                c.bytes_down += act_bytes;
                if u > 0 {
                    // The server's output goes down, its gradient comes back up.
                    c.bytes_up += act_bytes;
                    c.bytes_down += act_bytes;
                }
                c.flops += fed.step_flops(s, tokens)
                    + if u > 0 {
                        fed.step_flops(u, tokens)
                    } else {
                        0.0
                    };
            }
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

impl<B: Backend> FlexpSfl<B> {
    /// The server's part of a step: forward and backward of every accepted client's server
    /// segment with G (per-client gradients of G in their own slots), then the G update.
    /// U-shaped: the server segment returns its output, the clients' tails finish the forward
    /// and return its gradient. Returns d loss / d h for each client job, and the tail gradients.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn server(
        mut st: ServerState<'_, B>,
        fed: &Federation<'_, B>,
        active: &[usize],
        batches: &[Vec<&Example>],
        client_jobs: &[SeqJob],
        owner: &[usize],
        smashed: &[Vec<f32>],
        rejected: &mut [bool],
        log: &mut RoundLog,
    ) -> Result<(Vec<Option<Vec<f32>>>, Vec<Option<AdapterSet<B>>>)> {
        let be = fed.backend;
        let exec = fed.exec();
        let l = fed.layers();
        let u = st.tail;
        let h = &fed.hyper;
        let mut dh: Vec<Option<Vec<f32>>> = vec![None; client_jobs.len()];
        let mut tail_grads: Vec<Option<AdapterSet<B>>> = (0..active.len()).map(|_| None).collect();
        // Position of each client job within its client's batch.
        let mut pos = vec![0usize; client_jobs.len()];
        let mut seen = vec![0usize; active.len()];
        for (j, &i) in owner.iter().enumerate() {
            pos[j] = seen[i];
            seen[i] += 1;
        }
        // Sequential mode processes one client per group; sync mode all clients at once.
        let groups: Vec<Vec<usize>> = match h.server_update {
            ServerUpdate::Sync => vec![(0..active.len()).collect()],
            ServerUpdate::Sequential => (0..active.len()).map(|i| vec![i]).collect(),
        };
        for group in groups {
            let members: Vec<usize> = group.into_iter().filter(|&i| !rejected[i]).collect();
            if members.is_empty() {
                continue;
            }
            let mut jobs = Vec::new();
            let mut which = Vec::new();
            for (j, cj) in client_jobs.iter().enumerate() {
                let i = owner[j];
                let Some(slot) = members.iter().position(|&m| m == i) else {
                    continue;
                };
                let label = batches[i][pos[j]].label;
                let output = if u > 0 {
                    Output::Hidden
                } else {
                    Output::Class { label: Some(label) }
                };
                let mut job = SeqJob::new(
                    SeqInput::Hidden(smashed[j].clone()),
                    cj.blocks.end..l - u,
                    0,
                    output,
                );
                job.grad_slot = slot;
                job.loss_weight = 1.0 / batches[i].len() as f32;
                jobs.push(job);
                which.push(j);
            }
            // Vanilla split on a device with concurrent lanes (CUDA streams): each cut's clients
            // run forward and backward on their own lane.
            if u == 0 && be.concurrent_lanes() {
                let (out, dx, grads) = server_sweep_lanes(fed, &*st.global, &jobs, members.len())?;
                let losses = slot_losses(&out, &jobs, members.len());
                Self::finish_group(
                    &mut st,
                    fed,
                    active,
                    &members,
                    &jobs,
                    &which,
                    owner,
                    losses,
                    grads,
                    dx,
                    rejected,
                    &mut dh,
                    &mut tail_grads,
                    log,
                )?;
                continue;
            }
            let (out, tape) = exec.forward(&[&*st.global], &jobs, true)?;
            let tape = tape.ok_or_else(|| Error::Backend("no tape".into()))?;
            let mut losses = vec![0.0f64; members.len()];
            let mut server_out_grads = vec![None; jobs.len()];
            if u == 0 {
                losses = slot_losses(&out, &jobs, members.len());
            } else {
                // The clients finish the forward on their tails and return the gradient.
                let tsets: Vec<&AdapterSet<B>> =
                    members.iter().map(|&i| &st.personal[active[i]]).collect();
                let tjobs: Vec<SeqJob> = out
                    .iter()
                    .zip(&jobs)
                    .zip(&which)
                    .map(|((r, sj), &j)| {
                        let i = owner[j];
                        let mut t = SeqJob::new(
                            SeqInput::Hidden(r.hidden.clone().unwrap_or_default()),
                            l - u..l,
                            sj.grad_slot,
                            Output::Class {
                                label: Some(batches[i][pos[j]].label),
                            },
                        );
                        t.loss_weight = sj.loss_weight;
                        t
                    })
                    .collect();
                if tjobs
                    .iter()
                    .any(|t| matches!(&t.input, SeqInput::Hidden(v) if !finite(v)))
                {
                    for (t, &j) in tjobs.iter().zip(&which) {
                        if matches!(&t.input, SeqInput::Hidden(v) if !finite(v))
                            && !rejected[owner[j]]
                        {
                            rejected[owner[j]] = true;
                            log.rejected
                                .push((active[owner[j]], "non-finite server output".into()));
                        }
                    }
                    return Ok((dh, tail_grads));
                }
                let (tout, ttape) = exec.forward(&tsets, &tjobs, true)?;
                let ttape = ttape.ok_or_else(|| Error::Backend("no tape".into()))?;
                let mut tg: Vec<AdapterSet<B>> = tsets
                    .iter()
                    .map(|s| s.zeros_like(be))
                    .collect::<Result<_>>()?;
                server_out_grads =
                    exec.backward(&ttape, &tsets, &mut tg, &vec![None; tjobs.len()])?;
                exec.recycle(ttape);
                for (n, r) in tout.iter().enumerate() {
                    losses[tjobs[n].grad_slot] +=
                        r.loss.map_or(f64::NAN, |v| v as f64) * tjobs[n].loss_weight as f64;
                }
                for (slot, g) in tg.into_iter().enumerate() {
                    tail_grads[members[slot]] = Some(g);
                }
            }
            let mut grads: Vec<AdapterSet<B>> = members
                .iter()
                .map(|_| st.global.zeros_like(be))
                .collect::<Result<_>>()?;
            let dx = exec.backward(&tape, &[&*st.global], &mut grads, &server_out_grads)?;
            exec.recycle(tape);
            Self::finish_group(
                &mut st,
                fed,
                active,
                &members,
                &jobs,
                &which,
                owner,
                losses,
                grads,
                dx,
                rejected,
                &mut dh,
                &mut tail_grads,
                log,
            )?;
        }
        Ok((dh, tail_grads))
    }

    /// Accepts or rejects each client of a server group from its loss and gradients, hands the
    /// cut gradients back, and applies the aggregated G update.
    #[allow(clippy::too_many_arguments)]
    fn finish_group(
        st: &mut ServerState<'_, B>,
        fed: &Federation<'_, B>,
        active: &[usize],
        members: &[usize],
        jobs: &[SeqJob],
        which: &[usize],
        owner: &[usize],
        losses: Vec<f64>,
        grads: Vec<AdapterSet<B>>,
        dx: Vec<Option<Vec<f32>>>,
        rejected: &mut [bool],
        dh: &mut [Option<Vec<f32>>],
        tail_grads: &mut [Option<AdapterSet<B>>],
        log: &mut RoundLog,
    ) -> Result<()> {
        let be = fed.backend;
        let h = &fed.hyper;
        let hd = fed.model.config.hidden;
        let mut accepted = Vec::new();
        for (slot, &i) in members.iter().enumerate() {
            let k = active[i];
            let bad_dx = jobs
                .iter()
                .zip(&dx)
                .any(|(job, g)| job.grad_slot == slot && !g.as_deref().is_some_and(finite));
            let why = match check_finite(be, losses[slot], &grads[slot])? {
                Some(w) => Some(w),
                None if bad_dx => Some("non-finite gradient at the cut".into()),
                None => None,
            };
            if let Some(w) = why {
                rejected[i] = true;
                tail_grads[i] = None;
                log.rejected.push((k, format!("server step: {w}")));
            } else {
                accepted.push(slot);
                log.loss(k, losses[slot]);
            }
        }
        for (n, &j) in which.iter().enumerate() {
            if !rejected[owner[j]] {
                dh[j] = dx[n].clone();
            }
        }
        let tokens: usize = jobs.iter().map(|j| super::common::seq_tokens(j, hd)).sum();
        let mean_s = members.iter().map(|&i| st.splits[active[i]]).sum::<usize>() / members.len();
        log.server_flops += fed.server_step_flops(mean_s, tokens);
        if accepted.is_empty() {
            return Ok(());
        }
        let flats: Vec<Vec<f32>> = accepted
            .iter()
            .map(|&s| flat::flatten(be, &grads[s]))
            .collect::<Result<_>>()?;
        let agg = match h.server_agg {
            ServerAgg::Mean => {
                flat::weighted_sum(&flats, &vec![1.0 / flats.len() as f64; flats.len()])
            }
            ServerAgg::Proj => flat::projected_mean(&flats),
        };
        let mut g = st.global.zeros_like(be)?;
        flat::assign(be, &mut g, &agg)?;
        fed.apply(st.opt, st.global, &g)?;
        Ok(())
    }
}

/// Each gradient slot's loss: the weighted sum of its jobs' losses (NaN for a job without one, so
/// the client is rejected).
fn slot_losses(out: &[SeqResult], jobs: &[SeqJob], slots: usize) -> Vec<f64> {
    let mut losses = vec![0.0f64; slots];
    for (r, job) in out.iter().zip(jobs) {
        losses[job.grad_slot] += r.loss.map_or(f64::NAN, |v| v as f64) * job.loss_weight as f64;
    }
    losses
}

/// Server forward + backward of the vanilla split's jobs with one lane per cut (each lane a
/// concurrent stream on a GPU, driven by its own host thread so that one lane's host work does
/// not stall the others). Returns the per-job results and cut gradients in `jobs` order and the
/// per-slot gradients of G.
#[allow(clippy::type_complexity)]
fn server_sweep_lanes<B: Backend>(
    fed: &Federation<'_, B>,
    global: &AdapterSet<B>,
    jobs: &[SeqJob],
    slots: usize,
) -> Result<(Vec<SeqResult>, Vec<Option<Vec<f32>>>, Vec<AdapterSet<B>>)> {
    let mut cuts: Vec<usize> = jobs.iter().map(|j| j.blocks.start).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let lanes = fed.backend.fork(cuts.len())?;
    // Jobs and gradient slots of each lane, renumbered locally.
    let parts: Vec<(Vec<usize>, Vec<usize>)> = cuts
        .iter()
        .map(|&c| {
            let idx: Vec<usize> = (0..jobs.len())
                .filter(|&n| jobs[n].blocks.start == c)
                .collect();
            let mut lane_slots: Vec<usize> = idx.iter().map(|&n| jobs[n].grad_slot).collect();
            lane_slots.sort_unstable();
            lane_slots.dedup();
            (idx, lane_slots)
        })
        .collect();
    let results: Vec<Result<_>> = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .iter()
            .zip(&parts)
            .map(|(lane, (idx, lane_slots))| {
                scope.spawn(move || -> Result<_> {
                    let exec = crate::executor::Executor::new(lane, fed.model);
                    let local: Vec<SeqJob> = idx
                        .iter()
                        .map(|&n| {
                            let mut j = jobs[n].clone();
                            j.grad_slot = lane_slots
                                .iter()
                                .position(|&s| s == jobs[n].grad_slot)
                                .expect("slot listed for this lane");
                            j
                        })
                        .collect();
                    let (out, tape) = exec.forward(&[global], &local, true)?;
                    let tape = tape.ok_or_else(|| Error::Backend("no tape".into()))?;
                    let mut grads: Vec<AdapterSet<B>> = lane_slots
                        .iter()
                        .map(|_| global.zeros_like(lane))
                        .collect::<Result<_>>()?;
                    let dx =
                        exec.backward(&tape, &[global], &mut grads, &vec![None; local.len()])?;
                    exec.recycle(tape);
                    Ok((out, dx, grads))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Backend("a server lane panicked".into())))
            })
            .collect()
    });
    fed.backend.join(&lanes)?;
    let mut out: Vec<Option<SeqResult>> = (0..jobs.len()).map(|_| None).collect();
    let mut dx: Vec<Option<Vec<f32>>> = vec![None; jobs.len()];
    let mut grads: Vec<Option<AdapterSet<B>>> = (0..slots).map(|_| None).collect();
    for (res, (idx, lane_slots)) in results.into_iter().zip(&parts) {
        let (o, d, g) = res?;
        for ((n, o), d) in idx.iter().zip(o).zip(d) {
            out[*n] = Some(o);
            dx[*n] = d;
        }
        for (s, g) in lane_slots.iter().zip(g) {
            grads[*s] = Some(g);
        }
    }
    let out = out
        .into_iter()
        .map(|o| o.ok_or_else(|| Error::Backend("a server job produced no result".into())))
        .collect::<Result<_>>()?;
    let grads = grads
        .into_iter()
        .map(|g| match g {
            Some(g) => Ok(g),
            None => global.zeros_like(fed.backend),
        })
        .collect::<Result<_>>()?;
    Ok((out, dx, grads))
}
