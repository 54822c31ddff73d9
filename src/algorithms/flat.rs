//! Adapter sets as flat vectors on the host, for aggregation: averages, inner products,
//! projections. Adapters are small (a few MB), so aggregation on the host costs little and is
//! exactly reproducible.

use super::Granularity;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::AdapterSet;
use std::ops::Range;

/// All tensors of `set` concatenated in [`AdapterSet::tensors`] order.
pub fn flatten<B: Backend>(be: &B, set: &AdapterSet<B>) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for t in set.tensors() {
        out.extend(be.download(t)?);
    }
    Ok(out)
}

/// Writes a flat vector back into `set` (same structure as when flattened).
pub fn assign<B: Backend>(be: &B, set: &mut AdapterSet<B>, flat: &[f32]) -> Result<()> {
    let total: usize = set.tensors().iter().map(|t| be.len(t)).sum();
    if total != flat.len() {
        return Err(Error::Job(format!(
            "flat vector of {} values for an adapter set of {total}",
            flat.len()
        )));
    }
    let mut off = 0;
    for t in set.tensors_mut() {
        let n = be.len(t);
        *t = be.upload(&flat[off..off + n])?;
        off += n;
    }
    Ok(())
}

/// Copies the values of `src` into `dst` (same structure).
pub fn copy<B: Backend>(be: &B, dst: &mut AdapterSet<B>, src: &AdapterSet<B>) -> Result<()> {
    assign(be, dst, &flatten(be, src)?)
}

/// Ranges of the flat vector per tensor, per block (the head is its own group), or one range.
pub fn groups<B: Backend>(be: &B, set: &AdapterSet<B>, g: Granularity) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut off = 0;
    let mut push = |n: usize, out: &mut Vec<Range<usize>>| {
        out.push(off..off + n);
        off += n;
    };
    for block in &set.blocks {
        let sizes: Vec<usize> = block
            .iter()
            .flatten()
            .flat_map(|p| [be.len(&p.a), be.len(&p.b)])
            .collect();
        match g {
            Granularity::Tensor => sizes.iter().for_each(|&n| push(n, &mut out)),
            _ if sizes.is_empty() => {}
            _ => push(sizes.iter().sum(), &mut out),
        }
    }
    if let Some(h) = &set.head {
        match g {
            Granularity::Tensor => {
                push(be.len(&h.weight), &mut out);
                push(be.len(&h.bias), &mut out);
            }
            _ => push(be.len(&h.weight) + be.len(&h.bias), &mut out),
        }
    }
    if g == Granularity::All {
        let end = out.last().map_or(0, |r| r.end);
        return std::iter::once(0..end).collect();
    }
    out
}

/// Inner product in f64.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// `y += alpha · x`.
pub fn axpy(y: &mut [f32], alpha: f64, x: &[f32]) {
    y.iter_mut()
        .zip(x)
        .for_each(|(y, x)| *y = (*y as f64 + alpha * *x as f64) as f32);
}

/// `Σ w_i · v_i` (weights need not sum to one).
pub fn weighted_sum(vs: &[Vec<f32>], w: &[f64]) -> Vec<f32> {
    let n = vs.first().map_or(0, Vec::len);
    let mut acc = vec![0.0f64; n];
    for (v, &wi) in vs.iter().zip(w) {
        acc.iter_mut()
            .zip(v)
            .for_each(|(a, x)| *a += wi * *x as f64);
    }
    acc.into_iter().map(|a| a as f32).collect()
}

/// Gradient-projection alignment of one group (spec section 2): if `<g, a> < 0`, remove from
/// `g` its component along `a`.
pub fn project_conflict(g: &mut [f32], a: &[f32]) {
    let ga = dot(g, a);
    let aa = dot(a, a);
    if ga < 0.0 && aa > 0.0 {
        axpy(g, -ga / aa, a);
    }
}

/// Server-side conflict projection: each gradient whose inner product with the mean is negative
/// is projected onto the plane normal to the mean; then the mean of the results is returned.
pub fn projected_mean(gs: &[Vec<f32>]) -> Vec<f32> {
    let w = vec![1.0 / gs.len().max(1) as f64; gs.len()];
    let mean = weighted_sum(gs, &w);
    let fixed: Vec<Vec<f32>> = gs
        .iter()
        .map(|g| {
            let mut g = g.clone();
            project_conflict(&mut g, &mean);
            g
        })
        .collect();
    weighted_sum(&fixed, &w)
}
