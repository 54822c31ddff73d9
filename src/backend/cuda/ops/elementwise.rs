//! Host side of kernels/elementwise.cu: shape checks (the CPU backend's messages), metadata
//! upload and launch configuration of the element-wise and row-indexed ops, plus the f32 <-> bf16
//! casts that the bf16 kernels of other families are fed with.

use super::super::{bytes_of, check_len, i32_of, CudaBackend, CudaBuf, DeviceMem, KArg, LaunchCfg};
use crate::backend::checks::spans_rows;
use crate::backend::{Activation, Span};
use crate::error::{Error, Result};
use std::collections::HashSet;

/// Threads per block of every kernel in the file (`EW_THREADS`).
const THREADS: u32 = 256;
/// Upper bound on the blocks of a grid-stride launch: a few waves of an H100 (132 SMs × 8
/// resident blocks of 256 threads); more blocks would only add scheduling overhead.
const MAX_BLOCKS: usize = 4096;
/// Grid y is limited to 65535 by the hardware; the kernels loop over the rest.
const MAX_GRID_Y: usize = 65535;

/// A grid-stride launch over `n` items.
fn flat(n: usize) -> LaunchCfg {
    LaunchCfg::linear(n.div_ceil(THREADS as usize).min(MAX_BLOCKS) as u32, THREADS)
}

/// A launch with columns along x and one row group (span) per y index.
fn rows_by_cols(groups: usize, dim: usize) -> LaunchCfg {
    let x = dim.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32;
    let y = groups.clamp(1, MAX_GRID_Y) as u32;
    LaunchCfg {
        grid: (x, y, 1),
        block: (THREADS, 1, 1),
        shared_bytes: 0,
    }
}

/// The activation codes of elementwise.cu (`EW_GELU_ERF`...).
fn act_code(a: Activation) -> i32 {
    match a {
        Activation::GeluErf => 0,
        Activation::GeluTanh => 1,
        Activation::Silu => 2,
        Activation::Relu => 3,
    }
}

pub(crate) fn add_bias(
    be: &CudaBackend,
    y: &mut CudaBuf,
    bias: &CudaBuf,
    rows: usize,
    dim: usize,
) -> Result<()> {
    check_len("add_bias y", y, rows * dim)?;
    check_len("add_bias bias", bias, dim)?;
    let n = rows * dim;
    if n == 0 {
        return Ok(());
    }
    i32_of("add_bias rows·dim", n)?;
    // SAFETY: ew_add_bias(y, bias, rows, dim) touches y[0, rows·dim) and bias[0, dim), both
    // checked above; rows and dim are the values checked (their product is below 2^62).
    unsafe {
        be.launch(
            "ew_add_bias",
            flat(n),
            &[
                y.arg(),
                bias.arg(),
                KArg::I32(i32_of("add_bias rows", rows)?),
                KArg::I32(i32_of("add_bias dim", dim)?),
            ],
        )
    }
}

pub(crate) fn add_assign(be: &CudaBackend, y: &mut CudaBuf, x: &CudaBuf, len: usize) -> Result<()> {
    check_len("add_assign y", y, len)?;
    check_len("add_assign x", x, len)?;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: ew_add_assign(y, x, len) touches y and x at [0, len), checked above.
    unsafe {
        be.launch(
            "ew_add_assign",
            flat(len),
            &[y.arg(), x.arg(), KArg::I32(i32_of("add_assign len", len)?)],
        )
    }
}

/// `dst[i,:] (+)= src[idx[i],:]`, shared by gather_rows and embedding once their checks passed.
fn gather(
    be: &CudaBackend,
    what: &str,
    dst: &mut CudaBuf,
    src: &CudaBuf,
    idx: &[u32],
    dim: usize,
    accumulate: bool,
) -> Result<()> {
    let n = idx.len() * dim;
    if n == 0 {
        return Ok(());
    }
    i32_of(&format!("{what} rows·dim"), n)?;
    let meta = be.upload_pod(idx)?;
    // SAFETY: ew_gather_rows(dst, src, idx, rows, dim, acc) writes dst[0, rows·dim) and reads
    // src rows idx[i] and idx[0, rows) (`meta`, uploaded from `idx`); the callers checked dst
    // for rows·dim elements and src for every row named in `idx`.
    unsafe {
        be.launch(
            "ew_gather_rows",
            flat(n),
            &[
                dst.arg(),
                src.arg(),
                meta.arg(),
                KArg::I32(i32_of(&format!("{what} rows"), idx.len())?),
                KArg::I32(i32_of(&format!("{what} dim"), dim)?),
                KArg::I32(accumulate as i32),
            ],
        )
    }
}

