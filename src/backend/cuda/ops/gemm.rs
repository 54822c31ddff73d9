//! Host side of kernels/gemm.cu and kernels/gemm_tc.cu: the f32 GEMM behind
//! [`crate::backend::Backend::matmul`] and the frozen-weight products.
//!
//! The SIMT kernels are specialised per transpose pair (`gemm_f32_nn` … `gemm_f32_tt`), with
//! bf16-storage twins (`gemm_bf16_*`, bf16 A and B, f32 C). A bf16 weight's products run on the
//! tensor cores (`gemm_tc_bf16_nt` forward, `gemm_tc_bf16_nn` input gradient) whenever the
//! shapes keep every 16-byte row chunk aligned ([`tensor_core_fits`]), else on the SIMT twins.

use super::super::{bytes_of, check_len, i32_of, CudaBackend, CudaBuf, DeviceMem, KArg, LaunchCfg};
use super::gguf::{self, BlockLayout};
use crate::backend::quant::GgmlType;
use crate::backend::WeightPrecision;
use crate::error::{Error, Result};

/// Threads per block of every GEMM kernel (their `__launch_bounds__`).
pub(crate) const THREADS: u32 = 256;

/// Which GEMM kernel family runs a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gemm {
    /// kernels/gemm.cu on f32 operands.
    F32,
    /// kernels/gemm.cu on bf16 operands (SIMT, f32 accumulation).
    Bf16,
    /// kernels/gemm_tc.cu: bf16 operands on the tensor cores (f32 accumulation).
    Bf16TensorCore,
}

impl Gemm {
    /// Bytes per element of A and B.
    fn element_bytes(self) -> usize {
        match self {
            Gemm::F32 => 4,
            Gemm::Bf16 | Gemm::Bf16TensorCore => 2,
        }
    }

    /// (rows, columns) of C one block computes (the kernels' `BM`, `BN`).
    pub(crate) fn tile(self) -> (usize, usize) {
        match self {
            Gemm::F32 | Gemm::Bf16 => (128, 64),
            Gemm::Bf16TensorCore => (128, 128),
        }
    }

    /// The kernel for a transpose pair.
    pub(crate) fn kernel_name(self, trans_a: bool, trans_b: bool) -> String {
        let t = |x: bool| if x { 't' } else { 'n' };
        let family = match self {
            Gemm::F32 => "f32",
            Gemm::Bf16 => "bf16",
            Gemm::Bf16TensorCore => "tc_bf16",
        };
        format!("gemm_{family}_{}{}", t(trans_a), t(trans_b))
    }

    /// The grid that covers C `[m, n]` with this family's tiles.
    pub(crate) fn launch_cfg(self, m: usize, n: usize) -> Result<LaunchCfg> {
        let (tm, tn) = self.tile();
        let gx = u32::try_from(n.div_ceil(tn)).ok();
        let gy = u32::try_from(m.div_ceil(tm)).ok().filter(|&g| g <= 65_535);
        match (gx, gy) {
            (Some(gx), Some(gy)) => Ok(LaunchCfg {
                grid: (gx, gy, 1),
                block: (THREADS, 1, 1),
                shared_bytes: 0,
            }),
            _ => Err(Error::Backend(format!(
                "matmul output [{m}x{n}] exceeds the launch grid"
            ))),
        }
    }
}

