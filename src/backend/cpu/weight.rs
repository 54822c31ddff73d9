//! Frozen base weights of the CPU backend: f32 as given, or bf16 packed for the micro-kernel of
//! `bf16_gemm`.

use super::bf16_gemm::{self, Isa, PackedB, Start};
use super::{add_bias, sgemm};
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
/// In f32 it is the row-major matrix. In bf16 it is held twice, packed once for each product
/// (`y = x·Wᵀ` and `dx = dy·W`, see `src/backend/cpu/bf16_gemm.rs`): two bf16 copies take the memory of the
/// one f32 copy they replace, and no f32 copy is kept.
pub struct CpuWeight {
    rows: usize,
    cols: usize,
    repr: Repr,
}

enum Repr {
    F32(Vec<f32>),
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
            WeightPrecision::F32 => Repr::F32(data.to_vec()),
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
            Repr::F32(_) => WeightPrecision::F32,
            Repr::Bf16 { .. } => WeightPrecision::Bf16,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.repr {
            Repr::F32(v) => v.len() * 4,
            Repr::Bf16 { fwd, bwd } => fwd.bytes() + bwd.bytes(),
        }
    }

    /// The stored values as a row-major f32 matrix.
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.repr {
            Repr::F32(v) => v.clone(),
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
            Repr::F32(w) => sgemm(
                y, x, w, m, self.rows, self.cols, false, true, accumulate, 1.0, true,
            ),
            Repr::Bf16 { fwd, .. } => bf16_gemm::gemm(y, x, fwd, m, start(accumulate), isa),
        }
    }

    /// `y[m,rows] = x[m,cols] · Wᵀ + bias`. In bf16 the bias starts the product's accumulators
    /// (no pass of its own); in f32 it is added after the product.
    pub(crate) fn linear_bias(
        &self,
        y: &mut [f32],
        x: &[f32],
        bias: &[f32],
        m: usize,
        isa: Isa,
    ) -> Result<()> {
        match &self.repr {
            Repr::F32(_) => {
                self.linear(y, x, m, false, isa)?;
                add_bias(y, bias, m, self.rows)
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
            Repr::F32(w) => sgemm(
                dx, dy, w, m, self.cols, self.rows, false, false, accumulate, 1.0, true,
            ),
            Repr::Bf16 { bwd, .. } => bf16_gemm::gemm(dx, dy, bwd, m, start(accumulate), isa),
        }
    }
}
