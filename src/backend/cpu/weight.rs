//! Frozen base weights of the CPU backend, packed once per product where a hand-written kernel
//! runs them (f32 panels for `f32_gemm`, bf16 pair words for `bf16_gemm`), else row-major f32
//! for the `gemm` crate.

use super::bf16_gemm::{self, Isa, PackedB};
use super::f32_gemm::{self, PackedF32};
use super::packed::Start;
use super::quant_gemm::QuantWeight;
use super::{add_bias, sgemm};
use crate::backend::quant::GgmlType;
use crate::backend::WeightPrecision;
use crate::error::{Error, Result};

/// How a product that overwrites or accumulates starts.
fn start(accumulate: bool) -> Start<'static> {
    if accumulate {
        Start::Accumulate
    } else {
        Start::Zero
    }
}

/// A frozen `[rows, cols]` = `[out, in]` weight matrix on the CPU.
///
/// Where a hand-written kernel runs its products, it is held twice, packed once for each product
/// (`y = x·Wᵀ` and `dx = dy·W`), so both stream contiguous column panels and neither reads `W`
/// transposed: in f32 as panels for the AVX-512F kernel of `f32_gemm` (twice the bytes of the
/// matrix), in bf16 as pair words for the kernels of `bf16_gemm` (two bf16 copies: the bytes of
/// the one f32 matrix they replace). In f32 on a CPU without AVX-512F it is the row-major matrix,
/// for the `gemm` crate.
pub struct CpuWeight {
    rows: usize,
    cols: usize,
    repr: Repr,
}

enum Repr {
    /// Row-major `[rows, cols]`, for the `gemm` crate.
    F32(Vec<f32>),
    /// Packed for the AVX-512F kernel.
    F32Packed {
        /// `Wᵀ` as `[k = cols, n = rows]`: the forward product.
        fwd: PackedF32,
        /// `W` as `[k = rows, n = cols]`: the input-gradient product.
        bwd: PackedF32,
    },
    Bf16 {
        /// `Wᵀ` as `[k = cols, n = rows]`: the forward product.
        fwd: PackedB,
        /// `W` as `[k = rows, n = cols]`: the input-gradient product.
        bwd: PackedB,
    },
    /// GGML blocks as a GGUF file holds them, decoded tile by tile inside each product.
    Quant(QuantWeight),
}

impl std::fmt::Debug for CpuWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CpuWeight({}x{}, {})",
            self.rows,
            self.cols,
            self.precision()
        )
    }
}

impl CpuWeight {
    /// Stores the row-major `[rows, cols]` matrix `data` in `precision`.
    pub(crate) fn new(
        data: &[f32],
        rows: usize,
        cols: usize,
        precision: WeightPrecision,
    ) -> Result<CpuWeight> {
        if Some(data.len()) != rows.checked_mul(cols) {
            return Err(Error::Backend(format!(
                "weight: {} values given for a [{rows}x{cols}] matrix",
                data.len()
            )));
        }
        let repr = match precision {
            WeightPrecision::F32 if f32_gemm::kernel_available() => Repr::F32Packed {
                fwd: PackedF32::pack(cols, rows, |k, n| data[n * cols + k]),
                bwd: PackedF32::pack(rows, cols, |k, n| data[k * cols + n]),
            },
            WeightPrecision::F32 => Repr::F32(data.to_vec()),
            WeightPrecision::Bf16 => Repr::Bf16 {
                fwd: PackedB::pack(cols, rows, |k, n| data[n * cols + k]),
                bwd: PackedB::pack(rows, cols, |k, n| data[k * cols + n]),
            },
        };
        Ok(CpuWeight { rows, cols, repr })
    }

    /// Keeps `blocks`, a `[rows, cols]` matrix in GGML type `ty` (rows of whole blocks), as it is.
    pub(crate) fn quantized(
        ty: GgmlType,
        blocks: Vec<u8>,
        rows: usize,
        cols: usize,
    ) -> Result<CpuWeight> {
        Ok(CpuWeight {
            rows,
            cols,
            repr: Repr::Quant(QuantWeight::new(ty, blocks, rows, cols)?),
        })
    }

    /// The GGML type of a weight kept in blocks, `None` for f32 and bf16 storage.
    pub fn ggml_type(&self) -> Option<GgmlType> {
        match &self.repr {
            Repr::Quant(q) => Some(q.ty()),
            _ => None,
        }
    }

