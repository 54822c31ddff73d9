//! The tensor-core FlashAttention-2 forward (kernels/attn_flash.cu) against the CPU backend's
//! attention on the same bf16-rounded queries, keys and values: ragged packed sequences (1 to
//! 130 tokens, so one query tile and several key tiles, none full), a gap of rows no sequence
//! covers, causal and bidirectional, grouped-query heads, and every head dimension the kernel is
//! instantiated for. The only difference the kernel may show is P rounded to bf16 before P·V.
#![cfg(feature = "emulator")]

use flexp::backend::cpu::Cpu;
use flexp::backend::cuda::{CudaBackend, KArg, LaunchCfg};

use flexp::backend::{AttnShape, Backend, Span};
use flexp::rng::Rng;

const SENTINEL: f32 = 777.0;
/// Query rows per block (kernels/attn_flash.cu FA_BM).
const TILE: usize = 64;

fn rounded(rng: &mut Rng, n: usize, amp: f32) -> (Vec<u16>, Vec<f32>) {
    let h: Vec<half::bf16> = rng
        .vec_range(n, -amp, amp)
        .into_iter()
        .map(half::bf16::from_f32)
        .collect();
    (
        h.iter().map(|x| x.to_bits()).collect(),
        h.iter().map(|x| x.to_f32()).collect(),
    )
}

/// Sequences of 1, 5, 33, 70 and 130 tokens with 3 uncovered rows between the third and fourth.
fn spans() -> Vec<Span> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, len) in [1, 5, 33, 70, 130].into_iter().enumerate() {
        if i == 3 {
            start += 3;
        }
        out.push(Span { start, len });
        start += len;
    }
    out
}

fn check(heads: usize, kv_heads: usize, hd: usize, causal: bool, seed: u64) {
    let s = AttnShape {
        heads,
        kv_heads,
        head_dim: hd,
        causal,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let seqs = spans();
    let rows = seqs.iter().map(Span::end).max().unwrap();
    let mut rng = Rng::new(seed);
    // Queries and keys up to 2 in magnitude make the softmax peaked enough to matter.
    let (qb, q) = rounded(&mut rng, rows * heads * hd, 2.0);
    let (kb, k) = rounded(&mut rng, rows * kv_heads * hd, 2.0);
    let (vb, v) = rounded(&mut rng, rows * kv_heads * hd, 1.0);

    let cpu = Cpu;
    let mut o_cpu = vec![SENTINEL; rows * heads * hd];
    let mut lse_cpu = vec![SENTINEL; rows * heads];
    cpu.attention_forward(&mut o_cpu, &mut lse_cpu, &q, &k, &v, &seqs, s)
        .unwrap();

    let gpu = CudaBackend::for_tests().unwrap();
    let mut tiles: Vec<i32> = Vec::new();
    for sp in &seqs {
        for q0 in (0..sp.len).step_by(TILE) {
            tiles.extend([sp.start as i32, sp.len as i32, q0 as i32]);
        }
    }
    let (dq, dk, dv) = (
        gpu.upload_pod(&qb).unwrap(),
        gpu.upload_pod(&kb).unwrap(),
        gpu.upload_pod(&vb).unwrap(),
    );
    let dt = gpu.upload_pod(&tiles).unwrap();
    let o = gpu.upload(&vec![SENTINEL; rows * heads * hd]).unwrap();
    let lse = gpu.upload(&vec![SENTINEL; rows * heads]).unwrap();
    let cfg = LaunchCfg {
        grid: ((tiles.len() / 3) as u32, heads as u32, 1),
        block: (128, 1, 1),
        // Q, K and V tiles of 64 rows, pitch hd + 8 bf16.
        shared_bytes: (3 * 64 * (hd + 8) * 2) as u32,
    };
    let name = format!("attn_flash_fwd_d{hd}");
    // SAFETY: attn_flash_fwd_d*(o, lse, q, k, v, tiles, heads, kv_heads, causal, scale) reads q
    // [rows, heads·hd], k and v [rows, kv_heads·hd] (bf16, the uploads) for the rows of the
    // spans, which all lie below `rows`, and writes o, lse of the same rows; the tile table has
    // grid.x triples; heads is a multiple of kv_heads.
    unsafe {
        gpu.launch(
            &name,
            cfg,
            &[
                o.arg(),
                lse.arg(),
                dq.arg(),
                dk.arg(),
                dv.arg(),
                dt.arg(),
                KArg::I32(heads as i32),
                KArg::I32(kv_heads as i32),
                KArg::I32(causal as i32),
                KArg::F32(s.scale),
            ],
        )
    }
    .unwrap();
    let (o_gpu, lse_gpu) = (gpu.download(&o).unwrap(), gpu.download(&lse).unwrap());
    let what = format!("{name} heads={heads} kv={kv_heads} causal={causal}");
    for (i, (&g, &c)) in o_gpu.iter().zip(&o_cpu).enumerate() {
        // Rows no span covers keep the sentinel; elsewhere P in bf16 costs at most about
        // 2^-8 of max |v| = 1.
        assert!(
            (g == SENTINEL) == (c == SENTINEL) && (g - c).abs() <= 6e-3,
            "{what}: o[{i}] = {g}, cpu {c}"
        );
    }
    for (i, (&g, &c)) in lse_gpu.iter().zip(&lse_cpu).enumerate() {
        assert!(
            (g == SENTINEL) == (c == SENTINEL) && (g - c).abs() <= 1e-4 * c.abs().max(1.0),
            "{what}: lse[{i}] = {g}, cpu {c}"
        );
    }
}

#[test]
fn flash_forward_d32_matches_cpu() {
    check(4, 4, 32, false, 1);
    check(4, 4, 32, true, 2);
}

#[test]
fn flash_forward_d64_grouped_query_matches_cpu() {
    check(4, 2, 64, true, 3);
    check(2, 1, 64, false, 4);
}

#[test]
fn flash_forward_d128_matches_cpu() {
    check(2, 1, 128, true, 5);
}
