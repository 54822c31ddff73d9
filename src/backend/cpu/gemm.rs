//! Dense single-precision matrix products through the `gemm` crate.

use crate::error::{Error, Result};

/// Products smaller than this many multiply-adds run on the calling thread: below it, waking the
/// thread pool costs more than it saves.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// `c[m,n] = (acc ? c : 0) + alpha · op(a) · op(b)`, row-major, where `op(a)` is `[m,k]`
/// (`a` stored `[k,m]` when `ta`) and `op(b)` is `[k,n]` (`b` stored `[n,k]` when `tb`).
///
/// `parallel` lets the product use the rayon pool; pass `false` when the caller already runs
/// one product per pool thread.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    acc: bool,
    alpha: f32,
    parallel: bool,
) -> Result<()> {
    if c.len() < m * n || a.len() < m * k || b.len() < k * n {
        return Err(Error::Backend(format!(
            "matmul shape [{m}x{k}]·[{k}x{n}] does not fit buffers a={}, b={}, c={}",
            a.len(),
            b.len(),
            c.len()
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !acc {
            c[..m * n].fill(0.0);
        }
        return Ok(());
    }
    let (a_cs, a_rs) = if ta { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if tb { (k as isize, 1) } else { (1, n as isize) };
    let par = if parallel && m * n * k >= PARALLEL_MIN_FLOPS {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the length checks above guarantee every index the strides can form lies inside
    // `a`, `b` and `c` (`c` is exclusively borrowed, so no aliasing with the inputs).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            acc,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            alpha,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}
