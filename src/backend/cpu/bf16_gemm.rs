//! Matrix products with frozen bf16 weights: a hand-written AVX-512 BF16 micro-kernel
//! (`vdpbf16ps`, f32 accumulation) where the CPU has it, and a portable f32 path everywhere else.
//!
//! Both products of a frozen linear layer `W: [out, in]` are of the form `C[m,n] (+)= A[m,k]·B`
//! with `A` an f32 activation matrix and `B` a view of `W`: the forward `y = x·Wᵀ` (`k = in`,
//! `n = out`, `B = Wᵀ`) and the input gradient `dx = dy·W` (`k = out`, `n = in`, `B = W`).
//! [`PackedB`] stores one such `B` in the layout the micro-kernel streams, and a bf16 weight keeps
//! one packing per product: two bf16 copies are exactly the size of the single f32 copy they
//! replace, and neither product then needs a transposed read.
//!
//! # Layout
//!
//! `vdpbf16ps acc, a, b` adds `a[2i]·b[2i] + a[2i+1]·b[2i+1]` to f32 lane `i`: each 32-bit lane
//! holds a *pair* of bf16 values adjacent in `k`. So `B` is stored as 32-bit words
//! `B[2p][j] | B[2p+1][j] << 16`, in column panels of [`NB`] = 16·[`NR`] columns, each panel
//! `[k/2][NB]` words: one 512-bit load gives 16 columns' pairs for one `p`. Activations are
//! converted per call into the same pair words (row-major, `_mm512_cvtne2ps_pbh`, rounding to
//! nearest even), and the word of each of [`MR`] rows is broadcast against the `NR` loads of `B`.
//! `k` odd is padded with a zero, and the `n` and `m` tails with zero columns and rows that are
//! never stored.
//!
//! # Micro-kernel and blocking
//!
//! One call computes an `MR x NB` tile of `C` (`MR·NR` = 24 zmm accumulators, 3 for `B`, one for
//! the broadcast). On this project's Sapphire Rapids machine `vdpbf16ps` issues at one every two
//! cycles (measured: ~65 GFLOP/s a core, half the f32 FMA rate) with an ~8-cycle latency, so 24
//! independent chains keep it busy and the loads (3 vectors + 8 broadcasts per 24 instructions)
//! are far from the load ports' limit. `k` is blocked by [`KC`], which covers MiniLM's `k = 384`
//! in one block (the `C` tile is then read and written once); the panel slice of `B` (up to 48
//! KiB) is reused from L1/L2 by every row group of a task. Tasks are blocks of [`MC`] rows (and,
//! when there are too few of those for the pool, ranges of column panels), run over rayon; each
//! converts its own activations, which then stay in its core's caches.

use crate::error::{Error, Result};
use half::bf16;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Rows of the register tile.
pub(crate) const MR: usize = 8;
/// 16-column vectors of the register tile.
pub(crate) const NR: usize = 3;
/// Columns of a packed panel of `B` (the register tile's width).
pub(crate) const NB: usize = 16 * NR;
/// Depth (in `k` elements) of one cache block.
const KC: usize = 512;
/// Rows of `C` per task.
const MC: usize = 64;
/// Products smaller than this many multiply-adds run on the calling thread.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// Which implementation computes the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// The AVX-512 BF16 micro-kernel (on a CPU without it, [`gemm`] falls back to `Portable`).
    Avx512Bf16,
    /// Weights unpacked to f32 per call and multiplied by the f32 GEMM.
    Portable,
}

impl Isa {
    /// The best implementation this CPU supports, decided once per process. Setting
    /// `FLEXP_BF16_KERNEL=portable` forces the portable path (to check it on a CPU that has the
    /// instructions).
    pub(crate) fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let forced = std::env::var("FLEXP_BF16_KERNEL").is_ok_and(|v| v == "portable");
            if !forced && avx512_bf16_available() {
                Isa::Avx512Bf16
            } else {
                Isa::Portable
            }
        })
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
    /// Panels one after another, each `[k2][NB]` words.
    lines: Vec<Line>,
    k: usize,
    n: usize,
    /// `k` rounded up to pairs.
    k2: usize,
}

impl PackedB {
    /// Packs the `[k, n]` matrix whose element `(kk, j)` is `at(kk, j)`, rounding to bf16.
    pub(crate) fn pack(k: usize, n: usize, at: impl Fn(usize, usize) -> f32 + Sync) -> PackedB {
        let k2 = k.div_ceil(2);
        let panels = n.div_ceil(NB);
        let per_panel = k2 * NR;
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
        PackedB { lines, k, n, k2 }
    }

    /// Bytes held (padding included).
    pub(crate) fn bytes(&self) -> usize {
        self.lines.len() * std::mem::size_of::<Line>()
    }

    /// Element `(kk, j)` as f32.
    pub(crate) fn get(&self, kk: usize, j: usize) -> f32 {
        let (pi, c) = (j / NB, j % NB);
        let w = self.lines[(pi * self.k2 + kk / 2) * NR + c / 16].0[c % 16];
        let (lo, hi) = unpair(w);
        if kk.is_multiple_of(2) {
            lo
        } else {
            hi
        }
    }

