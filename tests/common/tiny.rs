//! A tiny random BERT and a learnable synthetic task: label 1 iff the signal token occurs.

use flexp::algorithms::{ClientData, Example, Federation, Hyper};
use flexp::backend::cpu::Cpu;
use flexp::backend::WeightPrecision;
use flexp::federated::{CostModel, TaskHead};
use flexp::model::{LoraConfig, Model, ModelConfig, Pooling};
use flexp::rng::Rng;

/// The token whose presence makes the label 1.
pub const SIGNAL: u32 = 5;

/// A 4-block BERT (hidden 32, 4 heads) with random weights stored in `precision`; the same
/// draws for every precision.
pub fn model_in(precision: WeightPrecision) -> Model<Cpu> {
    let cfg = ModelConfig::from_json(&serde_json::json!({
        "model_type": "bert", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 4,
        "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 32,
        "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12
    }))
    .unwrap();
    Model::random_with(&Cpu, cfg, &mut Rng::new(11), precision).unwrap()
}

/// [`model_in`] with f32 weights.
pub fn model() -> Model<Cpu> {
    model_in(WeightPrecision::F32)
}

/// Label 1 iff the signal token occurs; half the examples carry it.
pub fn example(rng: &mut Rng) -> Example {
    let len = 6 + rng.below(7);
    let mut ids: Vec<u32> = (0..len).map(|_| 10 + rng.below(54) as u32).collect();
    let label = rng.below(2);
    if label == 1 {
        let at = rng.below(len);
        ids[at] = SIGNAL;
    }
    Example::class(ids, label)
}

/// `sizes[k]` training and `test` test examples for client k.
pub fn clients_sized(sizes: &[usize], test: usize, rng: &mut Rng) -> Vec<ClientData> {
    sizes
        .iter()
        .map(|&n| ClientData {
            train: (0..n).map(|_| example(rng)).collect(),
            test: (0..test).map(|_| example(rng)).collect(),
        })
        .collect()
}

/// A federation of `clients` over `model` with LoRA rank 4 (alpha 8) on the default targets, two
/// classes, mean pooling, and the given cuts.
pub fn federation<'a>(
    model: &'a Model<Cpu>,
    hyper: Hyper,
    clients: Vec<ClientData>,
    splits: Vec<usize>,
) -> Federation<'a, Cpu> {
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..LoraConfig::default_for(&model.config)
    };
    let cost = CostModel::new(&model.config, &lora, 12, hyper.batch_size).unwrap();
    Federation {
        backend: &Cpu,
        model,
        lora,
        head: TaskHead::Classes(2),
        pooling: Pooling::Mean,
        clients,
        splits,
        hyper,
        cost,
        on_step: None,
    }
}