pub(crate) fn gather_rows(
    be: &CudaBackend,
    dst: &mut CudaBuf,
    src: &CudaBuf,
    rows: &[u32],
    dim: usize,
) -> Result<()> {
    check_len("gather dst", dst, rows.len() * dim)?;
    for &r in rows {
        check_len("gather src", src, (r as usize + 1) * dim)?;
    }
    gather(be, "gather", dst, src, rows, dim, false)
}

/// The CPU writes the rows one after another, so a destination named twice ends up with the
/// last source row; only those last writes are launched, which also keeps the kernel free of
/// write races.
pub(crate) fn scatter_rows(
    be: &CudaBackend,
    dst: &mut CudaBuf,
    src: &CudaBuf,
    rows: &[u32],
    dim: usize,
) -> Result<()> {
    check_len("scatter src", src, rows.len() * dim)?;
    for &r in rows {
        check_len("scatter dst", dst, (r as usize + 1) * dim)?;
    }
    if rows.is_empty() || dim == 0 {
        return Ok(());
    }
    let mut seen = HashSet::with_capacity(rows.len());
    let mut pairs: Vec<[u32; 2]> = Vec::with_capacity(rows.len());
    for (i, &r) in rows.iter().enumerate().rev() {
        if seen.insert(r) {
            pairs.push([i as u32, r]);
        }
    }
    let n = pairs.len() * dim;
    i32_of("scatter rows·dim", n)?;
    let meta = be.upload_pod(&pairs)?;
    // SAFETY: ew_scatter_rows(dst, src, pairs, n, dim) reads src row i and writes dst row r for
    // each uploaded pair (i, r) of `meta`; every i < rows.len() and every r was checked against
    // src and dst above.
    unsafe {
        be.launch(
            "ew_scatter_rows",
            flat(n),
            &[
                dst.arg(),
                src.arg(),
                meta.arg(),
                KArg::I32(i32_of("scatter rows", pairs.len())?),
                KArg::I32(i32_of("scatter dim", dim)?),
            ],
        )
    }
}

pub(crate) fn embedding(
    be: &CudaBackend,
    out: &mut CudaBuf,
    table: &CudaBuf,
    ids: &[u32],
    dim: usize,
    accumulate: bool,
) -> Result<()> {
    check_len("embedding out", out, ids.len() * dim)?;
    let vocab = table.len / dim.max(1);
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::Backend(format!(
            "embedding id {bad} out of range for a table of {vocab} rows"
        )));
    }
    gather(be, "embedding", out, table, ids, dim, accumulate)
}

pub(crate) fn activation_forward(
    be: &CudaBackend,
    y: &mut CudaBuf,
    x: &CudaBuf,
    act: Activation,
    len: usize,
) -> Result<()> {
    check_len("activation y", y, len)?;
    check_len("activation x", x, len)?;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: ew_act_fwd(y, x, len, act) touches y and x at [0, len), checked above.
    unsafe {
        be.launch(
            "ew_act_fwd",
            flat(len),
            &[
                y.arg(),
                x.arg(),
                KArg::I32(i32_of("activation len", len)?),
                KArg::I32(act_code(act)),
            ],
        )
    }
}

pub(crate) fn activation_backward(
    be: &CudaBackend,
    dx: &mut CudaBuf,
    dy: &CudaBuf,
    x: &CudaBuf,
    act: Activation,
    len: usize,
) -> Result<()> {
    check_len("activation_backward dx", dx, len)?;
    check_len("activation_backward dy", dy, len)?;
    check_len("activation_backward x", x, len)?;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: ew_act_bwd(dx, dy, x, len, act) touches all three at [0, len), checked above.
    unsafe {
        be.launch(
            "ew_act_bwd",
            flat(len),
            &[
                dx.arg(),
                dy.arg(),
                x.arg(),
                KArg::I32(i32_of("activation_backward len", len)?),
                KArg::I32(act_code(act)),
            ],
        )
    }
}

