//! Frozen base weights of the CPU backend, packed once per product: f32 panels for the kernel of
//! `f32_gemm`, or bf16 pair words for the kernels of `bf16_gemm`.

use super::bf16_gemm::{self, Isa, PackedB, Start};
use super::f32_gemm::{self, PackedF32, Path};
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
/// It is held twice, packed once for each product (`y = x·Wᵀ` and `dx = dy·W`), so both products
/// stream contiguous column panels and neither reads `W` transposed: in f32 as panels for the
/// AVX-512F kernel of `f32_gemm` (twice the bytes of the matrix), in bf16 as pair words for the
/// kernels of `bf16_gemm` (two bf16 copies: the bytes of the one f32 matrix they replace).
pub struct CpuWeight {
    rows: usize,
    cols: usize,
    repr: Repr,
}

enum Repr {
    F32 {
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
            WeightPrecision::F32 => Repr::F32 {
                fwd: PackedF32::pack(cols, rows, |k, n| data[n * cols + k]),
                bwd: PackedF32::pack(rows, cols, |k, n| data[k * cols + n]),
            },
            WeightPrecision::Bf16 => Repr::Bf16 {
                fwd: PackedB::pack(cols, rows, |k, n| data[n * cols + k]),
                bwd: PackedB::pack(rows, cols, |k, n| data[k * cols + n]),
            },
        };
        Ok(CpuWeight { rows, cols, repr })
    }

    /// `(rows, cols)` = `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The storage precision.
    pub fn precision(&self) -> WeightPrecision {
        match self.repr {
            Repr::F32 { .. } => WeightPrecision::F32,
            Repr::Bf16 { .. } => WeightPrecision::Bf16,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.repr {
            Repr::F32 { fwd, bwd } => fwd.bytes() + bwd.bytes(),
            Repr::Bf16 { fwd, bwd } => fwd.bytes() + bwd.bytes(),
        }
    }

    /// The stored values as a row-major f32 matrix.
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.repr {
            Repr::F32 { bwd, .. } => bwd.to_f32(),
            // `bwd` is `W` itself, `[rows, cols]`.
            Repr::Bf16 { bwd, .. } => bwd.to_f32(),
        }
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
            Repr::F32 { fwd, .. } => {
                f32_gemm::gemm(y, x, fwd, m, start(accumulate), Path::detect())
            }
            Repr::Bf16 { fwd, .. } => bf16_gemm::gemm(y, x, fwd, m, start(accumulate), isa),
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
            Repr::F32 { fwd, .. } => {
                f32_gemm::gemm(y, x, fwd, m, Start::Bias(bias), Path::detect())
            }
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
            Repr::F32 { bwd, .. } => {
                f32_gemm::gemm(dx, dy, bwd, m, start(accumulate), Path::detect())
            }
            Repr::Bf16 { bwd, .. } => bf16_gemm::gemm(dx, dy, bwd, m, start(accumulate), isa),
        }
    }
}
