//! What the products with packed frozen weights (`f32_gemm`, `bf16_gemm`) share: how `C` starts
//! ([`Start`]), the shape checks and empty sums before any kernel runs, the rayon task split,
//! and the pieces of their AVX-512 kernels that are not about the element type.

use crate::error::{Error, Result};
use rayon::prelude::*;

/// Products smaller than this many multiply-adds run on the calling thread.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// The row-major `[k, n]` matrix whose element `(kk, j)` is `at(kk, j)` (unpacking a packed
/// matrix).
pub(crate) fn dense(k: usize, n: usize, at: impl Fn(usize, usize) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; k * n];
    out.par_chunks_mut(n.max(1))
        .enumerate()
        .for_each(|(kk, row)| row.iter_mut().enumerate().for_each(|(j, v)| *v = at(kk, j)));
    out
}

/// What `C` holds before a product is added to it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Start<'a> {
    /// Nothing: `C` is overwritten.
    Zero,
    /// Its current values: the product accumulates.
    Accumulate,
    /// A bias row of `n` values, broadcast over the rows: `C = bias + A·B`. The AMX path loads
    /// it straight into its accumulator tiles, which saves the separate pass over `C`.
    Bias(&'a [f32]),
}

/// Checks a product's buffers and bias against its shape (an error names `what` precision),
/// then does the products with nothing to multiply: `m` or `n` zero (nothing to do), or `k` zero
/// (`C` becomes its start). Returns whether `C` is finished; if not, `m, n, k > 0`, `c` holds
/// at least `m·n` values, `a` at least `m·k`, and a bias `n`.
pub(crate) fn finish_trivial(
    c: &mut [f32],
    a: &[f32],
    m: usize,
    k: usize,
    n: usize,
    start: Start<'_>,
    what: &str,
) -> Result<bool> {
    if c.len() < m * n || a.len() < m * k {
        return Err(Error::Backend(format!(
            "{what} linear shape [{m}x{k}]·[{k}x{n}] does not fit buffers a={}, c={}",
            a.len(),
            c.len()
        )));
    }
    if let Start::Bias(bias) = start {
        if bias.len() != n {
            return Err(Error::Backend(format!(
                "{what} linear: bias of {} values for {n} outputs",
                bias.len()
            )));
        }
    }
    if m == 0 || n == 0 {
        return Ok(true);
    }
    if k == 0 {
        match start {
            Start::Zero => c[..m * n].fill(0.0),
            Start::Accumulate => {}
            Start::Bias(bias) => fill_rows(&mut c[..m * n], bias),
        }
        return Ok(true);
    }
    Ok(false)
}

/// Every row of `c` set to `row`.
pub(crate) fn fill_rows(c: &mut [f32], row: &[f32]) {
    c.par_chunks_mut(row.len())
        .for_each(|r| r.copy_from_slice(row));
}

/// Runs a product of `m` rows and `units` column units as rayon tasks: blocks of `mc` rows and,
/// when those are too few for the pool (two tasks per thread, so an uneven last block is
/// absorbed), ranges of column units. `body(r0, rows, u0, u1)` computes rows `r0..r0+rows`
/// against units `u0..u1`; products under [`PARALLEL_MIN_FLOPS`] multiply-adds (`m·n·k`) stay
/// on the calling thread.
pub(crate) fn for_each_task(
    m: usize,
    mc: usize,
    units: usize,
    madds: usize,
    body: impl Fn(usize, usize, usize, usize) + Sync,
) {
    let row_blocks = m.div_ceil(mc);
    let threads = if madds >= PARALLEL_MIN_FLOPS {
        rayon::current_num_threads()
    } else {
        1
    };
    let col_splits = if row_blocks >= 2 * threads {
        1
    } else {
        (2 * threads).div_ceil(row_blocks).min(units)
    };
    let tasks = row_blocks * col_splits;
    let run = |t: usize| {
        let (rb, cs) = (t / col_splits, t % col_splits);
        let r0 = rb * mc;
        let (u0, u1) = (cs * units / col_splits, (cs + 1) * units / col_splits);
        body(r0, mc.min(m - r0), u0, u1);
    };
    if tasks > 1 && threads > 1 {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
}

/// `C` shared by the tasks of one product.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct CPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint tiles of `C` (distinct row blocks or column panels), and the
// pointer does not outlive the `&mut` borrow `gemm` holds for the whole parallel region.
#[cfg(target_arch = "x86_64")]
unsafe impl Send for CPtr {}
// SAFETY: as above; the pointer itself is only copied, never used to create overlapping
// references.
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for CPtr {}

/// The first `min(n, 16)` lanes.
#[cfg(target_arch = "x86_64")]
pub(crate) fn mask16(n: usize) -> core::arch::x86_64::__mmask16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}