pub(crate) fn gated_forward(
    be: &CudaBackend,
    y: &mut CudaBuf,
    gate: &CudaBuf,
    up: &CudaBuf,
    act: Activation,
    len: usize,
) -> Result<()> {
    check_len("gated y", y, len)?;
    check_len("gated gate", gate, len)?;
    check_len("gated up", up, len)?;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: ew_gated_fwd(y, gate, up, len, act) touches all three at [0, len), checked above.
    unsafe {
        be.launch(
            "ew_gated_fwd",
            flat(len),
            &[
                y.arg(),
                gate.arg(),
                up.arg(),
                KArg::I32(i32_of("gated len", len)?),
                KArg::I32(act_code(act)),
            ],
        )
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn gated_backward(
    be: &CudaBackend,
    dgate: &mut CudaBuf,
    dup: &mut CudaBuf,
    dy: &CudaBuf,
    gate: &CudaBuf,
    up: &CudaBuf,
    act: Activation,
    len: usize,
) -> Result<()> {
    check_len("gated_backward dgate", dgate, len)?;
    check_len("gated_backward dup", dup, len)?;
    check_len("gated_backward dy", dy, len)?;
    check_len("gated_backward gate", gate, len)?;
    check_len("gated_backward up", up, len)?;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: ew_gated_bwd(dgate, dup, dy, gate, up, len, act) touches all five at [0, len),
    // checked above.
    unsafe {
        be.launch(
            "ew_gated_bwd",
            flat(len),
            &[
                dgate.arg(),
                dup.arg(),
                dy.arg(),
                gate.arg(),
                up.arg(),
                KArg::I32(i32_of("gated_backward len", len)?),
                KArg::I32(act_code(act)),
            ],
        )
    }
}

pub(crate) fn scale(be: &CudaBackend, x: &mut CudaBuf, alpha: f32, len: usize) -> Result<()> {
    check_len("scale x", x, len)?;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: ew_scale(x, alpha, len) touches x at [0, len), checked above.
    unsafe {
        be.launch(
            "ew_scale",
            flat(len),
            &[
                x.arg(),
                KArg::F32(alpha),
                KArg::I32(i32_of("scale len", len)?),
            ],
        )
    }
}

pub(crate) fn swiglu_forward(
    be: &CudaBackend,
    y: &mut CudaBuf,
    gate: &CudaBuf,
    up: &CudaBuf,
    len: usize,
) -> Result<()> {
    check_len("swiglu y", y, len)?;
    check_len("swiglu gate", gate, len)?;
    check_len("swiglu up", up, len)?;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: ew_swiglu_fwd(y, gate, up, len) touches all three at [0, len), checked above.
    unsafe {
        be.launch(
            "ew_swiglu_fwd",
            flat(len),
            &[
                y.arg(),
                gate.arg(),
                up.arg(),
                KArg::I32(i32_of("swiglu len", len)?),
            ],
        )
    }
}

pub(crate) fn swiglu_backward(
    be: &CudaBackend,
    dgate: &mut CudaBuf,
    dup: &mut CudaBuf,
    dy: &CudaBuf,
    gate: &CudaBuf,
    up: &CudaBuf,
    len: usize,
) -> Result<()> {
    check_len("swiglu_backward dgate", dgate, len)?;
    check_len("swiglu_backward dup", dup, len)?;
    check_len("swiglu_backward dy", dy, len)?;
    check_len("swiglu_backward gate", gate, len)?;
    check_len("swiglu_backward up", up, len)?;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: ew_swiglu_bwd(dgate, dup, dy, gate, up, len) touches all five at [0, len),
    // checked above.
    unsafe {
        be.launch(
            "ew_swiglu_bwd",
            flat(len),
            &[
                dgate.arg(),
                dup.arg(),
                dy.arg(),
                gate.arg(),
                up.arg(),
                KArg::I32(i32_of("swiglu_backward len", len)?),
            ],
        )
    }
}

/// The inverse frequencies are computed here in f64 exactly as the CPU does and uploaded, so
/// the device's `pow` cannot add its own rounding to every angle.
pub(crate) fn rope(
    be: &CudaBackend,
    x: &mut CudaBuf,
    positions: &[u32],
    heads: usize,
    head_dim: usize,
    theta: f32,
    inverse: bool,
) -> Result<()> {
    let n = positions
        .len()
        .checked_mul(heads)
        .and_then(|v| v.checked_mul(head_dim))
        .ok_or_else(|| Error::Backend("rope: rows·heads·head_dim overflows".into()))?;
    check_len("rope x", x, n)?;
    if !head_dim.is_multiple_of(2) {
        return Err(Error::Backend(format!(
            "rope needs an even head_dim, got {head_dim}"
        )));
    }
    if n == 0 {
        return Ok(());
    }
    i32_of("rope rows·heads·head_dim", n)?;
    let half = head_dim / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| 1.0 / (theta as f64).powf((2 * i) as f64 / head_dim as f64))
        .collect();
    let pos = be.upload_pod(positions)?;
    let freq = be.upload_pod(&inv_freq)?;
    // SAFETY: ew_rope(x, pos, freq, rows, heads, head_dim, sign) rewrites x[0, rows·heads·hd),
    // checked above (n computed without overflow), reading pos[0, rows) and freq[0, hd/2),
    // the two uploads.
    unsafe {
        be.launch(
            "ew_rope",
            flat(positions.len() * half),
            &[
                x.arg(),
                pos.arg(),
                freq.arg(),
                KArg::I32(i32_of("rope rows", positions.len())?),
                KArg::I32(i32_of("rope heads", heads)?),
                KArg::I32(i32_of("rope head_dim", head_dim)?),
                KArg::F32(if inverse { -1.0 } else { 1.0 }),
            ],
        )
    }
}

/// The spans as the kernels' `(start, len)` int pairs.
fn span_table(what: &str, spans: &[Span]) -> Result<Vec<i32>> {
    let mut t = Vec::with_capacity(2 * spans.len());
    for s in spans {
        t.push(i32_of(&format!("{what} span start"), s.start)?);
        t.push(i32_of(&format!("{what} span len"), s.len)?);
    }
    Ok(t)
}

pub(crate) fn segment_mean(
    be: &CudaBackend,
    out: &mut CudaBuf,
    x: &CudaBuf,
    spans: &[Span],
    dim: usize,
) -> Result<()> {
    // Bounded first so that the products below cannot wrap and pass a check they fail.
    i32_of("segment_mean spans", spans.len())?;
    i32_of("segment_mean rows", spans_rows(spans))?;
    i32_of("segment_mean dim", dim)?;
    check_len("segment_mean out", out, spans.len() * dim)?;
    check_len("segment_mean x", x, spans_rows(spans) * dim)?;
    if spans.is_empty() || dim == 0 {
        return Ok(());
    }
    i32_of("segment_mean out len", spans.len() * dim)?;
    let table = be.upload_pod(&span_table("segment_mean", spans)?)?;
    // SAFETY: ew_segment_mean(out, x, spans, nspans, dim) writes out[0, nspans·dim) and reads
    // the x rows inside every span of `table` (uploaded from `spans`); out and x were checked
    // for nspans·dim and spans_rows·dim elements above.
    unsafe {
        be.launch(
            "ew_segment_mean",
            rows_by_cols(spans.len(), dim),
            &[
                out.arg(),
                x.arg(),
                table.arg(),
                KArg::I32(i32_of("segment_mean spans", spans.len())?),
                KArg::I32(i32_of("segment_mean dim", dim)?),
            ],
        )
    }
}

/// Spans may overlap (the CPU adds them one span after another), so the launch is organised by
/// destination row: each covered row lists the spans over it in span order and one thread column
/// adds them all, which keeps the CPU's order of additions and needs no atomics.
pub(crate) fn segment_mean_backward(
    be: &CudaBackend,
    dx: &mut CudaBuf,
    dout: &CudaBuf,
    spans: &[Span],
    dim: usize,
) -> Result<()> {
    // Bounded first so that the products below cannot wrap and pass a check they fail.
    i32_of("segment_mean_backward spans", spans.len())?;
    i32_of("segment_mean_backward rows", spans_rows(spans))?;
    i32_of("segment_mean_backward dim", dim)?;
    check_len("segment_mean_backward dout", dout, spans.len() * dim)?;
    check_len("segment_mean_backward dx", dx, spans_rows(spans) * dim)?;
    if spans.is_empty() || dim == 0 {
        return Ok(());
    }
    i32_of("segment_mean_backward dx len", spans_rows(spans) * dim)?;
    i32_of("segment_mean_backward dout len", spans.len() * dim)?;
    // (row, span) for every covered row; the stable sort keeps span order within a row.
    let mut entries: Vec<(usize, usize)> = spans
        .iter()
        .enumerate()
        .flat_map(|(i, s)| (s.start..s.end()).map(move |r| (r, i)))
        .collect();
    entries.sort_by_key(|&(r, _)| r);
    if entries.is_empty() {
        return Ok(());
    }
    let mut group_row = Vec::new();
    let mut group_first = Vec::new();
    for (e, &(r, _)) in entries.iter().enumerate() {
        if group_row.last() != Some(&(r as i32)) {
            group_row.push(r as i32);
            group_first.push(e as i32);
        }
    }
    let ngroups = group_row.len();
    group_first.push(i32_of("segment_mean_backward entries", entries.len())?);
    let mut meta = group_row;
    meta.extend(group_first);
    meta.extend(entries.iter().map(|&(_, s)| s as i32));
    for s in spans {
        meta.push(i32_of("segment_mean_backward span len", s.len)?);
    }
    let meta_mem = be.upload_pod(&meta)?;
    // SAFETY: ew_segment_mean_bwd(dx, dout, meta, ngroups, nentries, dim) reads `meta` as laid
    // out above (ngroups rows, ngroups+1 offsets, nentries span ids, nspans lengths), writes dx
    // at the covered rows (< spans_rows) and reads dout at span rows (< nspans); dx and dout
    // were checked for spans_rows·dim and nspans·dim elements.
    unsafe {
        be.launch(
            "ew_segment_mean_bwd",
            rows_by_cols(ngroups, dim),
            &[
                dx.arg(),
                dout.arg(),
                meta_mem.arg(),
                KArg::I32(ngroups as i32),
                KArg::I32(entries.len() as i32),
                KArg::I32(i32_of("segment_mean_backward dim", dim)?),
            ],
        )
    }
}

/// bf16 conversions for the kernels that store their inputs as bf16 (GEMM, LoRA). bf16 buffers
/// are plain [`DeviceMem`] (two bytes an element): the [`crate::backend::Backend`] ops are f32
/// only, and a bf16 buffer never crosses that interface.
impl CudaBackend {
    /// A bf16 copy of `src`, rounded to nearest even (NaN stays NaN), as `half::bf16::from_f32`
    /// does on the host.
    pub fn cast_to_bf16(&self, src: &CudaBuf) -> Result<DeviceMem> {
        self.cast_prefix_to_bf16(src, src.len)
    }

    /// A bf16 copy of the first `len` elements of `src` (as [`CudaBackend::cast_to_bf16`]).
    pub fn cast_prefix_to_bf16(&self, src: &CudaBuf, len: usize) -> Result<DeviceMem> {
        check_len("cast_to_bf16", src, len)?;
        let mem = self.alloc_bytes(bytes_of("cast_to_bf16", len, 2)?)?;
        if len > 0 {
            // SAFETY: ew_cast_f32_to_bf16(dst, src, len) writes len bf16 into `mem` (allocated with
            // len·2 bytes) and reads src[0, len), checked above.
            unsafe {
                self.launch(
                    "ew_cast_f32_to_bf16",
                    flat(len),
                    &[
                        mem.arg(),
                        src.arg(),
                        KArg::I32(i32_of("cast_to_bf16 len", len)?),
                    ],
                )
            }?;
        }
        Ok(mem)
    }

    /// An f32 buffer holding the first `len` bf16 values of `src` (exact: bf16 is a truncated f32).
    pub fn cast_from_bf16(&self, src: &DeviceMem, len: usize) -> Result<CudaBuf> {
        if src.bytes() < bytes_of("cast_from_bf16", len, 2)? {
            return Err(Error::Backend(format!(
                "cast_from_bf16: buffer holds {} bf16 elements, op needs {len}",
                src.bytes() / 2
            )));
        }
        let mem = self.alloc_bytes(bytes_of("cast_from_bf16", len, 4)?)?;
        if len > 0 {
            // SAFETY: ew_cast_bf16_to_f32(dst, src, len) writes len f32 into `mem` (allocated with
            // len·4 bytes) and reads len bf16 of `src`, whose size was checked above.
            unsafe {
                self.launch(
                    "ew_cast_bf16_to_f32",
                    flat(len),
                    &[
                        mem.arg(),
                        src.arg(),
                        KArg::I32(i32_of("cast_from_bf16 len", len)?),
                    ],
                )
            }?;
        }
        Ok(CudaBuf { mem, len })
    }
}