    /// `(rows, cols)` = `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The precision of the products: f32 for weights kept in GGML blocks too (they are decoded
    /// to f32 for the product).
    pub fn precision(&self) -> WeightPrecision {
        match self.repr {
            Repr::F32(_) | Repr::F32Packed { .. } | Repr::Quant(_) => WeightPrecision::F32,
            Repr::Bf16 { .. } => WeightPrecision::Bf16,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.repr {
            Repr::F32(v) => v.len() * 4,
            Repr::F32Packed { fwd, bwd } => fwd.bytes() + bwd.bytes(),
            Repr::Bf16 { fwd, bwd } => fwd.bytes() + bwd.bytes(),
            Repr::Quant(q) => q.bytes(),
        }
    }

    /// The stored values as a row-major f32 matrix.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        Ok(match &self.repr {
            Repr::F32(v) => v.clone(),
            // `bwd` is `W` itself, `[rows, cols]`.
            Repr::F32Packed { bwd, .. } => bwd.to_f32(),
            Repr::Bf16 { bwd, .. } => bwd.to_f32(),
            Repr::Quant(q) => q.to_f32()?,
        })
    }

    /// `y[m,rows] (+)= x[m,cols] · Wᵀ`, with the bf16 products computed by `isa`.
    pub(crate) fn linear(
        &self,
        y: &mut [f32],
        x: &[f32],
        m: usize,
        accumulate: bool,
        isa: Isa,
    ) -> Result<()> {
        match &self.repr {
            Repr::F32(w) => sgemm(
                y, x, w, m, self.rows, self.cols, false, true, accumulate, 1.0, true,
            ),
            Repr::F32Packed { fwd, .. } => f32_gemm::gemm(y, x, fwd, m, start(accumulate)),
            Repr::Bf16 { fwd, .. } => bf16_gemm::gemm(y, x, fwd, m, start(accumulate), isa),
            Repr::Quant(q) => q.linear(y, x, m, accumulate),
        }
    }

    /// `y[m,rows] = x[m,cols] · Wᵀ + bias`. The AVX-512F and AMX kernels start their
    /// accumulators from the bias (no pass of its own over `y`).
    pub(crate) fn linear_bias(
        &self,
        y: &mut [f32],
        x: &[f32],
        bias: &[f32],
        m: usize,
        isa: Isa,
    ) -> Result<()> {
        match &self.repr {
            Repr::F32(_) | Repr::Quant(_) => {
                self.linear(y, x, m, false, isa)?;
                add_bias(y, bias, m, self.rows)
            }
            Repr::F32Packed { fwd, .. } => f32_gemm::gemm(y, x, fwd, m, Start::Bias(bias)),
            Repr::Bf16 { fwd, .. } => bf16_gemm::gemm(y, x, fwd, m, Start::Bias(bias), isa),
        }
    }

    /// `dx[m,cols] (+)= dy[m,rows] · W`, with the bf16 products computed by `isa`.
    pub(crate) fn linear_backward_input(
        &self,
        dx: &mut [f32],
        dy: &[f32],
        m: usize,
        accumulate: bool,
        isa: Isa,
    ) -> Result<()> {
        match &self.repr {
            Repr::F32(w) => sgemm(
                dx, dy, w, m, self.cols, self.rows, false, false, accumulate, 1.0, true,
            ),
            Repr::F32Packed { bwd, .. } => f32_gemm::gemm(dx, dy, bwd, m, start(accumulate)),
            Repr::Bf16 { bwd, .. } => bf16_gemm::gemm(dx, dy, bwd, m, start(accumulate), isa),
            Repr::Quant(q) => q.linear_backward_input(dx, dy, m, accumulate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::f32_gemm::tests::check;
    use super::*;
    use crate::rng::Rng;

    /// Both f32 layouts: row-major (the `gemm` crate) and, where the CPU has AVX-512F, packed.
    fn f32_layouts(w: &[f32], rows: usize, cols: usize) -> Vec<(&'static str, CpuWeight)> {
        let mut out = vec![(
            "row-major",
            CpuWeight {
                rows,
                cols,
                repr: Repr::F32(w.to_vec()),
            },
        )];
        if f32_gemm::kernel_available() {
            out.push((
                "packed",
                CpuWeight::new(w, rows, cols, WeightPrecision::F32).unwrap(),
            ));
        } else {
            eprintln!("no AVX-512F kernel here: only the row-major f32 layout is tested");
        }
        out
    }

    #[test]
    fn f32_weights_compute_all_three_products_in_either_layout() {
        let mut rng = Rng::new(21);
        for &(m, out, inp) in &[(1, 1, 1), (9, 50, 33), (70, 130, 200)] {
            let w = rng.vec_range(out * inp, -1.0, 1.0);
            for (name, cw) in f32_layouts(&w, out, inp) {
                assert_eq!(cw.to_f32().unwrap(), w, "{name}");
                let x = rng.vec_range(m * inp, -1.0, 1.0);
                let y0 = rng.vec_range(m * out, -1.0, 1.0);
                let wt = |kk: usize, j: usize| w[j * inp + kk];
                let mut y = y0.clone();
                cw.linear(&mut y, &x, m, true, Isa::Portable).unwrap();
                check(&y, &y0, &x, wt, m, inp, out, &format!("{name} y+="));
                let bias = rng.vec_range(out, -1.0, 1.0);
                let rows: Vec<f32> = (0..m).flat_map(|_| bias.iter().copied()).collect();
                let mut y = vec![f32::NAN; m * out];
                cw.linear_bias(&mut y, &x, &bias, m, Isa::Portable).unwrap();
                check(&y, &rows, &x, wt, m, inp, out, &format!("{name} y=b+"));
                let dy = rng.vec_range(m * out, -1.0, 1.0);
                let mut dx = vec![f32::NAN; m * inp];
                cw.linear_backward_input(&mut dx, &dy, m, false, Isa::Portable)
                    .unwrap();
                let wn = |kk: usize, j: usize| w[kk * inp + j];
                check(
                    &dx,
                    &vec![0.0; m * inp],
                    &dy,
                    wn,
                    m,
                    out,
                    inp,
                    &format!("{name} dx"),
                );
            }
        }
    }
}
