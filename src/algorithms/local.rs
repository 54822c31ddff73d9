//! `local`: every client trains its own adapters on all blocks and its own head; no
//! communication.

use super::common::{whole, Chain, Federation, PersonalSets, RoundLog};
use super::Algorithm;
use crate::backend::Backend;
use crate::error::Result;
use crate::executor::AdamWState;
use crate::model::AdapterSet;
use crate::rng::Rng;

/// Local training state.
pub struct Local<B: Backend> {
    clients: PersonalSets<B>,
}

impl<B: Backend> Local<B> {
    /// One full adapter set per client (all start from the same initialisation).
    pub fn new(fed: &Federation<'_, B>, rng: &mut Rng) -> Result<Self> {
        let init = fed.new_set(0..fed.layers(), true, rng)?;
        Ok(Local {
            clients: PersonalSets::copies(fed, &init, fed.num_clients())?,
        })
    }
}

/// Runs `local_steps` packed full-model steps for `participants` on `sets`, updating each with
/// its optimizer; logs losses, FLOPs and rejections.
pub(crate) fn train_local<B: Backend>(
    fed: &Federation<'_, B>,
    participants: &[usize],
    sets: &mut [AdapterSet<B>],
    opts: &mut [AdamWState<B>],
    index: impl Fn(usize) -> usize,
    rng: &mut Rng,
    log: &mut RoundLog,
) -> Result<Vec<bool>> {
    let mut ok = vec![true; participants.len()];
    for step in 0..fed.hyper.local_steps {
        fed.step_started(step + 1);
        let live: Vec<usize> = (0..participants.len()).filter(|&i| ok[i]).collect();
        if live.is_empty() {
            break;
        }
        let batches: Vec<_> = live
            .iter()
            .map(|&i| fed.sample_batch(participants[i], rng))
            .collect();
        let outs = {
            let items: Vec<(&AdapterSet<B>, Vec<&super::Example>)> = live
                .iter()
                .zip(batches)
                .map(|(&i, b)| (&sets[index(i)], b))
                .collect();
            fed.full_step(&items)?
        };
        for (&i, o) in live.iter().zip(outs) {
            let k = participants[i];
            match o.grads {
                Some(g) => {
                    let j = index(i);
                    fed.apply(&mut opts[j], &mut sets[j], &g)?;
                    log.loss(k, o.loss);
                    log.client(k).flops += fed.step_flops(fed.layers(), o.tokens);
                }
                None => {
                    ok[i] = false;
                    log.rejected.push((k, o.rejected.unwrap_or_default()));
                }
            }
        }
    }
    Ok(ok)
}

impl<B: Backend> Algorithm<B> for Local<B> {
    fn name(&self) -> &'static str {
        "local"
    }

    fn round(
        &mut self,
        fed: &Federation<'_, B>,
        participants: &[usize],
        rng: &mut Rng,
    ) -> Result<RoundLog> {
        let mut log = RoundLog::default();
        train_local(
            fed,
            participants,
            &mut self.clients.sets,
            &mut self.clients.opts,
            |i| participants[i],
            rng,
            &mut log,
        )?;
        Ok(log)
    }

    fn personal(&self, k: usize) -> Chain<'_, B> {
        whole(&self.clients.sets[k])
    }

    fn global(&self) -> Option<Chain<'_, B>> {
        None
    }

    fn no_global_model(&self) -> &'static str {
        "local training never aggregates, so there is no global model"
    }

    fn state(&mut self) -> Vec<(String, &mut AdapterSet<B>)> {
        self.clients.state()
    }

    fn counters(&mut self) -> Vec<(String, &mut u64)> {
        self.clients.counters()
    }
}
