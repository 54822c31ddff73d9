//! Base-weight products of the CPU backend at all-MiniLM-L6-v2 shapes: f32 weights (the packed
//! AVX-512F kernel, or the `gemm` crate without AVX-512F) against bf16 weights (AMX tiles, the
//! AVX-512 BF16 micro-kernel, or the portable path, whichever the CPU has), forward
//! (`y = x·Wᵀ`) and input gradient (`dx = dy·W`), and the
//! machine's peak of the instruction the bf16 kernel uses (`tdpbf16ps` or `vdpbf16ps`) measured
//! by a tight in-register loop, which is the bound the bf16 kernel is judged against. Ends with a
//! summary table (GFLOP/s and % of peak). Reading: docs/performance.md.
//!
//! Run: `cargo bench --bench gemm` (set RAYON_NUM_THREADS to pin the thread count; the peak is
//! measured on as many threads).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flexp::backend::cpu::{bf16_kernel, bf16_kernel_active, f32_kernel, Cpu, CpuWeight};
use flexp::backend::{Backend, WeightPrecision};
use flexp::rng::Rng;
use std::time::{Duration, Instant};

/// (out, in) of the MiniLM projections: q/k/v/o, FFN up, FFN down.
const SHAPES: &[(usize, usize)] = &[(384, 384), (1536, 384), (384, 1536)];
/// Tokens per product (rows of the activation matrix).
const TOKENS: &[usize] = &[512, 2048, 8192];

/// `vdpbf16ps` instructions per loop iteration of [`dp_loop`] (independent accumulators).
const DP_PER_ITER: u64 = 24;
/// FLOPs of one 512-bit `vdpbf16ps`: 16 lanes x 2 products x (multiply + add).
const DP_FLOPS: u64 = 64;

