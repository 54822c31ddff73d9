//! Rotary position embedding with the half-split pairing used by Llama-family checkpoints.

use rayon::prelude::*;

pub(crate) fn rope(
    x: &mut [f32],
    positions: &[u32],
    heads: usize,
    head_dim: usize,
    theta: f32,
    inverse: bool,
) {
    let half = head_dim / 2;
    // Frequencies in f64: checkpoints were trained with f32 angles, and f64 keeps our rounding
    // below theirs rather than adding to it.
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| 1.0 / (theta as f64).powf((2 * i) as f64 / head_dim as f64))
        .collect();
    let sign = if inverse { -1.0 } else { 1.0 };
    x.par_chunks_mut(heads * head_dim)
        .zip(positions.par_iter())
        .for_each(|(row, &pos)| {
            for (i, &f) in inv_freq.iter().enumerate() {
                let ang = pos as f64 * f;
                let (s, c) = ((sign * ang.sin()) as f32, ang.cos() as f32);
                for h in 0..heads {
                    let base = h * head_dim;
                    let x1 = row[base + i];
                    let x2 = row[base + i + half];
                    row[base + i] = x1 * c - x2 * s;
                    row[base + i + half] = x2 * c + x1 * s;
                }
            }
        });
}
