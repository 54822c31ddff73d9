//! Grouped LoRA (SGMV style): every adapter segment of a packed batch is served by one launch per
//! phase. The adapters are separate allocations, so the host uploads a segment table holding their
//! device addresses next to each segment's rows, and a flat list of row tiles so that ragged
//! segments do not leave blocks idle (kernels/lora.cu documents both layouts).

use super::super::{check_len, i32_of, CudaBackend, CudaBuf, DeviceMem, KArg, LaunchCfg};
use crate::backend::{checks, LoraGradSeg, LoraSeg, LoraShape, Span};
use crate::error::{Error, Result};

/// Words per segment in the segment table: row start, row count, A, B, dA, dB.
pub(crate) const SEG_WORDS: usize = 6;
/// Rows per block of the row-tiled kernels (`TR` in lora.cu).
pub(crate) const ROW_TILE: usize = 32;
/// Output columns per block of the expand kernels (`TC` in lora.cu).
pub(crate) const EXPAND_COLS: usize = 128;
/// Output columns per block of the row-reduction (gradient) kernels (`TJ` in lora.cu).
pub(crate) const REDUCE_COLS: usize = 64;
/// Threads per block of every LoRA kernel (`NT` in lora.cu).
const THREADS: u32 = 256;

/// The segment rules every backend applies (sorted, disjoint, inside `buf`).
fn check_rows(buf: &CudaBuf, spans: &[Span], dim: usize) -> Result<()> {
    checks::segments(spans, buf.len, dim)
}

/// One `[segment, first row]` pair per block of the row-tiled kernels.
fn tile_table(spans: &[Span]) -> Result<Vec<i32>> {
    let mut t = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        let seg = i32_of("lora segment index", i)?;
        for r0 in (s.start..s.end()).step_by(ROW_TILE) {
            t.push(seg);
            t.push(i32_of("lora row", r0)?);
        }
    }
    Ok(t)
}

/// A kernel grid dimension, refusing counts the launch cannot express.
fn grid_dim(what: &str, n: usize, max: u32) -> Result<u32> {
    match u32::try_from(n) {
        Ok(v) if v <= max => Ok(v),
        _ => Err(Error::Backend(format!(
            "{what}: {n} blocks exceed the grid limit {max}"
        ))),
    }
}

fn cfg(x: u32, y: u32) -> LaunchCfg {
    LaunchCfg {
        grid: (x, y, 1),
        block: (THREADS, 1, 1),
        shared_bytes: 0,
    }
}

/// Sizes the kernels index with `int`, checked once.
struct Dims {
    d_in: i32,
    d_out: i32,
    rank: i32,
}

fn dims(rows: usize, s: LoraShape) -> Result<Dims> {
    // Row indices are ints in the kernels (element offsets are 64-bit).
    i32_of("lora rows", rows)?;
    Ok(Dims {
        d_in: i32_of("lora d_in", s.d_in)?,
        d_out: i32_of("lora d_out", s.d_out)?,
        rank: i32_of("lora rank", s.rank)?,
    })
}

/// Uploads the tile list, or None when no segment has rows.
fn upload_tiles(be: &CudaBackend, spans: &[Span]) -> Result<Option<(DeviceMem, u32)>> {
    let tiles = tile_table(spans)?;
    if tiles.is_empty() {
        return Ok(None);
    }
    let n = grid_dim("lora row tiles", tiles.len() / 2, i32::MAX as u32)?;
    Ok(Some((be.upload_pod(&tiles)?, n)))
}

