//! Scalar dequantization of GGML blocks: the reference of every quantized product kernel.
//!
//! Each value is computed with exactly the f32 operations of ggml's reference decoder, in its
//! order (a product of two f32 is exact to swap, a sum of three is not), so results are
//! bit-identical to ggml and to the `gguf` Python package (tests/gguf_quant.rs holds the proof).

use super::{GgmlType, QK_K};
use crate::error::{Error, Result};
use half::{bf16, f16};
use rayon::prelude::*;

/// Decodes `bytes`, a whole number of `ty` blocks, into `out` (`out.len()` values).
///
/// Fails when `bytes` is not exactly `out.len()` values of `ty`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    match ty.row_bytes(out.len()) {
        Some(n) if n == bytes.len() => {}
        _ => {
            return Err(Error::Backend(format!(
                "dequantize {ty}: {} bytes do not hold {} values (blocks of {} values, {} bytes)",
                bytes.len(),
                out.len(),
                ty.block_len(),
                ty.block_bytes()
            )))
        }
    }
    let (bb, bl) = (ty.block_bytes(), ty.block_len());
    match ty {
        GgmlType::F32 => each_block(bytes, out, bb, bl, f32_block),
        GgmlType::F16 => each_block(bytes, out, bb, bl, f16_block),
        GgmlType::Bf16 => each_block(bytes, out, bb, bl, bf16_block),
        GgmlType::Q4_0 => each_block(bytes, out, bb, bl, q4_0),
        GgmlType::Q4_1 => each_block(bytes, out, bb, bl, q4_1),
        GgmlType::Q5_0 => each_block(bytes, out, bb, bl, q5_0),
        GgmlType::Q5_1 => each_block(bytes, out, bb, bl, q5_1),
        GgmlType::Q8_0 => each_block(bytes, out, bb, bl, q8_0),
        GgmlType::Q2K => each_block(bytes, out, bb, bl, q2_k),
        GgmlType::Q3K => each_block(bytes, out, bb, bl, q3_k),
        GgmlType::Q4K => each_block(bytes, out, bb, bl, q4_k),
        GgmlType::Q5K => each_block(bytes, out, bb, bl, q5_k),
        GgmlType::Q6K => each_block(bytes, out, bb, bl, q6_k),
    }
    Ok(())
}

/// Values decoded per parallel task: small enough to share a 64-row tile between threads,
/// large enough that a task outweighs its scheduling.
const VALUES_PER_TASK: usize = 16 * 1024;

/// `decode` over every block, in parallel chunks. Generic over the decoder so that each type's
/// loop is compiled (and vectorised) with its decoder inlined; through a function pointer the
/// per-block call cost about as much as the decoding.
fn each_block<F>(bytes: &[u8], out: &mut [f32], bb: usize, bl: usize, decode: F)
where
    F: Fn(&[u8], &mut [f32]) + Sync,
{
    let blocks = (VALUES_PER_TASK / bl).max(1);
    bytes
        .par_chunks(bb * blocks)
        .zip(out.par_chunks_mut(bl * blocks))
        .for_each(|(b, y)| {
            for (b, y) in b.chunks_exact(bb).zip(y.chunks_exact_mut(bl)) {
                decode(b, y);
            }
        });
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn f32_block(b: &[u8], y: &mut [f32]) {
    y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
}

fn f16_block(b: &[u8], y: &mut [f32]) {
    y[0] = half_at(b, 0);
}

fn bf16_block(b: &[u8], y: &mut [f32]) {
    y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32();
}

/// Low nibbles are values 0..16 of the block, high nibbles values 16..32.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * ((q & 0x0F) as i32 - 8) as f32;
        y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = d * (q & 0x0F) as f32 + m;
        y[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// Bit j of `qh` is the fifth bit of value j.
fn fifth_bits(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let qh = fifth_bits(&b[2..6]);
    for (j, &q) in b[6..22].iter().enumerate() {
        let lo = (q & 0x0F) as u32 | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * (lo as i32 - 16) as f32;
        y[j + 16] = d * (hi as i32 - 16) as f32;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    let qh = fifth_bits(&b[4..8]);
    for (j, &q) in b[8..24].iter().enumerate() {
        let lo = (q & 0x0F) as u32 | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * lo as f32 + m;
        y[j + 16] = d * hi as f32 + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (j, &q) in b[2..34].iter().enumerate() {
        y[j] = d * (q as i8) as f32;
    }
}

/// Layout: scales[16] (low nibble scale, high nibble minimum), qs[64], d, dmin. Each 32-byte
/// chunk of qs holds 128 values as four 2-bit planes; each plane is two sub-blocks of 16.
fn q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (half_at(b, 80), half_at(b, 82));
    let mut out = 0;
    for (half, q) in qs.chunks_exact(32).enumerate() {
        for plane in 0..4 {
            let shift = 2 * plane;
            for sub in 0..2 {
                let sc = scales[half * 8 + plane * 2 + sub];
                let dl = d * (sc & 0x0F) as f32;
                let ml = dmin * (sc >> 4) as f32;
                for &c in &q[sub * 16..sub * 16 + 16] {
                    y[out] = dl * ((c >> shift) & 3) as f32 - ml;
                    out += 1;
                }
            }
        }
    }
}

/// The 16 signed 6-bit scales of Q3_K: low nibbles in bytes 0..8, two high bits each in 8..12.
fn q3_k_scales(s: &[u8]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = (s[i % 8] >> (4 * (i / 8))) & 0x0F;
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 0x03;
        *o = (low | high << 4) as i32 - 32;
    }
    out
}

/// Layout: hmask[32], qs[64], scales[12], d. A value's third bit is in hmask; when that bit is
/// clear the code is offset by −4.
fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs) = (&b[0..32], &b[32..96]);
    let scales = q3_k_scales(&b[96..108]);
    let d = half_at(b, 108);
    let mut out = 0;
    let mut bit = 0;
    for (half, q) in qs.chunks_exact(32).enumerate() {
        for plane in 0..4 {
            let shift = 2 * plane;
            for sub in 0..2 {
                let dl = d * scales[half * 8 + plane * 2 + sub] as f32;
                for l in sub * 16..sub * 16 + 16 {
                    let low = ((q[l] >> shift) & 3) as i32;
                    let minus = if hmask[l] >> bit & 1 == 1 { 0 } else { 4 };
                    y[out] = dl * (low - minus) as f32;
                    out += 1;
                }
            }
            bit += 1;
        }
    }
}

