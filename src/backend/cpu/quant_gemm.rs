//! Products with a frozen weight kept in GGML blocks (Q4_0 .. Q6_K, F16, BF16): QLoRA-style
//! training over a quantized base without a full-precision copy of it.
//!
//! Both products walk the weight in tiles of [`TILE_ROWS`] rows: a tile is decoded to f32 into a
//! scratch buffer (the reference decoder, bit-exact with ggml), multiplied by the `gemm` crate,
//! and dropped. At most one tile of f32 values exists at a time, so memory stays at the blocks'
//! size; decoding costs `rows · cols` operations per product against the product's
//! `2 · m · rows · cols`, a small share once a batch has more than a few tokens.

use super::gemm::sgemm;
use crate::backend::quant::{self, GgmlType};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Rows of the weight decoded at once: 64 rows of a 4,096-wide weight is 1 MiB of f32.
const TILE_ROWS: usize = 64;

/// A `[rows, cols]` = `[out, in]` weight stored as GGML blocks, row after row.
pub(crate) struct QuantWeight {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    blocks: Vec<u8>,
}

impl QuantWeight {
    /// Takes `blocks`, `rows` rows of `cols` values of type `ty`.
    pub(crate) fn new(ty: GgmlType, blocks: Vec<u8>, rows: usize, cols: usize) -> Result<Self> {
        let row_bytes = ty.weight_row_bytes(blocks.len(), rows, cols)?;
        Ok(QuantWeight {
            ty,
            rows,
            cols,
            row_bytes,
            blocks,
        })
    }

