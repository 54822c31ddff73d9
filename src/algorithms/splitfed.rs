//! SplitFed. One cut s for every client (the smallest of the planned cuts, so every client can
//! afford it). Client-side adapters are trained per client and averaged (FedAvg) each round.
//! V1: a server-side copy per client, trained in parallel, averaged at the end of the round.
//! V2: one shared server-side copy, updated client after client.

use super::common::{check_finite, Chain, Example, Federation, RoundLog};
use super::{flat, Algorithm};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::executor::{AdamWState, Output, SeqInput, SeqJob};
use crate::model::AdapterSet;
use crate::rng::Rng;

/// SplitFed state.
pub struct SplitFed<B: Backend> {
    client: AdapterSet<B>,
    server: AdapterSet<B>,
    server_opt: AdamWState<B>,
    cut: usize,
    v2: bool,
}

impl<B: Backend> SplitFed<B> {
    /// Client adapters on 0..s, server adapters on s..L with the head.
    pub fn new(fed: &Federation<'_, B>, rng: &mut Rng, v2: bool) -> Result<Self> {
        let l = fed.layers();
        let cut = fed.splits.iter().copied().min().unwrap_or(1);
        if cut == 0 || cut >= l {
            return Err(Error::Input(format!(
                "SplitFed cut {cut} outside 1..{}",
                l - 1
            )));
        }
        let client = fed.new_set(0..cut, false, rng)?;
        let server = fed.new_set(cut..l, true, rng)?;
        let server_opt = AdamWState::new(fed.backend, &server)?;
        Ok(SplitFed {
            client,
            server,
            server_opt,
            cut,
            v2,
        })
    }
}

fn finite(v: &[f32]) -> bool {
    v.iter().all(|x| x.is_finite())
}

