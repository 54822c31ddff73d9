//! Multi-head (and grouped-query) attention over packed variable-length sequences, on the CPU.
//!
//! Layout: `q, o: [rows, heads·hd]`, `k, v: [rows, kv_heads·hd]`, `lse: [rows, heads]`, row-major
//! and packed (the sequences' rows one after another, see [`Span`]). Query head `h` reads kv head
//! `h / (heads / kv_heads)`. A token attends only to the rows of its own sequence, and with
//! `causal` only to those at or before it.
//!
//! # Algorithm
//!
//! Forward runs one rayon task per `(sequence, head)`. A task walks its queries in tiles of at
//! most `TILE` = 64 rows; for a tile it computes the scaled scores `S = scale · Q Kᵀ` against the
//! keys the tile can see (all of the sequence, or with `causal` the keys up to the tile's last
//! query), a row-max-shifted softmax `P`, and `O = P V`, which is written straight into `o`. The
//! per-row log-sum-exp of the scaled scores goes to `lse` so the backward can rebuild `P`.
//!
//! Backward runs one task per `(sequence, kv head)`, so that the query heads sharing a kv head are
//! summed into `dK`/`dV` by a single thread in a fixed order: the result is deterministic and needs
//! no atomics. For each query head of the group and each query tile it recomputes
//! `P = exp(S − lse)`, then with `D_i = Σ_c dO_ic O_ic`:
//! `dP = dO Vᵀ`, `dS = P ∘ (dP − D)`, `dQ = scale · dS K` (written), `dK += scale · dSᵀ Q` and
//! `dV += Pᵀ dO` (accumulated over tiles and heads into columns the task zeroed first).
//!
//! All products go through `small_gemm::mm` with the row/column strides of the interleaved layouts,
//! so head slices of `Q`, `O` and their gradients are never copied. Its kernel needs the right
//! operand's rows contiguous, so each task first copies its `K` (and in the backward `V`) head
//! slice transposed, `hd × len`: `Q Kᵀ` and `dO Vᵀ` then read `Kᵀ`/`Vᵀ` rows. The copy is `len·hd`
//! values against the `len²·hd` multiply-adds of each product that reads it.
//!
//! # Memory
//!
//! Nothing of size `T×T` is ever materialised: each worker thread holds one (forward) or two
//! (backward) scratch tiles of `TILE × len` floats, `len` being the longest sequence, and one
//! (forward) or two (backward) transposed head slices of `hd × len`, i.e. `O((TILE + hd) · len)`
//! per thread (for an 8192-token sequence and `hd` = 64: 4 MiB in the forward, 8 MiB in the
//! backward).

use super::math::exp;
use super::small_gemm::mm;
use crate::backend::{AttnShape, Span};
use rayon::prelude::*;

/// Query rows processed together; bounds the score scratch to `TILE × seq_len` floats.
const TILE: usize = 64;

/// A raw pointer that rayon tasks may share. Each task writes only through offsets that no other
/// task touches (see the `SAFETY` comments at the uses), which is what makes sharing it sound.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);

// SAFETY: the pointer is only dereferenced at offsets that are disjoint between tasks (each task
// owns a distinct set of (row, column) cells of the output) and the pointee outlives the parallel
// region, which is joined before the borrowed output slice is used again.
unsafe impl Send for SharedMut {}
// SAFETY: as above; no two threads ever access the same element.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the `Send + Sync` wrapper, not the raw field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Maximum of a non-empty row, with 8 independent lanes so the loop vectorises.
#[inline(always)]
fn row_max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    acc.iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// Sum of a row, with 8 independent accumulators so the loop vectorises.
#[inline(always)]
fn row_sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// Checks the buffer sizes and that the spans do not overlap (which the disjoint-write argument of
/// the parallel tasks relies on, so these are hard assertions). Returns the rows the spans cover.
fn check(seqs: &[Span], s: AttnShape, bufs: &[(&str, usize, usize)]) -> usize {
    assert!(
        s.heads > 0 && s.kv_heads > 0 && s.heads.is_multiple_of(s.kv_heads),
        "attention: heads ({}) must be a positive multiple of kv_heads ({})",
        s.heads,
        s.kv_heads
    );
    let mut sorted: Vec<Span> = seqs.iter().copied().filter(|sp| sp.len > 0).collect();
    sorted.sort_by_key(|sp| sp.start);
    for w in sorted.windows(2) {
        assert!(
            w[0].end() <= w[1].start,
            "attention: spans {:?} and {:?} overlap",
            w[0],
            w[1]
        );
    }
    let rows = sorted.iter().map(Span::end).max().unwrap_or(0);
    for &(name, len, width) in bufs {
        assert!(
            len >= rows * width,
            "attention: buffer {name} has {len} elements, needs {rows}x{width}"
        );
    }
    rows
}

/// The number of keys before a sliding window ending at query `i`; their scores become −∞ (so
/// the row's maximum ignores them) and the caller zeroes their probabilities (and, in the
/// backward, their score gradients) once the row is done. The products still run over the whole
/// causal prefix: simpler, and for the sequence lengths trained here not much more work.
fn mask_before_window(row: &mut [f32], window: Option<usize>, i: usize) -> usize {
    let lo = window.map_or(0, |w| (i + 1).saturating_sub(w).min(row.len()));
    row[..lo].fill(f32::NEG_INFINITY);
    lo
}

