//! Matrix products with frozen bf16 weights, f32 accumulation: AMX tiles (`amx.rs`) or a
//! hand-written AVX-512 BF16 micro-kernel (`avx512.rs`) where the CPU has them, and a portable
//! f32 path everywhere else. [`Isa::detect`] picks one per process.
//!
//! Both products of a frozen linear layer `W: [out, in]` are of the form `C[m,n] (+)= A[m,k]·B`
//! with `A` an f32 activation matrix and `B` a view of `W`: the forward `y = x·Wᵀ` (`k = in`,
//! `n = out`, `B = Wᵀ`) and the input gradient `dx = dy·W` (`k = out`, `n = in`, `B = W`).
//! [`PackedB`] stores one such `B` in the layout both kernels stream, and a bf16 weight keeps
//! one packing per product: two bf16 copies are exactly the size of the single f32 copy they
//! replace, and neither product then needs a transposed read.
//!
//! # Layout
//!
//! `vdpbf16ps` and `tdpbf16ps` multiply *pairs* of bf16 values adjacent in `k`, held in one
//! 32-bit word. So `B` is stored as words `B[2p][j] | B[2p+1][j] << 16`, in column panels of
//! [`NB`] = 16·[`NR`] columns, each panel `[k2p][NB]` words (`k2p`: the pairs, rounded up to an
//! AMX tile's 16 rows with zero words): one 512-bit load gives 16 columns' pairs for one `p`,
//! and a 16-column slice of 16 pair rows is an AMX B tile. Activations are converted per call
//! into the same pair words, row-major (`_mm512_cvtne2ps_pbh`, rounding to nearest even). `k`
//! odd is padded with a zero, and the `n` and `m` tails with zero columns and rows that are
//! never stored.

use super::packed::{fill_rows, finish_trivial, Start};
use crate::error::Result;
use half::bf16;
use rayon::prelude::*;
use std::sync::OnceLock;

/// 16-column vectors of a packed panel (the AVX-512 register tile's width).
pub(crate) const NR: usize = 3;
/// Columns of a packed panel of `B`.
pub(crate) const NB: usize = 16 * NR;
/// Packed pair rows per panel are a multiple of this (an AMX tile's 16 rows).
const KP_ALIGN: usize = 16;

/// Which implementation computes the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AMX tiles (`tdpbf16ps`), with the activations converted by AVX-512 BF16 (on a CPU
    /// without both, [`gemm`] falls back to `Portable`).
    Amx,
    /// The AVX-512 BF16 micro-kernel (on a CPU without it, [`gemm`] falls back to `Portable`).
    Avx512Bf16,
    /// Weights unpacked to f32 per call and multiplied by the f32 GEMM.
    Portable,
}

impl Isa {
    /// The best implementation this CPU supports, decided once per process: AMX, then AVX-512
    /// BF16, then portable. `FLEXP_BF16_KERNEL=avx512` or `=portable` caps the choice (to check
    /// the slower paths on a CPU that has the faster ones).
    pub(crate) fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let cap = std::env::var("FLEXP_BF16_KERNEL").unwrap_or_default();
            if cap == "portable" || !avx512_bf16_available() {
                Isa::Portable
            } else if cap != "avx512" && amx_available() {
                Isa::Amx
            } else {
                Isa::Avx512Bf16
            }
        })
    }

    /// A short name for reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Isa::Amx => "amx-bf16",
            Isa::Avx512Bf16 => "avx512-bf16",
            Isa::Portable => "portable",
        }
    }
}

/// Whether AMX-BF16 tiles are usable: the CPU has them, the OS saves their state, and the
/// kernel granted this process the tile data permission (asked once, on first call).
pub(crate) fn amx_available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        amx::available()
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// Whether the CPU has every instruction set the micro-kernel is compiled for.
pub(crate) fn avx512_bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A 64-byte aligned line of 16 pair words, so every 512-bit load of a panel row is aligned.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// The pair word of two f32 values rounded to bf16 (nearest even): `lo` is the even `k` index.
fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(bf16::from_f32(lo).to_bits()) | (u32::from(bf16::from_f32(hi).to_bits()) << 16)
}

/// The two f32 values of a pair word (exact: a bf16 is a truncated f32).
fn unpair(w: u32) -> (f32, f32) {
    (f32::from_bits(w << 16), f32::from_bits(w & 0xffff_0000))
}

/// A `[k, n]` matrix in bf16, packed for the micro-kernel (see the module docs).
pub(crate) struct PackedB {
    /// Panels one after another, each `[k2p][NB]` words.
    lines: Vec<Line>,
    k: usize,
    n: usize,
    /// `k` rounded up to pairs.
    k2: usize,
    /// Pair rows stored per panel: `k2` rounded up to [`KP_ALIGN`], zero past `k2`, so an AMX
    /// tile (16 pair rows) never reads past a panel.
    k2p: usize,
}

