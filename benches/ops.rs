//! The CPU backend's ops at the shapes of the bench workload (MiniLM: hidden 384, 12 heads of 32,
//! FFN 1536; 16 clients × batch 8 × 64 tokens = 8,192 tokens; LoRA rank 8): base GEMMs of each
//! projection orientation, the grouped multi-LoRA product over 16 adapters, and attention forward
//! and backward over 128 packed sequences. `benches/block.rs` has one whole block fwd + bwd.
//!
//! Run: `cargo bench --bench ops` (set RAYON_NUM_THREADS to pin the thread count).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flexp::backend::cpu::Cpu;
use flexp::backend::{AttnShape, Backend, LoraGradSeg, LoraSeg, LoraShape, Span};
use flexp::rng::Rng;
use std::time::Duration;

const TOKENS: usize = 8192;
const SEQ: usize = 64;
const D: usize = 384;
const FF: usize = 1536;

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g
}

fn gemm(c: &mut Criterion) {
    let mut rng = Rng::new(0);
    let mut g = group(c, "gemm_minilm_8192_tokens");
    // (name, n, k, trans_b): forward x·Wᵀ for the attention and FFN projections, and the
    // input-gradient product dy·W of the FFN down projection.
    for (name, n, k, tb) in [
        ("qkvo_fwd_384x384", D, D, true),
        ("ffn_up_fwd_1536x384", FF, D, true),
        ("ffn_down_fwd_384x1536", D, FF, true),
        ("ffn_down_bwd_dx_1536x384", FF, D, false),
    ] {
        let a = rng.vec_range(TOKENS * k, -1.0, 1.0);
        let b = rng.vec_range(n * k, -1.0, 1.0);
        let mut out = vec![0.0f32; TOKENS * n];
        g.throughput(Throughput::Elements((2 * TOKENS * n * k) as u64));
        g.bench_function(name, |bch| {
            bch.iter(|| {
                Cpu.matmul(&mut out, &a, &b, TOKENS, n, k, false, tb, false)
                    .unwrap()
            })
        });
    }
    g.finish();
}

fn lora(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    let (clients, rank) = (16usize, 8usize);
    let rows = TOKENS / clients;
    let x = rng.vec_range(TOKENS * D, -1.0, 1.0);
    let dy = rng.vec_range(TOKENS * D, -1.0, 1.0);
    let ab: Vec<(Vec<f32>, Vec<f32>)> = (0..clients)
        .map(|_| {
            (
                rng.vec_range(rank * D, -0.1, 0.1),
                rng.vec_range(D * rank, -0.1, 0.1),
            )
        })
        .collect();
    let shape = LoraShape {
        d_in: D,
        d_out: D,
        rank,
        scale: 2.0,
    };
    let mut y = vec![0.0f32; TOKENS * D];
    let mut u = vec![0.0f32; TOKENS * rank];
    let mut g = group(c, "multi_lora_16_adapters_rank8");
    g.throughput(Throughput::Elements(TOKENS as u64));
    g.bench_function("forward", |b| {
        let segs: Vec<LoraSeg<'_, Cpu>> = ab
            .iter()
            .enumerate()
            .map(|(i, (a, bb))| LoraSeg {
                rows: Span {
                    start: i * rows,
                    len: rows,
                },
                a,
                b: bb,
            })
            .collect();
        b.iter(|| Cpu.lora_forward(&mut y, &x, &mut u, &segs, shape).unwrap())
    });
    let mut grads: Vec<(Vec<f32>, Vec<f32>)> = (0..clients)
        .map(|_| (vec![0.0; rank * D], vec![0.0; D * rank]))
        .collect();
    let mut dx = vec![0.0f32; TOKENS * D];
    g.bench_function("backward", |b| {
        b.iter(|| {
            let mut segs: Vec<LoraGradSeg<'_, Cpu>> = ab
                .iter()
                .zip(grads.iter_mut())
                .enumerate()
                .map(|(i, ((a, bb), (da, db)))| LoraGradSeg {
                    rows: Span {
                        start: i * rows,
                        len: rows,
                    },
                    a,
                    b: bb,
                    da,
                    db,
                })
                .collect();
            Cpu.lora_backward(&mut dx, &dy, &x, &u, &mut segs, shape)
                .unwrap()
        })
    });
    g.finish();
}

fn attention(c: &mut Criterion) {
    let mut rng = Rng::new(2);
    let shape = AttnShape {
        heads: 12,
        kv_heads: 12,
        head_dim: 32,
        causal: false,
        window: None,
        scale: 1.0 / 32f32.sqrt(),
        bf16: false,
    };
    let seqs: Vec<Span> = (0..TOKENS / SEQ)
        .map(|i| Span {
            start: i * SEQ,
            len: SEQ,
        })
        .collect();
    let q = rng.vec_range(TOKENS * D, -1.0, 1.0);
    let k = rng.vec_range(TOKENS * D, -1.0, 1.0);
    let v = rng.vec_range(TOKENS * D, -1.0, 1.0);
    let dout = rng.vec_range(TOKENS * D, -1.0, 1.0);
    let mut o = vec![0.0f32; TOKENS * D];
    let mut lse = vec![0.0f32; TOKENS * 12];
    let mut g = group(c, "attention_128_seqs_of_64_12x32");
    g.throughput(Throughput::Elements(TOKENS as u64));
    g.bench_function("forward", |b| {
        b.iter(|| {
            Cpu.attention_forward(&mut o, &mut lse, &q, &k, &v, &seqs, shape)
                .unwrap()
        })
    });
    let (mut dq, mut dk, mut dv) = (
        vec![0.0f32; TOKENS * D],
        vec![0.0f32; TOKENS * D],
        vec![0.0f32; TOKENS * D],
    );
    g.bench_function("backward", |b| {
        b.iter(|| {
            Cpu.attention_backward(
                &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &o, &lse, &seqs, shape,
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, gemm, lora, attention);
criterion_main!(benches);
