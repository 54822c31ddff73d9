//! FlexP-SFL's server side of a local step (steps 3 and 4 of docs/algorithms.md): every
//! accepted client's server segment runs with G in one packed sweep per update group, each
//! client's G-gradient in its own gradient slot; U-shaped, the clients' tails finish the forward
//! in between. Then the G update from the aggregated slots.

use super::{finite, SeqGrads, Upload};
use crate::algorithms::common::{check_finite, seq_tokens, Federation, RoundLog};
use crate::algorithms::{flat, ServerAgg, ServerUpdate};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::executor::{AdamWState, Output, SeqInput, SeqJob, SeqResult, Tape};
use crate::model::AdapterSet;

/// What the server step reads and updates.
pub(super) struct ServerState<'s, B: Backend> {
    pub(super) global: &'s mut AdapterSet<B>,
    pub(super) opt: &'s mut AdamWState<B>,
    pub(super) personal: &'s [AdapterSet<B>],
    pub(super) tail: usize,
}

/// What the server hands back to the clients for their backward.
pub(super) struct ServerReply<B: Backend> {
    /// d loss / d h_k for each client job (`None` where its client was rejected).
    pub(super) dh: SeqGrads,
    /// U-shaped: each active client's gradient of its tail blocks and head.
    pub(super) tail_grads: Vec<Option<AdapterSet<B>>>,
}

/// What every part of the server's step reads: the run, and what the step's clients sent up.
struct Sweep<'a, 'f, B: Backend> {
    fed: &'a Federation<'f, B>,
    up: &'a Upload,
}

/// Clients whose server segments run in one sweep and whose G-gradients make one G update.
struct Group {
    /// Indices into `active`; member n's gradients go to slot n.
    members: Vec<usize>,
    /// The members' server jobs: h_k through blocks s_k..L-u with G.
    jobs: Vec<SeqJob>,
    /// For each server job, the index of the client job it continues.
    which: Vec<usize>,
}

/// A group's sweep: per-slot loss and G-gradient, and d loss / d h per server job.
struct GroupGrads<B: Backend> {
    losses: Vec<f64>,
    grads: Vec<AdapterSet<B>>,
    dx: SeqGrads,
}

/// Steps 3 and 4 for the active clients not yet rejected: for each update group (all clients
/// with `server_update = sync`, one at a time with `sequential`), the sweep over their server
/// segments, the verdict on each client, and the G update. Clients rejected here are marked in
/// `rejected`.
pub(super) fn sweep<B: Backend>(
    mut st: ServerState<'_, B>,
    fed: &Federation<'_, B>,
    up: &Upload,
    rejected: &mut [bool],
    log: &mut RoundLog,
) -> Result<ServerReply<B>> {
    let mut reply = ServerReply {
        dh: vec![None; up.owner.len()],
        tail_grads: (0..up.active.len()).map(|_| None).collect(),
    };
    let cx = Sweep { fed, up };
    for members in update_groups(fed.hyper.server_update, up.active.len()) {
        let members: Vec<usize> = members.into_iter().filter(|&i| !rejected[i]).collect();
        if members.is_empty() {
            continue;
        }
        let group = group_jobs(&cx, &st, members);
        let result = if st.tail == 0 && fed.backend.concurrent_lanes() {
            sweep_lanes(fed, &*st.global, &group)?
        } else if st.tail == 0 {
            sweep_vanilla(fed, &*st.global, &group)?
        } else {
            match sweep_u_shaped(&cx, &st, &group, rejected, &mut reply, log)? {
                Some(result) => result,
                // A non-finite server output ends the server's part of the step.
                None => return Ok(reply),
            }
        };
        let accepted = judge_members(&cx, &group, &result, rejected, &mut reply, log)?;
        // d loss / d h goes back down to the clients still accepted.
        for (&j, dx) in group.which.iter().zip(result.dx) {
            if !rejected[up.owner[j]] {
                reply.dh[j] = dx;
            }
        }
        log.server_flops += group_flops(&cx, &st, &group);
        update_global(&mut st, fed, &accepted, &result.grads)?;
    }
    Ok(reply)
}

