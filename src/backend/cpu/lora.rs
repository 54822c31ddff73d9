//! Grouped LoRA products: one small GEMM pair per adapter segment of a packed batch.
//!
//! Segments write disjoint rows, so they run in parallel; with fewer segments than threads each
//! product may use the pool itself.

use super::gemm::sgemm;
use super::split_rows_mut;
use crate::backend::{Backend, LoraGradSeg, LoraSeg, LoraShape};
use crate::error::Result;
use rayon::prelude::*;

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
    let inner_parallel = segs.len() < rayon::current_num_threads();
    segs.par_iter()
        .zip(ys.into_par_iter().zip(us.into_par_iter()))
        .try_for_each(|(g, (ys, us))| -> Result<()> {
            let n = g.rows.len;
            let xs = &x[g.rows.start * s.d_in..g.rows.end() * s.d_in];
            // u = x · aᵀ   [n, rank]
            sgemm(
                us,
                xs,
                g.a,
                n,
                s.rank,
                s.d_in,
                false,
                true,
                false,
                1.0,
                inner_parallel,
            )?;
            // y += scale · u · bᵀ   [n, out]
            sgemm(
                ys,
                us,
                g.b,
                n,
                s.d_out,
                s.rank,
                false,
                true,
                true,
                s.scale,
                inner_parallel,
            )
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
    let inner_parallel = segs.len() < rayon::current_num_threads();
    segs.par_iter_mut()
        .zip(dxs.into_par_iter())
        .try_for_each(|(g, dxs)| -> Result<()> {
            let n = g.rows.len;
            let r = g.rows;
            let dys = &dy[r.start * s.d_out..r.end() * s.d_out];
            let xs = &x[r.start * s.d_in..r.end() * s.d_in];
            let us = &u[r.start * s.rank..r.end() * s.rank];
            // db += scale · dyᵀ · u   [out, rank]
            sgemm(
                g.db,
                dys,
                us,
                s.d_out,
                s.rank,
                n,
                true,
                false,
                true,
                s.scale,
                inner_parallel,
            )?;
            // du = scale · dy · b   [n, rank]
            let mut du = vec![0.0f32; n * s.rank];
            sgemm(
                &mut du,
                dys,
                g.b,
                n,
                s.rank,
                s.d_out,
                false,
                false,
                false,
                s.scale,
                inner_parallel,
            )?;
            // da += duᵀ · x   [rank, in]
            sgemm(
                g.da,
                &du,
                xs,
                s.rank,
                s.d_in,
                n,
                true,
                false,
                true,
                1.0,
                inner_parallel,
            )?;
            // dx += du · a   [n, in]
            sgemm(
                dxs,
                &du,
                g.a,
                n,
                s.d_in,
                s.rank,
                false,
                false,
                true,
                1.0,
                inner_parallel,
            )
        })
}
