//! Host side of kernels/gguf.cu: frozen weights kept on the device in GGML blocks (as a GGUF
//! file stores them), and their two products.
//!
//! A product walks the weight in slabs of rows: a slab is decoded to f32 (bit-exact with the CPU
//! decoder), multiplied by the f32 GEMM of kernels/gemm.cu, and released. A slab holds at most
//! [`CudaBackend::decode_slab_values`] values (16 MiB of f32 by default), so device memory stays
//! at the blocks' size plus one slab, whatever the weight's size. A weight that fits in one slab
//! (every weight of a model up to ~1B parameters) is one decode and one GEMM straight into the
//! output; a larger one adds, per slab, a strided copy of `m × slab` values into or out of the
//! product's buffers, against the slab's `2 · m · slab · cols` flops.

use super::super::{bytes_of, i32_of, CudaBackend, CudaBuf, DeviceMem, KArg, LaunchCfg};
use super::gemm::{self, CudaWeight, Gemm};
use crate::backend::quant::GgmlType;
use crate::error::{Error, Result};

/// Threads per block of every kernel in kernels/gguf.cu (`GGUF_THREADS`).
const THREADS: u32 = 256;
/// Blocks of a grid-stride launch, at most: a few waves of an H100.
const MAX_BLOCKS: usize = 4096;
/// Values one launch may touch: the kernels index with `int` and step by the grid size, so a
/// launch stays well below 2^31.
const MAX_LAUNCH_VALUES: usize = 1 << 30;

/// Values of the decoded slab by default: 16 MiB of f32.
pub(crate) const DEFAULT_SLAB_VALUES: usize = 1 << 22;

/// How a weight kept in blocks is laid out: its type and the bytes of one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockLayout {
    pub(crate) ty: GgmlType,
    pub(crate) row_bytes: usize,
}

fn flat(n: usize) -> LaunchCfg {
    LaunchCfg::linear(
        n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32,
        THREADS,
    )
}

/// The decoding kernel of a type: `gguf_decode_q4_k` for Q4_K.
fn decode_kernel(ty: GgmlType) -> String {
    format!("gguf_decode_{}", ty.name().to_ascii_lowercase())
}

/// Uploads `blocks`, `rows` rows of `cols` values of type `ty`, as a frozen weight.
pub(crate) fn weight(
    be: &CudaBackend,
    ty: GgmlType,
    blocks: Vec<u8>,
    rows: usize,
    cols: usize,
) -> Result<CudaWeight> {
    let row_bytes = ty.weight_row_bytes(blocks.len(), rows, cols)?;
    i32_of("quantized weight rows", rows)?;
    i32_of("quantized weight cols", cols)?;
    let mem = be.upload_pod::<u8>(&blocks)?;
    Ok(CudaWeight::from_blocks(
        mem,
        rows,
        cols,
        BlockLayout { ty, row_bytes },
    ))
}

/// Rows `r0 .. r0 + nr` of `w` decoded into a new f32 buffer `[nr, cols]`.
fn decode(
    be: &CudaBackend,
    w: &CudaWeight,
    layout: BlockLayout,
    r0: usize,
    nr: usize,
) -> Result<CudaBuf> {
    let (rows, cols) = w.shape();
    let n = nr * cols;
    if r0 + nr > rows || n > MAX_LAUNCH_VALUES {
        return Err(Error::Backend(format!(
            "decode rows {r0}..{} of a [{rows}x{cols}] weight: out of range or over {MAX_LAUNCH_VALUES} values",
            r0 + nr
        )));
    }
    let out = CudaBuf {
        mem: be.alloc_bytes(bytes_of("decoded slab", n, 4)?)?,
        len: n,
    };
    if n == 0 {
        return Ok(out);
    }
    let blocks = w.mem();
    if blocks.bytes() < (r0 + nr) * layout.row_bytes {
        return Err(Error::Backend(format!(
            "quantized weight holds {} bytes, rows up to {} need {}",
            blocks.bytes(),
            r0 + nr,
            (r0 + nr) * layout.row_bytes
        )));
    }
    let row_bytes = i64::try_from(layout.row_bytes)
        .map_err(|_| Error::Backend("quantized weight: row too long".into()))?;
    // SAFETY: gguf_decode_<ty>(out, blocks, row_bytes, cols, r0, nr) writes out[0, nr·cols) (the
    // buffer was allocated with that many f32) and reads bytes [r0·row_bytes, (r0+nr)·row_bytes)
    // of `blocks`, which holds at least that many (checked above); nr·cols is at most 2^30, so
    // the kernel's int indexing cannot overflow. row_bytes matches the kernel's block size for
    // `ty`, since it came from `ty.row_bytes(cols)` at upload.
    unsafe {
        be.launch(
            &decode_kernel(layout.ty),
            flat(n),
            &[
                out.arg(),
                blocks.arg(),
                KArg::I64(row_bytes),
                KArg::I32(i32_of("decode cols", cols)?),
                KArg::I32(i32_of("decode r0", r0)?),
                KArg::I32(i32_of("decode rows", nr)?),
            ],
        )?;
    }
    Ok(out)
}