impl<B: Backend> Algorithm<B> for SplitFed<B> {
    fn name(&self) -> &'static str {
        if self.v2 {
            "sfl-v2"
        } else {
            "sfl-v1"
        }
    }

    fn round(
        &mut self,
        fed: &Federation<'_, B>,
        participants: &[usize],
        rng: &mut Rng,
    ) -> Result<RoundLog> {
        let be = fed.backend;
        let exec = fed.exec();
        let (l, s, d) = (fed.layers(), self.cut, fed.model.config.hidden);
        let mut log = RoundLog::default();
        let n = participants.len();
        let mut clients: Vec<AdapterSet<B>> = (0..n)
            .map(|_| fed.duplicate(&self.client))
            .collect::<Result<_>>()?;
        let mut copts: Vec<AdamWState<B>> = clients
            .iter()
            .map(|c| AdamWState::new(be, c))
            .collect::<Result<_>>()?;
        let mut servers: Vec<AdapterSet<B>> = if self.v2 {
            Vec::new()
        } else {
            (0..n)
                .map(|_| fed.duplicate(&self.server))
                .collect::<Result<_>>()?
        };
        let mut sopts: Vec<AdamWState<B>> = servers
            .iter()
            .map(|c| AdamWState::new(be, c))
            .collect::<Result<_>>()?;
        let mut ok = vec![true; n];
        for step in 0..fed.hyper.local_steps {
            fed.step_started(step + 1);
            let live: Vec<usize> = (0..n).filter(|&i| ok[i]).collect();
            if live.is_empty() {
                break;
            }
            let batches: Vec<Vec<&Example>> = live
                .iter()
                .map(|&i| fed.sample_batch(participants[i], rng))
                .collect();
            let csets: Vec<&AdapterSet<B>> = live.iter().map(|&i| &clients[i]).collect();
            let mut jobs = Vec::new();
            let mut owner = Vec::new();
            for (li, b) in batches.iter().enumerate() {
                for e in b {
                    jobs.push(SeqJob::new(
                        SeqInput::tokens(e.ids.clone()),
                        0..s,
                        li,
                        Output::Hidden,
                    ));
                    owner.push(li);
                }
            }
            let (cout, ctape) = exec.forward(&csets, &jobs, true)?;
            let ctape = ctape.ok_or_else(|| Error::Backend("no tape".into()))?;
            let labels: Vec<Output> = batches
                .iter()
                .flat_map(|b| b.iter().map(|e| e.output(true)))
                .collect();
            let mut sjobs: Vec<SeqJob> = cout
                .into_iter()
                .zip(&owner)
                .zip(&labels)
                .map(|((r, &li), y)| {
                    let mut j = SeqJob::new(
                        SeqInput::Hidden(r.hidden.unwrap_or_default()),
                        s..l,
                        li,
                        y.clone(),
                    );
                    j.loss_weight = 1.0 / batches[li].len() as f32;
                    j
                })
                .collect();
            // A client whose activations are not finite is rejected before the server sees
            // them: in V2 they would otherwise reach the shared server copy.
            let mut bad = vec![false; live.len()];
            for j in &sjobs {
                if let SeqInput::Hidden(h) = &j.input {
                    bad[j.adapter] |= !finite(h);
                }
            }
            for (li, _) in bad.iter().enumerate().filter(|(_, &b)| b) {
                log.rejected.push((
                    participants[live[li]],
                    "client activations: non-finite values".into(),
                ));
            }
            // Server steps: V1 all copies in one packed sweep, V2 one client after another on the
            // shared copy.
            let mut dh: Vec<Option<Vec<f32>>> = vec![None; sjobs.len()];
            let mut losses = vec![0.0f64; live.len()];
            let groups: Vec<Vec<usize>> = if self.v2 {
                (0..live.len()).map(|i| vec![i]).collect()
            } else {
                vec![(0..live.len()).collect()]
            };
            for group in groups {
                let idx: Vec<usize> = (0..sjobs.len())
                    .filter(|&j| group.contains(&owner[j]) && !bad[owner[j]])
                    .collect();
                if idx.is_empty() {
                    continue;
                }
                let gj: Vec<SeqJob> = idx
                    .iter()
                    .map(|&j| {
                        let mut x = sjobs[j].clone();
                        if self.v2 {
                            x.adapter = 0;
                            x.grad_slot = 0;
                        }
                        x
                    })
                    .collect();
                let ssets: Vec<&AdapterSet<B>> = if self.v2 {
                    vec![&self.server]
                } else {
                    live.iter().map(|&i| &servers[i]).collect()
                };
                let (out, tape) = exec.forward(&ssets, &gj, true)?;
                let tape = tape.ok_or_else(|| Error::Backend("no tape".into()))?;
                let mut grads: Vec<AdapterSet<B>> = ssets
                    .iter()
                    .map(|x| x.zeros_like(be))
                    .collect::<Result<_>>()?;
                let dx = exec.backward(&tape, &ssets, &mut grads, &vec![None; gj.len()])?;
                exec.recycle(tape);
                drop(ssets);
                for (m, &j) in idx.iter().enumerate() {
                    losses[owner[j]] +=
                        out[m].loss.map_or(f64::NAN, |v| v as f64) * sjobs[j].loss_weight as f64;
                    dh[j] = dx[m].clone();
                }
                for (slot, g) in grads.iter().enumerate() {
                    // V1: slot is the live index; V2: the group is one client.
                    let li = if self.v2 { group[0] } else { slot };
                    if bad[li] {
                        continue;
                    }
                    if let Some(w) = check_finite(be, losses[li], g)? {
                        bad[li] = true;
                        log.rejected
                            .push((participants[live[li]], format!("server step: {w}")));
                        continue;
                    }
                    if self.v2 {
                        fed.apply(&mut self.server_opt, &mut self.server, g)?;
                    } else {
                        let i = live[li];
                        fed.apply(&mut sopts[i], &mut servers[i], g)?;
                    }
                }
            }
            for (j, g) in dh.iter_mut().enumerate() {
                if bad[owner[j]] {
                    *g = None;
                }
            }
            let mut cgrads: Vec<AdapterSet<B>> = csets
                .iter()
                .map(|x| x.zeros_like(be))
                .collect::<Result<_>>()?;
            exec.backward(&ctape, &csets, &mut cgrads, &dh)?;
            exec.recycle(ctape);
            drop(csets);
            for (li, g) in cgrads.iter().enumerate() {
                let i = live[li];
                let k = participants[i];
                if bad[li] {
                    ok[i] = false;
                    continue;
                }
                if let Some(w) = check_finite(be, 0.0, g)? {
                    ok[i] = false;
                    log.rejected.push((k, format!("client gradient: {w}")));
                    continue;
                }
                fed.apply(&mut copts[i], &mut clients[i], g)?;
                log.loss(k, losses[li]);
                let tokens: usize = batches[li].iter().map(|e| e.ids.len()).sum();
                let c = log.client(k);
                c.bytes_up += 4.0 * (tokens * d) as f64
                    + 8.0 * batches[li].iter().map(|e| e.targets()).sum::<usize>() as f64;
                c.bytes_down += 4.0 * (tokens * d) as f64;
                c.flops += fed.step_flops(s, tokens);
                log.server_flops += fed.server_step_flops(s, tokens);
            }
            sjobs.clear();
        }
        // FedAvg of the client-side copies (and, V1, of the server-side copies).
        let cbytes = fed.set_bytes(&self.client);
        let mut cf = Vec::new();
        let mut sf = Vec::new();
        let mut w = Vec::new();
        for (i, &k) in participants.iter().enumerate() {
            log.client(k).bytes_down += cbytes;
            if ok[i] {
                log.client(k).bytes_up += cbytes;
                cf.push(flat::flatten(be, &clients[i])?);
                if !self.v2 {
                    sf.push(flat::flatten(be, &servers[i])?);
                }
                w.push(fed.clients[k].train.len() as f64);
            }
        }
        if !cf.is_empty() {
            let total: f64 = w.iter().sum();
            w.iter_mut().for_each(|x| *x /= total);
            flat::assign(be, &mut self.client, &flat::weighted_sum(&cf, &w))?;
            if !self.v2 {
                flat::assign(be, &mut self.server, &flat::weighted_sum(&sf, &w))?;
            }
        }
        Ok(log)
    }

    fn personal(&self, _k: usize) -> Chain<'_, B> {
        let l = self.server.blocks.len();
        Chain {
            parts: vec![(0..self.cut, &self.client), (self.cut..l, &self.server)],
        }
    }

    fn global(&self) -> Option<Chain<'_, B>> {
        Some(self.personal(0))
    }

    fn state(&mut self) -> Vec<(String, &mut AdapterSet<B>)> {
        vec![
            ("client".into(), &mut self.client),
            ("server".into(), &mut self.server),
            ("server.m".into(), &mut self.server_opt.m),
            ("server.v".into(), &mut self.server_opt.v),
        ]
    }

    fn counters(&mut self) -> Vec<(String, &mut u64)> {
        vec![("server".into(), &mut self.server_opt.step)]
    }
}
