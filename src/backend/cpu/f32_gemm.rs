//! f32 products with frozen f32 weights packed once at load, on an AVX-512F micro-kernel (CPUs
//! without AVX-512F keep f32 weights row-major for the `gemm` crate: see `weight.rs`).
//!
//! Same shape of problem as `bf16_gemm` (what both share is in `packed`): `C[m,n] (+)= A[m,k]·B` with `A` a row-major f32
//! activation matrix and `B` a view of a frozen weight. [`PackedF32`] stores `B` in column panels
//! of [`NB`] columns, each panel `[k][NB]` (64-byte aligned rows), so the kernel streams one
//! panel contiguously from L1 however `W` is laid out; a weight keeps one packing per product.
//!
//! The micro-kernel holds an `MR x NB` tile of `C` in 24 zmm accumulators and per `k` step loads
//! 3 vectors of `B` and broadcasts one value from each of `MR` rows of `A` (a `vbroadcastss`
//! load each): 24 FMAs against 11 loads, so the two FMA ports, not the loads, bound it. `A` is
//! read in place: its `MR` rows advance along `k` in step, one cache line per 16 steps each.
//! `k` is blocked by [`KC`] so a panel's block of `B` (`KC·NB·4` = 24 KiB) stays in L1 while
//! every row tile of a task passes over it. Each tile prefetches the next tile's rows of `A` and
//! a share of the next block of `B`: on one thread that took the shapes whose `B` outgrows L2
//! from ~100 to ~115 GFLOP/s (docs/performance.md, fourth pass).

use super::packed::{dense, finish_trivial, for_each_task, Start};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::sync::OnceLock;

/// 16-lane vectors across a panel.
const NR: usize = 3;
/// Columns of a packed panel.
const NB: usize = 16 * NR;
/// Rows of the register tile.
const MR: usize = 8;
/// Depth of one cache block of `k`.
const KC: usize = 128;
/// Rows of `C` per task.
const MC: usize = 64;

/// A 64-byte aligned row of 16 values of a panel.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A `[k, n]` f32 matrix in column panels of [`NB`] (see the module docs).
pub(crate) struct PackedF32 {
    /// Panels one after another, each `[k][NR]` lines.
    lines: Vec<Line>,
    k: usize,
    n: usize,
}

impl PackedF32 {
    /// Packs the `[k, n]` matrix whose element `(kk, j)` is `at(kk, j)`.
    pub(crate) fn pack(k: usize, n: usize, at: impl Fn(usize, usize) -> f32 + Sync) -> PackedF32 {
        let per_panel = k * NR;
        let mut lines = vec![Line::default(); n.div_ceil(NB) * per_panel];
        lines
            .par_chunks_mut(per_panel.max(1))
            .enumerate()
            .for_each(|(pi, panel)| {
                for (kk, row) in panel.chunks_mut(NR).enumerate() {
                    for (v, line) in row.iter_mut().enumerate() {
                        for (l, x) in line.0.iter_mut().enumerate() {
                            let j = pi * NB + v * 16 + l;
                            *x = if j < n { at(kk, j) } else { 0.0 };
                        }
                    }
                }
            });
        PackedF32 { lines, k, n }
    }

    /// Bytes held (padding included).
    pub(crate) fn bytes(&self) -> usize {
        self.lines.len() * std::mem::size_of::<Line>()
    }

    /// Element `(kk, j)`.
    pub(crate) fn get(&self, kk: usize, j: usize) -> f32 {
        let (pi, c) = (j / NB, j % NB);
        self.lines[(pi * self.k + kk) * NR + c / 16].0[c % 16]
    }

    /// The matrix as dense row-major `[k, n]`.
    pub(crate) fn to_f32(&self) -> Vec<f32> {
        dense(self.k, self.n, |kk, j| self.get(kk, j))
    }

    /// Panel `pi` from row `kk` on.
    fn panel_at(&self, pi: usize, kk: usize) -> *const f32 {
        self.lines[(pi * self.k + kk) * NR..].as_ptr().cast()
    }
}