/// Scale and minimum of sub-block `j` of Q4_K / Q5_K (6 bits each, packed in 12 bytes).
fn k4_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Layout: d, dmin, scales[12], qs[128]. Each 32-byte chunk of qs holds two sub-blocks of 32:
/// low nibbles first, then high nibbles.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (pair, q) in qs.chunks_exact(32).enumerate() {
        for nib in 0..2 {
            let (sc, m) = k4_scale_min(2 * pair + nib, scales);
            let dl = d * sc as f32;
            let ml = dmin * m as f32;
            let y = &mut y[pair * 64 + nib * 32..][..32];
            for (v, &c) in y.iter_mut().zip(q) {
                *v = dl * ((c >> (4 * nib)) & 0x0F) as f32 - ml;
            }
        }
    }
}

/// Layout: d, dmin, scales[12], qh[32], qs[128]: Q4_K plus a fifth bit per value in qh (bit k
/// of qh[l] belongs to sub-block k).
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (pair, q) in qs.chunks_exact(32).enumerate() {
        for nib in 0..2 {
            let sub = 2 * pair + nib;
            let (sc, m) = k4_scale_min(sub, scales);
            let dl = d * sc as f32;
            let ml = dmin * m as f32;
            let y = &mut y[sub * 32..][..32];
            for (l, v) in y.iter_mut().enumerate() {
                let code = ((q[l] >> (4 * nib)) & 0x0F) | ((qh[l] >> sub) & 1) << 4;
                *v = dl * code as f32 - ml;
            }
        }
    }
}

/// Layout: ql[128], qh[64], scales[16] (i8), d. Per 128 values: 64 bytes of low nibbles, 32
/// bytes of two-bit high parts, 8 scales of 16 values each.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half_at(b, 208);
    for n in 0..QK_K / 128 {
        let (ql, qh, sc) = (&ql[n * 64..], &qh[n * 32..], &sc[n * 8..]);
        let y = &mut y[n * 128..];
        for l in 0..32 {
            let is = l / 16;
            let code = |low: u8, shift: u32| ((low | ((qh[l] >> shift) & 3) << 4) as i32) - 32;
            let q = [
                code(ql[l] & 0x0F, 0),
                code(ql[l + 32] & 0x0F, 2),
                code(ql[l] >> 4, 4),
                code(ql[l + 32] >> 4, 6),
            ];
            for (k, &q) in q.iter().enumerate() {
                y[l + 32 * k] = d * (sc[is + 2 * k] as i8) as f32 * q as f32;
            }
        }
    }
}
