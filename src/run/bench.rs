//! `flexp-run bench`: the time of one FlexP-SFL training round on a real checkpoint, in the
//! format tools/torch_reference/flexp_round.py prints for the PyTorch way of doing the same
//! round, so tools/compare_torch.sh can put the two side by side.
//!
//! The round: every client runs `steps` local steps of `batch` sequences of exactly `seq` random
//! tokens (uniform in [1000, vocab), like the reference) with random binary labels; client k's
//! cut is `split[k % split.len()]`; LoRA of rank `rank` (alpha 2·rank) on the query and value
//! projections; AdamW (lr 1e-3) on the clients' personal adapters and, once per step on the mean
//! of the clients' gradients, on the server's global adapters and head (`server_update = sync`);
//! no alignment term (the reference has none), so both sides do the same arithmetic. One
//! untimed warm-up step (every client, one local step) runs first.

use crate::algorithms::{self, Algorithm, AlgorithmKind, Align, ClientData, Example, Label};
use crate::algorithms::{Federation, Hyper, RoundLog, ServerAgg, ServerUpdate};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::federated::{CostModel, TaskHead};
use crate::model::{LoraConfig, Model, Pooling, Target};
use crate::rng::Rng;
use std::time::Instant;

/// What to time.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchSpec {
    /// Clients, all participating.
    pub clients: usize,
    /// Sequences per client per local step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Local steps in the timed round.
    pub steps: usize,
    /// LoRA rank.
    pub rank: usize,
    /// Cut layers, cycled over the clients.
    pub split: Vec<usize>,
    /// Seed of the random tokens, labels and adapters.
    pub seed: u64,
}

/// The measurement, one JSON line on stdout.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchResult {
    /// The spec it measured.
    pub spec: BenchSpec,
    /// `clients · steps · batch · seq`.
    pub tokens: usize,
    /// Wall time of the timed round.
    pub seconds: f64,
    /// Mean training loss of the timed round (about ln 2 for the random binary labels).
    pub loss: f64,
}

impl BenchResult {
    /// Tokens per second.
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds
    }

    /// The JSON line (the keys the PyTorch reference prints, plus what produced it).
    pub fn to_json(&self, backend: &str, precision: &str, threads: usize) -> serde_json::Value {
        serde_json::json!({
            "clients": self.spec.clients,
            "batch": self.spec.batch,
            "seq": self.spec.seq,
            "steps": self.spec.steps,
            "tokens": self.tokens,
            "seconds": self.seconds,
            "tokens_per_s": self.tokens_per_s(),
            "impl": "flexp",
            "backend": backend,
            "precision": precision,
            "threads": threads,
            "loss": self.loss,
            "cpu": cpu_model(),
            "isa": crate::backend::cpu::instruction_sets(),
        })
    }
}

/// The CPU's model name as the kernel reports it (`/proc/cpuinfo`), or `"unknown"`: ratios
/// against another implementation mean little without the machine beside them.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Checks a spec against the model it will run on.
pub fn validate<B: Backend>(spec: &BenchSpec, model: &Model<B>) -> Result<()> {
    let c = &model.config;
    let positive = [
        ("clients", spec.clients),
        ("batch", spec.batch),
        ("seq", spec.seq),
        ("steps", spec.steps),
        ("rank", spec.rank),
    ];
    for (name, v) in positive {
        if v == 0 {
            return Err(Error::Input(format!("bench: --{name} must be at least 1")));
        }
    }
    if spec.seq > c.max_positions {
        return Err(Error::Input(format!(
            "bench: --seq {} exceeds the model's {} positions",
            spec.seq, c.max_positions
        )));
    }
    if spec.split.is_empty() {
        return Err(Error::Input("bench: --split needs at least one cut".into()));
    }
    if let Some(&s) = spec.split.iter().find(|&&s| s == 0 || s >= c.layers) {
        return Err(Error::Input(format!(
            "bench: cut {s} is outside 1..{} (the model has {} blocks; a cut leaves at least one \
             block on each side)",
            c.layers - 1,
            c.layers
        )));
    }
    if c.vocab_size <= 1000 {
        return Err(Error::Input(format!(
            "bench: the model's vocabulary ({}) is too small for random tokens in [1000, vocab)",
            c.vocab_size
        )));
    }
    Ok(())
}

