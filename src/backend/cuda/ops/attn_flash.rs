//! Host side of kernels/attn_flash.cu: attention with bf16 operands on the tensor cores
//! ([`AttnShape::bf16`]). The f32 inputs are cast to bf16 copies (the rounding the CPU backend
//! applies at the same points), then one launch forward, two backward (`attn_flash_bwd_dq_*`
//! leaves D = rowsum(dO ∘ O) in a scratch buffer for `attn_flash_bwd_dkdv_*`), no atomics.
//! The shared checks ran in `ops::attention` before these are called.

use super::super::{CudaBackend, CudaBuf, KArg};
use super::attention::{key_tiles, query_tiles, tile_cfg};
use crate::backend::{AttnShape, Span};
use crate::error::{Error, Result};

/// Rows of a query (or key) tile: kernels/attn_flash.cu `FA_BM` = `FA_BN`. Blocks have 128
/// threads (`FA_THREADS`), as the SIMT attention kernels, so their launch shape serves.
const TILE: usize = 64;

/// The kernel suffix for a head dimension, or why there is none.
fn head_dim_suffix(hd: usize) -> Result<&'static str> {
    match hd {
        32 => Ok("d32"),
        64 => Ok("d64"),
        128 => Ok("d128"),
        _ => Err(Error::Backend(format!(
            "attention with bf16 operands runs on the tensor-core kernels, which take head \
             dimensions 32, 64 and 128, not {hd}; use precision = \"f32\" for this model"
        ))),
    }
}

/// Dynamic shared memory: `tiles` bf16 tiles of 64 rows (pitch hd + 8), plus `floats` f32.
fn smem(tiles: usize, hd: usize, floats: usize) -> u32 {
    (tiles * TILE * (hd + 8) * 2 + floats * 4) as u32
}

/// Forward for `rows` packed rows (checked by the caller).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    be: &CudaBackend,
    o: &mut CudaBuf,
    lse: &mut CudaBuf,
    q: &CudaBuf,
    k: &CudaBuf,
    v: &CudaBuf,
    seqs: &[Span],
    shape: AttnShape,
    rows: usize,
) -> Result<()> {
    let hd = shape.head_dim;
    let suffix = head_dim_suffix(hd)?;
    let causal = shape.causal;
    let table = query_tiles(seqs, TILE, causal);
    if table.is_empty() {
        return Ok(());
    }
    let (qh, kvh) = (shape.heads * hd, shape.kv_heads * hd);
    let (qb, kb, vb) = (
        be.cast_prefix_to_bf16(q, rows * qh)?,
        be.cast_prefix_to_bf16(k, rows * kvh)?,
        be.cast_prefix_to_bf16(v, rows * kvh)?,
    );
    let meta = be.upload_pod(&table)?;
    // SAFETY: the caller's `check` verified q and o for rows·heads·hd elements, k and v for
    // rows·kv_heads·hd, lse for rows·heads; the bf16 copies hold exactly those rows; every tile
    // of `meta` lies inside one span (rows below `rows`), the grid's y covers `heads`, heads is a
    // multiple of kv_heads (checked), and the shared memory is the kernel's three 64-row tiles.
    unsafe {
        be.launch(
            &format!("attn_flash_fwd_{suffix}"),
            tile_cfg(table.len() / 3, shape.heads, smem(3, hd, 0))?,
            &[
                o.arg(),
                lse.arg(),
                qb.arg(),
                kb.arg(),
                vb.arg(),
                meta.arg(),
                KArg::I32(shape.heads as i32),
                KArg::I32(shape.kv_heads as i32),
                KArg::I32(causal as i32),
                KArg::F32(shape.scale),
            ],
        )
    }?;
    drop((qb, kb, vb, meta));
    Ok(())
}

/// Backward for `rows` packed rows (checked by the caller).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    be: &CudaBackend,
    dq: &mut CudaBuf,
    dk: &mut CudaBuf,
    dv: &mut CudaBuf,
    do_: &CudaBuf,
    q: &CudaBuf,
    k: &CudaBuf,
    v: &CudaBuf,
    o: &CudaBuf,
    lse: &CudaBuf,
    seqs: &[Span],
    shape: AttnShape,
    rows: usize,
) -> Result<()> {
    let hd = shape.head_dim;
    let suffix = head_dim_suffix(hd)?;
    let causal = shape.causal;
    let dq_table = query_tiles(seqs, TILE, causal);
    let dkdv_table = key_tiles(seqs, TILE, causal);
    if dq_table.is_empty() {
        return Ok(());
    }
    let (qh, kvh) = (shape.heads * hd, shape.kv_heads * hd);
    let (qb, kb, vb, dob) = (
        be.cast_prefix_to_bf16(q, rows * qh)?,
        be.cast_prefix_to_bf16(k, rows * kvh)?,
        be.cast_prefix_to_bf16(v, rows * kvh)?,
        be.cast_prefix_to_bf16(do_, rows * qh)?,
    );
    let delta = be.alloc_bytes(rows * shape.heads * 4)?;
    let (dq_meta, dkdv_meta) = (be.upload_pod(&dq_table)?, be.upload_pod(&dkdv_table)?);
    let tail = [
        KArg::I32(shape.heads as i32),
        KArg::I32(shape.kv_heads as i32),
        KArg::I32(causal as i32),
        KArg::F32(shape.scale),
    ];
    let mut args = vec![
        dq.arg(),
        delta.arg(),
        qb.arg(),
        kb.arg(),
        vb.arg(),
        dob.arg(),
        o.arg(),
        lse.arg(),
        dq_meta.arg(),
    ];
    args.extend_from_slice(&tail);
    // SAFETY: as in `forward`, with do, o and dq checked for rows·heads·hd elements and `delta`
    // holding rows·heads f32; four 64-row tiles of shared memory.
    unsafe {
        be.launch(
            &format!("attn_flash_bwd_dq_{suffix}"),
            tile_cfg(dq_table.len() / 3, shape.heads, smem(4, hd, 0))?,
            &args,
        )
    }?;
    let mut args = vec![
        dk.arg(),
        dv.arg(),
        qb.arg(),
        kb.arg(),
        vb.arg(),
        dob.arg(),
        lse.arg(),
        delta.arg(),
        dkdv_meta.arg(),
    ];
    args.extend_from_slice(&tail);
    // SAFETY: dk and dv checked for rows·kv_heads·hd elements; key tiles of `dkdv_meta` inside
    // the spans; the grid's y covers kv_heads; `delta` was written by the launch above for every
    // covered row; four 64-row tiles plus 128 floats of shared memory.
    unsafe {
        be.launch(
            &format!("attn_flash_bwd_dkdv_{suffix}"),
            tile_cfg(dkdv_table.len() / 3, shape.kv_heads, smem(4, hd, 2 * TILE))?,
            &args,
        )
    }?;
    drop((qb, kb, vb, dob, delta, dq_meta, dkdv_meta));
    Ok(())
}
