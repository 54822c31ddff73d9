//! Small f32 products over strided operands: the tiles of attention (`64 x 64 x head_dim` and
//! alike) and the rank-`r` LoRA products, on an AVX-512F register kernel where the CPU has it,
//! through the `gemm` crate elsewhere. [`product`] is the checked entry point over slices;
//! [`mm`] the raw one for attention's shared outputs.
//!
//! The `gemm` crate packs both operands on every call; at these sizes that packing and its
//! dispatch were most of the time (attention's products ran at ~20 GFLOP/s on one thread,
//! docs/performance.md, fifth pass). The kernel reads both operands in place instead: it
//! broadcasts elements of `A` at any strides and loads rows of `B` as vectors, so it needs
//! `B`'s and `C`'s rows contiguous (column stride 1). Attention transposes `K` and `V` once per
//! task to get that for `Q Kᵀ` and `dO Vᵀ`. A tile's operands are a few KiB, in L1, so no
//! blocking is needed.

use super::f32_gemm::kernel_available;
use crate::error::{Error, Result};

/// A read-only matrix inside a slice: element `(i, j)` at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> View<'a> {
    /// The row-major `[rows, cols]` matrix at the start of `data`.
    pub(crate) fn rows(data: &'a [f32], rows: usize, cols: usize) -> View<'a> {
        View {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, reading the same elements.
    pub(crate) fn t(self) -> View<'a> {
        View {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Whether every element lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1)
                .checked_mul(self.rs)
                .and_then(|r| r.checked_add((self.cols - 1).checked_mul(self.cs)?))
                .is_some_and(|last| last < self.data.len())
    }
}

/// `dst = (accumulate ? dst : 0) + alpha · lhs · rhs` with `dst` row-major of row stride `ldc`,
/// on the calling thread; an error when the shapes disagree or a view leaves its slice. The
/// kernel runs when `rhs`'s rows are contiguous (`rhs.cs == 1`).
pub(crate) fn product(
    dst: &mut [f32],
    ldc: usize,
    lhs: View<'_>,
    rhs: View<'_>,
    alpha: f32,
    accumulate: bool,
) -> Result<()> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let dst_fits = m == 0 || n == 0 || (ldc >= n && (m - 1) * ldc + n <= dst.len());
    if rhs.rows != k || !lhs.in_bounds() || !rhs.in_bounds() || !dst_fits {
        return Err(Error::Backend(format!(
            "small product [{m}x{k}]·[{}x{n}] does not fit its buffers (lhs {}, rhs {}, dst {} \
             at row stride {ldc})",
            rhs.rows,
            lhs.data.len(),
            rhs.data.len(),
            dst.len()
        )));
    }
    // SAFETY: the views and dst were checked to hold every element the shapes address; dst is
    // a `&mut`, so nothing else reads or writes it, and it cannot overlap the shared inputs.
    unsafe {
        mm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            ldc,
            1,
            lhs.data.as_ptr(),
            lhs.rs,
            lhs.cs,
            rhs.data.as_ptr(),
            rhs.rs,
            rhs.cs,
            alpha,
            accumulate,
        )
    };
    Ok(())
}

/// The `[cols, rows]` transpose of the row-major `[rows, cols]` matrix `m`, times `alpha`.
pub(crate) fn transposed(m: &[f32], rows: usize, cols: usize, alpha: f32) -> Vec<f32> {
    let mut out = vec![0.0; rows * cols];
    if cols == 0 {
        return out;
    }
    for (i, row) in m.chunks_exact(cols).take(rows).enumerate() {
        for (j, &x) in row.iter().enumerate() {
            out[j * rows + i] = alpha * x;
        }
    }
    out
}