/// A federation and FlexP-SFL state built for `spec`, ready to run rounds on.
pub struct BenchRound<'a, B: Backend + 'static> {
    fed: Federation<'a, B>,
    algo: Box<dyn Algorithm<B>>,
    rng: Rng,
    all: Vec<usize>,
}

impl<'a, B: Backend + 'static> BenchRound<'a, B> {
    /// Builds the clients' random data, the adapters and the optimizers for `spec`.
    pub fn new(be: &'a B, model: &'a Model<B>, spec: &BenchSpec) -> Result<Self> {
        validate(spec, model)?;
        let c = &model.config;
        let mut rng = Rng::new(spec.seed);
        let example = |rng: &mut Rng| Example {
            ids: (0..spec.seq)
                .map(|_| 1000 + rng.below(c.vocab_size - 1000) as u32)
                .collect(),
            label: Label::Class(rng.below(2)),
        };
        // Exactly `batch` examples per client: every local step uses all of them (in a new
        // order).
        let clients: Vec<ClientData> = (0..spec.clients)
            .map(|_| ClientData {
                train: (0..spec.batch).map(|_| example(&mut rng)).collect(),
                test: Vec::new(),
            })
            .collect();
        let lora = LoraConfig {
            rank: spec.rank,
            alpha: 2.0 * spec.rank as f32,
            targets: vec![Target::Q, Target::V],
        };
        let hyper = Hyper {
            lr: 1e-3,
            weight_decay: 0.0,
            local_steps: spec.steps,
            batch_size: spec.batch,
            align: Align::None,
            server_update: ServerUpdate::Sync,
            server_agg: ServerAgg::Mean,
            ..Hyper::default()
        };
        let cost = CostModel::new(c, &lora, spec.seq, spec.batch)?;
        let fed = Federation {
            backend: be,
            model,
            lora,
            head: TaskHead::Classes(2),
            pooling: Pooling::Mean,
            clients,
            splits: (0..spec.clients)
                .map(|k| spec.split[k % spec.split.len()])
                .collect(),
            hyper,
            cost,
            on_step: None,
        };
        let algo = algorithms::build(AlgorithmKind::FlexpSfl, &fed, &mut rng)?;
        Ok(BenchRound {
            fed,
            algo,
            rng,
            all: (0..spec.clients).collect(),
        })
    }

    /// One round of `steps` local steps with every client; an error if any client's step was
    /// rejected (a benchmark must not time skipped work).
    pub fn run(&mut self, steps: usize) -> Result<RoundLog> {
        self.fed.hyper.local_steps = steps;
        let log = self.algo.round(&self.fed, &self.all, &mut self.rng)?;
        if !log.rejected.is_empty() {
            return Err(Error::Backend(format!(
                "bench: clients rejected during the round: {:?}",
                log.rejected
            )));
        }
        Ok(log)
    }
}

/// Times one FlexP-SFL round of `spec` on `model` (after one untimed warm-up step).
pub fn bench_round<B: Backend + 'static>(
    be: &B,
    model: &Model<B>,
    spec: &BenchSpec,
) -> Result<BenchResult> {
    let mut round = BenchRound::new(be, model, spec)?;
    round.run(1)?;
    let t = Instant::now();
    let log = round.run(spec.steps)?;
    let seconds = t.elapsed().as_secs_f64();
    Ok(BenchResult {
        spec: spec.clone(),
        tokens: spec.clients * spec.steps * spec.batch * spec.seq,
        seconds,
        loss: log.mean_loss(),
    })
}
