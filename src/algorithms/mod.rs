//! Federated and split-learning algorithms: FlexP-SFL, FedBip, and the baselines.
//!
//! Each algorithm only orchestrates: it says which sequences run which blocks with which adapter
//! sets and gradient slots (through [`crate::executor::Executor`]), and how updates combine.
//! Adding one never touches the executor. The equations are in docs/algorithms.md.

mod common;
pub mod ditto;
pub mod fedavg;
pub mod fedbip;
pub mod flat;
pub mod flexp_sfl;
pub mod local;
pub mod pfedme;
pub mod splitfed;

pub use common::{
    evaluate, sample_batch_indices, whole, Chain, ClientCost, ClientData, EvalStats, Example,
    Federation, Label, RoundLog, StepOut,
};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::AdapterSet;
use crate::rng::Rng;

/// The algorithms `flexp-run` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlgorithmKind {
    /// FlexP-SFL: personal client-side adapters, global server-side adapters, alignment.
    FlexpSfl,
    /// FedBip: per-client aggregates by task-vector similarity.
    FedBip,
    /// FedBip-L: FedBip with per-block similarities.
    FedBipL,
    /// Every client trains alone.
    Local,
    /// Federated averaging of full adapters.
    FedAvg,
    /// SplitFed V1: a server copy per client, averaged each round.
    SflV1,
    /// SplitFed V2: one server copy updated client after client.
    SflV2,
    /// pFedMe: Moreau-envelope personalization.
    PFedMe,
    /// Ditto: FedAvg global model plus proximal personal models.
    Ditto,
}

impl AlgorithmKind {
    /// Every algorithm with its configuration name.
    pub const ALL: [(AlgorithmKind, &'static str); 9] = [
        (AlgorithmKind::FlexpSfl, "flexp-sfl"),
        (AlgorithmKind::FedBip, "fedbip"),
        (AlgorithmKind::FedBipL, "fedbip-l"),
        (AlgorithmKind::Local, "local"),
        (AlgorithmKind::FedAvg, "fedavg"),
        (AlgorithmKind::SflV1, "sfl-v1"),
        (AlgorithmKind::SflV2, "sfl-v2"),
        (AlgorithmKind::PFedMe, "pfedme"),
        (AlgorithmKind::Ditto, "ditto"),
    ];

    /// Parses a configuration name.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(k, _)| *k)
            .ok_or_else(|| {
                Error::Input(format!("unknown algorithm `{s}`; valid: {}", Self::names()))
            })
    }

    /// The configuration name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map_or("?", |(_, n)| n)
    }

    /// The valid names, comma-separated.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether the algorithm splits the model between client and server.
    pub fn is_split(self) -> bool {
        matches!(
            self,
            AlgorithmKind::FlexpSfl | AlgorithmKind::SflV1 | AlgorithmKind::SflV2
        )
    }
}

/// An algorithm: state plus one round of training.
pub trait Algorithm<B: Backend> {
    /// The configuration name.
    fn name(&self) -> &'static str;
    /// One communication round over the participating clients.
    fn round(
        &mut self,
        fed: &Federation<'_, B>,
        participants: &[usize],
        rng: &mut Rng,
    ) -> Result<RoundLog>;
    /// Client k's personalized model.
    fn personal(&self, k: usize) -> Chain<'_, B>;
    /// The global model, where the algorithm has one that is a trained model on its own.
    fn global(&self) -> Option<Chain<'_, B>>;
    /// Why [`Algorithm::global`] is `None`, in one sentence for the run report.
    fn no_global_model(&self) -> &'static str {
        "this algorithm keeps no global model"
    }
    /// Every trainable state tensor set (parameters and optimizer moments) by a stable name, for
    /// checkpoints.
    fn state(&mut self) -> Vec<(String, &mut AdapterSet<B>)>;
    /// Optimizer step counters by name, for checkpoints.
    fn counters(&mut self) -> Vec<(String, &mut u64)>;
}

