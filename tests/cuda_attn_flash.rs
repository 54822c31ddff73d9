//! The tensor-core FlashAttention-2 forward (kernels/attn_flash.cu) against the CPU backend's
//! attention on the same bf16-rounded queries, keys and values: ragged packed sequences (1 to
//! 130 tokens, so one query tile and several key tiles, none full), a gap of rows no sequence
//! covers, causal and bidirectional, grouped-query heads, and every head dimension the kernel is
//! instantiated for. The only difference the forward may show is P rounded to bf16 before P·V;
//! the backward (attn_flash_bwd_dq_*, attn_flash_bwd_dkdv_*) also rounds dS.
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

fn tile_table(seqs: &[Span]) -> Vec<i32> {
    let mut tiles: Vec<i32> = Vec::new();
    for sp in seqs {
        for t0 in (0..sp.len).step_by(TILE) {
            tiles.extend([sp.start as i32, sp.len as i32, t0 as i32]);
        }
    }
    tiles
}

/// One case's shape, sequences and bf16-rounded inputs (bits for the kernels, values for the
/// CPU): queries and keys up to 2 in magnitude, so the softmax is peaked enough to matter.
struct Inputs {
    s: AttnShape,
    seqs: Vec<Span>,
    rows: usize,
    q: (Vec<u16>, Vec<f32>),
    k: (Vec<u16>, Vec<f32>),
    v: (Vec<u16>, Vec<f32>),
    do_: (Vec<u16>, Vec<f32>),
}

fn inputs(heads: usize, kv_heads: usize, hd: usize, causal: bool, seed: u64) -> Inputs {
    let s = AttnShape {
        heads,
        kv_heads,
        head_dim: hd,
        causal,
        window: None,
        scale: 1.0 / (hd as f32).sqrt(),
        bf16: false,
    };
    let seqs = spans();
    let rows = seqs.iter().map(Span::end).max().unwrap();
    let mut rng = Rng::new(seed);
    Inputs {
        s,
        seqs,
        rows,
        q: rounded(&mut rng, rows * heads * hd, 2.0),
        k: rounded(&mut rng, rows * kv_heads * hd, 2.0),
        v: rounded(&mut rng, rows * kv_heads * hd, 1.0),
        do_: rounded(&mut rng, rows * heads * hd, 1.0),
    }
}

fn check(heads: usize, kv_heads: usize, hd: usize, causal: bool, seed: u64) {
    let Inputs {
        s,
        seqs,
        rows,
        q: (qb, q),
        k: (kb, k),
        v: (vb, v),
        ..
    } = inputs(heads, kv_heads, hd, causal, seed);

    let cpu = Cpu;
    let mut o_cpu = vec![SENTINEL; rows * heads * hd];
    let mut lse_cpu = vec![SENTINEL; rows * heads];
    cpu.attention_forward(&mut o_cpu, &mut lse_cpu, &q, &k, &v, &seqs, s)
        .unwrap();

    let gpu = CudaBackend::for_tests().unwrap();
    let tiles = tile_table(&seqs);
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

/// max |got − want| over max |want| (rows no span covers must keep the sentinel in both).
fn rel_err(what: &str, got: &[f32], want: &[f32]) -> f64 {
    let scale = want
        .iter()
        .filter(|w| **w != SENTINEL)
        .fold(0f64, |m, &w| m.max(w.abs() as f64));
    let mut worst = 0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g == SENTINEL) == (w == SENTINEL) && g.is_finite(),
            "{what}[{i}] = {g}, cpu {w}"
        );
        worst = worst.max((g as f64 - w as f64).abs() / scale.max(1e-6));
    }
    worst
}