impl PackedB {
    /// Packs the `[k, n]` matrix whose element `(kk, j)` is `at(kk, j)`, rounding to bf16.
    pub(crate) fn pack(k: usize, n: usize, at: impl Fn(usize, usize) -> f32 + Sync) -> PackedB {
        let k2 = k.div_ceil(2);
        let k2p = k2.div_ceil(KP_ALIGN) * KP_ALIGN;
        let panels = n.div_ceil(NB);
        let per_panel = k2p * NR;
        let mut lines = vec![Line::default(); panels * per_panel];
        let get = |kk: usize, j: usize| if kk < k && j < n { at(kk, j) } else { 0.0 };
        lines
            .par_chunks_mut(per_panel.max(1))
            .enumerate()
            .for_each(|(pi, panel)| {
                for (p, row) in panel.chunks_mut(NR).enumerate() {
                    for (v, line) in row.iter_mut().enumerate() {
                        for (l, w) in line.0.iter_mut().enumerate() {
                            let j = pi * NB + v * 16 + l;
                            *w = pair(get(2 * p, j), get(2 * p + 1, j));
                        }
                    }
                }
            });
        PackedB {
            lines,
            k,
            n,
            k2,
            k2p,
        }
    }

    /// Bytes held (padding included).
    pub(crate) fn bytes(&self) -> usize {
        self.lines.len() * std::mem::size_of::<Line>()
    }

    /// Element `(kk, j)` as f32.
    pub(crate) fn get(&self, kk: usize, j: usize) -> f32 {
        let (pi, c) = (j / NB, j % NB);
        let w = self.lines[(pi * self.k2p + kk / 2) * NR + c / 16].0[c % 16];
        let (lo, hi) = unpair(w);
        if kk.is_multiple_of(2) {
            lo
        } else {
            hi
        }
    }

    /// The matrix as dense row-major f32 `[k, n]`.
    pub(crate) fn to_f32(&self) -> Vec<f32> {
        super::packed::dense(self.k, self.n, |kk, j| self.get(kk, j))
    }

    /// Words of panel `pi` from pair `p` on.
    fn panel_at(&self, pi: usize, p: usize) -> *const u32 {
        self.lines[(pi * self.k2p + p) * NR..].as_ptr().cast()
    }
}

/// `c[m,n] = start + a[m,k] · b` with `a` row-major f32 rounded to bf16, f32 accumulation.
pub(crate) fn gemm(
    c: &mut [f32],
    a: &[f32],
    b: &PackedB,
    m: usize,
    start: Start<'_>,
    isa: Isa,
) -> Result<()> {
    let (k, n) = (b.k, b.n);
    if finish_trivial(c, a, m, k, n, start, "bf16")? {
        return Ok(());
    }
    match isa {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        Isa::Amx if avx512_bf16_available() && amx_available() => {
            // SAFETY: the guard checked the instruction sets and the tile permission; the
            // slices have exactly the lengths the shape needs, a bias has n values, and
            // m, n, k > 0.
            unsafe { amx::gemm(&mut c[..m * n], &a[..m * k], b, m, start) };
            Ok(())
        }
        _ => {
            // The other paths start from `C` itself: a bias is written into it first.
            let accumulate = match start {
                Start::Zero => false,
                Start::Accumulate => true,
                Start::Bias(bias) => {
                    fill_rows(&mut c[..m * n], bias);
                    true
                }
            };
            gemm_from_c(c, a, b, m, accumulate, isa)
        }
    }
}

/// The AVX-512 and portable paths, which start from zero or from `C`'s values; `m, n, k > 0`
/// and the buffers checked by [`gemm`].
fn gemm_from_c(
    c: &mut [f32],
    a: &[f32],
    b: &PackedB,
    m: usize,
    accumulate: bool,
    isa: Isa,
) -> Result<()> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 | Isa::Amx if avx512_bf16_available() => {
            let (k, n) = (b.k, b.n);
            // SAFETY: the guard checked the instruction sets; the slices have exactly the
            // lengths the shape needs and m, n, k > 0 (the caller's checks).
            unsafe { avx512::gemm(&mut c[..m * n], &a[..m * k], b, m, accumulate) };
            Ok(())
        }
        _ => portable(c, a, b, m, accumulate),
    }
}