/// Defines `fn $name(iters: u64)`: `iters` iterations of 24 independent `$ins` (a
/// `zmm, zmm, zmm` instruction) on registers only: no loads, no dependencies shorter than 24
/// instructions, so it runs at the instruction's issue rate.
macro_rules! register_loop {
    ($name:ident, $ins:literal) => {
        #[cfg(target_arch = "x86_64")]
        fn $name(iters: u64) {
            if iters == 0 {
                return;
            }
            // SAFETY: only called after `bf16_kernel_active()` (the CPU has AVX-512F and
            // AVX512-BF16); the asm touches no memory and declares every register it writes as
            // clobbered.
            unsafe {
                std::arch::asm!(
                    "2:",
                    concat!($ins, " zmm0, zmm30, zmm31"),
                    concat!($ins, " zmm1, zmm30, zmm31"),
                    concat!($ins, " zmm2, zmm30, zmm31"),
                    concat!($ins, " zmm3, zmm30, zmm31"),
                    concat!($ins, " zmm4, zmm30, zmm31"),
                    concat!($ins, " zmm5, zmm30, zmm31"),
                    concat!($ins, " zmm6, zmm30, zmm31"),
                    concat!($ins, " zmm7, zmm30, zmm31"),
                    concat!($ins, " zmm8, zmm30, zmm31"),
                    concat!($ins, " zmm9, zmm30, zmm31"),
                    concat!($ins, " zmm10, zmm30, zmm31"),
                    concat!($ins, " zmm11, zmm30, zmm31"),
                    concat!($ins, " zmm12, zmm30, zmm31"),
                    concat!($ins, " zmm13, zmm30, zmm31"),
                    concat!($ins, " zmm14, zmm30, zmm31"),
                    concat!($ins, " zmm15, zmm30, zmm31"),
                    concat!($ins, " zmm16, zmm30, zmm31"),
                    concat!($ins, " zmm17, zmm30, zmm31"),
                    concat!($ins, " zmm18, zmm30, zmm31"),
                    concat!($ins, " zmm19, zmm30, zmm31"),
                    concat!($ins, " zmm20, zmm30, zmm31"),
                    concat!($ins, " zmm21, zmm30, zmm31"),
                    concat!($ins, " zmm22, zmm30, zmm31"),
                    concat!($ins, " zmm23, zmm30, zmm31"),
                    "dec {n}",
                    "jnz 2b",
                    n = inout(reg) iters => _,
                    out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
                    out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
                    out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _,
                    out("zmm14") _, out("zmm15") _, out("zmm16") _, out("zmm17") _,
                    out("zmm18") _, out("zmm19") _, out("zmm20") _, out("zmm21") _,
                    out("zmm22") _, out("zmm23") _, out("zmm30") _, out("zmm31") _,
                    options(nostack, nomem),
                );
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        fn $name(_iters: u64) {}
    };
}

register_loop!(dp_loop, "vdpbf16ps");
// `vfmadd231ps` (f32 FMA, 32 FLOPs an instruction): the f32 bound, for context.
register_loop!(fma_loop, "vfmadd231ps");

/// `tdpbf16ps` per iteration of [`tdp_loop`] (independent accumulator tiles).
const TDP_PER_ITER: u64 = 6;
/// FLOPs of one `tdpbf16ps` on full tiles: 16 x 16 outputs x 32 products x 2.
const TDP_FLOPS: u64 = 16 * 16 * 32 * 2;

/// The `ldtilecfg` operand: palette 1, eight tiles of 16 rows x 64 bytes.
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

/// `iters` iterations of 6 independent `tdpbf16ps` on tile registers only (no loads): the AMX
/// issue rate.
#[cfg(target_arch = "x86_64")]
fn tdp_loop(iters: u64) {
    if iters == 0 {
        return;
    }
    let mut cfg = TileConfig([0; 64]);
    cfg.0[0] = 1;
    for t in 0..8 {
        cfg.0[16 + 2 * t] = 64;
        cfg.0[48 + t] = 16;
    }
    // SAFETY: only called when `bf16_kernel()` is "amx-bf16": the CPU has AMX-BF16 and the
    // library obtained the tile permission for the process. The asm reads only the tile
    // configuration, writes only tile registers, and releases the tile state at the end.
    unsafe {
        std::arch::asm!(
            "ldtilecfg [{cfg}]",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            "tilezero tmm7",
            "2:",
            "tdpbf16ps tmm0, tmm6, tmm7",
            "tdpbf16ps tmm1, tmm6, tmm7",
            "tdpbf16ps tmm2, tmm6, tmm7",
            "tdpbf16ps tmm3, tmm6, tmm7",
            "tdpbf16ps tmm4, tmm6, tmm7",
            "tdpbf16ps tmm5, tmm6, tmm7",
            "dec {n}",
            "jnz 2b",
            "tilerelease",
            cfg = in(reg) &cfg,
            n = inout(reg) iters => _,
            options(nostack, readonly),
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn tdp_loop(_iters: u64) {}

/// Runs `body` on `threads` threads at once.
fn on_threads(threads: usize, iters: u64, body: fn(u64)) {
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(move || body(iters));
        }
    });
}

/// The `vdpbf16ps` peak in GFLOP/s on `threads` threads (best of a few runs of ~50 ms).
fn measure_peak(threads: usize) -> f64 {
    measure_loop(threads, dp_loop, DP_PER_ITER * DP_FLOPS)
}

/// The `tdpbf16ps` peak in GFLOP/s on `threads` threads.
fn measure_amx_peak(threads: usize) -> f64 {
    measure_loop(threads, tdp_loop, TDP_PER_ITER * TDP_FLOPS)
}

/// The peak of the instruction the bf16 products use, if a hand-written kernel runs them.
fn kernel_peak(threads: usize) -> Option<f64> {
    match bf16_kernel() {
        "amx-bf16" => Some(measure_amx_peak(threads)),
        "avx512-bf16" => Some(measure_peak(threads)),
        _ => None,
    }
}

/// GFLOP/s of `body` (`flops` per iteration) on `threads` threads.
fn measure_loop(threads: usize, body: fn(u64), flops: u64) -> f64 {
    let iters = if flops > 1 << 16 { 200_000 } else { 1_000_000 };
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        on_threads(threads, iters, body);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (threads as u64 * iters * flops) as f64 / best / 1e9
}

fn threads() -> usize {
    rayon::current_num_threads()
}

fn bf16_peak(c: &mut Criterion) {
    if !bf16_kernel_active() {
        eprintln!("bf16 peak: no AVX512-BF16 on this CPU (or FLEXP_BF16_KERNEL=portable); skipped");
        return;
    }
    let mut g = c.benchmark_group("vdpbf16ps_peak");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let iters = 200_000u64;
    // One thread, then the pool (once when the pool is one thread: criterion rejects the
    // same id twice).
    let mut counts = vec![1, threads()];
    counts.dedup();
    for t in counts {
        g.throughput(Throughput::Elements(
            t as u64 * iters * DP_PER_ITER * DP_FLOPS,
        ));
        g.bench_function(BenchmarkId::new("threads", t), |b| {
            b.iter(|| on_threads(t, iters, dp_loop))
        });
    }
    g.finish();
}

/// One projection's weight in both precisions.
struct Proj {
    out: usize,
    inp: usize,
    /// `[f32, bf16]`.
    w: [CpuWeight; 2],
}

fn projections() -> Vec<Proj> {
    let be = Cpu;
    let mut rng = Rng::new(0);
    SHAPES
        .iter()
        .map(|&(out, inp)| {
            let w = rng.vec_range(out * inp, -0.1, 0.1);
            Proj {
                out,
                inp,
                w: [WeightPrecision::F32, WeightPrecision::Bf16]
                    .map(|p| be.weight(&w, out, inp, p).unwrap()),
            }
        })
        .collect()
}

/// Inputs and outputs of one product of `p` over `m` tokens.
struct Io {
    m: usize,
    x: Vec<f32>,
    dy: Vec<f32>,
    y: Vec<f32>,
    dx: Vec<f32>,
}

impl Io {
    fn new(p: &Proj, m: usize, rng: &mut Rng) -> Io {
        Io {
            m,
            x: rng.vec_range(m * p.inp, -1.0, 1.0),
            dy: rng.vec_range(m * p.out, -1.0, 1.0),
            y: vec![0.0; m * p.out],
            dx: vec![0.0; m * p.inp],
        }
    }

    /// The forward product (`backward = false`) or the input gradient with weight `prec`
    /// (0: f32, 1: bf16).
    fn run(&mut self, p: &Proj, prec: usize, backward: bool) {
        let be = Cpu;
        if backward {
            be.linear_backward_input(&mut self.dx, &self.dy, &p.w[prec], self.m, false)
                .unwrap();
        } else {
            be.linear(&mut self.y, &self.x, &p.w[prec], self.m, false)
                .unwrap();
        }
    }
}

fn linear(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    let mut g = c.benchmark_group("linear_minilm");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for p in projections() {
        for &m in TOKENS {
            let mut io = Io::new(&p, m, &mut rng);
            g.throughput(Throughput::Elements((2 * m * p.out * p.inp) as u64));
            for (prec, name) in [(0, "f32"), (1, "bf16")] {
                for backward in [false, true] {
                    let dir = if backward { "dx" } else { "y" };
                    let id = format!("{name}/{dir}/{}x{}/m{m}", p.out, p.inp);
                    g.bench_function(id, |b| b.iter(|| io.run(&p, prec, backward)));
                }
            }
        }
    }
    g.finish();
}

/// Best-of-n seconds per call.
fn best_time(n: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..n {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

/// A compact table for docs/performance.md: both precisions at every shape, with the peak
/// measured right before and after (the machine may be shared; the two values show drift).
fn summary(_c: &mut Criterion) {
    let t = threads();
    let kernel = match bf16_kernel() {
        "amx-bf16" => "AMX tiles (tdpbf16ps)",
        "avx512-bf16" => "AVX-512 BF16 micro-kernel (vdpbf16ps)",
        _ => "portable f32 path",
    };
    let peak_before = kernel_peak(t);
    let mut rng = Rng::new(1);
    let mut rows = Vec::new();
    for p in projections() {
        for &m in TOKENS {
            let mut io = Io::new(&p, m, &mut rng);
            let flops = 2.0 * (m * p.out * p.inp) as f64;
            let reps = (2e9 / flops).clamp(3.0, 40.0) as usize;
            let mut g = [[0.0; 2]; 2];
            for (prec, gp) in g.iter_mut().enumerate() {
                for (bwd, slot) in gp.iter_mut().enumerate() {
                    let s = best_time(reps, || io.run(&p, prec, bwd == 1));
                    *slot = flops / s / 1e9;
                }
            }
            rows.push((p.out, p.inp, m, g));
        }
    }
    let peak_after = kernel_peak(t);
    let peak = match (peak_before, peak_after) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    };
    eprintln!(
        "\nf32 products: {}; bf16 products: {kernel}; {t} threads",
        f32_kernel()
    );
    if let (Some(a), Some(b)) = (peak_before, peak_after) {
        eprintln!(
            "kernel instruction peak ({t} threads): {a:.1} GFLOP/s before, {b:.1} after; 1 thread: {:.1}",
            kernel_peak(1).unwrap_or(0.0)
        );
        eprintln!(
            "vdpbf16ps peak, for context: {:.1} GFLOP/s ({t} threads)",
            measure_peak(t)
        );
        eprintln!(
            "f32 FMA peak (vfmadd231ps, same loop), for context: {:.1} GFLOP/s ({t} threads)",
            measure_loop(t, fma_loop, DP_PER_ITER * 32)
        );
    }
    eprintln!(
        "| W [out x in] | tokens | f32 y | f32 dx | bf16 y | bf16 dx | bf16 % of peak (y / dx) |"
    );
    eprintln!("|---|---|---|---|---|---|---|");
    for (out, inp, m, g) in rows {
        let pct = |v: f64| peak.map_or("-".into(), |p| format!("{:.0}%", 100.0 * v / p));
        eprintln!(
            "| {out} x {inp} | {m} | {:.1} | {:.1} | {:.1} | {:.1} | {} / {} |",
            g[0][0],
            g[0][1],
            g[1][0],
            g[1][1],
            pct(g[1][0]),
            pct(g[1][1])
        );
    }
    eprintln!("(GFLOP/s, best of several calls; 2·m·out·in FLOPs per product)");
}

criterion_group!(benches, bf16_peak, linear, summary);
criterion_main!(benches);