/// The update groups over the `active` indices: sync mode all clients at once, sequential mode
/// one client per group.
fn update_groups(mode: ServerUpdate, clients: usize) -> Vec<Vec<usize>> {
    match mode {
        ServerUpdate::Sync => vec![(0..clients).collect()],
        ServerUpdate::Sequential => (0..clients).map(|i| vec![i]).collect(),
    }
}

/// The server jobs of a group: each member's h_k through blocks s_k..L-u with G (adapter 0),
/// its G-gradient in the member's slot, its loss weighted 1/b for the mean over its batch.
/// Vanilla, the jobs end in the global head with the labels; U-shaped, they return z_k.
fn group_jobs<B: Backend>(
    cx: &Sweep<'_, '_, B>,
    st: &ServerState<'_, B>,
    members: Vec<usize>,
) -> Group {
    let up = cx.up;
    let l = cx.fed.layers();
    let u = st.tail;
    let mut jobs = Vec::new();
    let mut which = Vec::new();
    for (j, &i) in up.owner.iter().enumerate() {
        let Some(slot) = members.iter().position(|&m| m == i) else {
            continue;
        };
        let output = if u > 0 {
            Output::Hidden
        } else {
            up.outputs[j].clone()
        };
        let mut job = SeqJob::new(
            SeqInput::Hidden(up.smashed[j].clone()),
            up.cut[j]..l - u,
            0,
            output,
        );
        job.grad_slot = slot;
        job.loss_weight = 1.0 / up.batch_len[i] as f32;
        jobs.push(job);
        which.push(j);
    }
    Group {
        members,
        jobs,
        which,
    }
}

/// Vanilla split on a device with concurrent lanes (CUDA streams): each cut's clients run
/// forward and backward on their own lane.
fn sweep_lanes<B: Backend>(
    fed: &Federation<'_, B>,
    global: &AdapterSet<B>,
    group: &Group,
) -> Result<GroupGrads<B>> {
    let slots = group.members.len();
    let (out, dx, grads) = server_sweep_lanes(fed, global, &group.jobs, slots)?;
    let losses = slot_losses(&out, &group.jobs, slots);
    Ok(GroupGrads { losses, grads, dx })
}

/// Vanilla split, one packed executor call: F_{s_k..L}(h_k; G) to the loss, and its backward.
fn sweep_vanilla<B: Backend>(
    fed: &Federation<'_, B>,
    global: &AdapterSet<B>,
    group: &Group,
) -> Result<GroupGrads<B>> {
    let slots = group.members.len();
    let (out, tape) = fed.exec().forward(&[global], &group.jobs, true)?;
    let tape = tape.ok_or_else(|| Error::Backend("no tape".into()))?;
    let losses = slot_losses(&out, &group.jobs, slots);
    let (grads, dx) = backward_global(fed, global, tape, slots, &vec![None; group.jobs.len()])?;
    Ok(GroupGrads { losses, grads, dx })
}

/// U-shaped split: z_k = F_{s_k..L-u}(h_k; G); the clients finish on their tails and return
/// d loss / d z_k, which the server back-propagates. `None` when a server output is not
/// finite: its clients are rejected and the server's part of the step ends.
fn sweep_u_shaped<B: Backend>(
    cx: &Sweep<'_, '_, B>,
    st: &ServerState<'_, B>,
    group: &Group,
    rejected: &mut [bool],
    reply: &mut ServerReply<B>,
    log: &mut RoundLog,
) -> Result<Option<GroupGrads<B>>> {
    let fed = cx.fed;
    let (out, tape) = fed.exec().forward(&[&*st.global], &group.jobs, true)?;
    let tape = tape.ok_or_else(|| Error::Backend("no tape".into()))?;
    let Some(tjobs) = tail_jobs(cx, st, group, &out, rejected, log) else {
        return Ok(None);
    };
    let (losses, dz) = client_tails(cx, st, group, &tjobs, reply)?;
    let (grads, dx) = backward_global(fed, &*st.global, tape, group.members.len(), &dz)?;
    Ok(Some(GroupGrads { losses, grads, dx }))
}