fn check_backward(heads: usize, kv_heads: usize, hd: usize, causal: bool, seed: u64) -> [f64; 3] {
    let Inputs {
        s,
        seqs,
        rows,
        q: (qb, q),
        k: (kb, k),
        v: (vb, v),
        do_: (dob, do_),
    } = inputs(heads, kv_heads, hd, causal, seed);

    // The CPU's forward gives O and lse for both backwards; then the CPU backward.
    let cpu = Cpu;
    let mut o = vec![SENTINEL; rows * heads * hd];
    let mut lse = vec![SENTINEL; rows * heads];
    cpu.attention_forward(&mut o, &mut lse, &q, &k, &v, &seqs, s)
        .unwrap();
    let mut dq_cpu = vec![SENTINEL; q.len()];
    let mut dk_cpu = vec![SENTINEL; k.len()];
    let mut dv_cpu = vec![SENTINEL; v.len()];
    cpu.attention_backward(
        &mut dq_cpu,
        &mut dk_cpu,
        &mut dv_cpu,
        &do_,
        &q,
        &k,
        &v,
        &o,
        &lse,
        &seqs,
        s,
    )
    .unwrap();

    let gpu = CudaBackend::for_tests().unwrap();
    let tiles = tile_table(&seqs);
    let up16 = |x: &[u16]| gpu.upload_pod(x).unwrap();
    let (gq, gk, gv, gdo) = (up16(&qb), up16(&kb), up16(&vb), up16(&dob));
    let (go, glse, gt) = (
        gpu.upload(&o).unwrap(),
        gpu.upload(&lse).unwrap(),
        gpu.upload_pod(&tiles).unwrap(),
    );
    let dq = gpu.upload(&vec![SENTINEL; q.len()]).unwrap();
    let dk = gpu.upload(&vec![SENTINEL; k.len()]).unwrap();
    let dv = gpu.upload(&vec![SENTINEL; v.len()]).unwrap();
    let delta = gpu.upload(&vec![SENTINEL; rows * heads]).unwrap();
    let pitch = hd + 8;
    let scalars = [
        KArg::I32(heads as i32),
        KArg::I32(kv_heads as i32),
        KArg::I32(causal as i32),
        KArg::F32(s.scale),
    ];
    // SAFETY: attn_flash_bwd_dq_*(dq, delta, q, k, v, dout, o, lse, tiles, heads, kv_heads,
    // causal, scale) reads q, dout, o [rows, heads·hd], k, v [rows, kv_heads·hd], lse [rows,
    // heads] and writes dq and delta for the rows of the spans (all below `rows`); the table has
    // grid.x triples; Q, dO, K, V tiles of 64 rows fill the dynamic shared memory.
    unsafe {
        let mut args = vec![
            dq.arg(),
            delta.arg(),
            gq.arg(),
            gk.arg(),
            gv.arg(),
            gdo.arg(),
            go.arg(),
            glse.arg(),
            gt.arg(),
        ];
        args.extend_from_slice(&scalars);
        gpu.launch(
            &format!("attn_flash_bwd_dq_d{hd}"),
            LaunchCfg {
                grid: ((tiles.len() / 3) as u32, heads as u32, 1),
                block: (128, 1, 1),
                shared_bytes: (4 * 64 * pitch * 2) as u32,
            },
            &args,
        )
    }
    .unwrap();
    // SAFETY: attn_flash_bwd_dkdv_*(dk, dv, q, k, v, dout, lse, delta, tiles, ...) reads what
    // the dq launch read plus `delta` (written there for every covered row) and writes dk, dv
    // for the rows of the spans; one block per 64-key tile (the same table) and kv head; K, V,
    // Q, dO tiles plus 128 floats of statistics.
    unsafe {
        let mut args = vec![
            dk.arg(),
            dv.arg(),
            gq.arg(),
            gk.arg(),
            gv.arg(),
            gdo.arg(),
            glse.arg(),
            delta.arg(),
            gt.arg(),
        ];
        args.extend_from_slice(&scalars);
        gpu.launch(
            &format!("attn_flash_bwd_dkdv_d{hd}"),
            LaunchCfg {
                grid: ((tiles.len() / 3) as u32, kv_heads as u32, 1),
                block: (128, 1, 1),
                shared_bytes: (4 * 64 * pitch * 2 + 128 * 4) as u32,
            },
            &args,
        )
    }
    .unwrap();
    let what = format!("hd={hd} heads={heads} kv={kv_heads} causal={causal}");
    let errs = [
        rel_err(&format!("{what} dq"), &gpu.download(&dq).unwrap(), &dq_cpu),
        rel_err(&format!("{what} dk"), &gpu.download(&dk).unwrap(), &dk_cpu),
        rel_err(&format!("{what} dv"), &gpu.download(&dv).unwrap(), &dv_cpu),
    ];
    eprintln!(
        "{what}: relative errors dq {:.2e} dk {:.2e} dv {:.2e}",
        errs[0], errs[1], errs[2]
    );
    errs
}

#[test]
fn flash_backward_matches_cpu() {
    for (heads, kv, hd, causal, seed) in [
        (4, 4, 32, false, 11),
        (4, 2, 64, true, 12),
        (2, 1, 128, true, 13),
        (2, 2, 128, false, 14),
    ] {
        let errs = check_backward(heads, kv, hd, causal, seed);
        for (name, e) in ["dq", "dk", "dv"].iter().zip(errs) {
            assert!(e <= 8e-3, "hd={hd} causal={causal}: {name} error {e:.2e}");
        }
    }
}

