//! `fedavg`: clients train all adapters locally from the global ones; the server averages them
//! weighted by the clients' training-set sizes. The personalized model is the global model.

use super::common::{whole, Chain, Federation, RoundLog};
use super::local::train_local;
use super::{flat, Algorithm};
use crate::backend::Backend;
use crate::error::Result;
use crate::executor::AdamWState;
use crate::model::AdapterSet;
use crate::rng::Rng;

/// FedAvg state: the global adapters only (client optimizers restart every round).
pub struct FedAvg<B: Backend> {
    global: AdapterSet<B>,
}

impl<B: Backend> FedAvg<B> {
    /// Global adapters on every block with a head.
    pub fn new(fed: &Federation<'_, B>, rng: &mut Rng) -> Result<Self> {
        Ok(FedAvg {
            global: fed.new_set(0..fed.layers(), true, rng)?,
        })
    }
}

/// One FedAvg round on `global`: local copies trained, then the size-weighted average of the
/// accepted ones written back. Returns the local copies of the accepted clients.
pub(crate) fn fedavg_round<B: Backend>(
    fed: &Federation<'_, B>,
    global: &mut AdapterSet<B>,
    participants: &[usize],
    rng: &mut Rng,
    log: &mut RoundLog,
) -> Result<()> {
    let be = fed.backend;
    let mut sets: Vec<AdapterSet<B>> = participants
        .iter()
        .map(|_| fed.duplicate(global))
        .collect::<Result<_>>()?;
    let mut opts: Vec<AdamWState<B>> = sets
        .iter()
        .map(|s| AdamWState::new(be, s))
        .collect::<Result<_>>()?;
    let ok = train_local(fed, participants, &mut sets, &mut opts, |i| i, rng, log)?;
    let bytes = fed.set_bytes(global);
    let mut flats = Vec::new();
    let mut weights = Vec::new();
    for (i, &k) in participants.iter().enumerate() {
        let c = log.client(k);
        c.bytes_down += bytes;
        if ok[i] {
            c.bytes_up += bytes;
            flats.push(flat::flatten(be, &sets[i])?);
            weights.push(fed.clients[k].train.len() as f64);
        }
    }
    if flats.is_empty() {
        return Ok(());
    }
    let total: f64 = weights.iter().sum();
    weights.iter_mut().for_each(|w| *w /= total);
    flat::assign(be, global, &flat::weighted_sum(&flats, &weights))
}

impl<B: Backend> Algorithm<B> for FedAvg<B> {
    fn name(&self) -> &'static str {
        "fedavg"
    }

    fn round(
        &mut self,
        fed: &Federation<'_, B>,
        participants: &[usize],
        rng: &mut Rng,
    ) -> Result<RoundLog> {
        let mut log = RoundLog::default();
        fedavg_round(fed, &mut self.global, participants, rng, &mut log)?;
        Ok(log)
    }

    fn personal(&self, _k: usize) -> Chain<'_, B> {
        whole(&self.global)
    }

    fn global(&self) -> Option<Chain<'_, B>> {
        Some(self.personal(0))
    }

    fn state(&mut self) -> Vec<(String, &mut AdapterSet<B>)> {
        vec![("global".into(), &mut self.global)]
    }

    fn counters(&mut self) -> Vec<(String, &mut u64)> {
        Vec::new()
    }
}