/// The clients' tail jobs: z_k through blocks L-u..L with P_k to the personal head and the
/// labels, in the server job's slot and loss weight. `None` (after rejecting their clients)
/// when any z_k is not finite.
fn tail_jobs<B: Backend>(
    cx: &Sweep<'_, '_, B>,
    st: &ServerState<'_, B>,
    group: &Group,
    out: &[SeqResult],
    rejected: &mut [bool],
    log: &mut RoundLog,
) -> Option<Vec<SeqJob>> {
    let l = cx.fed.layers();
    let tjobs: Vec<SeqJob> = out
        .iter()
        .zip(&group.jobs)
        .zip(&group.which)
        .map(|((r, sj), &j)| {
            let mut t = SeqJob::new(
                SeqInput::Hidden(r.hidden.clone().unwrap_or_default()),
                l - st.tail..l,
                sj.grad_slot,
                cx.up.outputs[j].clone(),
            );
            t.loss_weight = sj.loss_weight;
            t
        })
        .collect();
    let bad = |t: &SeqJob| matches!(&t.input, SeqInput::Hidden(v) if !finite(v));
    if !tjobs.iter().any(bad) {
        return Some(tjobs);
    }
    for (t, &j) in tjobs.iter().zip(&group.which) {
        let i = cx.up.owner[j];
        if bad(t) && !rejected[i] {
            rejected[i] = true;
            log.rejected
                .push((cx.up.active[i], "non-finite server output".into()));
        }
    }
    None
}

/// The clients' tails, one packed call: forward to the loss and backward with P_k. Keeps
/// each member's tail gradient in `reply` and returns the per-slot losses and d loss / d z.
fn client_tails<B: Backend>(
    cx: &Sweep<'_, '_, B>,
    st: &ServerState<'_, B>,
    group: &Group,
    tjobs: &[SeqJob],
    reply: &mut ServerReply<B>,
) -> Result<(Vec<f64>, SeqGrads)> {
    let be = cx.fed.backend;
    let exec = cx.fed.exec();
    let tsets: Vec<&AdapterSet<B>> = group
        .members
        .iter()
        .map(|&i| &st.personal[cx.up.active[i]])
        .collect();
    let (tout, ttape) = exec.forward(&tsets, tjobs, true)?;
    let ttape = ttape.ok_or_else(|| Error::Backend("no tape".into()))?;
    let mut tg: Vec<AdapterSet<B>> = tsets
        .iter()
        .map(|s| s.zeros_like(be))
        .collect::<Result<_>>()?;
    let dz = exec.backward(&ttape, &tsets, &mut tg, &vec![None; tjobs.len()])?;
    exec.recycle(ttape);
    let losses = slot_losses(&tout, tjobs, group.members.len());
    for (slot, g) in tg.into_iter().enumerate() {
        reply.tail_grads[group.members[slot]] = Some(g);
    }
    Ok((losses, dz))
}

/// Backward of a server sweep's tape with G: each slot's G-gradient and d loss / d h per job,
/// from the given gradients of the sweep's outputs (`None`: the outputs are losses).
fn backward_global<B: Backend>(
    fed: &Federation<'_, B>,
    global: &AdapterSet<B>,
    tape: Tape<B>,
    slots: usize,
    out_grads: &[Option<Vec<f32>>],
) -> Result<(Vec<AdapterSet<B>>, SeqGrads)> {
    let exec = fed.exec();
    let mut grads: Vec<AdapterSet<B>> = (0..slots)
        .map(|_| global.zeros_like(fed.backend))
        .collect::<Result<_>>()?;
    let dx = exec.backward(&tape, &[global], &mut grads, out_grads)?;
    exec.recycle(tape);
    Ok((grads, dx))
}

