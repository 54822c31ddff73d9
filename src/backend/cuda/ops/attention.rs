//! Host side of kernels/attention.cu: the CPU backend's shape checks, the per-tile work tables
//! that let one launch cover every sequence of a packed batch, and the choice of kernel variant
//! by head dimension.
//!
//! Forward is one launch (`attn_fwd_*`, one block per query tile and head). Backward is two:
//! `attn_bwd_dq_*` (one block per query tile and head, which also leaves `D = rowsum(dO ∘ O)` in
//! a scratch buffer) and then `attn_bwd_dkdv_*` (one block per key tile and kv head, summing the
//! group's query heads itself), so no output is ever reduced with atomics and results are
//! reproducible bit for bit.

use super::super::{i32_of, CudaBackend, CudaBuf, KArg, LaunchCfg};
use crate::backend::{checks, AttnShape, Span};
use crate::error::{Error, Result};

/// Threads per block of the tile kernels (`ATTN_THREADS`).
const THREADS: u32 = 128;
/// The hardware limit on grid y, which indexes heads.
const MAX_GRID_Y: usize = 65535;

/// The kernels compiled for one range of head dimensions, with the tile sizes their template
/// parameters imply (kernels/attention.cu): the register accumulators are sized at compile
/// time, so each range of `head_dim` has its own instantiation.
struct Variant {
    /// Largest head dimension the kernels handle.
    max_hd: usize,
    fwd: &'static str,
    /// Forward (query rows, keys) per step: `(16·RM, 8·KC)`.
    fwd_tile: (usize, usize),
    dq: &'static str,
    /// dQ (query rows, keys) per step.
    dq_tile: (usize, usize),
    dkdv: &'static str,
    /// dK/dV (keys, query rows) per step: `(16·RK, 8·QC)`.
    dkdv_tile: (usize, usize),
}

const VARIANTS: [Variant; 4] = [
    Variant {
        max_hd: 32,
        fwd: "attn_fwd_d32",
        fwd_tile: (64, 64),
        dq: "attn_bwd_dq_d32",
        dq_tile: (64, 32),
        dkdv: "attn_bwd_dkdv_d32",
        dkdv_tile: (64, 32),
    },
    Variant {
        max_hd: 64,
        fwd: "attn_fwd_d64",
        fwd_tile: (64, 32),
        dq: "attn_bwd_dq_d64",
        dq_tile: (64, 16),
        dkdv: "attn_bwd_dkdv_d64",
        dkdv_tile: (32, 32),
    },
    Variant {
        max_hd: 128,
        fwd: "attn_fwd_d128",
        fwd_tile: (64, 16),
        dq: "attn_bwd_dq_d128",
        dq_tile: (32, 16),
        dkdv: "attn_bwd_dkdv_d128",
        dkdv_tile: (32, 16),
    },
    // Gemma 3's heads.
    Variant {
        max_hd: 256,
        fwd: "attn_fwd_d256",
        fwd_tile: (32, 8),
        dq: "attn_bwd_dq_d256",
        dq_tile: (16, 8),
        dkdv: "attn_bwd_dkdv_d256",
        dkdv_tile: (16, 8),
    },
];

fn variant(hd: usize) -> Result<&'static Variant> {
    VARIANTS.iter().find(|v| hd <= v.max_hd).ok_or_else(|| {
        Error::Backend(format!(
            "attention head_dim {hd} is not supported by the CUDA kernels (at most {})",
            VARIANTS[VARIANTS.len() - 1].max_hd
        ))
    })
}

/// Dynamic shared memory of a kernel, as the kernel carves it: `tile_rows` rows of `hd` columns
/// (pitch hd+1, Q/K/V/dO tiles) plus `score_rows` rows of `score_cols` columns (pitch
/// score_cols+1, P/dS tiles). Too small a size is an out-of-bounds shared access in the emulator.
fn smem_bytes(tile_rows: usize, hd: usize, score_rows: usize, score_cols: usize) -> Result<u32> {
    let floats = tile_rows * (hd + 1) + score_rows * (score_cols + 1);
    u32::try_from(floats * 4)
        .map_err(|_| Error::Backend(format!("attention shared memory of {floats} floats")))
}

