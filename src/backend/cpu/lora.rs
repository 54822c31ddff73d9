//! Grouped LoRA products: the small products of each adapter segment of a packed batch.
//!
//! They all go through `small_gemm::product` (its AVX-512F kernel where the CPU has it): the
//! `gemm` crate's narrow rank-`r` kernels and per-call packing ran them at 23-26 GFLOP/s
//! (docs/performance.md, fourth pass). Segments write disjoint rows and run in parallel; within a
//! segment the row-wise products run in tasks of [`ROWS`] rows, so one client's products use
//! every thread too, and the two weight gradients (reductions over the rows) run as one task
//! each beside them. The kernel needs its right operand's rows contiguous, so `Aᵀ` and `s·Bᵀ`
//! (`r × d` values) are copied per segment and call.

use super::small_gemm::{product, transposed, View};
use super::split_rows_mut;
use crate::backend::{Backend, LoraGradSeg, LoraSeg, LoraShape};
use crate::error::Result;
use rayon::prelude::*;

/// Rows per task of the row-wise products.
const ROWS: usize = 64;

/// `buf`'s first `rows` rows of `width` values in blocks of [`ROWS`] rows (the last shorter):
/// one slice per task, empty ones when `width` is 0, so that the operands of a task line up
/// whatever their widths.
fn row_blocks_mut(mut buf: &mut [f32], width: usize, rows: usize) -> Vec<&mut [f32]> {
    (0..rows)
        .step_by(ROWS)
        .map(|r0| {
            let (block, rest) = std::mem::take(&mut buf).split_at_mut(ROWS.min(rows - r0) * width);
            buf = rest;
            block
        })
        .collect()
}

/// [`row_blocks_mut`] for a shared buffer.
fn row_blocks(buf: &[f32], width: usize, rows: usize) -> Vec<&[f32]> {
    (0..rows)
        .step_by(ROWS)
        .map(|r0| &buf[r0 * width..(r0 + ROWS.min(rows - r0)) * width])
        .collect()
}

/// Rows of task `i` of `rows`.
fn task_rows(i: usize, rows: usize) -> usize {
    ROWS.min(rows - i * ROWS)
}