/// Accepts or rejects each member from its loss and gradients (G's slot, and d loss / d h);
/// a rejected member's tail gradient is dropped. Returns the accepted slots.
fn judge_members<B: Backend>(
    cx: &Sweep<'_, '_, B>,
    group: &Group,
    result: &GroupGrads<B>,
    rejected: &mut [bool],
    reply: &mut ServerReply<B>,
    log: &mut RoundLog,
) -> Result<Vec<usize>> {
    let mut accepted = Vec::new();
    for (slot, &i) in group.members.iter().enumerate() {
        let k = cx.up.active[i];
        let bad_dx = group
            .jobs
            .iter()
            .zip(&result.dx)
            .any(|(job, g)| job.grad_slot == slot && !g.as_deref().is_some_and(finite));
        let why = match check_finite(cx.fed.backend, result.losses[slot], &result.grads[slot])? {
            Some(w) => Some(w),
            None if bad_dx => Some("non-finite gradient at the cut".into()),
            None => None,
        };
        if let Some(w) = why {
            rejected[i] = true;
            reply.tail_grads[i] = None;
            log.rejected.push((k, format!("server step: {w}")));
        } else {
            accepted.push(slot);
            log.loss(k, result.losses[slot]);
        }
    }
    Ok(accepted)
}

/// The server's FLOPs for a group's sweep: for each sequence, the cost model at its own cut,
/// scaled to its tokens.
fn group_flops<B: Backend>(cx: &Sweep<'_, '_, B>, st: &ServerState<'_, B>, group: &Group) -> f64 {
    let fed = cx.fed;
    // Each sequence from its own cut: one mean cut for the group (rounded down) charged mixed
    // cuts wrongly.
    group
        .jobs
        .iter()
        .map(|j| {
            fed.server_step_flops_u(
                j.blocks.start,
                st.tail,
                seq_tokens(j, fed.model.config.hidden),
            )
        })
        .sum()
}