/// Whether the tensor-core kernels can run `[m,k] · op(B)` with B stored `[n,k]`
/// (`b_transposed`, the forward product) or `[k,n]`: they copy 16-byte row chunks with cp.async,
/// so every row of A and B must start 16-byte aligned, i.e. hold a multiple of 8 bf16.
pub(crate) fn tensor_core_fits(k: usize, n: usize, b_transposed: bool) -> bool {
    k.is_multiple_of(8) && (b_transposed || n.is_multiple_of(8))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    be: &CudaBackend,
    c: &mut CudaBuf,
    a: &CudaBuf,
    b: &CudaBuf,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
) -> Result<()> {
    if c.len < m * n || a.len < m * k || b.len < k * n {
        return Err(Error::Backend(format!(
            "matmul shape [{m}x{k}]·[{k}x{n}] does not fit buffers a={}, b={}, c={}",
            a.len, b.len, c.len
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        // An empty sum: C keeps its value or becomes zero, as on the CPU.
        if !accumulate {
            be.zero_mem(&c.mem, bytes_of("matmul output", m * n, 4)?)?;
        }
        return Ok(());
    }
    launch(
        be,
        Gemm::F32,
        (trans_a, trans_b),
        c,
        &a.mem,
        &b.mem,
        (m, n, k),
        accumulate,
    )
}

/// Launches `gemm` for a transpose pair on `C` (f32) and the `A`, `B` operands in `a`, `b`, for
/// `m, n, k > 0`. Checks every operand against the shape itself, since the kernel indexes them by
/// `m, n, k` alone.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch(
    be: &CudaBackend,
    gemm: Gemm,
    (trans_a, trans_b): (bool, bool),
    c: &mut CudaBuf,
    a: &DeviceMem,
    b: &DeviceMem,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
) -> Result<()> {
    let (mi, ni, ki) = (
        i32_of("matmul m", m)?,
        i32_of("matmul n", n)?,
        i32_of("matmul k", k)?,
    );
    if gemm == Gemm::Bf16TensorCore && (trans_a || !tensor_core_fits(k, n, trans_b)) {
        return Err(Error::Backend(format!(
            "tensor-core GEMM needs A [m, k] untransposed, k % 8 == 0 and, for B [k, n], \
             n % 8 == 0 (got m={m}, n={n}, k={k}, trans_a={trans_a}, trans_b={trans_b})"
        )));
    }
    let elem = gemm.element_bytes();
    // Each product is below 2^62 (factors are i32), so only the byte counts need checking.
    check_len("matmul c", c, m * n)?;
    for (what, mem, elems) in [("matmul a", a, m * k), ("matmul b", b, k * n)] {
        let need = bytes_of(what, elems, elem)?;
        if mem.bytes() < need {
            return Err(Error::Backend(format!(
                "{what}: buffer holds {} bytes, op needs {need}",
                mem.bytes()
            )));
        }
    }
    // SAFETY: the gemm kernels read A `[m, k]` and B `[k, n]` (either stored transposed, same
    // extent) as `gemm`'s element type and read-modify-write C `[m, n]` as f32, with the grid of
    // `launch_cfg` covering C in guarded tiles; all three were checked above to hold that many
    // elements, and the tensor-core kernels' alignment condition was checked too (their buffers
    // start 256-byte aligned, as every device allocation does). Arguments are
    // (C, A, B, m, n, k, accumulate) as in kernels/gemm.cu and kernels/gemm_tc.cu.
    unsafe {
        be.launch(
            &gemm.kernel_name(trans_a, trans_b),
            gemm.launch_cfg(m, n)?,
            &[
                c.arg(),
                a.arg(),
                b.arg(),
                KArg::I32(mi),
                KArg::I32(ni),
                KArg::I32(ki),
                KArg::I32(accumulate as i32),
            ],
        )
    }
}

/// A frozen `[rows, cols]` = `[out, in]` weight on the device: f32, or bf16 (two bytes an
/// element, rounded to nearest even on the host at upload), row-major either way; or kept in
/// GGML blocks as a GGUF file stores them (kernels/gguf.cu), with f32 products.
pub struct CudaWeight {
    mem: DeviceMem,
    rows: usize,
    cols: usize,
    precision: WeightPrecision,
    /// `Some` for a weight kept in GGML blocks: `mem` holds the blocks.
    blocks: Option<BlockLayout>,
}

impl std::fmt::Debug for CudaWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.blocks {
            Some(b) => write!(
                f,
                "CudaWeight({}x{}, {} blocks, {:?})",
                self.rows, self.cols, b.ty, self.mem
            ),
            None => write!(
                f,
                "CudaWeight({}x{}, {}, {:?})",
                self.rows, self.cols, self.precision, self.mem
            ),
        }
    }
}

impl CudaWeight {
    /// `(rows, cols)` = `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
    /// The precision of the products (f32 for a weight kept in GGML blocks: slabs are decoded
    /// to f32).
    pub fn precision(&self) -> WeightPrecision {
        self.precision
    }
    /// The GGML type of a weight kept in blocks, `None` for f32 and bf16 storage.
    pub fn ggml_type(&self) -> Option<GgmlType> {
        self.blocks.map(|b| b.ty)
    }
    /// Bytes of device memory held.
    pub fn bytes(&self) -> usize {
        self.mem.bytes()
    }
    /// The allocation behind the weight.
    pub(crate) fn mem(&self) -> &DeviceMem {
        &self.mem
    }
    /// A weight whose `mem` holds `rows` rows of GGML blocks laid out as `layout` says.
    pub(crate) fn from_blocks(
        mem: DeviceMem,
        rows: usize,
        cols: usize,
        layout: BlockLayout,
    ) -> Self {
        CudaWeight {
            mem,
            rows,
            cols,
            precision: WeightPrecision::F32,
            blocks: Some(layout),
        }
    }
}