/// The shared attention checks (src/backend/checks.rs) plus the limits of the kernels and the
/// CUDA grid; returns the rows the spans cover.
fn check(
    s: AttnShape,
    seqs: &[Span],
    q_like: &[&CudaBuf],
    kv_like: &[&CudaBuf],
    lse: &CudaBuf,
) -> Result<usize> {
    let lens = |bufs: &[&CudaBuf]| bufs.iter().map(|b| b.len).collect::<Vec<_>>();
    let rows = checks::attention(s, seqs, &lens(q_like), &lens(kv_like), lse.len)?;
    // The kernels index rows, heads and head-major offsets with i32 where they fit.
    i32_of("attention rows", rows)?;
    i32_of("attention rows·heads", rows * s.heads)?;
    if s.heads > MAX_GRID_Y {
        return Err(Error::Backend(format!(
            "attention heads = {} exceeds the CUDA grid limit of {MAX_GRID_Y}",
            s.heads
        )));
    }
    variant(s.head_dim)?;
    Ok(rows)
}

/// The work table of a launch: for every tile of `tile` rows of every non-empty sequence, the
/// triple (sequence start, sequence length, tile offset in the sequence). Tiles are ordered by
/// decreasing `work(len, offset)` so that the longest blocks start first and the short ones fill
/// the tail of the grid (causal tiles differ in cost by up to the sequence length).
fn work_table(seqs: &[Span], tile: usize, work: impl Fn(usize, usize) -> usize) -> Vec<i32> {
    let work = &work;
    let mut tiles: Vec<(usize, [i32; 3])> = seqs
        .iter()
        .filter(|sp| sp.len > 0)
        .flat_map(|sp| {
            // `check` bounded every span end by i32::MAX, so the casts are exact.
            (0..sp.len).step_by(tile).map(move |t0| {
                (
                    work(sp.len, t0),
                    [sp.start as i32, sp.len as i32, t0 as i32],
                )
            })
        })
        .collect();
    tiles.sort_by_key(|t| std::cmp::Reverse(t.0));
    tiles.into_iter().flat_map(|t| t.1).collect()
}

/// The work table of query tiles of `tile` rows: a causal tile sees the keys up to its end.
pub(super) fn query_tiles(seqs: &[Span], tile: usize, causal: bool) -> Vec<i32> {
    work_table(
        seqs,
        tile,
        |len, t0| {
            if causal {
                len.min(t0 + tile)
            } else {
                len
            }
        },
    )
}

/// The work table of key tiles of `tile` rows: a causal tile is seen by the queries from its
/// first key on.
pub(super) fn key_tiles(seqs: &[Span], tile: usize, causal: bool) -> Vec<i32> {
    work_table(seqs, tile, |len, k0| if causal { len - k0 } else { len })
}

/// The kernels' `window` argument: the sliding window in keys, 0 for none. A window needs causal
/// attention (the tiles are the causal ones) and fits an i32.
fn window_arg(shape: AttnShape) -> Result<i32> {
    match shape.window {
        None => Ok(0),
        Some(w) if shape.causal && w > 0 => Ok(i32::try_from(w).unwrap_or(i32::MAX)),
        Some(w) => Err(Error::Backend(format!(
            "attention: a sliding window ({w} keys) needs causal attention and at least one key"
        ))),
    }
}