/// Turns the scaled scores `row[..valid]` into probabilities (max-shifted softmax), zeroes the
/// masked rest, and returns the row's log-sum-exp. Compiled for AVX-512 / AVX2 at run time: the
/// exponentials are most of the non-product work of attention.
fn softmax_row(row: &mut [f32], valid: usize) -> f32 {
    dispatch!(|row: &mut [f32], valid: usize| -> f32 {
        let (seen, masked) = row.split_at_mut(valid);
        let max = row_max(seen);
        seen.iter_mut().for_each(|x| *x = exp(*x - max));
        let sum = row_sum(seen);
        let inv = 1.0 / sum;
        seen.iter_mut().for_each(|x| *x *= inv);
        masked.fill(0.0);
        max + sum.ln()
    })
}

/// Backward of one score row: `p = exp(s − lse)` over `p[..valid]` (from the scores), and
/// `ds = p ∘ (dp − d)` over `ds[..valid]` (from `dp`); both zero past `valid`. Compiled for
/// AVX-512 / AVX2 at run time, as [`softmax_row`].
fn probs_and_score_grads(p: &mut [f32], ds: &mut [f32], valid: usize, lse: f32, d: f32) {
    dispatch!(
        |p: &mut [f32], ds: &mut [f32], valid: usize, lse: f32, d: f32| {
            let (p_seen, p_masked) = p.split_at_mut(valid);
            let (ds_seen, ds_masked) = ds.split_at_mut(valid);
            for (pv, dsv) in p_seen.iter_mut().zip(ds_seen.iter_mut()) {
                *pv = exp(*pv - lse);
                *dsv = *pv * (*dsv - d);
            }
            p_masked.fill(0.0);
            ds_masked.fill(0.0);
        }
    )
}

/// Asks for the `len × hd` head slice of a `[rows, width]` matrix starting at element `start` to
/// be brought into L2. A task's slices are `hd` values out of each `width`-value row, so the
/// hardware prefetchers do not follow them, and reading them on demand left one or two cache
/// misses in flight at a time (docs/performance.md, fifth pass); prefetches for all rows up
/// front overlap them.
fn prefetch_slice(src: &[f32], start: usize, width: usize, len: usize, hd: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let base = src.as_ptr().wrapping_add(start);
        for r in 0..len {
            for c in (0..hd).step_by(16) {
                // SAFETY: a prefetch never faults and reads nothing architecturally; the address
                // is computed with `wrapping_add`, so no out-of-bounds pointer is formed either.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(base.wrapping_add(r * width + c).cast()) };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (src, start, width, len, hd);
}

/// Copies the `len × hd` head slice of a `[rows, width]` matrix starting at element `start` into
/// `dst` transposed (`hd × len`, row stride `len`), growing `dst` as needed. With AVX-512F it
/// gathers a column of 16 rows per instruction: the scalar copy's scattered stores made it a
/// sixth of the forward's time (docs/performance.md, fifth pass).
fn transpose_into(
    dst: &mut Vec<f32>,
    src: &[f32],
    start: usize,
    width: usize,
    len: usize,
    hd: usize,
) {
    if dst.len() < hd * len {
        dst.resize(hd * len, 0.0);
    }
    if len == 0 || hd == 0 {
        return;
    }
    assert!(
        hd <= width && start + (len - 1) * width + hd <= src.len(),
        "attention: head slice out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && 16 * width <= i32::MAX as usize {
        // SAFETY: AVX-512F detected; the slice's elements are in bounds (asserted above), the
        // gathers read only rows < len under their mask, and dst holds hd·len values.
        unsafe { transpose_gather(dst.as_mut_ptr(), src.as_ptr().add(start), width, len, hd) };
        return;
    }
    for (r, row) in src[start..].chunks(width).take(len).enumerate() {
        for (c, &x) in row[..hd].iter().enumerate() {
            dst[c * len + r] = x;
        }
    }
}

/// [`transpose_into`]'s AVX-512F path.
///
/// # Safety
/// AVX-512F; `src + r·width + c` readable for `r < len`, `c < hd`; `dst` holds `hd·len` values;
/// `16·width` fits an `i32`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_gather(dst: *mut f32, src: *const f32, width: usize, len: usize, hd: usize) {
    use core::arch::x86_64::*;
    let w = width as i32;
    let idx = _mm512_setr_epi32(
        0,
        w,
        2 * w,
        3 * w,
        4 * w,
        5 * w,
        6 * w,
        7 * w,
        8 * w,
        9 * w,
        10 * w,
        11 * w,
        12 * w,
        13 * w,
        14 * w,
        15 * w,
    );
    for r0 in (0..len).step_by(16) {
        let mask = super::packed::mask16(len - r0);
        let rows = src.add(r0 * width);
        for c in 0..hd {
            let col =
                _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, idx, rows.add(c).cast());
            _mm512_mask_storeu_ps(dst.add(c * len + r0), mask, col);
        }
    }
}