pub(crate) fn forward<B: Backend<Buf = Vec<f32>> + ?Sized>(
    y: &mut [f32],
    x: &[f32],
    u: &mut [f32],
    segs: &[LoraSeg<'_, B>],
    s: LoraShape,
) -> Result<()> {
    let spans: Vec<_> = segs.iter().map(|g| g.rows).collect();
    let ys = split_rows_mut(y, &spans, s.d_out)?;
    let us = split_rows_mut(u, &spans, s.rank)?;
    segs.par_iter()
        .zip(ys.into_par_iter().zip(us.into_par_iter()))
        .try_for_each(|(g, (ys, us))| -> Result<()> {
            let rows = g.rows.len;
            let xs = &x[g.rows.start * s.d_in..g.rows.end() * s.d_in];
            let at = transposed(g.a, s.rank, s.d_in, 1.0);
            let sbt = transposed(g.b, s.d_out, s.rank, s.scale);
            row_blocks_mut(ys, s.d_out, rows)
                .into_par_iter()
                .zip(row_blocks_mut(us, s.rank, rows))
                .zip(row_blocks(xs, s.d_in, rows))
                .enumerate()
                .try_for_each(|(i, ((yc, uc), xc))| -> Result<()> {
                    let n = task_rows(i, rows);
                    // u = x · aᵀ   [n, rank]
                    product(
                        uc,
                        s.rank,
                        View::rows(xc, n, s.d_in),
                        View::rows(&at, s.d_in, s.rank),
                        1.0,
                        false,
                    )?;
                    // y += u · (scale · bᵀ)   [n, out]
                    product(
                        yc,
                        s.d_out,
                        View::rows(uc, n, s.rank),
                        View::rows(&sbt, s.rank, s.d_out),
                        1.0,
                        true,
                    )
                })
        })
}

pub(crate) fn backward<B: Backend<Buf = Vec<f32>> + ?Sized>(
    dx: &mut [f32],
    dy: &[f32],
    x: &[f32],
    u: &[f32],
    segs: &mut [LoraGradSeg<'_, B>],
    s: LoraShape,
) -> Result<()> {
    let spans: Vec<_> = segs.iter().map(|g| g.rows).collect();
    let dxs = split_rows_mut(dx, &spans, s.d_in)?;
    segs.par_iter_mut()
        .zip(dxs.into_par_iter())
        .try_for_each(|(g, dxs)| -> Result<()> {
            let n = g.rows.len;
            let r = g.rows;
            let dys = &dy[r.start * s.d_out..r.end() * s.d_out];
            let xs = &x[r.start * s.d_in..r.end() * s.d_in];
            let us = &u[r.start * s.rank..r.end() * s.rank];
            // du = scale · dy · b   [n, rank]
            let mut du = vec![0.0f32; n * s.rank];
            row_blocks_mut(&mut du, s.rank, n)
                .into_par_iter()
                .zip(row_blocks(dys, s.d_out, n))
                .enumerate()
                .try_for_each(|(i, (duc, dyc))| {
                    let m = task_rows(i, n);
                    product(
                        duc,
                        s.rank,
                        View::rows(dyc, m, s.d_out),
                        View::rows(g.b, s.d_out, s.rank),
                        s.scale,
                        false,
                    )
                })?;
            let du = &du;
            let (a, da, db) = (g.a, &mut *g.da, &mut *g.db);
            let (rows_done, grads_done) = rayon::join(
                || {
                    // dx += du · a   [n, in]
                    row_blocks_mut(dxs, s.d_in, n)
                        .into_par_iter()
                        .zip(row_blocks(du, s.rank, n))
                        .enumerate()
                        .try_for_each(|(i, (dxc, duc))| {
                            let m = task_rows(i, n);
                            product(
                                dxc,
                                s.d_in,
                                View::rows(duc, m, s.rank),
                                View::rows(a, s.rank, s.d_in),
                                1.0,
                                true,
                            )
                        })
                },
                || {
                    let (da_done, db_done) = rayon::join(
                        // da += duᵀ · x   [rank, in]
                        || {
                            product(
                                da,
                                s.d_in,
                                View::rows(du, n, s.rank).t(),
                                View::rows(xs, n, s.d_in),
                                1.0,
                                true,
                            )
                        },
                        // db += scale · dyᵀ · u   [out, rank], as (scale · uᵀ · dy)ᵀ so that the
                        // kernel's right operand (dy) has long contiguous rows.
                        || -> Result<()> {
                            let mut dbt = vec![0.0f32; s.rank * s.d_out];
                            product(
                                &mut dbt,
                                s.d_out,
                                View::rows(us, n, s.rank).t(),
                                View::rows(dys, n, s.d_out),
                                s.scale,
                                false,
                            )?;
                            for (o, row) in db.chunks_exact_mut(s.rank).enumerate() {
                                for (k, x) in row.iter_mut().enumerate() {
                                    *x += dbt[k * s.d_out + o];
                                }
                            }
                            Ok(())
                        },
                    );
                    da_done.and(db_done)
                },
            );
            rows_done.and(grads_done)
        })
}

#[cfg(test)]
mod tests {
    use super::super::small_gemm::tests::values;
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::backend::Span;

    /// Segments longer than a task, with partial last tasks and a gap row, at sizes that reach
    /// the kernel's full tiles and column blocks: every output against f64 sums.
    #[test]
    fn segments_of_several_tasks_match_f64() {
        let s = LoraShape {
            d_in: 70,
            d_out: 90,
            rank: 5,
            scale: 0.5,
        };
        let spans = [
            Span { start: 0, len: 150 },
            Span {
                start: 151,
                len: 64,
            },
        ];
        let rows = 215;
        let ab: Vec<(Vec<f32>, Vec<f32>)> = (0..2)
            .map(|i| {
                (
                    values(s.rank * s.d_in, 10 + i),
                    values(s.d_out * s.rank, 20 + i),
                )
            })
            .collect();
        let x = values(rows * s.d_in, 1);
        let y0 = values(rows * s.d_out, 2);
        let dy = values(rows * s.d_out, 3);
        let dx0 = values(rows * s.d_in, 4);
        let segs: Vec<LoraSeg<'_, Cpu>> = spans
            .iter()
            .zip(&ab)
            .map(|(r, (a, b))| LoraSeg { rows: *r, a, b })
            .collect();
        let (mut y, mut u) = (y0.clone(), vec![f32::NAN; rows * s.rank]);
        forward(&mut y, &x, &mut u, &segs, s).unwrap();
        let mut grads: Vec<(Vec<f32>, Vec<f32>)> = (0..2)
            .map(|i| {
                (
                    values(s.rank * s.d_in, 30 + i),
                    values(s.d_out * s.rank, 40 + i),
                )
            })
            .collect();
        let grads0 = grads.clone();
        let mut dx = dx0.clone();
        {
            let mut gsegs: Vec<LoraGradSeg<'_, Cpu>> = spans
                .iter()
                .zip(&ab)
                .zip(grads.iter_mut())
                .map(|((r, (a, b)), (da, db))| LoraGradSeg {
                    rows: *r,
                    a,
                    b,
                    da,
                    db,
                })
                .collect();
            backward(&mut dx, &dy, &x, &u, &mut gsegs, s).unwrap();
        }
        let f = |v: f32| f64::from(v);
        let close = |got: f32, want: f64, what: &str| {
            assert!(
                (f(got) - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "{what}: {got} against {want}"
            );
        };
        // The gap row (150) is untouched.
        assert_eq!(
            y[150 * s.d_out..151 * s.d_out],
            y0[150 * s.d_out..151 * s.d_out]
        );
        assert_eq!(
            dx[150 * s.d_in..151 * s.d_in],
            dx0[150 * s.d_in..151 * s.d_in]
        );
        for (gi, (sp, (a, b))) in spans.iter().zip(&ab).enumerate() {
            let rows_of = || sp.start..sp.end();
            // u, du = scale · dy · b, per row.
            let mut du = vec![vec![0.0f64; s.rank]; rows];
            for r in rows_of() {
                for k in 0..s.rank {
                    let want: f64 = (0..s.d_in)
                        .map(|i| f(x[r * s.d_in + i]) * f(a[k * s.d_in + i]))
                        .sum();
                    close(u[r * s.rank + k], want, "u");
                    du[r][k] = f64::from(s.scale)
                        * (0..s.d_out)
                            .map(|o| f(dy[r * s.d_out + o]) * f(b[o * s.rank + k]))
                            .sum::<f64>();
                }
                for o in 0..s.d_out {
                    let want = f(y0[r * s.d_out + o])
                        + f64::from(s.scale)
                            * (0..s.rank)
                                .map(|k| f(u[r * s.rank + k]) * f(b[o * s.rank + k]))
                                .sum::<f64>();
                    close(y[r * s.d_out + o], want, "y");
                }
                for i in 0..s.d_in {
                    let want = f(dx0[r * s.d_in + i])
                        + (0..s.rank)
                            .map(|k| du[r][k] * f(a[k * s.d_in + i]))
                            .sum::<f64>();
                    close(dx[r * s.d_in + i], want, "dx");
                }
            }
            for k in 0..s.rank {
                for i in 0..s.d_in {
                    let want = f(grads0[gi].0[k * s.d_in + i])
                        + rows_of()
                            .map(|r| du[r][k] * f(x[r * s.d_in + i]))
                            .sum::<f64>();
                    close(grads[gi].0[k * s.d_in + i], want, "da");
                }
                for o in 0..s.d_out {
                    let want = f(grads0[gi].1[o * s.rank + k])
                        + f64::from(s.scale)
                            * rows_of()
                                .map(|r| f(dy[r * s.d_out + o]) * f(u[r * s.rank + k]))
                                .sum::<f64>();
                    close(grads[gi].1[o * s.rank + k], want, "db");
                }
            }
        }
    }
}
