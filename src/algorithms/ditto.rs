//! `ditto`: a FedAvg global model w, and per client a personal model v_k trained on
//! CE(v_k) + (lambda/2)·||v_k − w||².

use super::common::{whole, Chain, Federation, PersonalSets, RoundLog};
use super::fedavg::fedavg_round;
use super::{flat, Algorithm};
use crate::backend::Backend;
use crate::error::Result;
use crate::model::AdapterSet;
use crate::rng::Rng;

/// Ditto state.
pub struct Ditto<B: Backend> {
    global: AdapterSet<B>,
    personal: PersonalSets<B>,
}

impl<B: Backend> Ditto<B> {
    /// Global and personal models start from the same initialisation.
    pub fn new(fed: &Federation<'_, B>, rng: &mut Rng) -> Result<Self> {
        let global = fed.new_set(0..fed.layers(), true, rng)?;
        let personal = PersonalSets::copies(fed, &global, fed.num_clients())?;
        Ok(Ditto { global, personal })
    }
}

impl<B: Backend> Algorithm<B> for Ditto<B> {
    fn name(&self) -> &'static str {
        "ditto"
    }

    fn round(
        &mut self,
        fed: &Federation<'_, B>,
        participants: &[usize],
        rng: &mut Rng,
    ) -> Result<RoundLog> {
        let be = fed.backend;
        let mut log = RoundLog::default();
        // The personal models are pulled towards the global model as it was sent this round.
        let w = flat::flatten(be, &self.global)?;
        let lambda = fed.hyper.ditto_lambda as f64;
        let mut ok = vec![true; participants.len()];
        for step in 0..fed.hyper.local_steps {
            fed.step_started(step + 1);
            let live: Vec<usize> = (0..participants.len()).filter(|&i| ok[i]).collect();
            let batches: Vec<_> = live
                .iter()
                .map(|&i| fed.sample_batch(participants[i], rng))
                .collect();
            let outs = {
                let items: Vec<_> = live
                    .iter()
                    .zip(batches)
                    .map(|(&i, b)| (&self.personal.sets[participants[i]], b))
                    .collect();
                fed.full_step(&items)?
            };
            for (&i, o) in live.iter().zip(outs) {
                let k = participants[i];
                let Some(mut g) = o.grads else {
                    ok[i] = false;
                    log.rejected.push((k, o.rejected.unwrap_or_default()));
                    continue;
                };
                let mut gf = flat::flatten(be, &g)?;
                let v = flat::flatten(be, &self.personal.sets[k])?;
                for ((gi, vi), wi) in gf.iter_mut().zip(&v).zip(&w) {
                    *gi = (*gi as f64 + lambda * (*vi as f64 - *wi as f64)) as f32;
                }
                flat::assign(be, &mut g, &gf)?;
                fed.apply(&mut self.personal.opts[k], &mut self.personal.sets[k], &g)?;
                log.client(k).flops += fed.step_flops(fed.layers(), o.tokens);
            }
        }
        fedavg_round(fed, &mut self.global, participants, rng, &mut log)?;
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