/// Attention forward. `q: [rows, heads·hd]`, `k, v: [rows, kv_heads·hd]`; writes
/// `o: [rows, heads·hd]` and `lse: [rows, heads]` (the log-sum-exp of the scaled scores) for the
/// rows covered by `seqs`, leaving the other rows untouched.
pub(crate) fn forward(
    o: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqs: &[Span],
    s: AttnShape,
) {
    let hd = s.head_dim;
    let qs = s.heads * hd;
    let kvs = s.kv_heads * hd;
    check(
        seqs,
        s,
        &[
            ("o", o.len(), qs),
            ("lse", lse.len(), s.heads),
            ("q", q.len(), qs),
            ("k", k.len(), kvs),
            ("v", v.len(), kvs),
        ],
    );
    // bf16 operands (AttnShape::bf16): rounded copies of the inputs.
    let rounded: [Vec<f32>; 3];
    let (q, k, v) = if s.bf16 {
        rounded = [bf16_copy(q), bf16_copy(k), bf16_copy(v)];
        (&rounded[0][..], &rounded[1][..], &rounded[2][..])
    } else {
        (q, k, v)
    };
    let group = s.heads / s.kv_heads;
    let mut tasks: Vec<(Span, usize)> = seqs
        .iter()
        .filter(|sp| sp.len > 0)
        .flat_map(|&sp| (0..s.heads).map(move |h| (sp, h)))
        .collect();
    // Longest first, so the long tasks do not end up alone at the tail.
    tasks.sort_by_key(|t| std::cmp::Reverse(t.0.len));

    let o_ptr = SharedMut(o.as_mut_ptr());
    let lse_ptr = SharedMut(lse.as_mut_ptr());
    tasks.par_iter().for_each_init(
        || (Vec::<f32>::new(), Vec::<f32>::new()),
        |(scratch, kt), &(sp, h)| {
            let kvh = h / group;
            let l = sp.len;
            let need = TILE.min(l) * l;
            if scratch.len() < need {
                scratch.resize(need, 0.0);
            }
            let q0 = sp.start * qs + h * hd;
            let kv0 = sp.start * kvs + kvh * hd;
            prefetch_slice(q, q0, qs, l, hd);
            prefetch_slice(k, kv0, kvs, l, hd);
            prefetch_slice(v, kv0, kvs, l, hd);
            transpose_into(kt, k, kv0, kvs, l, hd);
            for i0 in (0..l).step_by(TILE) {
                let i1 = (i0 + TILE).min(l);
                let tr = i1 - i0;
                let nk = if s.causal { i1 } else { l };
                let p = &mut scratch[..tr * nk];
                // S = scale · Q_tile Kᵀ.
                // SAFETY: `check` guaranteed q holds every row of the span, so the tile's
                // `tr × hd` block of q (row stride qs, starting at row start+i0, column h·hd) is
                // in bounds; `kt` holds `hd × l` values (row stride l) of which the product reads
                // the first nk ≤ l columns; `p` is this task's own scratch, of exactly `tr·nk`
                // elements.
                unsafe {
                    mm(
                        tr,
                        nk,
                        hd,
                        p.as_mut_ptr(),
                        nk,
                        1,
                        q.as_ptr().add(q0 + i0 * qs),
                        qs,
                        1,
                        kt.as_ptr(),
                        l,
                        1,
                        s.scale,
                        false,
                    );
                }
                for (r, row) in p.chunks_exact_mut(nk).enumerate() {
                    let valid = if s.causal { i0 + r + 1 } else { nk };
                    let lo = mask_before_window(row, s.window, i0 + r);
                    let row_lse = softmax_row(row, valid);
                    row[..lo].fill(0.0);
                    let idx = (sp.start + i0 + r) * s.heads + h;
                    // SAFETY: `idx` is inside lse (checked by `check`), and lse[(row, h)] for the
                    // rows of this span is written only by this (span, head) task: spans do not
                    // overlap and each head is a different task.
                    unsafe { *lse_ptr.get().add(idx) = row_lse };
                    if s.bf16 {
                        round_bf16(row);
                    }
                }
                // O_tile = P V, written straight into o.
                // SAFETY: the `tr × hd` block of o at rows start+i0.., columns h·hd.. is in bounds
                // (checked) and belongs to this (span, head) task alone — other tasks write other
                // rows or other column blocks — so no other thread touches it; it cannot alias the
                // inputs (o is a distinct `&mut`). The v block is in bounds as for k above.
                unsafe {
                    mm(
                        tr,
                        hd,
                        nk,
                        o_ptr.get().add(q0 + i0 * qs),
                        qs,
                        1,
                        p.as_ptr(),
                        nk,
                        1,
                        v.as_ptr().add(kv0),
                        kvs,
                        1,
                        1.0,
                        false,
                    );
                }
            }
        },
    );
}

/// `x` rounded to bf16 (nearest even), as f32.
fn bf16_copy(x: &[f32]) -> Vec<f32> {
    let mut out = x.to_vec();
    round_bf16(&mut out);
    out
}

/// Rounds every value to bf16 (nearest even) in place: the operand rounding of the tensor-core
/// kernels (AttnShape::bf16).
fn round_bf16(x: &mut [f32]) {
    for v in x {
        *v = half::bf16::from_f32(*v).to_f32();
    }
}

