//! One transformer block's forward + backward at all-MiniLM-L6-v2 size (hidden 384, 12 heads,
//! FFN 1536, LoRA rank 8 on q, k, v, o, up, down), sequences of 128 tokens, and the GEMM peak of
//! the same machine for comparison. Results and their reading: docs/performance.md.
//!
//! Run: `cargo bench --bench block` (set RAYON_NUM_THREADS to pin the thread count).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flexp::backend::cpu::Cpu;
use flexp::backend::{Backend, WeightPrecision};
use flexp::executor::{Executor, Output, SeqInput, SeqJob};
use flexp::model::{AdapterSet, LoraConfig, Model, ModelConfig};
use flexp::rng::Rng;
use std::time::Duration;

const SEQ: usize = 128;

fn minilm_block() -> ModelConfig {
    let v = serde_json::json!({
        "model_type": "bert", "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 1,
        "num_attention_heads": 12, "intermediate_size": 1536, "max_position_embeddings": 512,
        "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12
    });
    ModelConfig::from_json(&v).expect("valid config")
}

/// Useful FLOPs per token of one block's forward + backward with frozen base weights: the
/// backward computes activation gradients only (one GEMM per projection, not two), attention
/// backward does 4 score-sized products (recompute QKᵀ, dP, dQ, dK) plus dV.
pub fn block_flops_per_token(d: f64, ff: f64, t: f64, r: f64) -> f64 {
    let proj = 2.0 * (4.0 * d * d + 2.0 * d * ff);
    let attn_fwd = 2.0 * 2.0 * t * d;
    let lora = 2.0 * r * (4.0 * 2.0 * d + 2.0 * (d + ff));
    let fwd = proj + attn_fwd + lora;
    let bwd = proj + 2.5 * attn_fwd + 2.0 * lora;
    fwd + bwd
}

fn block_fwd_bwd(c: &mut Criterion) {
    block_fwd_bwd_in(c, WeightPrecision::F32, "block_fwd_bwd_minilm");
}

/// The same block with its projection weights stored in bf16 (`precision = "bf16"`).
fn block_fwd_bwd_bf16(c: &mut Criterion) {
    block_fwd_bwd_in(c, WeightPrecision::Bf16, "block_fwd_bwd_minilm_bf16");
}

fn block_fwd_bwd_in(c: &mut Criterion, precision: WeightPrecision, group: &str) {
    let be = Cpu;
    let mut rng = Rng::new(0);
    let cfg = minilm_block();
    let model = Model::random_with(&be, cfg.clone(), &mut rng, precision).unwrap();
    let lora = LoraConfig {
        rank: 8,
        alpha: 16.0,
        ..LoraConfig::default_for(&cfg)
    };
    let mut set = AdapterSet::init_lora(&be, &cfg, lora, 0..1, &mut rng).unwrap();
    for p in set.blocks[0].iter_mut().flatten() {
        let n = be.len(&p.b);
        p.b = be.upload(&rng.vec_range(n, -0.01, 0.01)).unwrap();
    }
    let exec = Executor::new(&be, &model);
    let d = cfg.hidden;
    let flops = block_flops_per_token(d as f64, cfg.intermediate as f64, SEQ as f64, 8.0);
    eprintln!(
        "useful work: {:.2} MFLOP per token (fwd+bwd, one block, T={SEQ})",
        flops / 1e6
    );
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));
    for tokens in [512usize, 2048, 8192] {
        let n = tokens / SEQ;
        let jobs: Vec<SeqJob> = (0..n)
            .map(|_| {
                SeqJob::new(
                    SeqInput::Hidden(rng.vec_range(SEQ * d, -1.0, 1.0)),
                    0..1,
                    0,
                    Output::Hidden,
                )
            })
            .collect();
        let dy: Vec<Option<Vec<f32>>> = (0..n)
            .map(|_| Some(rng.vec_range(SEQ * d, -1.0, 1.0)))
            .collect();
        let mut grads = vec![set.zeros_like(&be).unwrap()];
        g.throughput(Throughput::Elements(tokens as u64));
        g.bench_with_input(BenchmarkId::from_parameter(tokens), &tokens, |b, _| {
            b.iter(|| {
                let (_, tape) = exec.forward(&[&set], &jobs, true).unwrap();
                exec.backward(&tape.unwrap(), &[&set], &mut grads, &dy)
                    .unwrap()
            })
        });
    }
    g.finish();
}

fn gemm_peak(c: &mut Criterion) {
    let be = Cpu;
    let mut rng = Rng::new(1);
    let mut g = c.benchmark_group("sgemm");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    // (m, n, k, trans_b): a square product, and the MiniLM FFN up-projection on 2048 tokens.
    for (m, n, k, tb) in [
        (1024usize, 1024usize, 1024usize, false),
        (2048, 1536, 384, true),
    ] {
        let a = rng.vec_range(m * k, -1.0, 1.0);
        let b = rng.vec_range(k * n, -1.0, 1.0);
        let mut out = vec![0.0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(
            format!("{m}x{n}x{k}{}", if tb { "_bT" } else { "" }),
            |bch| {
                bch.iter(|| {
                    be.matmul(&mut out, &a, &b, m, n, k, false, tb, false)
                        .unwrap()
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, gemm_peak, block_fwd_bwd, block_fwd_bwd_bf16);
criterion_main!(benches);
