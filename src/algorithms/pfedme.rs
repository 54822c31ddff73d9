//! `pfedme`: personalized models θ_k as approximate Moreau-envelope minimisers around local
//! models w_k: K inner steps on CE(θ) + (λ/2)·||θ − w_k||², then w_k ← w_k − η·λ·(w_k − θ_k);
//! the server mixes w ← (1 − β)·w + β·mean(w_k).

use super::common::{whole, Chain, Federation, PersonalSets, RoundLog};
use super::{flat, Algorithm};
use crate::backend::Backend;
use crate::error::Result;
use crate::model::AdapterSet;
use crate::rng::Rng;

/// pFedMe state.
pub struct PFedMe<B: Backend> {
    global: AdapterSet<B>,
    personal: PersonalSets<B>,
}

impl<B: Backend> PFedMe<B> {
    /// θ_k and w start from the same initialisation.
    pub fn new(fed: &Federation<'_, B>, rng: &mut Rng) -> Result<Self> {
        let global = fed.new_set(0..fed.layers(), true, rng)?;
        let personal = PersonalSets::copies(fed, &global, fed.num_clients())?;
        Ok(PFedMe { global, personal })
    }
}

impl<B: Backend> Algorithm<B> for PFedMe<B> {
    fn name(&self) -> &'static str {
        "pfedme"
    }

    fn round(
        &mut self,
        fed: &Federation<'_, B>,
        participants: &[usize],
        rng: &mut Rng,
    ) -> Result<RoundLog> {
        let be = fed.backend;
        let h = &fed.hyper;
        let (lambda, eta) = (h.pfedme_lambda as f64, h.pfedme_eta as f64);
        let mut log = RoundLog::default();
        let w0 = flat::flatten(be, &self.global)?;
        let mut local: Vec<Vec<f32>> = participants.iter().map(|_| w0.clone()).collect();
        let mut ok = vec![true; participants.len()];
        for step in 0..h.local_steps {
            fed.step_started(step + 1);
            let live: Vec<usize> = (0..participants.len()).filter(|&i| ok[i]).collect();
            let batches: Vec<_> = live
                .iter()
                .map(|&i| fed.sample_batch(participants[i], rng))
                .collect();
            // K inner steps on θ with the same batch (the Moreau-envelope subproblem).
            for _ in 0..h.pfedme_inner_steps.max(1) {
                let outs = {
                    let items: Vec<_> = live
                        .iter()
                        .zip(&batches)
                        .map(|(&i, b)| (&self.personal.sets[participants[i]], b.clone()))
                        .collect();
                    fed.full_step(&items)?
                };
                for (&i, o) in live.iter().zip(outs) {
                    let k = participants[i];
                    if !ok[i] {
                        continue;
                    }
                    let Some(mut g) = o.grads else {
                        ok[i] = false;
                        log.rejected.push((k, o.rejected.unwrap_or_default()));
                        continue;
                    };
                    let mut gf = flat::flatten(be, &g)?;
                    let th = flat::flatten(be, &self.personal.sets[k])?;
                    for ((gi, ti), wi) in gf.iter_mut().zip(&th).zip(&local[i]) {
                        *gi = (*gi as f64 + lambda * (*ti as f64 - *wi as f64)) as f32;
                    }
                    flat::assign(be, &mut g, &gf)?;
                    fed.apply(&mut self.personal.opts[k], &mut self.personal.sets[k], &g)?;
                    log.loss(k, o.loss);
                    log.client(k).flops += fed.step_flops(fed.layers(), o.tokens);
                }
            }
            for &i in &live {
                if ok[i] {
                    let th = flat::flatten(be, &self.personal.sets[participants[i]])?;
                    for (wi, ti) in local[i].iter_mut().zip(&th) {
                        *wi = (*wi as f64 - eta * lambda * (*wi as f64 - *ti as f64)) as f32;
                    }
                }
            }
        }
        let bytes = fed.set_bytes(&self.global);
        let mut kept = Vec::new();
        for (i, &k) in participants.iter().enumerate() {
            log.client(k).bytes_down += bytes;
            if ok[i] {
                log.client(k).bytes_up += bytes;
                kept.push(local[i].clone());
            }
        }
        if !kept.is_empty() {
            let mean = flat::weighted_sum(&kept, &vec![1.0 / kept.len() as f64; kept.len()]);
            let beta = h.pfedme_beta as f64;
            let next: Vec<f32> = w0
                .iter()
                .zip(&mean)
                .map(|(w, m)| ((1.0 - beta) * *w as f64 + beta * *m as f64) as f32)
                .collect();
            flat::assign(be, &mut self.global, &next)?;
        }
        Ok(log)
    }

    fn personal(&self, k: usize) -> Chain<'_, B> {
        whole(&self.personal.sets[k])
    }

    fn global(&self) -> Option<Chain<'_, B>> {
        Some(whole(&self.global))
    }

    fn state(&mut self) -> Vec<(String, &mut AdapterSet<B>)> {
        let mut v: Vec<(String, &mut AdapterSet<B>)> = vec![("global".into(), &mut self.global)];
        v.extend(self.personal.state());
        v
    }

    fn counters(&mut self) -> Vec<(String, &mut u64)> {
        self.personal.counters()
    }
}