pub(crate) fn weight(
    be: &CudaBackend,
    data: &[f32],
    rows: usize,
    cols: usize,
    precision: WeightPrecision,
) -> Result<CudaWeight> {
    if Some(data.len()) != rows.checked_mul(cols) {
        return Err(Error::Backend(format!(
            "weight: {} values given for a [{rows}x{cols}] matrix",
            data.len()
        )));
    }
    let mem = match precision {
        WeightPrecision::F32 => be.upload_pod(data)?,
        // Rounded on the host with the same rule as the CPU backend (and as the device cast
        // kernel), so both backends hold bit-identical bf16 weights.
        WeightPrecision::Bf16 => {
            let bits: Vec<u16> = data
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect();
            be.upload_pod(&bits)?
        }
    };
    Ok(CudaWeight {
        mem,
        rows,
        cols,
        precision,
        blocks: None,
    })
}

pub(crate) fn weight_to_host(be: &CudaBackend, w: &CudaWeight) -> Result<Vec<f32>> {
    if let Some(layout) = w.blocks {
        return gguf::to_host(be, w, layout);
    }
    let n = w.rows * w.cols;
    if n == 0 {
        return Ok(Vec::new());
    }
    match w.precision {
        WeightPrecision::F32 => {
            let mut out = vec![0f32; n];
            be.read_into(&mut out, &w.mem)?;
            Ok(out)
        }
        WeightPrecision::Bf16 => {
            let mut bits = vec![0u16; n];
            be.read_into(&mut bits, &w.mem)?;
            Ok(bits
                .into_iter()
                .map(|b| half::bf16::from_bits(b).to_f32())
                .collect())
        }
    }
}

/// `c[m,n] (+)= a[m,k] · op(W)` where `op(W)` is `Wᵀ` (forward: `k = cols`, `n = rows`) or `W`
/// (input gradient: `k = rows`, `n = cols`). A bf16 weight multiplies a bf16 copy of `a` with f32
/// accumulation, which is what the CPU's bf16 path computes: on the tensor cores where the shapes
/// allow, else in the SIMT bf16 kernel.
#[allow(clippy::too_many_arguments)]
fn weight_product(
    be: &CudaBackend,
    what: &str,
    c: &mut CudaBuf,
    a: &CudaBuf,
    w: &CudaWeight,
    m: usize,
    transposed: bool,
    accumulate: bool,
) -> Result<()> {
    let (k, n) = if transposed {
        (w.cols, w.rows)
    } else {
        (w.rows, w.cols)
    };
    check_len(&format!("{what} output"), c, m * n)?;
    check_len(&format!("{what} input"), a, m * k)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            be.zero_mem(&c.mem, bytes_of("matmul output", m * n, 4)?)?;
        }
        return Ok(());
    }
    if let Some(layout) = w.blocks {
        return gguf::product(be, c, a, w, layout, m, transposed, accumulate);
    }
    match w.precision {
        WeightPrecision::F32 => launch(
            be,
            Gemm::F32,
            (false, transposed),
            c,
            &a.mem,
            &w.mem,
            (m, n, k),
            accumulate,
        ),
        WeightPrecision::Bf16 => {
            // Only the rows the product reads are cast; the buffer may be longer.
            let rows = be.cast_prefix_to_bf16(a, m * k)?;
            let gemm = if tensor_core_fits(k, n, transposed) {
                Gemm::Bf16TensorCore
            } else {
                Gemm::Bf16
            };
            launch(
                be,
                gemm,
                (false, transposed),
                c,
                &rows,
                &w.mem,
                (m, n, k),
                accumulate,
            )
        }
    }
}

/// `y[m,out] (+)= x[m,in] · Wᵀ`.
pub(crate) fn linear(
    be: &CudaBackend,
    y: &mut CudaBuf,
    x: &CudaBuf,
    w: &CudaWeight,
    m: usize,
    accumulate: bool,
) -> Result<()> {
    weight_product(be, "linear", y, x, w, m, true, accumulate)
}

/// `dx[m,in] (+)= dy[m,out] · W`.
pub(crate) fn linear_backward_input(
    be: &CudaBackend,
    dx: &mut CudaBuf,
    dy: &CudaBuf,
    w: &CudaWeight,
    m: usize,
    accumulate: bool,
) -> Result<()> {
    weight_product(be, "linear_backward_input", dx, dy, w, m, false, accumulate)
}