/// Whether the hand-written f32 kernels can run here: the CPU has AVX-512F, and
/// `FLEXP_F32_KERNEL` is not `portable` (which keeps f32 weights row-major for the `gemm` crate
/// and sends attention's and LoRA's small products there too, to compare the two or to rule the
/// kernels out). Decided once per process; `small_gemm` asks the same question.
pub(crate) fn kernel_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::env::var("FLEXP_F32_KERNEL").unwrap_or_default() != "portable" && avx512f()
    })
}

/// Whether the CPU has AVX-512F.
fn avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `c[m,n] = start + a[m,k] · b` on the micro-kernel; an error on a CPU without AVX-512F (a
/// [`PackedF32`] is only built where [`kernel_available`] holds).
pub(crate) fn gemm(
    c: &mut [f32],
    a: &[f32],
    b: &PackedF32,
    m: usize,
    start: Start<'_>,
) -> Result<()> {
    let (k, n) = (b.k, b.n);
    if finish_trivial(c, a, m, k, n, start, "f32")? {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if avx512f() {
        // SAFETY: AVX-512F checked; the slices have exactly the lengths the shape needs, a
        // bias has n values; m, n, k > 0.
        unsafe { kernel::gemm(&mut c[..m * n], &a[..m * k], b, m, start) };
        return Ok(());
    }
    Err(Error::Backend(
        "f32 packed product on a CPU without AVX-512F".into(),
    ))
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::super::packed::{mask16, CPtr};
    use super::{for_each_task, PackedF32, Start, KC, MC, MR, NB, NR};
    use core::arch::x86_64::*;

    /// How a tile's accumulators start.
    #[derive(Clone, Copy)]
    enum Init {
        Zero,
        LoadC,
        Bias(*const f32),
    }

    /// # Safety
    /// AVX-512F available; `c.len() == m·n`, `a.len() == m·k`, a bias has `n` values; m, n, k > 0.
    pub(super) unsafe fn gemm(c: &mut [f32], a: &[f32], b: &PackedF32, m: usize, start: Start<'_>) {
        let (k, n) = (b.k, b.n);
        let cp = CPtr(c.as_mut_ptr());
        let ap = a.as_ptr() as usize;
        for_each_task(m, MC, n.div_ceil(NB), m * n * k, |r0, rows, p0, p1| {
            // SAFETY: rows r0..r0+rows < m; this task alone writes those rows in panels p0..p1.
            unsafe { block(cp, ap as *const f32, r0, rows, p0, p1, b, start) };
        });
    }

    /// One task: rows `r0..r0+rows` of `C` against panels `p0..p1`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn block(
        c: CPtr,
        a: *const f32,
        r0: usize,
        rows: usize,
        p0: usize,
        p1: usize,
        b: &PackedF32,
        start: Start<'_>,
    ) {
        let (k, n) = (b.k, b.n);
        // A tail of fewer than MR rows is copied into a zero-padded tile so the kernel never
        // reads past A.
        let mut tail = [0.0f32; MR * KC];
        for pi in p0..p1 {
            let j0 = pi * NB;
            let cols = NB.min(n - j0);
            let mut kb = 0;
            while kb < k {
                let kc = KC.min(k - kb);
                let bp = b.panel_at(pi, kb);
                let init = if kb > 0 {
                    Init::LoadC
                } else {
                    match start {
                        Start::Zero => Init::Zero,
                        Start::Accumulate => Init::LoadC,
                        Start::Bias(bias) => Init::Bias(bias.as_ptr().add(j0)),
                    }
                };
                // The next block of B (this panel's next k block, or the next panel's first),
                // fetched a share per row tile while this block computes.
                let (nb_ptr, nb_lines) = if kb + KC < k {
                    (b.panel_at(pi, kb + KC), KC.min(k - kb - KC) * NR)
                } else if pi + 1 < p1 {
                    (b.panel_at(pi + 1, 0), KC.min(k) * NR)
                } else {
                    (std::ptr::null(), 0)
                };
                let tiles = rows.div_ceil(MR);
                let share = nb_lines.div_ceil(tiles);
                let mut i = 0;
                while i < rows {
                    // `wrapping_add`: past the last share the pointer is never dereferenced.
                    let t = i / MR;
                    let pf = (
                        nb_ptr.wrapping_add(t * share * 16),
                        share.min(nb_lines.saturating_sub(t * share)),
                    );
                    let mr = MR.min(rows - i);
                    let cptr = c.0.add((r0 + i) * n + j0);
                    let arow = a.add((r0 + i) * k + kb);
                    // The next tile's rows of A, fetched while this one computes (the last
                    // tile fetches its own rows again: harmless).
                    let next = a.add((r0 + (i + MR).min(rows - mr)) * k + kb);
                    if mr == MR {
                        tile(kc, arow, k, next, pf, bp, cptr, n, MR, cols, init);
                    } else {
                        for r in 0..mr {
                            std::ptr::copy_nonoverlapping(
                                arow.add(r * k),
                                tail.as_mut_ptr().add(r * KC),
                                kc,
                            );
                        }
                        tile(kc, tail.as_ptr(), KC, arow, pf, bp, cptr, n, mr, cols, init);
                    }
                    i += MR;
                }
                kb += KC;
            }
        }
    }

    /// `C[0..rows, 0..cols] = init + Σ_p a[·][p] ⊗ b[p]` over `kc` steps.
    ///
    /// # Safety
    /// AVX-512F; `a` holds `MR` readable rows of `kc` values at stride `lda`, `b` `kc·NB`
    /// values (64-byte aligned rows), `c` `rows` rows of stride `ldc` and `cols` columns, a
    /// bias `cols` values. The prefetch addresses (`a_next`, `b_next`) need not be valid:
    /// prefetches do not fault.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile(
        kc: usize,
        a: *const f32,
        lda: usize,
        a_next: *const f32,
        b_next: (*const f32, usize),
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        init: Init,
    ) {
        let masks: [__mmask16; NR] = std::array::from_fn(|v| mask16(cols.saturating_sub(v * 16)));
        let mut acc = [[_mm512_setzero_ps(); NR]; MR];
        match init {
            Init::Zero => {}
            Init::LoadC => {
                for (r, accr) in acc.iter_mut().enumerate().take(rows) {
                    for (v, x) in accr.iter_mut().enumerate() {
                        *x = _mm512_maskz_loadu_ps(masks[v], c.add(r * ldc + v * 16));
                    }
                }
            }
            Init::Bias(bias) => {
                let bv: [__m512; NR] =
                    std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], bias.add(v * 16)));
                for accr in acc.iter_mut() {
                    *accr = bv;
                }
            }
        }
        for p in 0..kc {
            if p % 16 == 0 {
                for r in 0..MR {
                    _mm_prefetch::<_MM_HINT_T0>(a_next.wrapping_add(r * lda + p).cast());
                }
            }
            if p < b_next.1 {
                _mm_prefetch::<_MM_HINT_T0>(b_next.0.wrapping_add(p * 16).cast());
            }
            let bp = b.add(p * NB);
            let bv: [__m512; NR] = std::array::from_fn(|v| _mm512_load_ps(bp.add(v * 16)));
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * lda + p));
                for (v, x) in accr.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(av, bv[v], *x);
                }
            }
        }
        for (r, accr) in acc.iter().enumerate().take(rows) {
            for (v, x) in accr.iter().enumerate() {
                _mm512_mask_storeu_ps(c.add(r * ldc + v * 16), masks[v], *x);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Whether the kernel can be tested here (the f32 weights of `weight.rs` are tested on
    /// every CPU against the same f64 sums, whichever layout they use).
    fn testable() -> bool {
        if !avx512f() {
            eprintln!("no AVX-512F on this CPU: the packed f32 kernel is not tested");
        }
        avx512f()
    }

    // (m, k, n): tails of the register tile (m % 8), of a vector and a panel (n % 16, n % 48),
    // of a k block (k % 128) and several k blocks, rows past one task (m > 64), and products
    // both under and over the size that goes parallel.
    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (1, 3, 17),
        (2, 2, 5),
        (7, 33, 50),
        (8, 128, 48),
        (9, 129, 49),
        (3, 384, 1536),
        (65, 257, 100),
        (130, 601, 200),
        (200, 1030, 47),
        (512, 384, 384),
    ];

    /// Checks `c[m,n]` against the f64 sum `c0 + Σ_kk a[i][kk]·b(kk, j)`, to the error of an f32
    /// sum of `k` terms.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check(
        c: &[f32],
        c0: &[f32],
        a: &[f32],
        b: impl Fn(usize, usize) -> f32,
        m: usize,
        k: usize,
        n: usize,
        what: &str,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut want = f64::from(c0[i * n + j]);
                let mut mag = want.abs();
                for kk in 0..k {
                    let t = f64::from(a[i * k + kk]) * f64::from(b(kk, j));
                    want += t;
                    mag += t.abs();
                }
                let got = f64::from(c[i * n + j]);
                assert!(
                    (got - want).abs() <= 2e-7 * (mag + 1.0) * (k as f64).sqrt().max(1.0),
                    "{what}: [{i},{j}] got {got}, want {want} (m={m} k={k} n={n})"
                );
            }
        }
    }

    #[test]
    fn products_match_f64_on_every_start() {
        if !testable() {
            return;
        }
        let mut rng = Rng::new(11);
        for &(m, k, n) in SHAPES {
            let b = rng.vec_range(k * n, -1.0, 1.0);
            let bat = |kk: usize, j: usize| b[kk * n + j];
            let pb = PackedF32::pack(k, n, bat);
            let a = rng.vec_range(m * k, -1.0, 1.0);
            let bias = rng.vec_range(n, -1.0, 1.0);
            // Overwrite: C starts as NaN, which must not survive.
            let mut c = vec![f32::NAN; m * n];
            gemm(&mut c, &a, &pb, m, Start::Zero).unwrap();
            check(&c, &vec![0.0; m * n], &a, bat, m, k, n, "zero");
            // Accumulate onto C's values.
            let c0 = rng.vec_range(m * n, -1.0, 1.0);
            let mut c = c0.clone();
            gemm(&mut c, &a, &pb, m, Start::Accumulate).unwrap();
            check(&c, &c0, &a, bat, m, k, n, "accumulate");
            // Bias broadcast over rows, C's NaNs overwritten.
            let mut c = vec![f32::NAN; m * n];
            gemm(&mut c, &a, &pb, m, Start::Bias(&bias)).unwrap();
            let rows: Vec<f32> = (0..m).flat_map(|_| bias.iter().copied()).collect();
            check(&c, &rows, &a, bat, m, k, n, "bias");
        }
    }

    #[test]
    fn packing_round_trips() {
        let (k, n) = (37, 101);
        let b = Rng::new(12).vec_range(k * n, -2.0, 2.0);
        let pb = PackedF32::pack(k, n, |kk, j| b[kk * n + j]);
        assert_eq!(pb.to_f32(), b);
        // Three panels of 48 columns, zero-padded: 144 columns of 37 rows.
        assert_eq!(pb.bytes(), 37 * 144 * 4);
    }

    #[test]
    fn empty_sums_and_bad_shapes() {
        if !testable() {
            return;
        }
        let pb = PackedF32::pack(0, 3, |_, _| 0.0);
        let mut c = vec![5.0; 6];
        gemm(&mut c, &[], &pb, 2, Start::Accumulate).unwrap();
        assert_eq!(c, vec![5.0; 6]);
        gemm(&mut c, &[], &pb, 2, Start::Bias(&[1.0, 2.0, 3.0])).unwrap();
        assert_eq!(c, vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
        gemm(&mut c, &[], &pb, 2, Start::Zero).unwrap();
        assert_eq!(c, vec![0.0; 6]);
        let pb = PackedF32::pack(3, 2, |_, _| 1.0);
        gemm(&mut [], &[], &pb, 0, Start::Zero).unwrap();
        assert!(gemm(&mut [0.0; 3], &[1.0; 6], &pb, 2, Start::Zero).is_err());
        assert!(gemm(&mut [0.0; 4], &[1.0; 5], &pb, 2, Start::Zero).is_err());
        assert!(gemm(&mut [0.0; 4], &[1.0; 6], &pb, 2, Start::Bias(&[1.0])).is_err());
    }
}