pub(super) fn tile_cfg(tiles: usize, y: usize, shared_bytes: u32) -> Result<LaunchCfg> {
    let x = u32::try_from(tiles)
        .map_err(|_| Error::Backend(format!("attention: {tiles} tiles exceed the CUDA grid")))?;
    Ok(LaunchCfg {
        grid: (x, y as u32, 1),
        block: (THREADS, 1, 1),
        shared_bytes,
    })
}

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
) -> Result<()> {
    let rows = check(shape, seqs, &[q, o], &[k, v], lse)?;
    if rows == 0 || shape.heads == 0 {
        return Ok(());
    }
    if shape.bf16 {
        return super::attn_flash::forward(be, o, lse, q, k, v, seqs, shape, rows);
    }
    let hd = shape.head_dim;
    let var = variant(hd)?;
    let (bm, bn) = var.fwd_tile;
    let causal = shape.causal;
    let table = query_tiles(seqs, bm, causal);
    let tiles = table.len() / 3;
    if tiles == 0 {
        return Ok(());
    }
    let meta = be.upload_pod(&table)?;
    let cfg = tile_cfg(tiles, shape.heads, smem_bytes(bm + bn, hd, bm, bn)?)?;
    // SAFETY: `check` verified q and o for rows·heads·hd, k and v for rows·kv_heads·hd and
    // lse for rows·heads elements (rows = end of the last span, the bounds that make those
    // products exact); every tile of `meta` lies inside one span, the grid's y covers `heads`,
    // and `smem_bytes` is the dynamic shared memory the variant carves for these tiles.
    unsafe {
        be.launch(
            var.fwd,
            cfg,
            &[
                o.arg(),
                lse.arg(),
                q.arg(),
                k.arg(),
                v.arg(),
                meta.arg(),
                KArg::I32(shape.heads as i32),
                KArg::I32(shape.kv_heads as i32),
                KArg::I32(hd as i32),
                KArg::I32(causal as i32),
                KArg::I32(window_arg(shape)?),
                KArg::F32(shape.scale),
            ],
        )
    }?;
    drop(meta);
    Ok(())
}

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
) -> Result<()> {
    let rows = check(shape, seqs, &[q, o, do_, dq], &[k, v, dk, dv], lse)?;
    let hd = shape.head_dim;
    // With hd = 0 the gradients have no elements.
    if rows == 0 || shape.heads == 0 || hd == 0 {
        return Ok(());
    }
    if shape.bf16 {
        return super::attn_flash::backward(
            be, dq, dk, dv, do_, q, k, v, o, lse, seqs, shape, rows,
        );
    }
    let var = variant(hd)?;
    let causal = shape.causal;
    let (hq, hk) = (shape.heads as i32, shape.kv_heads as i32);

    let (bm, bn) = var.dq_tile;
    let dq_table = query_tiles(seqs, bm, causal);
    let (bk, bq) = var.dkdv_tile;
    let dkdv_table = key_tiles(seqs, bk, causal);
    let dq_tiles = dq_table.len() / 3;
    let dkdv_tiles = dkdv_table.len() / 3;
    if dq_tiles == 0 {
        return Ok(());
    }

    // D = rowsum(dO ∘ O) per (row, head): written by the dQ kernel, read by the dK/dV kernel.
    let dsum = be.alloc_bytes(rows * shape.heads * 4)?;
    let tail = [
        KArg::I32(hq),
        KArg::I32(hk),
        KArg::I32(hd as i32),
        KArg::I32(causal as i32),
        KArg::I32(window_arg(shape)?),
        KArg::F32(shape.scale),
    ];
    let dq_meta = be.upload_pod(&dq_table)?;
    let dkdv_meta = be.upload_pod(&dkdv_table)?;

    let mut args = vec![
        dq.arg(),
        dsum.arg(),
        o.arg(),
        do_.arg(),
        q.arg(),
        k.arg(),
        v.arg(),
        lse.arg(),
        dq_meta.arg(),
    ];
    args.extend_from_slice(&tail);
    // SAFETY: as in `forward`: `check` verified q, o, do and dq for rows·heads·hd elements, k,
    // v for rows·kv_heads·hd and lse for rows·heads; `dsum` holds rows·heads f32; the tiles of
    // `dq_meta` lie inside the spans; shared memory is what the dQ variant carves.
    unsafe {
        be.launch(
            var.dq,
            tile_cfg(dq_tiles, shape.heads, smem_bytes(2 * bm + bn, hd, bm, bn)?)?,
            &args,
        )
    }?;

    let mut args = vec![
        dk.arg(),
        dv.arg(),
        dsum.arg(),
        do_.arg(),
        q.arg(),
        k.arg(),
        v.arg(),
        lse.arg(),
        dkdv_meta.arg(),
    ];
    args.extend_from_slice(&tail);
    // SAFETY: as above, with dk and dv checked for rows·kv_heads·hd elements, the grid's y
    // covering kv_heads, and `dkdv_meta` tiles (key tiles) inside the spans.
    unsafe {
        be.launch(
            var.dkdv,
            tile_cfg(
                dkdv_tiles,
                shape.kv_heads,
                smem_bytes(2 * bk + 2 * bq, hd, 2 * bk, bq)?,
            )?,
            &args,
        )
    }?;
    // The scratch and tables live until every launch reading them has been issued.
    drop((dsum, dq_meta, dkdv_meta));
    Ok(())
}
