//! LayerNorm and RMSNorm, forward and input-gradient backward, one row per rayon task chunk.

use rayon::prelude::*;

/// Rows per rayon task: large enough to amortise scheduling, small enough to balance 2-64 threads.
const ROWS_PER_TASK: usize = 16;

#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_forward(
    y: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    dim: usize,
    eps: f32,
) {
    y.par_chunks_mut(dim * ROWS_PER_TASK)
        .zip(mean.par_chunks_mut(ROWS_PER_TASK))
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(dim * ROWS_PER_TASK))
        .for_each(|(((y, mean), rstd), x)| {
            for (r, (yr, xr)) in y.chunks_mut(dim).zip(x.chunks(dim)).enumerate() {
                let mu = xr.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
                let var = xr.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / dim as f64;
                let rs = 1.0 / (var + eps as f64).sqrt();
                let (mu, rs) = (mu as f32, rs as f32);
                for i in 0..dim {
                    yr[i] = (xr[i] - mu) * rs * gamma[i] + beta[i];
                }
                mean[r] = mu;
                rstd[r] = rs;
            }
        });
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_backward(
    dx: &mut [f32],
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dim: usize,
) {
    dx.par_chunks_mut(dim * ROWS_PER_TASK)
        .zip(dy.par_chunks(dim * ROWS_PER_TASK))
        .zip(x.par_chunks(dim * ROWS_PER_TASK))
        .zip(mean.par_chunks(ROWS_PER_TASK))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .for_each(|((((dx, dy), x), mean), rstd)| {
            for r in 0..mean.len() {
                let (dxr, dyr, xr) = (
                    &mut dx[r * dim..(r + 1) * dim],
                    &dy[r * dim..(r + 1) * dim],
                    &x[r * dim..(r + 1) * dim],
                );
                let (mu, rs) = (mean[r], rstd[r]);
                let mut sum_g = 0.0f64;
                let mut sum_gx = 0.0f64;
                for i in 0..dim {
                    let g = (dyr[i] * gamma[i]) as f64;
                    sum_g += g;
                    sum_gx += g * ((xr[i] - mu) * rs) as f64;
                }
                let mg = (sum_g / dim as f64) as f32;
                let mgx = (sum_gx / dim as f64) as f32;
                for i in 0..dim {
                    let xhat = (xr[i] - mu) * rs;
                    dxr[i] = rs * (dyr[i] * gamma[i] - mg - xhat * mgx);
                }
            }
        });
}

pub(crate) fn rms_norm_forward(
    y: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    gamma: &[f32],
    dim: usize,
    eps: f32,
) {
    y.par_chunks_mut(dim * ROWS_PER_TASK)
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(dim * ROWS_PER_TASK))
        .for_each(|((y, rstd), x)| {
            for (r, (yr, xr)) in y.chunks_mut(dim).zip(x.chunks(dim)).enumerate() {
                let ms = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / dim as f64;
                let rs = (1.0 / (ms + eps as f64).sqrt()) as f32;
                for i in 0..dim {
                    yr[i] = xr[i] * rs * gamma[i];
                }
                rstd[r] = rs;
            }
        });
}

pub(crate) fn rms_norm_backward(
    dx: &mut [f32],
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    rstd: &[f32],
    dim: usize,
) {
    dx.par_chunks_mut(dim * ROWS_PER_TASK)
        .zip(dy.par_chunks(dim * ROWS_PER_TASK))
        .zip(x.par_chunks(dim * ROWS_PER_TASK))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .for_each(|(((dx, dy), x), rstd)| {
            for r in 0..rstd.len() {
                let (dxr, dyr, xr) = (
                    &mut dx[r * dim..(r + 1) * dim],
                    &dy[r * dim..(r + 1) * dim],
                    &x[r * dim..(r + 1) * dim],
                );
                let rs = rstd[r];
                let dot: f64 = (0..dim)
                    .map(|i| (dyr[i] * gamma[i]) as f64 * xr[i] as f64)
                    .sum();
                let c = (dot / dim as f64) as f32 * rs * rs;
                for i in 0..dim {
                    dxr[i] = rs * (dyr[i] * gamma[i] - xr[i] * c);
                }
            }
        });
}
