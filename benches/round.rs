//! One whole FlexP-SFL training round (the `flexp-run bench` workload: MiniLM, LoRA rank 8 on q
//! and v, batch 8 × 64 tokens, cuts 2, 3, 4 cycled over the clients, one local step) at 1, 4, 16
//! and 64 clients: how the packed multi-client sweep scales with the number of clients.
//! tools/compare_torch.sh is the side-by-side with PyTorch; docs/performance.md has the numbers.
//!
//! Run: `cargo bench --bench round` (needs `bash tools/fetch_minilm.sh`; set RAYON_NUM_THREADS
//! to pin the thread count).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flexp::backend::cpu::Cpu;
use flexp::model::load_model;
use flexp::run::bench::{BenchRound, BenchSpec};
use std::path::Path;
use std::time::Duration;

fn round(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    let model = match load_model(&Cpu, &dir) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("round bench needs the MiniLM checkpoint (bash tools/fetch_minilm.sh): {e}");
            return;
        }
    };
    let mut g = c.benchmark_group("flexp_sfl_round_minilm");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for clients in [1usize, 4, 16, 64] {
        let spec = BenchSpec {
            clients,
            batch: 8,
            seq: 64,
            steps: 1,
            rank: 8,
            split: vec![2, 3, 4],
            seed: 0,
        };
        g.throughput(Throughput::Elements((clients * 8 * 64) as u64));
        let mut r = BenchRound::new(&Cpu, &model, &spec).expect("bench setup");
        g.bench_function(BenchmarkId::from_parameter(clients), |b| {
            b.iter(|| r.run(1).expect("bench round"))
        });
    }
    g.finish();
}

criterion_group!(benches, round);
criterion_main!(benches);
