//! Products over frozen weights kept in GGML blocks, at SmolLM2-135M's projection shapes:
//! the quantized product (64-row tiles decoded into scratch, then the `gemm` crate), against
//! decoding the whole matrix first and then one f32 product, and against a weight stored in f32
//! (what a model without quantization runs). Forward (`y = x·Wᵀ`) and input gradient
//! (`dx = dy·W`). Reading: docs/performance.md.
//!
//! Run: `cargo bench --bench quant` (set RAYON_NUM_THREADS to pin the thread count).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flexp::backend::cpu::Cpu;
use flexp::backend::quant::{dequantize, GgmlType};
use flexp::backend::{Backend, WeightPrecision};
use flexp::rng::Rng;
use std::time::Duration;

/// (out, in) of SmolLM2's projections: q/o, MLP gate/up, MLP down.
const SHAPES: &[(usize, usize)] = &[(576, 576), (1536, 576), (576, 1536)];
/// Tokens per product: one short sequence, and a training batch (8 × 64).
const TOKENS: &[usize] = &[64, 512];
const TYPES: &[GgmlType] = &[GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4K];

/// Random codes with small f16 scales: the time does not depend on the values.
fn blocks(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let n = ty.row_bytes(cols).expect("whole blocks") * rows;
    let mut b: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
    for blk in b.chunks_exact_mut(ty.block_bytes()) {
        for &at in ty.f16_fields() {
            blk[at..at + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        }
    }
    b
}

fn bench(c: &mut Criterion) {
    let be = Cpu;
    let mut rng = Rng::new(1);
    let mut g = c.benchmark_group("quant");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for &(out, inp) in SHAPES {
        for &m in TOKENS {
            g.throughput(Throughput::Elements((2 * m * out * inp) as u64));
            let x = be.upload(&rng.vec_range(m * inp, -1.0, 1.0)).unwrap();
            let dy = be.upload(&rng.vec_range(m * out, -1.0, 1.0)).unwrap();
            let mut y = be.zeros(m * out).unwrap();
            let mut dx = be.zeros(m * inp).unwrap();
            for &ty in TYPES {
                // K-quant rows are 256-value super-blocks: SmolLM2's 576-wide rows cannot be
                // (that is why its file is Q4_1), so Q4_K runs only where `in` is 1,536.
                if ty.row_bytes(inp).is_none() {
                    continue;
                }
                let raw = blocks(ty, out, inp, &mut rng);
                let w = be.weight_quantized(ty, raw.clone(), out, inp).unwrap();
                let id = |what: &str| {
                    BenchmarkId::new(format!("{what}/{ty}"), format!("{m}x{out}x{inp}"))
                };
                g.bench_function(id("fwd-quantized"), |b| {
                    b.iter(|| be.linear(&mut y, &x, &w, m, false).unwrap())
                });
                g.bench_function(id("dx-quantized"), |b| {
                    b.iter(|| {
                        be.linear_backward_input(&mut dx, &dy, &w, m, false)
                            .unwrap()
                    })
                });
                let mut dense = vec![0.0f32; out * inp];
                g.bench_function(id("fwd-decode-then-gemm"), |b| {
                    b.iter(|| {
                        dequantize(ty, &raw, &mut dense).unwrap();
                        be.matmul(&mut y, &x, &dense, m, out, inp, false, true, false)
                            .unwrap()
                    })
                });
            }
            let w32 = be
                .weight(
                    &rng.vec_range(out * inp, -1.0, 1.0),
                    out,
                    inp,
                    WeightPrecision::F32,
                )
                .unwrap();
            let id = |what: &str| BenchmarkId::new(what.to_string(), format!("{m}x{out}x{inp}"));
            g.bench_function(id("fwd-f32-weight"), |b| {
                b.iter(|| be.linear(&mut y, &x, &w32, m, false).unwrap())
            });
            g.bench_function(id("dx-f32-weight"), |b| {
                b.iter(|| {
                    be.linear_backward_input(&mut dx, &dy, &w32, m, false)
                        .unwrap()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