/// Through the Backend trait: `AttnShape::bf16` sends the CUDA backend to these kernels (casting
/// the f32 activations to bf16), and the CPU backend rounds at the same points, so the two agree
/// as closely as two f32 summation orders with bf16 rounding of P and dS allow.
#[test]
fn bf16_attention_through_the_backend_matches_cpu_and_runs_on_tensor_cores() {
    use std::sync::Arc;
    let dev = Arc::new(flexp::backend::cuda::emulator::Emulator::new());
    let gpu = CudaBackend::new(dev.clone());
    let cpu = Cpu;
    let s = AttnShape {
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
        causal: true,
        window: None,
        scale: 1.0 / 32f32.sqrt(),
        bf16: true,
    };
    let seqs = spans();
    let rows = seqs.iter().map(Span::end).max().unwrap();
    let mut rng = Rng::new(21);
    let (qw, kw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let q = rng.vec_range(rows * qw, -2.0, 2.0);
    let k = rng.vec_range(rows * kw, -2.0, 2.0);
    let v = rng.vec_range(rows * kw, -1.0, 1.0);
    let do_ = rng.vec_range(rows * qw, -1.0, 1.0);
    // CPU.
    let mut o_c = vec![SENTINEL; rows * qw];
    let mut lse_c = vec![SENTINEL; rows * s.heads];
    cpu.attention_forward(&mut o_c, &mut lse_c, &q, &k, &v, &seqs, s)
        .unwrap();
    let (mut dq_c, mut dk_c, mut dv_c) = (
        vec![SENTINEL; q.len()],
        vec![SENTINEL; k.len()],
        vec![SENTINEL; v.len()],
    );
    cpu.attention_backward(
        &mut dq_c, &mut dk_c, &mut dv_c, &do_, &q, &k, &v, &o_c, &lse_c, &seqs, s,
    )
    .unwrap();
    // Emulated CUDA.
    let up = |x: &[f32]| gpu.upload(x).unwrap();
    let (gq, gk, gv, gdo) = (up(&q), up(&k), up(&v), up(&do_));
    let mut o = up(&vec![SENTINEL; rows * qw]);
    let mut lse = up(&vec![SENTINEL; rows * s.heads]);
    gpu.attention_forward(&mut o, &mut lse, &gq, &gk, &gv, &seqs, s)
        .unwrap();
    let (mut dq, mut dk, mut dv) = (
        up(&vec![SENTINEL; q.len()]),
        up(&vec![SENTINEL; k.len()]),
        up(&vec![SENTINEL; v.len()]),
    );
    gpu.attention_backward(
        &mut dq, &mut dk, &mut dv, &gdo, &gq, &gk, &gv, &o, &lse, &seqs, s,
    )
    .unwrap();
    let errs = [
        rel_err("o", &gpu.download(&o).unwrap(), &o_c),
        rel_err("lse", &gpu.download(&lse).unwrap(), &lse_c),
        rel_err("dq", &gpu.download(&dq).unwrap(), &dq_c),
        rel_err("dk", &gpu.download(&dk).unwrap(), &dk_c),
        rel_err("dv", &gpu.download(&dv).unwrap(), &dv_c),
    ];
    eprintln!("bf16 backend attention, cuda vs cpu: {errs:?}");
    for e in errs {
        assert!(e <= 8e-3, "{errs:?}");
    }
    let n = dev.launch_counts();
    for kname in [
        "attn_flash_fwd_d32",
        "attn_flash_bwd_dq_d32",
        "attn_flash_bwd_dkdv_d32",
    ] {
        assert_eq!(n.get(kname), Some(&1), "{n:?}");
    }
    assert!(
        !n.keys()
            .any(|k| k.starts_with("attn_fwd") || k.starts_with("attn_bwd")),
        "{n:?}"
    );
    // Head dimensions without a tensor-core kernel are refused with a clear error.
    let s5 = AttnShape {
        head_dim: 40,
        scale: 1.0 / 40f32.sqrt(),
        ..s
    };
    let mut o5 = gpu.zeros(rows * s.heads * 40).unwrap();
    let (q5, kv5) = (
        gpu.zeros(rows * s.heads * 40).unwrap(),
        gpu.zeros(rows * s.kv_heads * 40).unwrap(),
    );
    let err = gpu
        .attention_forward(&mut o5, &mut lse, &q5, &kv5, &kv5, &seqs, s5)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("32, 64 and 128") && err.contains("40"),
        "{err}"
    );
}
