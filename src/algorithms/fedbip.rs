//! FedBip: bi-level personalization by task-vector aggregation. Client i trains from its own
//! aggregate θ̄_i and uploads τ_i = θ_i − θ̄_i; the server sets θ̄_i += Σ_j p_ij τ_j with
//! p_ij from the cosine similarities of the task vectors (FedBip-L: per block).

use super::common::{whole, Chain, Federation, RoundLog};
use super::local::train_local;
use super::{flat, Algorithm, Granularity, Negative};
use crate::backend::Backend;
use crate::error::Result;
use crate::executor::AdamWState;
use crate::model::AdapterSet;
use crate::rng::Rng;

/// FedBip state: one aggregate per client.
pub struct FedBip<B: Backend> {
    aggregates: Vec<AdapterSet<B>>,
    per_block: bool,
}

impl<B: Backend> FedBip<B> {
    /// Every client's aggregate starts from the same initialisation. FedBip needs the whole model
    /// on every device; the planner's report says which clients could not afford it.
    pub fn new(fed: &Federation<'_, B>, rng: &mut Rng, per_block: bool) -> Result<Self> {
        let init = fed.new_set(0..fed.layers(), true, rng)?;
        let aggregates = (0..fed.num_clients())
            .map(|_| fed.duplicate(&init))
            .collect::<Result<_>>()?;
        Ok(FedBip {
            aggregates,
            per_block,
        })
    }
}

/// Aggregation weights p_ij for one group of task vectors: cosine similarities, negatives
/// clipped to zero (or kept, normalised by absolute sum), rows normalised.
pub fn similarity_weights(taus: &[&[f32]], negative: Negative) -> Vec<Vec<f64>> {
    let n = taus.len();
    let norms: Vec<f64> = taus.iter().map(|t| flat::dot(t, t).sqrt()).collect();
    (0..n)
        .map(|i| {
            let c: Vec<f64> = (0..n)
                .map(|j| {
                    let d = norms[i] * norms[j];
                    let cos = if d > 0.0 {
                        flat::dot(taus[i], taus[j]) / d
                    } else if i == j {
                        1.0
                    } else {
                        0.0
                    };
                    match negative {
                        Negative::Clip => cos.max(0.0),
                        Negative::Keep => cos,
                    }
                })
                .collect();
            let z: f64 = c.iter().map(|v| v.abs()).sum();
            if z > 0.0 {
                c.iter().map(|v| v / z).collect()
            } else {
                (0..n).map(|j| (i == j) as u8 as f64).collect()
            }
        })
        .collect()
}

impl<B: Backend> Algorithm<B> for FedBip<B> {
    fn name(&self) -> &'static str {
        if self.per_block {
            "fedbip-l"
        } else {
            "fedbip"
        }
    }

    fn round(
        &mut self,
        fed: &Federation<'_, B>,
        participants: &[usize],
        rng: &mut Rng,
    ) -> Result<RoundLog> {
        let be = fed.backend;
        let mut log = RoundLog::default();
        let mut sets: Vec<AdapterSet<B>> = participants
            .iter()
            .map(|&k| fed.duplicate(&self.aggregates[k]))
            .collect::<Result<_>>()?;
        let mut opts: Vec<AdamWState<B>> = sets
            .iter()
            .map(|s| AdamWState::new(be, s))
            .collect::<Result<_>>()?;
        let ok = train_local(
            fed,
            participants,
            &mut sets,
            &mut opts,
            |i| i,
            rng,
            &mut log,
        )?;
        let bytes = fed.set_bytes(&sets[0]);
        let mut who = Vec::new();
        let mut taus = Vec::new();
        for (i, &k) in participants.iter().enumerate() {
            log.client(k).bytes_down += bytes;
            if ok[i] {
                log.client(k).bytes_up += bytes;
                let mut t = flat::flatten(be, &sets[i])?;
                flat::axpy(&mut t, -1.0, &flat::flatten(be, &self.aggregates[k])?);
                who.push(k);
                taus.push(t);
            }
        }
        if who.is_empty() {
            return Ok(log);
        }
        let g = if self.per_block {
            Granularity::Block
        } else {
            Granularity::All
        };
        let groups = flat::groups(be, &self.aggregates[who[0]], g);
        let mut updates: Vec<Vec<f32>> = who.iter().map(|_| vec![0.0; taus[0].len()]).collect();
        for r in groups {
            let parts: Vec<&[f32]> = taus.iter().map(|t| &t[r.clone()]).collect();
            let p = similarity_weights(&parts, fed.hyper.negative);
            for (i, upd) in updates.iter_mut().enumerate() {
                for (j, part) in parts.iter().enumerate() {
                    flat::axpy(&mut upd[r.clone()], p[i][j], part);
                }
            }
        }
        for (i, &k) in who.iter().enumerate() {
            let mut a = flat::flatten(be, &self.aggregates[k])?;
            flat::axpy(&mut a, 1.0, &updates[i]);
            flat::assign(be, &mut self.aggregates[k], &a)?;
        }
        Ok(log)
    }

    fn personal(&self, k: usize) -> Chain<'_, B> {
        whole(&self.aggregates[k])
    }

    fn global(&self) -> Option<Chain<'_, B>> {
        None
    }

    fn no_global_model(&self) -> &'static str {
        "FedBip aggregates per client (similarity-weighted), so there is no single global model"
    }

    fn state(&mut self) -> Vec<(String, &mut AdapterSet<B>)> {
        self.aggregates
            .iter_mut()
            .enumerate()
            .map(|(k, a)| (format!("client{k}"), a))
            .collect()
    }

    fn counters(&mut self) -> Vec<(String, &mut u64)> {
        Vec::new()
    }
}
