//! The cost model's FLOPs against what the executor actually runs: a backend wrapper
//! (tests/common/counting.rs) counts `2·m·n·k` for every product the executor issues, from the
//! shapes of each call, while a real split step runs on the CPU: the client's blocks 0..s
//! forward and backward, and the server's blocks s..L with the classification head. The
//! planner's latency and deadline predictions rest on these numbers.

mod common;

use common::counting::Counting;
use common::root;
use flexp::backend::cpu::Cpu;
use flexp::executor::{Executor, Output, SeqInput, SeqJob};
use flexp::federated::{CostModel, TaskHead};
use flexp::model::{load_model, AdapterSet, LoraConfig, Pooling};
use flexp::rng::Rng;
use std::path::Path;

/// FLOPs of one split step measured through the counting backend: (client, server).
fn measured(dir: &Path, lora: &LoraConfig, s: usize, batch: usize, len: usize) -> (u64, u64) {
    let be = Counting::new(Cpu);
    let model = load_model(&be, dir).unwrap();
    let cfg = model.config.clone();
    let l = cfg.layers;
    let mut rng = Rng::new(7);
    let client = AdapterSet::init_lora(&be, &cfg, lora.clone(), 0..s, &mut rng).unwrap();
    let server = AdapterSet::init_lora(&be, &cfg, lora.clone(), s..l, &mut rng)
        .unwrap()
        .with_head(&be, cfg.hidden, 2, Pooling::Mean, &mut rng)
        .unwrap();
    let exec = Executor::new(&be, &model);
    be.take();

    // Client forward of `batch` sequences of `len` tokens through blocks 0..s.
    let jobs: Vec<SeqJob> = (0..batch)
        .map(|i| {
            let ids = (0..len)
                .map(|t| (1 + (7 * i + 3 * t) % (cfg.vocab_size - 1)) as u32)
                .collect();
            SeqJob::new(SeqInput::tokens(ids), 0..s, 0, Output::Hidden)
        })
        .collect();
    let (out, tape) = exec.forward(&[&client], &jobs, true).unwrap();
    let client_fwd = be.take();

    // Server: the smashed activations through s..L and the head, forward and backward.
    let server_jobs: Vec<SeqJob> = out
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            SeqJob::new(
                SeqInput::Hidden(o.hidden.unwrap()),
                s..l,
                0,
                Output::Class { label: Some(i % 2) },
            )
        })
        .collect();
    let (_, server_tape) = exec.forward(&[&server], &server_jobs, true).unwrap();
    let mut server_grads = vec![server.zeros_like(&be).unwrap()];
    let dh = exec
        .backward(
            &server_tape.unwrap(),
            &[&server],
            &mut server_grads,
            &vec![None; batch],
        )
        .unwrap();
    let server_flops = be.take();

    // Back on the client: its segment's backward from the returned gradients.
    let mut client_grads = vec![client.zeros_like(&be).unwrap()];
    exec.backward(&tape.unwrap(), &[&client], &mut client_grads, &dh)
        .unwrap();
    (client_fwd + be.take(), server_flops)
}

fn check(dir: &Path, lora: LoraConfig, batch: usize, len: usize) {
    let cfg = flexp::model::ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let cost = CostModel::new(&cfg, &lora, len, batch)
        .unwrap()
        .with_head(TaskHead::Classes(2))
        .unwrap();
    for s in 1..cfg.layers {
        let (client, server) = measured(dir, &lora, s, batch, len);
        let (pc, ps) = (cost.client_flops(s), cost.server_flops(s));
        assert_eq!(
            client as f64,
            pc,
            "{}: client FLOPs at cut {s}: measured {client}, cost model {pc}",
            dir.display()
        );
        assert_eq!(
            server as f64,
            ps,
            "{}: server FLOPs at cut {s}: measured {server}, cost model {ps}",
            dir.display()
        );
    }
}

#[test]
fn cost_model_flops_equal_the_products_a_minilm_step_runs() {
    let dir = root().join("models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "run `bash tools/fetch_minilm.sh` first"
    );
    let cfg = flexp::model::ModelConfig::from_file(&dir.join("config.json")).unwrap();
    check(&dir, LoraConfig::default_for(&cfg), 3, 9);
}

#[test]
fn cost_model_flops_equal_the_products_of_a_causal_gqa_step() {
    // Llama-shaped: causal attention, 2 kv heads for 4 query heads, SwiGLU, RMSNorm, rank 4 on
    // two targets only.
    let dir = common::fixture("llama");
    let cfg = flexp::model::ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let mut lora = LoraConfig::default_for(&cfg);
    lora.rank = 4;
    lora.targets.truncate(2);
    check(&dir, lora, 2, 7);
}
