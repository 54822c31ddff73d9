//! Softmax cross-entropy, fused with its gradient.

use rayon::prelude::*;

pub(crate) fn cross_entropy(
    dlogits: &mut [f32],
    logits: &[f32],
    labels: &[i64],
    weights: &[f32],
    classes: usize,
) -> Vec<f32> {
    let mut losses = vec![0.0f32; labels.len()];
    dlogits
        .par_chunks_mut(classes)
        .zip(logits.par_chunks(classes))
        .zip(losses.par_iter_mut())
        .enumerate()
        .for_each(|(r, ((dl, lg), loss))| {
            let label = labels[r];
            if label < 0 {
                dl.fill(0.0);
                return;
            }
            let max = lg.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = lg.iter().map(|&v| ((v - max) as f64).exp()).sum();
            let lse = max as f64 + sum.ln();
            *loss = (lse - lg[label as usize] as f64) as f32;
            let w = weights[r];
            for (c, d) in dl.iter_mut().enumerate() {
                let p = ((lg[c] as f64) - lse).exp() as f32;
                *d = w * (p - if c as i64 == label { 1.0 } else { 0.0 });
            }
        });
    losses
}