/// Step 4: G ← AdamW(G, Agg) over the accepted slots' gradients, Agg their mean or (`server_agg
/// = proj`) their mean after projecting out conflicts with the mean; no update without any.
fn update_global<B: Backend>(
    st: &mut ServerState<'_, B>,
    fed: &Federation<'_, B>,
    accepted: &[usize],
    grads: &[AdapterSet<B>],
) -> Result<()> {
    if accepted.is_empty() {
        return Ok(());
    }
    let be = fed.backend;
    let flats: Vec<Vec<f32>> = accepted
        .iter()
        .map(|&s| flat::flatten(be, &grads[s]))
        .collect::<Result<_>>()?;
    let agg = match fed.hyper.server_agg {
        ServerAgg::Mean => flat::weighted_sum(&flats, &vec![1.0 / flats.len() as f64; flats.len()]),
        ServerAgg::Proj => flat::projected_mean(&flats),
    };
    let mut g = st.global.zeros_like(be)?;
    flat::assign(be, &mut g, &agg)?;
    fed.apply(st.opt, st.global, &g)
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

/// What a lane sweep (or one lane of it) hands back: its jobs' results and cut gradients in
/// job order, and the G-gradient of each of its slots.
type SweepOut<B> = (Vec<SeqResult>, SeqGrads, Vec<AdapterSet<B>>);

/// One lane's share of a lane sweep: the jobs of one cut.
struct LanePart {
    /// Indices of the lane's jobs in the sweep's jobs.
    idx: Vec<usize>,
    /// The sweep's gradient slots the lane fills; local slot n is `slots[n]`.
    slots: Vec<usize>,
}

/// Server forward + backward of the vanilla split's jobs with one lane per cut (each lane a
/// concurrent stream on a GPU, driven by its own host thread so that one lane's host work does
/// not stall the others). Returns the per-job results and cut gradients in `jobs` order and the
/// per-slot gradients of G.
fn server_sweep_lanes<B: Backend>(
    fed: &Federation<'_, B>,
    global: &AdapterSet<B>,
    jobs: &[SeqJob],
    slots: usize,
) -> Result<SweepOut<B>> {
    let parts = lane_parts(jobs);
    let lanes = fed.backend.fork(parts.len())?;
    let model = fed.model;
    let results: Vec<Result<SweepOut<B>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .iter()
            .zip(&parts)
            .map(|(lane, part)| scope.spawn(move || run_lane(lane, model, global, jobs, part)))
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
    merge_lanes(fed.backend, global, results, &parts, jobs.len(), slots)
}

/// The lanes of a sweep, one per distinct cut in ascending order, each with its jobs and the
/// gradient slots they use.
fn lane_parts(jobs: &[SeqJob]) -> Vec<LanePart> {
    let mut cuts: Vec<usize> = jobs.iter().map(|j| j.blocks.start).collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts.iter()
        .map(|&c| {
            let idx: Vec<usize> = (0..jobs.len())
                .filter(|&n| jobs[n].blocks.start == c)
                .collect();
            let mut slots: Vec<usize> = idx.iter().map(|&n| jobs[n].grad_slot).collect();
            slots.sort_unstable();
            slots.dedup();
            LanePart { idx, slots }
        })
        .collect()
}

/// One lane's forward and backward with G, its jobs' gradient slots renumbered locally.
fn run_lane<B: Backend>(
    lane: &B,
    model: &crate::model::Model<B>,
    global: &AdapterSet<B>,
    jobs: &[SeqJob],
    part: &LanePart,
) -> Result<SweepOut<B>> {
    let exec = crate::executor::Executor::new(lane, model);
    let local: Vec<SeqJob> = part
        .idx
        .iter()
        .map(|&n| {
            let mut j = jobs[n].clone();
            j.grad_slot = part
                .slots
                .iter()
                .position(|&s| s == jobs[n].grad_slot)
                .expect("slot listed for this lane");
            j
        })
        .collect();
    let (out, tape) = exec.forward(&[global], &local, true)?;
    let tape = tape.ok_or_else(|| Error::Backend("no tape".into()))?;
    let mut grads: Vec<AdapterSet<B>> = part
        .slots
        .iter()
        .map(|_| global.zeros_like(lane))
        .collect::<Result<_>>()?;
    let dx = exec.backward(&tape, &[global], &mut grads, &vec![None; local.len()])?;
    exec.recycle(tape);
    Ok((out, dx, grads))
}

/// Puts the lanes' results back in `jobs` order and their gradients in the sweep's slots (a
/// slot no lane filled gets zeros).
fn merge_lanes<B: Backend>(
    be: &B,
    global: &AdapterSet<B>,
    results: Vec<Result<SweepOut<B>>>,
    parts: &[LanePart],
    jobs: usize,
    slots: usize,
) -> Result<SweepOut<B>> {
    let mut out: Vec<Option<SeqResult>> = (0..jobs).map(|_| None).collect();
    let mut dx: SeqGrads = vec![None; jobs];
    let mut grads: Vec<Option<AdapterSet<B>>> = (0..slots).map(|_| None).collect();
    for (res, part) in results.into_iter().zip(parts) {
        let (o, d, g) = res?;
        for ((n, o), d) in part.idx.iter().zip(o).zip(d) {
            out[*n] = Some(o);
            dx[*n] = d;
        }
        for (s, g) in part.slots.iter().zip(g) {
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
            None => global.zeros_like(be),
        })
        .collect::<Result<_>>()?;
    Ok((out, dx, grads))
}