    /// The matrix as dense row-major f32 `[k, n]`.
    pub(crate) fn to_f32(&self) -> Vec<f32> {
        let n = self.n;
        let mut out = vec![0.0f32; self.k * n];
        out.par_chunks_mut(n.max(1))
            .enumerate()
            .for_each(|(kk, row)| {
                row.iter_mut()
                    .enumerate()
                    .for_each(|(j, v)| *v = self.get(kk, j))
            });
        out
    }

    /// Words of panel `pi` from pair `p` on.
    fn panel_at(&self, pi: usize, p: usize) -> *const u32 {
        self.lines[(pi * self.k2 + p) * NR..].as_ptr().cast()
    }
}

/// `c[m,n] (+)= a[m,k] · b` with `a` row-major f32 rounded to bf16, f32 accumulation.
pub(crate) fn gemm(
    c: &mut [f32],
    a: &[f32],
    b: &PackedB,
    m: usize,
    accumulate: bool,
    isa: Isa,
) -> Result<()> {
    let (k, n) = (b.k, b.n);
    if c.len() < m * n || a.len() < m * k {
        return Err(Error::Backend(format!(
            "bf16 linear shape [{m}x{k}]·[{k}x{n}] does not fit buffers a={}, c={}",
            a.len(),
            c.len()
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return Ok(());
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 if avx512_bf16_available() => {
            // SAFETY: the guard checked the instruction sets; the slices have exactly the
            // lengths the shape needs and m, n, k > 0.
            unsafe { x86::gemm(&mut c[..m * n], &a[..m * k], b, m, accumulate) };
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PackedB, KC, MC, MR, NB, NR, PARALLEL_MIN_FLOPS};
    use core::arch::x86_64::*;
    use rayon::prelude::*;
    use std::cell::RefCell;

    /// `C` shared by the tasks of one product.
    #[derive(Clone, Copy)]
    struct CPtr(*mut f32);
    // SAFETY: tasks write disjoint tiles of `C` (distinct row blocks or column panels), and the
    // pointer does not outlive the `&mut` borrow `gemm` holds for the whole parallel region.
    unsafe impl Send for CPtr {}
    // SAFETY: as above; the pointer itself is only copied, never used to create overlapping
    // references.
    unsafe impl Sync for CPtr {}

    thread_local! {
        /// Packed activations of the current task, reused across calls on this thread.
        static APACK: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    }

    /// `c[m,n] (+)= a[m,k] · b` on the micro-kernel, parallel over rayon.
    ///
    /// # Safety
    /// [`super::avx512_bf16_available`] must hold; `c.len() == m·n`, `a.len() == m·k` with
    /// `(k, n)` the shape of `b`, and `m, n, k > 0`.
    pub(super) unsafe fn gemm(c: &mut [f32], a: &[f32], b: &PackedB, m: usize, accumulate: bool) {
        let (k, n) = (b.k, b.n);
        let panels = n.div_ceil(NB);
        let row_blocks = m.div_ceil(MC);
        let threads = if m * n * k >= PARALLEL_MIN_FLOPS {
            rayon::current_num_threads()
        } else {
            1
        };
        // Enough tasks for the pool (two per thread, so an uneven last block is absorbed); split
        // columns only when row blocks alone are too few (small `m`).
        let col_splits = if row_blocks >= 2 * threads {
            1
        } else {
            (2 * threads).div_ceil(row_blocks).min(panels)
        };
        let tasks = row_blocks * col_splits;
        let cp = CPtr(c.as_mut_ptr());
        let run = |t: usize| {
            let (rb, cs) = (t / col_splits, t % col_splits);
            let r0 = rb * MC;
            let rows = MC.min(m - r0);
            let (p0, p1) = (cs * panels / col_splits, (cs + 1) * panels / col_splits);
            APACK.with(|ap| {
                let mut ap = ap.borrow_mut();
                // SAFETY: the feature check is the caller's guarantee; the slices are in bounds
                // (rows r0..r0+rows < m of `a`), and this task alone writes rows r0..r0+rows,
                // columns p0·NB..p1·NB of `C` (clamped to n inside `tile`).
                unsafe {
                    pack_a(&mut ap, &a[r0 * k..(r0 + rows) * k], rows, k);
                    block(cp, r0, rows, p0, p1, &ap, b, n, accumulate);
                }
            });
        };
        if tasks > 1 && threads > 1 {
            (0..tasks).into_par_iter().for_each(run);
        } else {
            (0..tasks).for_each(run);
        }
    }

    /// Converts `rows` rows of `a` (`[rows, k]`, f32) to bf16 pair words, row-major
    /// `[rows, k2]`, rounded up to a multiple of `MR` rows; padding rows and the odd-`k` pad are
    /// zero. Row-major keeps this a streaming conversion (one masked store per 32 values); the
    /// micro-kernel broadcasts from `MR` rows at a stride instead of from one packed panel.
    ///
    /// # Safety
    /// The CPU must support AVX-512F/BW/VL/BF16; `a.len() == rows·k`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_a(out: &mut Vec<u32>, a: &[f32], rows: usize, k: usize) {
        let k2 = k.div_ceil(2);
        out.clear();
        out.resize(rows.div_ceil(MR) * MR * k2, 0);
        for r in 0..rows {
            let row = &a[r * k..(r + 1) * k];
            let dst = out[r * k2..(r + 1) * k2].as_mut_ptr();
            let mut kk = 0;
            while kk < k {
                // 32 values -> 16 pair words; the tail is masked (zeros past k).
                let left = k - kk;
                let m0 = mask16(left);
                let m1 = mask16(left.saturating_sub(16));
                // SAFETY: masked loads touch only lanes below `left`, all inside `row` (the
                // second address may lie past the row when its mask is empty: `wrapping_add`,
                // never dereferenced).
                let lo = _mm512_maskz_loadu_ps(m0, row.as_ptr().add(kk));
                let hi = _mm512_maskz_loadu_ps(m1, row.as_ptr().wrapping_add(kk + 16));
                // cvtne2ps_pbh(hi, lo): bf16 lanes 0..16 from `lo`, 16..32 from `hi`, i.e. the
                // 32 values in order, which read as 16 words are the (even, odd) pairs.
                let bh = _mm512_cvtne2ps_pbh(hi, lo);
                // SAFETY: words kk/2 .. kk/2 + ceil(min(left, 32)/2) lie inside the row's k2.
                _mm512_mask_storeu_epi32(
                    dst.add(kk / 2).cast(),
                    mask16(left.min(32).div_ceil(2)),
                    std::mem::transmute::<__m512bh, __m512i>(bh),
                );
                kk += 32;
            }
        }
    }

    /// The first `min(n, 16)` lanes.
    fn mask16(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    }

    /// One task: rows `r0..r0+rows` of `C` against column panels `p0..p1` of `b`, with the
    /// task's packed activations `ap`.
    ///
    /// # Safety
    /// AVX-512 BF16 available; `ap` packed by [`pack_a`] for these rows and `b.k`; `c` points
    /// at a row-major `[m, n]` matrix with `r0 + rows <= m` that no other thread writes in this
    /// tile.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn block(
        c: CPtr,
        r0: usize,
        rows: usize,
        p0: usize,
        p1: usize,
        ap: &[u32],
        b: &PackedB,
        n: usize,
        accumulate: bool,
    ) {
        let k2 = b.k2;
        let kc2 = KC / 2;
        let mut kb = 0;
        while kb < k2 {
            let kp = kc2.min(k2 - kb);
            let load_c = accumulate || kb > 0;
            for pi in p0..p1 {
                let bp = b.panel_at(pi, kb);
                let j0 = pi * NB;
                let cols = NB.min(n - j0);
                let mut i = 0;
                while i < rows {
                    let ptr = ap.as_ptr().add(i * k2 + kb);
                    let cptr = c.0.add((r0 + i) * n + j0);
                    tile(kp, ptr, k2, bp, cptr, n, MR.min(rows - i), cols, load_c);
                    i += MR;
                }
            }
            kb += kc2;
        }
    }

    /// The micro-kernel: `C[0..rows, 0..cols] (+)= Σ_p a[p] ⊗ b[p]` over `kp` pairs, `C`
    /// loaded first when `load_c`.
    ///
    /// # Safety
    /// AVX-512 BF16 available; `a` holds `MR` rows of `kp` words at stride `lda`, `b` `kp·NB`
    /// words (64-byte aligned rows), `c` is valid for `rows` rows of stride `ldc` and `cols`
    /// columns.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn tile(
        kp: usize,
        a: *const u32,
        lda: usize,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        load_c: bool,
    ) {
        let masks: [__mmask16; NR] = std::array::from_fn(|v| mask16(cols.saturating_sub(v * 16)));
        let mut acc = [[_mm512_setzero_ps(); NR]; MR];
        if load_c {
            for (r, accr) in acc.iter_mut().enumerate().take(rows) {
                for (v, x) in accr.iter_mut().enumerate() {
                    *x = _mm512_maskz_loadu_ps(masks[v], c.add(r * ldc + v * 16));
                }
            }
        }
        for p in 0..kp {
            let bp = b.add(p * NB);
            let bv: [__m512bh; NR] = std::array::from_fn(|v| {
                std::mem::transmute(_mm512_load_si512(bp.add(v * 16).cast()))
            });
            for (r, accr) in acc.iter_mut().enumerate() {
                let av: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add(r * lda + p) as i32));
                for (v, x) in accr.iter_mut().enumerate() {
                    *x = _mm512_dpbf16_ps(*x, av, bv[v]);
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
        if avx512_bf16_available() {
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
        let back = cw.to_f32();
        for (a, b) in w.iter().zip(&back) {
            assert_eq!(bf16::from_f32(*a).to_f32(), *b);
        }
        // Both packings together: the f32 size (no padding at these multiples of 48 and 2).
        assert_eq!(cw.bytes(), out * inp * 4);
        let f = CpuWeight::new(&w, out, inp, WeightPrecision::F32).unwrap();
        assert_eq!(f.to_f32(), w);
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