/// The portable path: the same arithmetic (activations rounded to bf16, bf16 weights, f32
/// accumulation) through the f32 GEMM, with both operands widened to f32 for the call. The
/// widened weight is a temporary: the weight stays bf16 between calls.
fn portable(c: &mut [f32], a: &[f32], b: &PackedB, m: usize, accumulate: bool) -> Result<()> {
    let (k, n) = (b.k, b.n);
    let mut ar = a[..m * k].to_vec();
    ar.par_chunks_mut(4096)
        .for_each(|ch| ch.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32()));
    let bf = b.to_f32();
    super::sgemm(c, &ar, &bf, m, n, k, false, false, accumulate, 1.0, true)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests {
    use super::super::weight::CpuWeight;
    use super::*;
    use crate::backend::WeightPrecision;
    use crate::rng::Rng;

    fn r(x: f32) -> f64 {
        f64::from(bf16::from_f32(x).to_f32())
    }

    /// Checks `c` against the f64 product of the bf16-rounded operands, `c0` added when
    /// accumulating. `b_at(kk, j)` is the (unrounded) `B[kk][j]`. The tolerance is f32
    /// accumulation error, far below the ~2^-9 relative error of leaving an operand unrounded.
    #[allow(clippy::too_many_arguments)]
    fn check(
        c: &[f32],
        c0: &[f32],
        a: &[f32],
        b_at: &dyn Fn(usize, usize) -> f32,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
        what: &str,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut want = if accumulate {
                    f64::from(c0[i * n + j])
                } else {
                    0.0
                };
                let mut mag = want.abs();
                for kk in 0..k {
                    let t = r(a[i * k + kk]) * r(b_at(kk, j));
                    want += t;
                    mag += t.abs();
                }
                let got = f64::from(c[i * n + j]);
                assert!(
                    (got - want).abs() <= 1e-6 * (mag + 1.0) * (k as f64).sqrt().max(1.0) / 4.0,
                    "{what}: [{i},{j}] got {got}, want {want} (m={m} n={n} k={k} acc={accumulate})"
                );
            }
        }
    }

    fn isas() -> Vec<Isa> {
        if avx512_bf16_available() && amx_available() {
            vec![Isa::Amx, Isa::Avx512Bf16, Isa::Portable]
        } else if avx512_bf16_available() {
            eprintln!("no AMX-BF16 on this CPU (or no tile permission): AMX path not tested");
            vec![Isa::Avx512Bf16, Isa::Portable]
        } else {
            eprintln!("no AVX-512 BF16 on this CPU: only the portable path is tested");
            vec![Isa::Portable]
        }
    }

    // (m, out, in): m = 1, odd k, n not a multiple of 16, tails of every block size, both
    // the row-block and the column-split parallel schedules, k over several cache blocks.
    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (1, 17, 3),
        (2, 5, 2),
        (7, 50, 33),
        (8, 48, 256),
        (9, 49, 257),
        (3, 1536, 384),
        (65, 100, 257),
        (130, 200, 601),
        (200, 47, 1030),
    ];

    #[test]
    fn linear_matches_f64_product_of_rounded_operands() {
        let mut rng = Rng::new(7);
        for isa in isas() {
            for &(m, out, inp) in SHAPES {
                let w = rng.vec_range(out * inp, -1.0, 1.0);
                let cw = CpuWeight::new(&w, out, inp, WeightPrecision::Bf16).unwrap();
                for accumulate in [false, true] {
                    // forward: y[m,out] (+)= x[m,in] · Wᵀ
                    let x = rng.vec_range(m * inp, -1.0, 1.0);
                    let y0 = rng.vec_range(m * out, -1.0, 1.0);
                    let mut y = y0.clone();
                    cw.linear(&mut y, &x, m, accumulate, isa).unwrap();
                    let wt = |kk: usize, j: usize| w[j * inp + kk];
                    check(
                        &y,
                        &y0,
                        &x,
                        &wt,
                        m,
                        out,
                        inp,
                        accumulate,
                        &format!("{isa:?} fwd"),
                    );
                    // with a bias: y[m,out] = bias + x[m,in] · Wᵀ (the AMX path loads it into
                    // its accumulator tiles, the others write it into y first)
                    let bias = rng.vec_range(out, -1.0, 1.0);
                    let mut yb = rng.vec_range(m * out, -1.0, 1.0);
                    cw.linear_bias(&mut yb, &x, &bias, m, isa).unwrap();
                    let rows: Vec<f32> = (0..m).flat_map(|_| bias.iter().copied()).collect();
                    check(
                        &yb,
                        &rows,
                        &x,
                        &wt,
                        m,
                        out,
                        inp,
                        true,
                        &format!("{isa:?} fwd+bias"),
                    );
                    // input gradient: dx[m,in] (+)= dy[m,out] · W
                    let dy = rng.vec_range(m * out, -1.0, 1.0);
                    let dx0 = rng.vec_range(m * inp, -1.0, 1.0);
                    let mut dx = dx0.clone();
                    cw.linear_backward_input(&mut dx, &dy, m, accumulate, isa)
                        .unwrap();
                    let wn = |kk: usize, j: usize| w[kk * inp + j];
                    check(
                        &dx,
                        &dx0,
                        &dy,
                        &wn,
                        m,
                        inp,
                        out,
                        accumulate,
                        &format!("{isa:?} bwd"),
                    );
                }
            }
        }
    }

    /// The per-thread activation buffer is reused without a full zero fill: its padding (words
    /// past `k/2`, rows past `m`) must still be zero. A first product leaves NaN everywhere in
    /// the buffer; a second, smaller one must not pick any up (NaN · 0 is NaN). Both products
    /// are small enough to run on this thread, which owns the buffer.
    #[test]
    fn stale_activation_buffer_never_leaks() {
        for isa in isas() {
            let big = CpuWeight::new(&[0.5; 16 * 62], 16, 62, WeightPrecision::Bf16).unwrap();
            let mut y = vec![0.0; 40 * 16];
            big.linear(&mut y, &[f32::NAN; 40 * 62], 40, false, isa)
                .unwrap();
            let small = CpuWeight::new(&[0.5; 16 * 30], 16, 30, WeightPrecision::Bf16).unwrap();
            let mut y = vec![0.0; 3 * 16];
            small.linear(&mut y, &[1.0; 3 * 30], 3, false, isa).unwrap();
            assert!(y.iter().all(|&v| v == 15.0), "{isa:?}: {y:?}");
        }
    }

    #[test]
    fn kernel_and_portable_paths_agree() {
        if !avx512_bf16_available() {
            eprintln!("no AVX-512 BF16 on this CPU: nothing to compare");
            return;
        }
        let mut rng = Rng::new(8);
        let (m, out, inp) = (37, 70, 129);
        let w = rng.vec_range(out * inp, -1.0, 1.0);
        let cw = CpuWeight::new(&w, out, inp, WeightPrecision::Bf16).unwrap();
        let x = rng.vec_range(m * inp, -1.0, 1.0);
        let mut y1 = vec![0.0; m * out];
        let mut y2 = vec![0.0; m * out];
        cw.linear(&mut y1, &x, m, false, Isa::Avx512Bf16).unwrap();
        cw.linear(&mut y2, &x, m, false, Isa::Portable).unwrap();
        for (a, b) in y1.iter().zip(&y2) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn packing_round_trips_and_halves_memory() {
        let mut rng = Rng::new(9);
        let (out, inp) = (96, 384);
        let w = rng.vec_range(out * inp, -2.0, 2.0);
        let cw = CpuWeight::new(&w, out, inp, WeightPrecision::Bf16).unwrap();
        let back = cw.to_f32().unwrap();
        for (a, b) in w.iter().zip(&back) {
            assert_eq!(bf16::from_f32(*a).to_f32(), *b);
        }
        // Both packings together: the f32 size (no padding at these multiples of 48 and 2).
        assert_eq!(cw.bytes(), out * inp * 4);
        let f = CpuWeight::new(&w, out, inp, WeightPrecision::F32).unwrap();
        assert_eq!(f.to_f32().unwrap(), w);
    }

    #[test]
    fn degenerate_and_bad_shapes() {
        for isa in isas() {
            // k = 0: an empty sum overwrites with zeros, or leaves C when accumulating.
            let cw = CpuWeight::new(&[], 3, 0, WeightPrecision::Bf16).unwrap();
            let mut y = vec![5.0; 6];
            cw.linear(&mut y, &[], 2, true, isa).unwrap();
            assert_eq!(y, vec![5.0; 6]);
            cw.linear(&mut y, &[], 2, false, isa).unwrap();
            assert_eq!(y, vec![0.0; 6]);
            // m = 0 touches nothing.
            let cw = CpuWeight::new(&[1.0; 6], 2, 3, WeightPrecision::Bf16).unwrap();
            cw.linear(&mut [], &[], 0, false, isa).unwrap();
            // Buffers too small for the shape are an error, not an out-of-bounds access.
            let mut y = vec![0.0; 3];
            assert!(cw.linear(&mut y, &[1.0; 6], 2, false, isa).is_err());
            assert!(cw.linear(&mut [0.0; 4], &[1.0; 5], 2, false, isa).is_err());
        }
        assert!(CpuWeight::new(&[1.0; 5], 2, 3, WeightPrecision::Bf16).is_err());
    }
}