/// `dst = (accumulate ? dst : 0) + alpha · lhs · rhs` with `lhs: [m,k]`, `rhs: [k,n]`,
/// `dst: [m,n]`, every matrix given as a pointer plus a row stride and a column stride (in
/// elements). Runs on the calling thread.
///
/// # Safety
///
/// Every element `p + i·rs + j·cs` addressed by the three shapes must lie inside a live
/// allocation; `dst`'s elements must not be accessed by any other thread during the call and must
/// not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    dst_cs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
    alpha: f32,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: (i, j) is inside dst's shape, which the caller guarantees is valid
                    // and exclusively ours.
                    unsafe { *dst.add(i * dst_rs + j * dst_cs) = 0.0 };
                }
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if rhs_cs == 1 && dst_cs == 1 && kernel_available() {
        // SAFETY: AVX-512F is part of `kernel_available`; the operands' extents are this
        // function's contract, and the kernel addresses exactly those elements.
        unsafe {
            kernel::mm(
                m, n, k, dst, dst_rs, lhs, lhs_rs, lhs_cs, rhs, rhs_rs, alpha, accumulate,
            )
        };
        return;
    }
    // SAFETY: forwarded from this function's contract (valid, in-bounds, unaliased dst).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::super::packed::mask16;
    use core::arch::x86_64::*;

    /// Vectors across the widest column block.
    const NV_MAX: usize = 4;

    /// `C = (accumulate ? C : 0) + alpha · A · B`: `A(i,p)` at `a + i·ars + p·acs`, `B`'s row
    /// `p` at `b + p·ldb`, `C`'s row `i` at `c + i·ldc`, rows of `B` and `C` contiguous.
    ///
    /// Columns go in blocks of up to 64 (four vectors, the last one masked); rows in register
    /// tiles of 8 (blocks of one or two vectors: 8 or 16 accumulators) or 4 (three or four
    /// vectors: 12 or 16), so each `k` step issues as many FMAs as it loads values, and the row
    /// tail one row at a time.
    ///
    /// # Safety
    /// AVX-512F available; m, n, k > 0; every addressed element inside a live allocation; `C`
    /// not aliased by `A`, `B` or another thread.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn mm(
        m: usize,
        n: usize,
        k: usize,
        c: *mut f32,
        ldc: usize,
        a: *const f32,
        ars: usize,
        acs: usize,
        b: *const f32,
        ldb: usize,
        alpha: f32,
        accumulate: bool,
    ) {
        let mut j0 = 0;
        while j0 < n {
            let cols = (16 * NV_MAX).min(n - j0);
            let op = Op {
                k,
                ars,
                acs,
                b: b.add(j0),
                ldb,
                ldc,
                cols,
                alpha,
                accumulate,
            };
            let cj = c.add(j0);
            match cols.div_ceil(16) {
                1 => rows::<8, 1>(m, a, cj, &op),
                2 => rows::<8, 2>(m, a, cj, &op),
                3 => rows::<4, 3>(m, a, cj, &op),
                _ => rows::<4, 4>(m, a, cj, &op),
            }
            j0 += cols;
        }
    }

    /// What the tiles of one column block share.
    struct Op {
        k: usize,
        ars: usize,
        acs: usize,
        /// `B` from this block's first column.
        b: *const f32,
        ldb: usize,
        ldc: usize,
        /// Columns in this block, `16·(NV−1) < cols ≤ 16·NV`.
        cols: usize,
        alpha: f32,
        accumulate: bool,
    }

    /// All `m` rows of one column block: tiles of `MR` rows, then the rest one row at a time.
    ///
    /// # Safety
    /// As [`mm`], for this block's `op.cols` columns from `c` and `op.b`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const MR: usize, const NV: usize>(
        m: usize,
        a: *const f32,
        c: *mut f32,
        op: &Op,
    ) {
        let mut i = 0;
        while i + MR <= m {
            tile::<MR, NV>(a.add(i * op.ars), c.add(i * op.ldc), op);
            i += MR;
        }
        while i < m {
            tile::<1, NV>(a.add(i * op.ars), c.add(i * op.ldc), op);
            i += 1;
        }
    }

    /// One `MR x cols` tile of `C`, its accumulators in registers over all `k` steps.
    ///
    /// # Safety
    /// As [`mm`]: `MR` rows of `A` from `a` and of `C` from `c`, `op.k` rows of `B`, all in
    /// bounds for `op.cols` columns (lanes past them are masked, never read or written).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const MR: usize, const NV: usize>(a: *const f32, c: *mut f32, op: &Op) {
        let masks: [__mmask16; NV] =
            std::array::from_fn(|v| mask16(op.cols.saturating_sub(v * 16)));
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for p in 0..op.k {
            let bp = op.b.add(p * op.ldb);
            let bv: [__m512; NV] =
                std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], bp.add(v * 16)));
            let ap = a.add(p * op.acs);
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(r * op.ars));
                for (x, &bv) in accr.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, bv, *x);
                }
            }
        }
        let alpha = _mm512_set1_ps(op.alpha);
        for (r, accr) in acc.iter().enumerate() {
            let cr = c.add(r * op.ldc);
            for (v, &x) in accr.iter().enumerate() {
                let out = if op.accumulate {
                    let old = _mm512_maskz_loadu_ps(masks[v], cr.add(v * 16));
                    _mm512_fmadd_ps(x, alpha, old)
                } else {
                    _mm512_mul_ps(x, alpha)
                };
                _mm512_mask_storeu_ps(cr.add(v * 16), masks[v], out);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) (also the LoRA tests' inputs).
    pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// One product over views of larger buffers, checked against f64 sums: every element of the
    /// `m x n` block of `dst`, and that nothing else in `dst`'s buffer changed.
    #[allow(clippy::too_many_arguments)]
    fn check(m: usize, n: usize, k: usize, lhs_t: bool, rhs_t: bool, accumulate: bool) {
        let (alpha, pad) = (0.75f32, 3);
        // lhs: [m,k] row-major, or stored [k,m] (read through strides) when lhs_t.
        let (lrs, lcs) = if lhs_t { (1, m + pad) } else { (k + pad, 1) };
        let lhs = values(if lhs_t { k * (m + pad) } else { m * (k + pad) }, 1);
        let (rrs, rcs) = if rhs_t { (1, k + pad) } else { (n + pad, 1) };
        let rhs = values(if rhs_t { n * (k + pad) } else { k * (n + pad) }, 2);
        let ldc = n + pad;
        let before = values(m * ldc, 3);
        let mut dst = before.clone();
        if !accumulate {
            for i in 0..m {
                dst[i * ldc..i * ldc + n].fill(f32::NAN);
            }
        }
        // SAFETY: every strided element lies inside the buffers sized above; dst is exclusive.
        unsafe {
            mm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                ldc,
                1,
                lhs.as_ptr(),
                lrs,
                lcs,
                rhs.as_ptr(),
                rrs,
                rcs,
                alpha,
                accumulate,
            )
        };
        for i in 0..m {
            for j in 0..ldc {
                let got = dst[i * ldc + j];
                if j >= n {
                    assert_eq!(
                        got.to_bits(),
                        before[i * ldc + j].to_bits(),
                        "pad ({i},{j})"
                    );
                    continue;
                }
                let dot: f64 = (0..k)
                    .map(|p| f64::from(lhs[i * lrs + p * lcs]) * f64::from(rhs[p * rrs + j * rcs]))
                    .sum();
                let start = if accumulate {
                    f64::from(before[i * ldc + j])
                } else {
                    0.0
                };
                let want = start + f64::from(alpha) * dot;
                assert!(
                    (f64::from(got) - want).abs() <= 1e-5 * (1.0 + k as f64),
                    "m={m} n={n} k={k} lhs_t={lhs_t} rhs_t={rhs_t} acc={accumulate}: \
                     ({i},{j}) = {got}, want {want}"
                );
            }
        }
    }

    #[test]
    fn products_match_f64_over_tile_and_vector_tails() {
        // Rows around the 4- and 8-row tiles, columns around each vector count and the
        // 64-column block, depths of one step up to attention's sequence lengths.
        for &m in &[1, 3, 4, 5, 8, 9, 13, 64] {
            for &n in &[1, 15, 16, 17, 32, 33, 48, 49, 64, 65, 130] {
                for &k in &[1, 7, 32, 64] {
                    check(m, n, k, false, false, false);
                }
            }
        }
    }

    #[test]
    fn accumulates_and_reads_transposed_operands() {
        for &(m, n, k) in &[(64, 32, 64), (9, 33, 5), (64, 64, 32), (1, 1, 1)] {
            for lhs_t in [false, true] {
                for rhs_t in [false, true] {
                    check(m, n, k, lhs_t, rhs_t, true);
                    check(m, n, k, lhs_t, rhs_t, false);
                }
            }
        }
    }

    #[test]
    fn product_rejects_views_outside_their_slices() {
        let (a, b) = (vec![1.0f32; 6], vec![1.0f32; 6]);
        let mut c = vec![0.0f32; 4];
        let ok = product(
            &mut c,
            2,
            View::rows(&a, 2, 3),
            View::rows(&b, 3, 2),
            1.0,
            false,
        );
        assert!(ok.is_ok());
        assert_eq!(c, vec![3.0; 4]);
        // Depth mismatch, a view past its slice, a destination too short.
        assert!(product(
            &mut c,
            2,
            View::rows(&a, 2, 3),
            View::rows(&b, 2, 3),
            1.0,
            false
        )
        .is_err());
        assert!(product(
            &mut c,
            2,
            View::rows(&a, 3, 3),
            View::rows(&b, 3, 2),
            1.0,
            false
        )
        .is_err());
        assert!(product(
            &mut c,
            3,
            View::rows(&a, 2, 3),
            View::rows(&b, 3, 2),
            1.0,
            false
        )
        .is_err());
        // The transpose of a [3,2] view is [2,3]; its elements are the same slice's.
        let t = View::rows(&b, 3, 2).t();
        assert_eq!((t.rows, t.cols, t.rs, t.cs), (2, 3, 1, 2));
        assert_eq!(
            transposed(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3, 2.0),
            [2.0, 8.0, 4.0, 10.0, 6.0, 12.0]
        );
    }

    #[test]
    fn empty_depth_zeroes_or_keeps() {
        check(5, 17, 0, false, false, false);
        check(5, 17, 0, false, false, true);
    }
}