/// Builds the algorithm `kind` for a federation.
pub fn build<B: Backend + 'static>(
    kind: AlgorithmKind,
    fed: &Federation<'_, B>,
    rng: &mut Rng,
) -> Result<Box<dyn Algorithm<B>>> {
    Ok(match kind {
        AlgorithmKind::FlexpSfl => Box::new(flexp_sfl::FlexpSfl::new(fed, rng)?),
        AlgorithmKind::FedBip => Box::new(fedbip::FedBip::new(fed, rng, false)?),
        AlgorithmKind::FedBipL => Box::new(fedbip::FedBip::new(fed, rng, true)?),
        AlgorithmKind::Local => Box::new(local::Local::new(fed, rng)?),
        AlgorithmKind::FedAvg => Box::new(fedavg::FedAvg::new(fed, rng)?),
        AlgorithmKind::SflV1 => Box::new(splitfed::SplitFed::new(fed, rng, false)?),
        AlgorithmKind::SflV2 => Box::new(splitfed::SplitFed::new(fed, rng, true)?),
        AlgorithmKind::PFedMe => Box::new(pfedme::PFedMe::new(fed, rng)?),
        AlgorithmKind::Ditto => Box::new(ditto::Ditto::new(fed, rng)?),
    })
}

/// Client-side alignment of FlexP-SFL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Cross-entropy only.
    None,
    /// CE + lambda · KL(global repr || personal repr).
    Kl,
    /// Gradient-projection alignment.
    Proj,
}

/// Granularity of the inner products of `align = proj`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// Per tensor.
    Tensor,
    /// Per block.
    Block,
    /// The whole adapter vector.
    All,
}

/// How the server updates the global adapters within a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerUpdate {
    /// All clients of a step together, one update with the aggregate gradient.
    Sync,
    /// Client after client, an update after each.
    Sequential,
}

/// How the server combines per-client gradients in sync mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerAgg {
    /// Plain mean.
    Mean,
    /// Conflicting gradients projected onto the plane normal to the mean first.
    Proj,
}

/// What FedBip does with negative similarities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Negative {
    /// Clipped to zero.
    Clip,
    /// Kept (weights normalised by the sum of absolute values).
    Keep,
}

/// Hyper-parameters of every algorithm (each uses the ones that concern it).
#[derive(Clone, Debug, PartialEq)]
pub struct Hyper {
    /// AdamW learning rate of adapters and heads.
    pub lr: f32,
    /// AdamW weight decay.
    pub weight_decay: f32,
    /// Local steps per round (tau).
    pub local_steps: usize,
    /// Sequences per client per step.
    pub batch_size: usize,
    /// Fraction of clients sampled per round (q).
    pub client_fraction: f64,
    /// FlexP-SFL alignment.
    pub align: Align,
    /// Alignment weight lambda.
    pub align_lambda: f32,
    /// Granularity of `align = proj`.
    pub proj_granularity: Granularity,
    /// FlexP-SFL server update.
    pub server_update: ServerUpdate,
    /// FlexP-SFL server aggregation.
    pub server_agg: ServerAgg,
    /// U-shaped tail blocks kept on the client (0 = vanilla).
    pub u_tail: usize,
    /// FedBip negative similarities.
    pub negative: Negative,
    /// pFedMe: regularisation lambda.
    pub pfedme_lambda: f32,
    /// pFedMe: inner steps K.
    pub pfedme_inner_steps: usize,
    /// pFedMe: inner learning rate.
    pub pfedme_eta: f32,
    /// pFedMe: server mixing beta.
    pub pfedme_beta: f32,
    /// Ditto: proximal lambda.
    pub ditto_lambda: f32,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper {
            lr: 2e-3,
            weight_decay: 0.0,
            local_steps: 4,
            batch_size: 8,
            client_fraction: 1.0,
            align: Align::Proj,
            align_lambda: 0.25,
            proj_granularity: Granularity::Block,
            server_update: ServerUpdate::Sync,
            server_agg: ServerAgg::Mean,
            u_tail: 0,
            negative: Negative::Clip,
            pfedme_lambda: 0.05,
            pfedme_inner_steps: 3,
            pfedme_eta: 10.0,
            pfedme_beta: 1.0,
            ditto_lambda: 0.1,
        }
    }
}

/// Parses one of a fixed set of option names, listing the valid ones on error.
pub fn parse_choice<T: Copy>(what: &str, s: &str, choices: &[(&str, T)]) -> Result<T> {
    choices
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            Error::Input(format!("unknown {what} `{s}`; valid: {}", names.join(", ")))
        })
}