    /// The storage type.
    pub(crate) fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.blocks.len()
    }

    /// Rows `r0..r1` decoded into `out` (`(r1 - r0) · cols` values).
    fn decode(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        quant::dequantize(
            self.ty,
            &self.blocks[r0 * self.row_bytes..r1 * self.row_bytes],
            &mut out[..(r1 - r0) * self.cols],
        )
    }

    /// The whole weight as a row-major f32 matrix (tests and inspection).
    pub(crate) fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.rows * self.cols];
        self.decode(0, self.rows, &mut out)?;
        Ok(out)
    }

    fn tiles(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.rows)
            .step_by(TILE_ROWS)
            .map(|r0| (r0, (r0 + TILE_ROWS).min(self.rows)))
    }

    /// `y[m,rows] (+)= x[m,cols] · Wᵀ`.
    pub(crate) fn linear(
        &self,
        y: &mut [f32],
        x: &[f32],
        m: usize,
        accumulate: bool,
    ) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        if y.len() < m * rows || x.len() < m * cols {
            return Err(Error::Backend(format!(
                "quantized linear: [{m}x{cols}]·[{rows}x{cols}]ᵀ does not fit x={}, y={}",
                x.len(),
                y.len()
            )));
        }
        // One task per tile, each decoding its rows and running its own (single-threaded)
        // product: a tile's product has only `m × 64` outputs, too few for the GEMM to spread
        // over the cores when m is small, while the tiles are independent. Each task holds one
        // decoded tile; the products land in `parts`, then in y's columns.
        let tiles: Vec<(usize, usize)> = self.tiles().collect();
        let parts: Vec<Vec<f32>> = tiles
            .par_iter()
            .map(|&(r0, r1)| -> Result<Vec<f32>> {
                let nt = r1 - r0;
                let mut w = vec![0.0f32; nt * cols];
                self.decode(r0, r1, &mut w)?;
                let mut part = vec![0.0f32; m * nt];
                sgemm(
                    &mut part, x, &w, m, nt, cols, false, true, false, 1.0, false,
                )?;
                Ok(part)
            })
            .collect::<Result<_>>()?;
        for (&(r0, r1), part) in tiles.iter().zip(&parts) {
            let nt = r1 - r0;
            for (yr, pr) in y.chunks_exact_mut(rows).zip(part.chunks_exact(nt)).take(m) {
                let dst = &mut yr[r0..r1];
                if accumulate {
                    dst.iter_mut().zip(pr).for_each(|(d, p)| *d += p);
                } else {
                    dst.copy_from_slice(pr);
                }
            }
        }
        Ok(())
    }

    /// `dx[m,cols] (+)= dy[m,rows] · W`.
    pub(crate) fn linear_backward_input(
        &self,
        dx: &mut [f32],
        dy: &[f32],
        m: usize,
        accumulate: bool,
    ) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        if dx.len() < m * cols || dy.len() < m * rows {
            return Err(Error::Backend(format!(
                "quantized linear backward: [{m}x{rows}]·[{rows}x{cols}] does not fit dy={}, dx={}",
                dy.len(),
                dx.len()
            )));
        }
        if rows == 0 && !accumulate {
            dx[..m * cols].fill(0.0);
        }
        let mut w = vec![0.0f32; TILE_ROWS.min(rows) * cols];
        let mut part = vec![0.0f32; m * TILE_ROWS.min(rows)];
        for (i, (r0, r1)) in self.tiles().enumerate() {
            let nt = r1 - r0;
            self.decode(r0, r1, &mut w)?;
            // dx (+)= dy[:, r0..r1] · tile; the first tile overwrites unless accumulating.
            for (pr, yr) in part.chunks_exact_mut(nt).zip(dy.chunks_exact(rows)).take(m) {
                pr.copy_from_slice(&yr[r0..r1]);
            }
            let acc = accumulate || i > 0;
            sgemm(dx, &part, &w, m, cols, nt, false, false, acc, 1.0, true)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::quant::SUPPORTED;
    use crate::rng::Rng;

    /// Random valid blocks: random codes, small finite f16 scales at the type's scale fields.
    fn random_blocks(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
        let n = ty.row_bytes(cols).unwrap() * rows;
        if !ty.is_quantized() {
            // Float types: encode random values.
            let v = rng.vec_range(rows * cols, -1.0, 1.0);
            return match ty {
                GgmlType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                GgmlType::F16 => v
                    .iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
                _ => v
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
            };
        }
        let mut b: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
        for blk in b.chunks_exact_mut(ty.block_bytes()) {
            for &at in ty.f16_fields() {
                let s = half::f16::from_f32(0.02 * rng.normal());
                blk[at..at + 2].copy_from_slice(&s.to_le_bytes());
            }
        }
        b
    }

    /// Both products against the f32 products of the decoded matrix (computed here by plain
    /// loops in f64), over shapes with a partial last tile.
    #[test]
    fn both_products_equal_the_decoded_matrix_products() {
        let mut rng = Rng::new(8);
        for ty in SUPPORTED {
            let cols = ty.block_len().max(32) * 2;
            for &(m, rows) in &[(1, 3), (5, 64), (7, 150)] {
                let w = QuantWeight::new(ty, random_blocks(ty, rows, cols, &mut rng), rows, cols)
                    .unwrap();
                let dense = w.to_f32().unwrap();
                let x = rng.vec_range(m * cols, -1.0, 1.0);
                let y0 = rng.vec_range(m * rows, -1.0, 1.0);
                for acc in [false, true] {
                    let mut y = y0.clone();
                    w.linear(&mut y, &x, m, acc).unwrap();
                    for i in 0..m {
                        for r in 0..rows {
                            let want: f64 = (0..cols)
                                .map(|c| x[i * cols + c] as f64 * dense[r * cols + c] as f64)
                                .sum::<f64>()
                                + if acc { y0[i * rows + r] as f64 } else { 0.0 };
                            let got = y[i * rows + r] as f64;
                            let tol = 1e-4 * (1.0 + want.abs());
                            assert!((got - want).abs() < tol, "{ty} y[{i},{r}] {got} vs {want}");
                        }
                    }
                    let dy = rng.vec_range(m * rows, -1.0, 1.0);
                    let dx0 = rng.vec_range(m * cols, -1.0, 1.0);
                    let mut dx = dx0.clone();
                    w.linear_backward_input(&mut dx, &dy, m, acc).unwrap();
                    for i in 0..m {
                        for c in 0..cols {
                            let want: f64 = (0..rows)
                                .map(|r| dy[i * rows + r] as f64 * dense[r * cols + c] as f64)
                                .sum::<f64>()
                                + if acc { dx0[i * cols + c] as f64 } else { 0.0 };
                            let got = dx[i * cols + c] as f64;
                            let tol = 1e-4 * (1.0 + want.abs());
                            assert!((got - want).abs() < tol, "{ty} dx[{i},{c}] {got} vs {want}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn wrong_sizes_are_refused() {
        assert!(QuantWeight::new(GgmlType::Q4_0, vec![0; 18], 1, 16).is_err());
        assert!(QuantWeight::new(GgmlType::Q4_0, vec![0; 17], 1, 32).is_err());
        let w = QuantWeight::new(GgmlType::Q4_0, vec![0; 36], 2, 32).unwrap();
        assert!(w.linear(&mut [0.0; 3], &[0.0; 32], 2, false).is_err());
        assert!(w
            .linear_backward_input(&mut [0.0; 32], &[0.0; 2], 2, false)
            .is_err());
    }
}