pub(crate) fn forward(
    be: &CudaBackend,
    y: &mut CudaBuf,
    x: &CudaBuf,
    u: &mut CudaBuf,
    segs: &[LoraSeg<'_, CudaBackend>],
    shape: LoraShape,
) -> Result<()> {
    let rows = segs.iter().map(|s| s.rows.end()).max().unwrap_or(0);
    check_len("lora x", x, rows * shape.d_in)?;
    for s in segs {
        check_len("lora a", s.a, shape.rank * shape.d_in)?;
        check_len("lora b", s.b, shape.d_out * shape.rank)?;
    }
    let spans: Vec<Span> = segs.iter().map(|s| s.rows).collect();
    check_rows(y, &spans, shape.d_out)?;
    check_rows(u, &spans, shape.rank)?;
    // rank 0: u has no columns and y gains nothing.
    if rows == 0 || shape.rank == 0 {
        return Ok(());
    }
    let d = dims(rows, shape)?;
    let Some((tiles, ntiles)) = upload_tiles(be, &spans)? else {
        return Ok(());
    };
    let mut table = Vec::with_capacity(segs.len() * SEG_WORDS);
    for s in segs {
        table.extend_from_slice(&[
            s.rows.start as u64,
            s.rows.len as u64,
            be.table_addr(s.a)?,
            be.table_addr(s.b)?,
            0,
            0,
        ]);
    }
    let table = be.upload_pod(&table)?;
    let tab = table.arg();
    let til = tiles.arg();
    // u is written even when d_in = 0 (as zeros), like the CPU backend.
    // SAFETY: lora_shrink_f32(x, u, table, tiles, d_in, rank) reads x rows and writes u rows
    // named by `tiles` (each inside a segment, all below `rows`: x holds rows·d_in, u was
    // checked per segment for rank columns) and each segment's A (rank·d_in, checked), whose
    // address `table_addr` took from a live buffer of this device claimed for this stream;
    // the table holds SEG_WORDS words per segment as lora.cu reads them.
    unsafe {
        be.launch(
            "lora_shrink_f32",
            cfg(ntiles, 1),
            &[
                x.arg(),
                u.arg(),
                tab,
                til,
                KArg::I32(d.d_in),
                KArg::I32(d.rank),
            ],
        )
    }?;
    if shape.d_out > 0 {
        let ct = grid_dim("lora d_out tiles", shape.d_out.div_ceil(EXPAND_COLS), 65535)?;
        // SAFETY: lora_expand_f32(u, y, table, tiles, d_out, rank, scale) reads the same u rows and
        // each segment's B (d_out·rank, checked) and updates y rows inside the segments (y checked
        // per segment for d_out columns); the grid's y covers d_out in EXPAND_COLS tiles.
        unsafe {
            be.launch(
                "lora_expand_f32",
                cfg(ntiles, ct),
                &[
                    u.arg(),
                    y.arg(),
                    tab,
                    til,
                    KArg::I32(d.d_out),
                    KArg::I32(d.rank),
                    KArg::F32(shape.scale),
                ],
            )
        }?;
    }
    Ok(())
}

pub(crate) fn backward(
    be: &CudaBackend,
    dx: &mut CudaBuf,
    dy: &CudaBuf,
    x: &CudaBuf,
    u: &CudaBuf,
    segs: &mut [LoraGradSeg<'_, CudaBackend>],
    shape: LoraShape,
) -> Result<()> {
    let rows = segs.iter().map(|s| s.rows.end()).max().unwrap_or(0);
    check_len("lora dy", dy, rows * shape.d_out)?;
    check_len("lora x", x, rows * shape.d_in)?;
    check_len("lora u", u, rows * shape.rank)?;
    for s in segs.iter() {
        check_len("lora a", s.a, shape.rank * shape.d_in)?;
        check_len("lora b", s.b, shape.d_out * shape.rank)?;
        check_len("lora da", s.da, shape.rank * shape.d_in)?;
        check_len("lora db", s.db, shape.d_out * shape.rank)?;
    }
    let spans: Vec<Span> = segs.iter().map(|s| s.rows).collect();
    check_rows(dx, &spans, shape.d_in)?;
    // rank 0 or d_out 0: every product below is empty or adds zeros.
    if rows == 0 || shape.rank == 0 || shape.d_out == 0 {
        return Ok(());
    }
    let d = dims(rows, shape)?;
    let Some((tiles, ntiles)) = upload_tiles(be, &spans)? else {
        return Ok(());
    };
    let mut table = Vec::with_capacity(segs.len() * SEG_WORDS);
    for s in segs.iter() {
        table.extend_from_slice(&[
            s.rows.start as u64,
            s.rows.len as u64,
            be.table_addr(s.a)?,
            be.table_addr(s.b)?,
            be.table_addr(s.da)?,
            be.table_addr(s.db)?,
        ]);
    }
    let table = be.upload_pod(&table)?;
    let tab = table.arg();
    let til = tiles.arg();
    let nseg = segs.len();

    let jt_out = shape.d_out.div_ceil(REDUCE_COLS);
    // SAFETY: lora_bwd_db_f32(dy, u, table, d_out, rank, scale, jt) reads dy (rows·d_out) and u
    // (rows·rank) at segment rows and accumulates each segment's dB (d_out·rank), all checked
    // above; segment addresses come from `table_addr` (live, this device, claimed here).
    unsafe {
        be.launch(
            "lora_bwd_db_f32",
            cfg(
                grid_dim("lora dB blocks", nseg * jt_out, i32::MAX as u32)?,
                1,
            ),
            &[
                dy.arg(),
                u.arg(),
                tab,
                KArg::I32(d.d_out),
                KArg::I32(d.rank),
                KArg::F32(shape.scale),
                KArg::I32(i32_of("lora d_out tiles", jt_out)?),
            ],
        )
    }?;
    if shape.d_in == 0 {
        return Ok(());
    }
    // t = scale·dy·B, shared by the dA and dx products; rows outside every segment stay unread.
    let t = be.alloc_bytes(rows * shape.rank * 4)?;
    let targ = t.arg();
    // SAFETY: lora_bwd_t_f32(dy, t, table, tiles, d_out, rank, scale) reads dy at tile rows and
    // each B, and writes t (allocated rows·rank) at tile rows, all inside the segments.
    unsafe {
        be.launch(
            "lora_bwd_t_f32",
            cfg(ntiles, 1),
            &[
                dy.arg(),
                targ,
                tab,
                til,
                KArg::I32(d.d_out),
                KArg::I32(d.rank),
                KArg::F32(shape.scale),
            ],
        )
    }?;
    let jt_in = shape.d_in.div_ceil(REDUCE_COLS);
    // SAFETY: lora_bwd_da_f32(x, t, table, d_in, rank, jt) reads x (rows·d_in, checked) and t at
    // segment rows and accumulates each segment's dA (rank·d_in, checked).
    unsafe {
        be.launch(
            "lora_bwd_da_f32",
            cfg(
                grid_dim("lora dA blocks", nseg * jt_in, i32::MAX as u32)?,
                1,
            ),
            &[
                x.arg(),
                targ,
                tab,
                KArg::I32(d.d_in),
                KArg::I32(d.rank),
                KArg::I32(i32_of("lora d_in tiles", jt_in)?),
            ],
        )
    }?;
    let ct = grid_dim("lora d_in tiles", shape.d_in.div_ceil(EXPAND_COLS), 65535)?;
    // SAFETY: lora_bwd_dx_f32(t, dx, table, tiles, d_in, rank) reads t and each A and updates dx
    // at tile rows, checked per segment for d_in columns; the grid's y covers d_in.
    unsafe {
        be.launch(
            "lora_bwd_dx_f32",
            cfg(ntiles, ct),
            &[
                targ,
                dx.arg(),
                tab,
                til,
                KArg::I32(d.d_in),
                KArg::I32(d.rank),
            ],
        )
    }?;
    Ok(())
}