/// `dst[r, c_dst + j] (+)= src[r, c_src + j]` for `r < rows`, `j < width`, rows `ld_dst` and
/// `ld_src` values apart.
#[allow(clippy::too_many_arguments)]
fn copy_cols(
    be: &CudaBackend,
    dst: &mut CudaBuf,
    (ld_dst, c_dst): (usize, usize),
    src: &DeviceMem,
    (ld_src, c_src): (usize, usize),
    rows: usize,
    width: usize,
    accumulate: bool,
) -> Result<()> {
    let n = rows * width;
    if n == 0 {
        return Ok(());
    }
    let fits =
        |ld: usize, c: usize, len: usize| c + width <= ld && (rows - 1) * ld + c + width <= len;
    if n > MAX_LAUNCH_VALUES
        || !fits(ld_dst, c_dst, dst.len)
        || !fits(ld_src, c_src, src.bytes() / 4)
    {
        return Err(Error::Backend(format!(
            "copy of [{rows}x{width}] columns does not fit: dst {} values (row {ld_dst}, from {c_dst}), \
             src {} values (row {ld_src}, from {c_src})",
            dst.len,
            src.bytes() / 4
        )));
    }
    // SAFETY: gguf_copy_cols touches dst[r·ld_dst + c_dst + j] and src[r·ld_src + c_src + j] for
    // r < rows, j < width; the largest such index of each is below its length (checked above),
    // and rows·width <= 2^30 keeps the kernel's int index in range.
    unsafe {
        be.launch(
            "gguf_copy_cols",
            flat(n),
            &[
                dst.arg(),
                src.arg(),
                KArg::I32(i32_of("copy rows", rows)?),
                KArg::I32(i32_of("copy width", width)?),
                KArg::I32(i32_of("copy dst row", ld_dst)?),
                KArg::I32(i32_of("copy dst column", c_dst)?),
                KArg::I32(i32_of("copy src row", ld_src)?),
                KArg::I32(i32_of("copy src column", c_src)?),
                KArg::I32(accumulate as i32),
            ],
        )
    }
}

/// Rows of one decoded slab of `w`.
fn slab_rows(be: &CudaBackend, w: &CudaWeight) -> usize {
    let (rows, cols) = w.shape();
    (be.decode_slab_values() / cols.max(1)).clamp(1, rows.max(1))
}

/// The whole weight decoded to a host `[rows, cols]` matrix, slab by slab.
pub(crate) fn to_host(be: &CudaBackend, w: &CudaWeight, layout: BlockLayout) -> Result<Vec<f32>> {
    let (rows, cols) = w.shape();
    let mut out = vec![0f32; rows * cols];
    if out.is_empty() {
        return Ok(out);
    }
    let slab = slab_rows(be, w);
    for (r0, dst) in (0..rows).step_by(slab).zip(out.chunks_mut(slab * cols)) {
        let tile = decode(be, w, layout, r0, dst.len() / cols)?;
        be.read_into(dst, &tile.mem)?;
    }
    Ok(out)
}

/// `c[m,n] (+)= a[m,k] · op(W)`: the forward product `Wᵀ` when `transposed` (`k = cols`,
/// `n = rows`), else the input gradient's `W` (`k = rows`, `n = cols`). The caller has checked
/// `c` and `a` against the shape and that `m, n, k > 0`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product(
    be: &CudaBackend,
    c: &mut CudaBuf,
    a: &CudaBuf,
    w: &CudaWeight,
    layout: BlockLayout,
    m: usize,
    transposed: bool,
    accumulate: bool,
) -> Result<()> {
    let (rows, cols) = w.shape();
    let slab = slab_rows(be, w);
    for (i, r0) in (0..rows).step_by(slab).enumerate() {
        let nr = slab.min(rows - r0);
        let tile = decode(be, w, layout, r0, nr)?;
        let whole = nr == rows;
        if transposed {
            // c[:, r0..r0+nr] (+)= a · tileᵀ.
            if whole {
                gemm::launch(
                    be,
                    Gemm::F32,
                    (false, true),
                    c,
                    &a.mem,
                    &tile.mem,
                    (m, rows, cols),
                    accumulate,
                )?;
            } else {
                let mut part = CudaBuf {
                    mem: be.alloc_bytes(bytes_of("slab product", m * nr, 4)?)?,
                    len: m * nr,
                };
                gemm::launch(
                    be,
                    Gemm::F32,
                    (false, true),
                    &mut part,
                    &a.mem,
                    &tile.mem,
                    (m, nr, cols),
                    false,
                )?;
                copy_cols(be, c, (rows, r0), &part.mem, (nr, 0), m, nr, accumulate)?;
            }
        } else {
            // c (+)= a[:, r0..r0+nr] · tile; the first slab overwrites unless accumulating.
            let acc = accumulate || i > 0;
            if whole {
                gemm::launch(
                    be,
                    Gemm::F32,
                    (false, false),
                    c,
                    &a.mem,
                    &tile.mem,
                    (m, cols, rows),
                    acc,
                )?;
            } else {
                let mut part = CudaBuf {
                    mem: be.alloc_bytes(bytes_of("slab input", m * nr, 4)?)?,
                    len: m * nr,
                };
                copy_cols(be, &mut part, (nr, 0), &a.mem, (rows, r0), m, nr, false)?;
                gemm::launch(
                    be,
                    Gemm::F32,
                    (false, false),
                    c,
                    &part.mem,
                    &tile.mem,
                    (m, cols, nr),
                    acc,
                )?;
            }
        }
    }
    Ok(())
}
