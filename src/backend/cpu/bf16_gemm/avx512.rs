//! The AVX-512 BF16 path of the bf16 products: a `vdpbf16ps` micro-kernel.
//!
//! One call computes an `MR x NB` tile of `C` (`MR·NR` = 24 zmm accumulators, 3 for `B`, one for
//! the broadcast of an activation pair word from each of [`MR`] rows). On this project's
//! Sapphire Rapids machine `vdpbf16ps` issues at one every two cycles (measured: ~65 GFLOP/s a
//! core, half the f32 FMA rate) with an ~8-cycle latency, so 24 independent chains keep it busy
//! and the loads (3 vectors + 8 broadcasts per 24 instructions) are far from the load ports'
//! limit. `k` is blocked by [`KC`], which covers MiniLM's `k = 384` in one block (the `C` tile is
//! then read and written once); the panel slice of `B` (up to 48 KiB) is reused from L1/L2 by
//! every row group of a task. Tasks are blocks of [`MC`] rows (and, when there are too few of
//! those for the pool, ranges of column panels), run over rayon; each converts its own
//! activations ([`pack_a`], shared with the AMX path), which then stay in its core's caches.

use super::super::packed::{for_each_task, mask16, CPtr};
use super::{PackedB, NB, NR};
use core::arch::x86_64::*;
use std::cell::RefCell;

/// Rows of the register tile.
const MR: usize = 8;
/// Depth (in `k` elements) of one cache block.
const KC: usize = 512;
/// Rows of `C` per task.
const MC: usize = 64;

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
    let cp = CPtr(c.as_mut_ptr());
    for_each_task(m, MC, n.div_ceil(NB), m * n * k, |r0, rows, p0, p1| {
        APACK.with(|ap| {
            let mut ap = ap.borrow_mut();
            // SAFETY: the feature check is the caller's guarantee; the slices are in bounds
            // (rows r0..r0+rows < m of `a`), and this task alone writes rows r0..r0+rows,
            // columns p0·NB..p1·NB of `C` (clamped to n inside `tile`).
            unsafe {
                pack_a(
                    &mut ap,
                    &a[r0 * k..(r0 + rows) * k],
                    rows,
                    k,
                    k.div_ceil(2),
                    MR,
                );
                block(cp, r0, rows, p0, p1, &ap, b, n, accumulate);
            }
        });
    });
}

/// Converts `rows` rows of `a` (`[rows, k]`, f32) to bf16 pair words, row-major with a stride
/// of `lda >= k/2` words, rounded up to a multiple of `row_multiple` rows; padding rows, the
/// odd-`k` pad and the words past `k/2` are zero. Row-major keeps this a streaming conversion
/// (one masked store per 32 values): the AVX-512 micro-kernel broadcasts from `MR` rows at a
/// stride, and the AMX kernel loads rows of it as A tiles.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL/BF16; `a.len() == rows·k`; `lda >= k.div_ceil(2)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn pack_a(
    out: &mut Vec<u32>,
    a: &[f32],
    rows: usize,
    k: usize,
    lda: usize,
    row_multiple: usize,
) {
    // The buffer is reused across calls: only what the loop below does not write (the words
    // past k/2 of each row, the padding rows) is zeroed, not the whole buffer.
    let padded = rows.div_ceil(row_multiple) * row_multiple;
    if out.len() < padded * lda {
        out.resize(padded * lda, 0);
    }
    let k2 = k.div_ceil(2);
    for r in 0..rows {
        out[r * lda + k2..(r + 1) * lda].fill(0);
    }
    out[rows * lda..padded * lda].fill(0);
    for r in 0..rows {
        let row = &a[r * k..(r + 1) * k];
        let dst = out[r * lda..(r + 1) * lda].as_mut_ptr();
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
            // SAFETY: words kk/2 .. kk/2 + ceil(min(left, 32)/2) lie inside the row's lda.
            _mm512_mask_storeu_epi32(
                dst.add(kk / 2).cast(),
                mask16(left.min(32).div_ceil(2)),
                std::mem::transmute::<__m512bh, __m512i>(bh),
            );
            kk += 32;
        }
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
        let bv: [__m512bh; NR] =
            std::array::from_fn(|v| std::mem::transmute(_mm512_load_si512(bp.add(v * 16).cast())));
        for (r, accr) in acc.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * lda + p) as i32));
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