/// Attention backward: overwrites `dq: [rows, heads·hd]`, `dk, dv: [rows, kv_heads·hd]` for the
/// rows covered by `seqs` (other rows are left untouched), recomputing the probabilities from the
/// forward's `lse`. Deterministic: the query heads sharing a kv head are summed in a fixed order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    do_: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    seqs: &[Span],
    s: AttnShape,
) {
    let hd = s.head_dim;
    let qs = s.heads * hd;
    let kvs = s.kv_heads * hd;
    check(
        seqs,
        s,
        &[
            ("dq", dq.len(), qs),
            ("dk", dk.len(), kvs),
            ("dv", dv.len(), kvs),
            ("do", do_.len(), qs),
            ("q", q.len(), qs),
            ("k", k.len(), kvs),
            ("v", v.len(), kvs),
            ("o", o.len(), qs),
            ("lse", lse.len(), s.heads),
        ],
    );
    let rounded: [Vec<f32>; 4];
    let (q, k, v, do_) = if s.bf16 {
        rounded = [bf16_copy(q), bf16_copy(k), bf16_copy(v), bf16_copy(do_)];
        (
            &rounded[0][..],
            &rounded[1][..],
            &rounded[2][..],
            &rounded[3][..],
        )
    } else {
        (q, k, v, do_)
    };
    let group = s.heads / s.kv_heads;
    let mut tasks: Vec<(Span, usize)> = seqs
        .iter()
        .filter(|sp| sp.len > 0)
        .flat_map(|&sp| (0..s.kv_heads).map(move |g| (sp, g)))
        .collect();
    tasks.sort_by_key(|t| std::cmp::Reverse(t.0.len));

    let dq_ptr = SharedMut(dq.as_mut_ptr());
    let dk_ptr = SharedMut(dk.as_mut_ptr());
    let dv_ptr = SharedMut(dv.as_mut_ptr());
    tasks.par_iter().for_each_init(
        || {
            (
                Vec::<f32>::new(),
                Vec::<f32>::new(),
                Vec::<f32>::new(),
                Vec::<f32>::new(),
            )
        },
        |(p_buf, ds_buf, kt, vt), &(sp, kvh)| {
            let l = sp.len;
            let kv0 = sp.start * kvs + kvh * hd;
            prefetch_slice(k, kv0, kvs, l, hd);
            prefetch_slice(v, kv0, kvs, l, hd);
            for h in kvh * group..(kvh + 1) * group {
                let q0 = sp.start * qs + h * hd;
                prefetch_slice(q, q0, qs, l, hd);
                prefetch_slice(do_, q0, qs, l, hd);
            }
            transpose_into(kt, k, kv0, kvs, l, hd);
            transpose_into(vt, v, kv0, kvs, l, hd);
            let need = TILE.min(l) * l;
            if p_buf.len() < need {
                p_buf.resize(need, 0.0);
                ds_buf.resize(need, 0.0);
            }
            // The first tile's dK/dV products overwrite rows 0..nk of this task's block and the
            // later tiles accumulate; only rows no first tile reaches (a causal span longer
            // than a tile) are zeroed here. (Zeroing the whole block row by row cost ~5% of a
            // training step in memset calls of 128 bytes.)
            let first_nk = if s.causal { TILE.min(l) } else { l };
            for r in first_nk..l {
                let idx = kv0 + r * kvs;
                // SAFETY: idx..idx+hd is in bounds (checked); the (rows of this span) × (columns
                // of kv head kvh) block of dk/dv is owned by this task alone.
                unsafe {
                    std::ptr::write_bytes(dk_ptr.get().add(idx), 0, hd);
                    std::ptr::write_bytes(dv_ptr.get().add(idx), 0, hd);
                }
            }
            for h in kvh * group..(kvh + 1) * group {
                let q0 = sp.start * qs + h * hd;
                for i0 in (0..l).step_by(TILE) {
                    let first = h == kvh * group && i0 == 0;
                    let i1 = (i0 + TILE).min(l);
                    let tr = i1 - i0;
                    let nk = if s.causal { i1 } else { l };
                    let p = &mut p_buf[..tr * nk];
                    let ds = &mut ds_buf[..tr * nk];
                    let qt = q0 + i0 * qs;
                    // S = scale · Q_tile Kᵀ and dP = dO_tile Vᵀ.
                    // SAFETY: q/do_ tile blocks (`tr × hd`, row stride qs) lie inside the span's
                    // rows, which `check` bounded; `kt`/`vt` hold `hd × l` values (row stride
                    // l), of which the products read the first nk ≤ l columns; `p` and `ds` are
                    // this task's own scratch of `tr·nk` elements.
                    unsafe {
                        mm(
                            tr,
                            nk,
                            hd,
                            p.as_mut_ptr(),
                            nk,
                            1,
                            q.as_ptr().add(qt),
                            qs,
                            1,
                            kt.as_ptr(),
                            l,
                            1,
                            s.scale,
                            false,
                        );
                        mm(
                            tr,
                            nk,
                            hd,
                            ds.as_mut_ptr(),
                            nk,
                            1,
                            do_.as_ptr().add(qt),
                            qs,
                            1,
                            vt.as_ptr(),
                            l,
                            1,
                            1.0,
                            false,
                        );
                    }
                    // P = exp(S − lse) (0 where masked), dS = P ∘ (dP − D).
                    for (r, (prow, dsrow)) in p
                        .chunks_exact_mut(nk)
                        .zip(ds.chunks_exact_mut(nk))
                        .enumerate()
                    {
                        let valid = if s.causal { i0 + r + 1 } else { nk };
                        let lo = mask_before_window(prow, s.window, i0 + r);
                        let row = sp.start + i0 + r;
                        let m = lse[row * s.heads + h];
                        let off = row * qs + h * hd;
                        let d = do_[off..off + hd]
                            .iter()
                            .zip(&o[off..off + hd])
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum::<f64>() as f32;
                        probs_and_score_grads(prow, dsrow, valid, m, d);
                        prow[..lo].fill(0.0);
                        dsrow[..lo].fill(0.0);
                        if s.bf16 {
                            round_bf16(prow);
                            round_bf16(dsrow);
                        }
                    }
                    // SAFETY (all three products): the dq tile block (rows start+i0..start+i1,
                    // columns of head h) and the dk/dv blocks (rows start..start+nk, columns of
                    // kv head kvh) are in bounds (checked) and written only by this task: other
                    // tasks own other spans' rows or other kv heads' columns, and the query head
                    // h belongs to kvh's group only. The outputs are distinct `&mut` slices, so
                    // they cannot alias the inputs or the scratch.
                    unsafe {
                        // dQ_tile = scale · dS K.
                        mm(
                            tr,
                            hd,
                            nk,
                            dq_ptr.get().add(qt),
                            qs,
                            1,
                            ds.as_ptr(),
                            nk,
                            1,
                            k.as_ptr().add(kv0),
                            kvs,
                            1,
                            s.scale,
                            false,
                        );
                        // dK += scale · dSᵀ Q_tile.
                        mm(
                            nk,
                            hd,
                            tr,
                            dk_ptr.get().add(kv0),
                            kvs,
                            1,
                            ds.as_ptr(),
                            1,
                            nk,
                            q.as_ptr().add(qt),
                            qs,
                            1,
                            s.scale,
                            !first,
                        );
                        // dV += Pᵀ dO_tile.
                        mm(
                            nk,
                            hd,
                            tr,
                            dv_ptr.get().add(kv0),
                            kvs,
                            1,
                            p.as_ptr(),
                            1,
                            nk,
                            do_.as_ptr().add(qt),
                            qs,
                            1,
                            1.0,
                            !first,
                        );
                    }
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64 → uniform in [-1, 1].
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn uniform(&mut self) -> f32 {
            ((self.next_u64() >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        }
        fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
            (0..n).map(|_| amp * self.uniform()).collect()
        }
    }

    fn sp(start: usize, len: usize) -> Span {
        Span { start, len }
    }

    fn shape(heads: usize, kv_heads: usize, head_dim: usize, causal: bool) -> AttnShape {
        AttnShape {
            heads,
            kv_heads,
            head_dim,
            causal,
            window: None,
            scale: 1.0 / (head_dim as f32).sqrt(),
            bf16: false,
        }
    }

    /// Inputs of one test case.
    struct Case {
        s: AttnShape,
        seqs: Vec<Span>,
        rows: usize,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
    }

    impl Case {
        fn new(s: AttnShape, seqs: &[Span], seed: u64, amp: f32) -> Case {
            let rows = seqs.iter().map(|x| x.start + x.len).max().unwrap_or(0);
            let mut rng = Rng(seed);
            Case {
                s,
                seqs: seqs.to_vec(),
                rows,
                q: rng.vec(rows * s.heads * s.head_dim, amp),
                k: rng.vec(rows * s.kv_heads * s.head_dim, amp),
                v: rng.vec(rows * s.kv_heads * s.head_dim, 1.0),
            }
        }

        // Outputs start as NaN: every covered element must be overwritten, never read.
        fn forward(&self) -> (Vec<f32>, Vec<f32>) {
            let mut o = vec![f32::NAN; self.rows * self.s.heads * self.s.head_dim];
            let mut lse = vec![f32::NAN; self.rows * self.s.heads];
            forward(
                &mut o, &mut lse, &self.q, &self.k, &self.v, &self.seqs, self.s,
            );
            (o, lse)
        }

        fn backward(&self, o: &[f32], lse: &[f32], do_: &[f32]) -> [Vec<f32>; 3] {
            let hd = self.s.head_dim;
            let mut dq = vec![f32::NAN; self.rows * self.s.heads * hd];
            let mut dk = vec![f32::NAN; self.rows * self.s.kv_heads * hd];
            let mut dv = vec![f32::NAN; self.rows * self.s.kv_heads * hd];
            backward(
                &mut dq, &mut dk, &mut dv, do_, &self.q, &self.k, &self.v, o, lse, &self.seqs,
                self.s,
            );
            [dq, dk, dv]
        }
    }

    /// A product operand as the shape says: rounded to bf16 (nearest even) under `bf16`.
    fn operand(s: AttnShape, x: f64) -> f64 {
        if s.bf16 {
            half::bf16::from_f64(x).to_f64()
        } else {
            x
        }
    }

    /// Naive f64 reference over the whole packed batch: per head, the full `rows × rows` score
    /// matrix with a mask "same sequence (and key not after query when causal)".
    /// Returns (o, lse, probabilities per head) — p[h][i][j].
    // Plain index loops on purpose: the reference should read like the formulas.
    #[allow(clippy::type_complexity, clippy::needless_range_loop)]
    fn naive_forward(c: &Case) -> (Vec<f64>, Vec<f64>, Vec<Vec<Vec<f64>>>) {
        let (n, hq, hk, d) = (c.rows, c.s.heads, c.s.kv_heads, c.s.head_dim);
        let r = |x: f32| operand(c.s, x as f64);
        let mut seq_of = vec![usize::MAX; n];
        for (id, x) in c.seqs.iter().enumerate() {
            seq_of[x.start..x.start + x.len].fill(id);
        }
        // Within a sequence, a row index difference is a position difference.
        let sees = |i: usize, j: usize| {
            seq_of[i] != usize::MAX
                && seq_of[i] == seq_of[j]
                && (!c.s.causal || j <= i)
                && c.s.window.is_none_or(|w| i < j + w)
        };
        // Rows outside every span stay NaN, as the (NaN-initialised) outputs under test must.
        let mut o = vec![f64::NAN; n * hq * d];
        let mut lse = vec![f64::NAN; n * hq];
        let mut probs = vec![vec![vec![0.0f64; n]; n]; hq];
        for h in 0..hq {
            let g = h / (hq / hk);
            let mut sc = vec![vec![f64::NEG_INFINITY; n]; n];
            for i in 0..n {
                for j in 0..n {
                    if sees(i, j) {
                        let mut dot = 0.0;
                        for t in 0..d {
                            dot += r(c.q[i * hq * d + h * d + t]) * r(c.k[j * hk * d + g * d + t]);
                        }
                        sc[i][j] = c.s.scale as f64 * dot;
                    }
                }
            }
            for i in 0..n {
                if seq_of[i] == usize::MAX {
                    continue;
                }
                let mx = sc[i].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc[i].iter().map(|x| (x - mx).exp()).sum();
                lse[i * hq + h] = mx + z.ln();
                for j in 0..n {
                    probs[h][i][j] = (sc[i][j] - mx).exp() / z;
                }
                for t in 0..d {
                    let mut acc = 0.0;
                    for j in 0..n {
                        acc += operand(c.s, probs[h][i][j]) * r(c.v[j * hk * d + g * d + t]);
                    }
                    o[i * hq * d + h * d + t] = acc;
                }
            }
        }
        (o, lse, probs)
    }

    /// Naive f64 backward from the formula, using the reference probabilities and output.
    fn naive_backward(c: &Case, do_: &[f32]) -> [Vec<f64>; 3] {
        let (n, hq, hk, d) = (c.rows, c.s.heads, c.s.kv_heads, c.s.head_dim);
        let r = |x: f32| operand(c.s, x as f64);
        let sc = c.s.scale as f64;
        let (o, _, probs) = naive_forward(c);
        let mut dq = vec![0.0f64; n * hq * d];
        let mut dk = vec![0.0f64; n * hk * d];
        let mut dv = vec![0.0f64; n * hk * d];
        let qi = |i: usize, h: usize, t: usize| i * hq * d + h * d + t;
        let ki = |j: usize, g: usize, t: usize| j * hk * d + g * d + t;
        for h in 0..hq {
            let g = h / (hq / hk);
            let p = &probs[h];
            for i in 0..n {
                let dd: f64 = (0..d).map(|t| r(do_[qi(i, h, t)]) * o[qi(i, h, t)]).sum();
                for j in 0..n {
                    if p[i][j] == 0.0 {
                        continue;
                    }
                    let dp: f64 = (0..d)
                        .map(|t| r(do_[qi(i, h, t)]) * r(c.v[ki(j, g, t)]))
                        .sum();
                    // With bf16 operands, P and dS are rounded where they enter a product.
                    let ds = operand(c.s, p[i][j] * (dp - dd));
                    let pj = operand(c.s, p[i][j]);
                    for t in 0..d {
                        dq[qi(i, h, t)] += sc * ds * r(c.k[ki(j, g, t)]);
                        dk[ki(j, g, t)] += sc * ds * r(c.q[qi(i, h, t)]);
                        dv[ki(j, g, t)] += pj * r(do_[qi(i, h, t)]);
                    }
                }
            }
        }
        let covered = |r: usize| c.seqs.iter().any(|x| r >= x.start && r < x.start + x.len);
        for r in (0..n).filter(|&r| !covered(r)) {
            dq[r * hq * d..(r + 1) * hq * d].fill(f64::NAN);
            dk[r * hk * d..(r + 1) * hk * d].fill(f64::NAN);
            dv[r * hk * d..(r + 1) * hk * d].fill(f64::NAN);
        }
        [dq, dk, dv]
    }

    /// max |a − b| / max(1, |b|) over the elements; NaN in both counts as equal (rows no span
    /// covers), NaN in one only as an infinite error.
    fn max_rel_err(a: &[f32], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(&x, &y)| match (x.is_nan(), y.is_nan()) {
                (true, true) => 0.0,
                (false, false) => (x as f64 - y).abs() / y.abs().max(1.0),
                _ => f64::INFINITY,
            })
            .fold(0.0, f64::max)
    }

    fn configs() -> Vec<(AttnShape, Vec<Span>)> {
        let mut out = Vec::new();
        for causal in [true, false] {
            for (h, kvh) in [(4, 4), (4, 2), (4, 1)] {
                for hd in [8, 5] {
                    out.push((
                        shape(h, kvh, hd, causal),
                        vec![sp(0, 7), sp(7, 1), sp(8, 13)],
                    ));
                    out.push((shape(h, kvh, hd, causal), vec![sp(0, 70)]));
                }
            }
        }
        // Tile boundaries at 64 and 128, spans out of order, an uncovered row (3) and an empty
        // span, a scale other than 1/sqrt(hd).
        let mut s = shape(6, 2, 3, true);
        s.scale = 0.9;
        out.push((s, vec![sp(4, 130), sp(0, 3), sp(134, 0), sp(134, 2)]));
        s.causal = false;
        out.push((s, vec![sp(4, 130), sp(0, 3), sp(134, 2)]));
        // Sliding windows (Gemma 3's local layers): narrower than a tile, wider than a tile, of
        // one key, and wider than every span.
        for w in [9, 70, 1, 200] {
            let mut s = shape(4, 2, 8, true);
            s.window = Some(w);
            out.push((s, vec![sp(0, 130), sp(130, 5)]));
        }
        out
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0.0f64;
        let n = 200_000;
        for i in 0..=n {
            let x = -87.0 + 175.0 * i as f32 / n as f32;
            let want = (x as f64).exp();
            let e = (exp(x) as f64 - want).abs() / want;
            assert!(e < 3e-7, "exp({x}) = {}, want {want}", exp(x));
            worst = worst.max(e);
        }
        assert!(exp(-1000.0) >= 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
        eprintln!("exp max rel err {worst:e}");
    }

    #[test]
    fn forward_matches_naive_reference() {
        let mut worst = (0.0f64, 0.0f64);
        for (n, (s, seqs)) in configs().into_iter().enumerate() {
            let c = Case::new(s, &seqs, 100 + n as u64, 2.0);
            let (o, lse) = c.forward();
            let (ro, rlse, _) = naive_forward(&c);
            let eo = max_rel_err(&o, &ro);
            let el = max_rel_err(&lse, &rlse);
            assert!(
                eo < 1e-5 && el < 1e-5,
                "{s:?} {seqs:?}: o err {eo:e}, lse err {el:e}"
            );
            worst = (worst.0.max(eo), worst.1.max(el));
        }
        eprintln!("forward max rel err: o {:e}, lse {:e}", worst.0, worst.1);
    }

    #[test]
    fn forward_is_stable_for_large_scores() {
        // Scores in the hundreds: a softmax without the max shift would overflow to inf/NaN.
        for causal in [true, false] {
            let c = Case::new(shape(2, 1, 4, causal), &[sp(0, 9), sp(9, 67)], 7, 30.0);
            let (o, lse) = c.forward();
            let (ro, rlse, _) = naive_forward(&c);
            assert!(o.iter().chain(&lse).all(|x| x.is_finite()));
            assert!(
                rlse.iter().any(|&x| x > 100.0),
                "test does not reach large scores"
            );
            let eo = max_rel_err(&o, &ro);
            let el = max_rel_err(&lse, &rlse);
            // The inputs are f32: a score is a sum of terms of size ~|q||k|·scale ≈ 1e3, so its
            // rounding error is ~1e-4 whatever the softmax does; that bounds the agreement here.
            assert!(eo < 2e-4 && el < 2e-4, "o err {eo:e}, lse err {el:e}");
        }
    }

    #[test]
    fn backward_matches_naive_reference() {
        let mut worst = [0.0f64; 3];
        for (n, (s, seqs)) in configs().into_iter().enumerate() {
            let c = Case::new(s, &seqs, 200 + n as u64, 2.0);
            let (o, lse) = c.forward();
            let do_ = Rng(300 + n as u64).vec(o.len(), 1.0);
            let got = c.backward(&o, &lse, &do_);
            let want = naive_backward(&c, &do_);
            for (t, name) in ["dq", "dk", "dv"].iter().enumerate() {
                let e = max_rel_err(&got[t], &want[t]);
                assert!(e < 1e-4, "{s:?} {seqs:?}: {name} err {e:e}");
                worst[t] = worst[t].max(e);
            }
        }
        eprintln!(
            "backward max rel err: dq {:e}, dk {:e}, dv {:e}",
            worst[0], worst[1], worst[2]
        );
    }

    /// rms(a − b) / rms(b) over the covered elements (NaN in both): a bf16 rounding that lands on
    /// the other side of a tie in f32 than in f64 moves one element by 2^-8 of itself, which a
    /// maximum would report; the rms sees the systematic difference of a missing rounding point.
    fn rms_rel_err(a: &[f32], b: &[f64]) -> f64 {
        let (mut num, mut den) = (0.0, 0.0);
        for (&x, &y) in a.iter().zip(b) {
            assert_eq!(x.is_nan(), y.is_nan());
            if !y.is_nan() {
                num += (x as f64 - y).powi(2);
                den += y * y;
            }
        }
        (num / den.max(1e-300)).sqrt()
    }

    /// The bf16-operand mode (AttnShape::bf16) against the naive reference with the same rounding
    /// points, and against the reference without them: the first must be far closer. A rounding
    /// point the implementation misses, or adds, moves it to the second's distance.
    #[test]
    fn bf16_operands_round_where_the_tensor_cores_do() {
        let mut worst_same = [0.0f64; 5];
        let mut worst_other = [0.0f64; 5];
        for (n, (mut s, seqs)) in configs().into_iter().enumerate() {
            // A window of one key makes P = 1 and dS = P·(dP − dO·V) = 0: dQ and dK are zero up
            // to rounding, and relative errors against zero say nothing.
            if s.window == Some(1) {
                continue;
            }
            s.bf16 = true;
            let c = Case::new(s, &seqs, 400 + n as u64, 2.0);
            let (o, lse) = c.forward();
            let do_ = Rng(500 + n as u64).vec(o.len(), 1.0);
            let grads = c.backward(&o, &lse, &do_);
            let got: [&[f32]; 5] = [&o, &lse, &grads[0], &grads[1], &grads[2]];
            let (ro, rl, _) = naive_forward(&c);
            let rb = naive_backward(&c, &do_);
            let mut plain = Case::new(s, &seqs, 400 + n as u64, 2.0);
            plain.s.bf16 = false;
            for x in [&mut plain.q, &mut plain.k, &mut plain.v] {
                round_bf16(x);
            }
            let mut do16 = do_.clone();
            round_bf16(&mut do16);
            let (po, pl, _) = naive_forward(&plain);
            let pb = naive_backward(&plain, &do16);
            let same = [&ro, &rl, &rb[0], &rb[1], &rb[2]];
            let other = [&po, &pl, &pb[0], &pb[1], &pb[2]];
            for t in 0..5 {
                worst_same[t] = worst_same[t].max(rms_rel_err(got[t], same[t]));
                worst_other[t] = worst_other[t].max(rms_rel_err(got[t], other[t]));
            }
        }
        eprintln!(
            "bf16 mode vs reference with its rounding {worst_same:?}, without {worst_other:?}"
        );
        for t in 0..5 {
            assert!(worst_same[t] < 1.5e-3, "{t}: {worst_same:?}");
        }
        // o and the three gradients: P (and dS) rounding is visible; lse is computed before it.
        for t in [0, 2, 3, 4] {
            assert!(
                worst_other[t] > 3.0 * worst_same[t],
                "{t}: {worst_same:?} vs {worst_other:?}"
            );
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        // The forward is f32, so L carries rounding noise of ~1e-6; central differences divide it by
        // 2·eps. At eps = 1e-3 that noise alone is ~5e-4 of the O(1) directional derivatives; at
        // 5e-3 both the noise and the O(eps²) truncation error are ~1e-4 (measured), which leaves
        // the 1e-3 tolerance a margin of several times while any real gradient bug is O(1).
        let eps = 5e-3f32;
        let mut worst = 0.0f64;
        let cases = [
            (shape(4, 2, 5, true), vec![sp(0, 7), sp(7, 1), sp(8, 13)]),
            (shape(4, 1, 8, false), vec![sp(0, 7), sp(7, 1), sp(8, 13)]),
            (shape(2, 2, 8, true), vec![sp(0, 70)]),
            (shape(4, 2, 3, false), vec![sp(0, 70)]),
        ];
        for (n, (s, seqs)) in cases.into_iter().enumerate() {
            let mut c = Case::new(s, &seqs, 400 + n as u64, 2.0);
            let mut rng = Rng(500 + n as u64);
            let w = rng.vec(c.rows * s.heads * s.head_dim, 1.0);
            let loss = |c: &Case| -> f64 {
                let (o, _) = c.forward();
                o.iter().zip(&w).map(|(&a, &b)| a as f64 * b as f64).sum()
            };
            // dL/do = w.
            let (o, lse) = c.forward();
            let grads = c.backward(&o, &lse, &w);
            for (t, name) in ["q", "k", "v"].iter().enumerate() {
                for _ in 0..3 {
                    let u = rng.vec(grads[t].len(), 1.0);
                    let analytic: f64 = grads[t]
                        .iter()
                        .zip(&u)
                        .map(|(&g, &x)| g as f64 * x as f64)
                        .sum();
                    let base = match t {
                        0 => c.q.clone(),
                        1 => c.k.clone(),
                        _ => c.v.clone(),
                    };
                    let mut lp = 0.0;
                    for sign in [1.0f32, -1.0] {
                        let x: Vec<f32> = base
                            .iter()
                            .zip(&u)
                            .map(|(&b, &d)| b + sign * eps * d)
                            .collect();
                        match t {
                            0 => c.q = x,
                            1 => c.k = x,
                            _ => c.v = x,
                        }
                        lp += sign as f64 * loss(&c);
                    }
                    match t {
                        0 => c.q = base,
                        1 => c.k = base,
                        _ => c.v = base,
                    }
                    let numeric = lp / (2.0 * eps as f64);
                    let err = (numeric - analytic).abs() / analytic.abs().max(1.0);
                    assert!(
                        err < 1e-3,
                        "{s:?} {seqs:?} d{name}: analytic {analytic}, numeric {numeric}"
                    );
                    worst = worst.max(err);
                }
            }
        }
        eprintln!("finite-difference max rel err {worst:e}");
    }

    #[test]
    fn packed_equals_separate() {
        for causal in [true, false] {
            let s = shape(4, 2, 5, causal);
            let (la, lb) = (70, 13);
            let packed = Case::new(s, &[sp(0, la), sp(la, lb)], 9, 2.0);
            let (o, lse) = packed.forward();
            let qw = s.heads * s.head_dim;
            let kw = s.kv_heads * s.head_dim;
            for (start, len) in [(0, la), (la, lb)] {
                let alone = Case {
                    s,
                    seqs: vec![sp(0, len)],
                    rows: len,
                    q: packed.q[start * qw..(start + len) * qw].to_vec(),
                    k: packed.k[start * kw..(start + len) * kw].to_vec(),
                    v: packed.v[start * kw..(start + len) * kw].to_vec(),
                };
                let (oa, lsea) = alone.forward();
                assert_eq!(oa[..], o[start * qw..(start + len) * qw]);
                assert_eq!(lsea[..], lse[start * s.heads..(start + len) * s.heads]);
            }
        }
    }

    #[test]
    fn uncovered_rows_untouched_and_backward_deterministic() {
        let s = shape(4, 1, 6, true);
        let c = Case::new(s, &[sp(1, 66), sp(70, 5)], 11, 2.0);
        let sentinel = 12345.0f32;
        let hd = s.head_dim;
        let mut o = vec![sentinel; c.rows * s.heads * hd];
        let mut lse = vec![sentinel; c.rows * s.heads];
        forward(&mut o, &mut lse, &c.q, &c.k, &c.v, &c.seqs, s);
        let do_ = Rng(12).vec(o.len(), 1.0);
        let run = || {
            let mut dq = vec![sentinel; c.rows * s.heads * hd];
            let mut dk = vec![sentinel; c.rows * s.kv_heads * hd];
            let mut dv = vec![sentinel; c.rows * s.kv_heads * hd];
            backward(
                &mut dq, &mut dk, &mut dv, &do_, &c.q, &c.k, &c.v, &o, &lse, &c.seqs, s,
            );
            [dq, dk, dv]
        };
        let first = run();
        for r in 0..c.rows {
            let covered = c.seqs.iter().any(|x| r >= x.start && r < x.start + x.len);
            let check = |buf: &[f32], width: usize| {
                buf[r * width..(r + 1) * width]
                    .iter()
                    .all(|&x| (x == sentinel) != covered)
            };
            assert!(check(&o, s.heads * hd) && check(&lse, s.heads), "row {r}");
            assert!(check(&first[0], s.heads * hd), "dq row {r}");
            assert!(check(&first[1], s.kv_heads * hd), "dk row {r}");
            assert!(check(&first[2], s.kv_heads * hd), "dv row {r}");
        }
        for _ in 0..3 {
            assert!(run() == first, "backward is not bitwise reproducible");
        }
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn overlapping_spans_are_rejected() {
        let c = Case::new(shape(2, 2, 4, true), &[sp(0, 5), sp(4, 3)], 1, 1.0);
        c.forward();
    }
}
