//! The CUDA attention kernels (kernels/attention.cu) on the SIMT emulator against the CPU
//! backend: forward `o` and `lse`, backward `dq`, `dk`, `dv`, over ragged packed sequences (not
//! multiples of any tile), causal and bidirectional, multi-head and grouped-query, every head
//! dimension range the kernels are instantiated for, rows no span covers, and the CPU backend's
//! errors.
#![cfg(feature = "emulator")]

use flexp::backend::cpu::Cpu;
use flexp::backend::cuda::CudaBackend;
use flexp::backend::{AttnShape, Backend, Span};
use flexp::rng::Rng;

/// What the outputs hold before the op: rows no span covers must still hold it afterwards.
const SENTINEL: f32 = 777.0;

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
        scale: 1.0 / (head_dim.max(1) as f32).sqrt(),
        bf16: false,
    }
}

/// The ragged lengths of the brief: 1, 5, 33, 70, 130 (none a multiple of a tile).
fn ragged() -> Vec<Span> {
    let mut out = Vec::new();
    let mut start = 0;
    for len in [1, 5, 33, 70, 130] {
        out.push(sp(start, len));
        start += len;
    }
    out
}

struct Case {
    s: AttnShape,
    seqs: Vec<Span>,
    rows: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    do_: Vec<f32>,
}

impl Case {
    /// Queries and keys uniform in [-amp, amp) (amp sets how peaked the softmax is), values and
    /// output gradients in [-1, 1).
    fn new(s: AttnShape, seqs: &[Span], seed: u64, amp: f32) -> Case {
        let rows = seqs.iter().map(Span::end).max().unwrap_or(0);
        let mut rng = Rng::new(seed);
        let (qw, kw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
        Case {
            s,
            seqs: seqs.to_vec(),
            rows,
            q: rng.vec_range(rows * qw, -amp, amp),
            k: rng.vec_range(rows * kw, -amp, amp),
            v: rng.vec_range(rows * kw, -1.0, 1.0),
            do_: rng.vec_range(rows * qw, -1.0, 1.0),
        }
    }

    fn forward<B: Backend>(&self, be: &B) -> (Vec<f32>, Vec<f32>) {
        let q = be.upload(&self.q).unwrap();
        let k = be.upload(&self.k).unwrap();
        let v = be.upload(&self.v).unwrap();
        let mut o = be
            .upload(&vec![SENTINEL; self.rows * self.s.heads * self.s.head_dim])
            .unwrap();
        let mut lse = be
            .upload(&vec![SENTINEL; self.rows * self.s.heads])
            .unwrap();
        be.attention_forward(&mut o, &mut lse, &q, &k, &v, &self.seqs, self.s)
            .unwrap();
        (be.download(&o).unwrap(), be.download(&lse).unwrap())
    }

    /// Backward from the given forward results (the same `o`, `lse` for both backends, so the
    /// gradients are compared on identical inputs).
    fn backward<B: Backend>(&self, be: &B, o: &[f32], lse: &[f32]) -> [Vec<f32>; 3] {
        let up = |x: &[f32]| be.upload(x).unwrap();
        let (q, k, v, o, lse, do_) = (
            up(&self.q),
            up(&self.k),
            up(&self.v),
            up(o),
            up(lse),
            up(&self.do_),
        );
        let mut dq = up(&vec![SENTINEL; self.q.len()]);
        let mut dk = up(&vec![SENTINEL; self.k.len()]);
        let mut dv = up(&vec![SENTINEL; self.v.len()]);
        be.attention_backward(
            &mut dq, &mut dk, &mut dv, &do_, &q, &k, &v, &o, &lse, &self.seqs, self.s,
        )
        .unwrap();
        [
            be.download(&dq).unwrap(),
            be.download(&dk).unwrap(),
            be.download(&dv).unwrap(),
        ]
    }
}

/// max |got − want| / max(1, |want|); sentinels (rows no span covers) must match exactly, and a
/// NaN anywhere is an infinite error.
fn max_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            if (g == SENTINEL) != (w == SENTINEL) || g.is_nan() || w.is_nan() {
                f64::INFINITY
            } else {
                (g as f64 - w as f64).abs() / (w as f64).abs().max(1.0)
            }
        })
        .fold(0.0, f64::max)
}

/// Forward and backward of one case on both backends; panics past the tolerances, returns the
/// errors [o, lse, dq, dk, dv].
fn compare(c: &Case, fwd_tol: f64, bwd_tol: f64) -> [f64; 5] {
    let gpu = CudaBackend::for_tests().unwrap();
    let (o, lse) = c.forward(&Cpu);
    let (go, glse) = c.forward(&gpu);
    let eo = max_err(&go, &o);
    let el = max_err(&glse, &lse);
    assert!(
        eo <= fwd_tol && el <= fwd_tol,
        "{:?} {:?}: forward o err {eo:e}, lse err {el:e}",
        c.s,
        c.seqs
    );
    let want = c.backward(&Cpu, &o, &lse);
    let got = c.backward(&gpu, &o, &lse);
    let mut errs = [eo, el, 0.0, 0.0, 0.0];
    for (t, name) in ["dq", "dk", "dv"].iter().enumerate() {
        let e = max_err(&got[t], &want[t]);
        assert!(e <= bwd_tol, "{:?} {:?}: {name} err {e:e}", c.s, c.seqs);
        errs[2 + t] = e;
    }
    errs
}

fn worst(acc: &mut [f64; 5], e: [f64; 5]) {
    for (a, b) in acc.iter_mut().zip(e) {
        *a = a.max(b);
    }
}

/// f32 against f32 with other summation orders: the observed errors are ~3e-7 (forward) and
/// ~3e-6 (backward).
const FWD_TOL: f64 = 1e-5;
const BWD_TOL: f64 = 3e-5;

#[test]
fn ragged_sequences_mha_and_gqa_head_dims_8_and_24() {
    let mut w = [0.0; 5];
    let mut seed = 1;
    for causal in [true, false] {
        for (n, (h, kvh)) in [(4, 4), (4, 2), (4, 1)].into_iter().enumerate() {
            // Both head dims meet every head layout across the causal and bidirectional runs.
            let hd = if (n % 2 == 0) == causal { 8 } else { 24 };
            seed += 1;
            let c = Case::new(shape(h, kvh, hd, causal), &ragged(), seed, 1.5);
            worst(&mut w, compare(&c, FWD_TOL, BWD_TOL));
        }
    }
    eprintln!(
        "max err o {:e} lse {:e} dq {:e} dk {:e} dv {:e}",
        w[0], w[1], w[2], w[3], w[4]
    );
}

#[test]
fn ragged_sequences_head_dims_16_and_64() {
    let mut w = [0.0; 5];
    let mut seed = 100;
    for causal in [true, false] {
        for (h, kvh, hd) in [(4, 2, 16), (4, 1, 64), (2, 2, 64)] {
            seed += 1;
            let c = Case::new(shape(h, kvh, hd, causal), &ragged(), seed, 1.0);
            worst(&mut w, compare(&c, FWD_TOL, BWD_TOL));
        }
    }
    eprintln!(
        "max err o {:e} lse {:e} dq {:e} dk {:e} dv {:e}",
        w[0], w[1], w[2], w[3], w[4]
    );
}

#[test]
fn largest_head_dims() {
    // The hd <= 128 and hd <= 256 kernels (and 40, 96, 160: within a range but not its
    // maximum). 256 is Gemma 3's head size.
    let mut w = [0.0; 5];
    let seqs = [sp(0, 1), sp(1, 33), sp(34, 70)];
    let mut seed = 200;
    for causal in [true, false] {
        for (h, kvh, hd) in [
            (2, 1, 128),
            (2, 2, 96),
            (2, 1, 40),
            (2, 1, 256),
            (2, 2, 160),
        ] {
            seed += 1;
            let c = Case::new(shape(h, kvh, hd, causal), &seqs, seed, 0.7);
            worst(&mut w, compare(&c, FWD_TOL, BWD_TOL));
        }
    }
    eprintln!(
        "max err o {:e} lse {:e} dq {:e} dk {:e} dv {:e}",
        w[0], w[1], w[2], w[3], w[4]
    );
}

#[test]
fn odd_head_dims_uncovered_rows_and_spans_out_of_order() {
    // Tile boundaries at 64 and 128, spans out of order, a row no span covers (3) and an empty
    // span, a scale other than 1/sqrt(hd), head dims that are not multiples of 8.
    for (n, hd) in [3usize, 5, 33].into_iter().enumerate() {
        for causal in [true, false] {
            let mut s = shape(6, 2, hd, causal);
            s.scale = 0.9 / (hd as f32).sqrt();
            let seqs = [sp(4, 130), sp(0, 3), sp(134, 0), sp(134, 2)];
            let c = Case::new(s, &seqs, 300 + n as u64, 1.0);
            compare(&c, FWD_TOL, BWD_TOL);
        }
    }
}

#[test]
fn large_scores_stay_finite_and_match() {
    // Scores in the hundreds: exponentials without the running-max shift would overflow. The
    // inputs are f32, so a score carries a rounding error of ~1e-4 whatever the softmax does.
    for causal in [true, false] {
        let c = Case::new(shape(2, 1, 16, causal), &[sp(0, 9), sp(9, 67)], 7, 15.0);
        let (o, lse) = c.forward(&CudaBackend::for_tests().unwrap());
        assert!(o.iter().chain(&lse).all(|x| x.is_finite()));
        assert!(
            lse.iter().any(|&x| x > 100.0),
            "test does not reach large scores"
        );
        // Observed: ~6e-6 forward, ~6e-5 backward.
        let e = compare(&c, 5e-5, 5e-4);
        eprintln!("causal {causal}: errors o, lse, dq, dk, dv {e:?}");
    }
}

/// The kernels fix every summation order by the launch shape, so neither the order blocks run
/// in nor how threads interleave may change a bit of the result: each seeded schedule (and the
/// race detector, which every launch runs) must reproduce the index-order run exactly.
#[test]
fn results_do_not_depend_on_the_schedule() {
    use flexp::backend::cuda::emulator::Emulator;
    use std::sync::Arc;
    let c = Case::new(shape(4, 2, 16, true), &[sp(0, 45), sp(45, 30)], 21, 1.0);
    let on = |seed: u64| CudaBackend::new(Arc::new(Emulator::new().with_schedule_seed(seed)));
    let reference = on(0);
    let (o, lse) = c.forward(&reference);
    let grads = c.backward(&reference, &o, &lse);
    for seed in [1, 2, 0x5eed, u64::MAX] {
        let gpu = on(seed);
        assert!(
            c.forward(&gpu) == (o.clone(), lse.clone()),
            "forward differs under schedule seed {seed}"
        );
        assert!(
            c.backward(&gpu, &o, &lse) == grads,
            "backward differs under schedule seed {seed}"
        );
    }
}

#[test]
fn backward_is_bitwise_reproducible() {
    let c = Case::new(shape(4, 1, 16, true), &[sp(0, 70), sp(70, 33)], 9, 1.0);
    let gpu = CudaBackend::for_tests().unwrap();
    let (o, lse) = c.forward(&gpu);
    let first = c.backward(&gpu, &o, &lse);
    let second = c.backward(&gpu, &o, &lse);
    assert!(first == second, "backward differs between two runs");
    assert_eq!(
        c.forward(&gpu),
        (o, lse),
        "forward differs between two runs"
    );
}

#[test]
fn degenerate_inputs() {
    let gpu = CudaBackend::for_tests().unwrap();
    // No sequences, and only empty ones: nothing is written.
    for seqs in [vec![], vec![sp(0, 0), sp(3, 0)]] {
        let c = Case::new(shape(2, 1, 8, true), &seqs, 11, 1.0);
        assert_eq!(c.forward(&gpu), c.forward(&Cpu));
        let o = vec![0.0; c.q.len()];
        let lse = vec![0.0; c.rows * 2];
        assert_eq!(c.backward(&gpu, &o, &lse), c.backward(&Cpu, &o, &lse));
    }
    // Single-token sequences: the softmax is one weight of 1, so dq = dk = 0, dv = do.
    let c = Case::new(
        shape(2, 2, 8, false),
        &[sp(0, 1), sp(1, 1), sp(2, 1)],
        12,
        1.0,
    );
    compare(&c, FWD_TOL, BWD_TOL);
    // head_dim 0: lse is the log of the number of visible keys.
    let c = Case::new(shape(2, 1, 0, true), &[sp(0, 5)], 13, 1.0);
    let (o, lse) = c.forward(&gpu);
    assert!(o.is_empty());
    assert_eq!(lse.len(), 10);
    assert_eq!(c.forward(&Cpu).1.len(), 10);
    compare(&c, FWD_TOL, BWD_TOL);
}

/// The forward's error message on both backends, with outputs of the given lengths.
fn forward_errors(c: &Case, o_len: usize, lse_len: usize) -> (String, String) {
    let gpu = CudaBackend::for_tests().unwrap();
    let up = |x: &[f32]| gpu.upload(x).unwrap();
    let (q, k, v) = (up(&c.q), up(&c.k), up(&c.v));
    let (mut o, mut lse) = (up(&vec![0.0; o_len]), up(&vec![0.0; lse_len]));
    let cuda = gpu
        .attention_forward(&mut o, &mut lse, &q, &k, &v, &c.seqs, c.s)
        .unwrap_err()
        .to_string();
    let (mut o, mut lse) = (vec![0.0; o_len], vec![0.0; lse_len]);
    let cpu = Cpu
        .attention_forward(&mut o, &mut lse, &c.q, &c.k, &c.v, &c.seqs, c.s)
        .unwrap_err()
        .to_string();
    (cuda, cpu)
}

#[test]
fn errors_match_the_cpu_backend() {
    // Overlapping spans.
    let c = Case::new(shape(2, 2, 4, true), &[sp(0, 5), sp(4, 3)], 1, 1.0);
    let (a, b) = forward_errors(&c, c.q.len(), c.rows * 2);
    assert_eq!(a, b);
    assert!(a.contains("overlap"), "{a}");
    // heads not a multiple of kv_heads.
    let c = Case::new(shape(3, 2, 4, true), &[sp(0, 5)], 1, 1.0);
    let (a, b) = forward_errors(&c, c.q.len(), c.rows * 3);
    assert_eq!(a, b);
    // Short output buffers.
    let c = Case::new(shape(2, 1, 4, true), &[sp(0, 5)], 1, 1.0);
    let (a, b) = forward_errors(&c, c.q.len() - 1, c.rows * 2);
    assert_eq!(a, b);
    let (a, b) = forward_errors(&c, c.q.len(), c.rows * 2 - 1);
    assert_eq!(a, b);
    // A short gradient buffer in the backward.
    let gpu = CudaBackend::for_tests().unwrap();
    let up = |x: &[f32]| gpu.upload(x).unwrap();
    let (q, k, v, o, lse, do_) = (
        up(&c.q),
        up(&c.k),
        up(&c.v),
        up(&c.q),
        up(&vec![0.0; c.rows * 2]),
        up(&c.do_),
    );
    let (mut dq, mut dk, mut dv) = (up(&c.q), up(&c.k[1..]), up(&c.v));
    let a = gpu
        .attention_backward(
            &mut dq, &mut dk, &mut dv, &do_, &q, &k, &v, &o, &lse, &c.seqs, c.s,
        )
        .unwrap_err()
        .to_string();
    let (mut dq, mut dk, mut dv) = (c.q.clone(), c.k[1..].to_vec(), c.v.clone());
    let lse = vec![0.0; c.rows * 2];
    let b = Cpu
        .attention_backward(
            &mut dq, &mut dk, &mut dv, &c.do_, &c.q, &c.k, &c.v, &c.q, &lse, &c.seqs, c.s,
        )
        .unwrap_err()
        .to_string();
    assert_eq!(a, b);
    // A head dimension no kernel is instantiated for is an error, not a wrong result.
    let c = Case::new(shape(1, 1, 257, true), &[sp(0, 2)], 1, 1.0);
    let (q, k, v) = (up(&c.q), up(&c.k), up(&c.v));
    let (mut o, mut lse) = (up(&c.q), up(&[0.0; 2]));
    let a = gpu
        .attention_forward(&mut o, &mut lse, &q, &k, &v, &c.seqs, c.s)
        .unwrap_err()
        .to_string();
    assert!(a.contains("head_dim 257"), "{a}");
}

/// Sliding windows (Gemma 3's local layers) on the ragged spans (1 to 130 keys, across tiles):
/// a window of one key, narrower than a tile, wider than a tile, and wider than every span; the
/// kernels mask keys before the window as the CPU backend does, forward and backward, for every
/// head size variant.
#[test]
fn sliding_windows_match_the_cpu_backend() {
    let mut w = [0.0; 5];
    let mut seed = 300;
    for window in [1, 9, 70, 200] {
        for (h, kvh, hd) in [(4, 2, 16), (2, 1, 64), (2, 2, 128), (2, 1, 256)] {
            seed += 1;
            let s = AttnShape {
                window: Some(window),
                ..shape(h, kvh, hd, true)
            };
            let c = Case::new(s, &ragged(), seed, 1.5);
            worst(&mut w, compare(&c, FWD_TOL, BWD_TOL));
        }
    }
    eprintln!(
        "max err o {:e} lse {:e} dq {:e} dk {:e} dv {:e}",
        w[0], w[1], w[2], w[3], w[4]
    );
}

/// The bf16 tensor-core kernels have no sliding window: a window there is refused by name rather
/// than ignored (which would let every query see keys outside its window); so is a window
/// without causal attention.
#[test]
fn sliding_window_without_a_kernel_is_refused_by_name() {
    let be = CudaBackend::for_tests().unwrap();
    let seqs = [sp(0, 6)];
    let (q, kv) = (be.zeros(6 * 16).unwrap(), be.zeros(6 * 8).unwrap());
    let (mut o, mut lse) = (be.zeros(6 * 16).unwrap(), be.zeros(6 * 2).unwrap());
    let bf16 = AttnShape {
        window: Some(4),
        bf16: true,
        ..shape(2, 1, 8, true)
    };
    let err = be
        .attention_forward(&mut o, &mut lse, &q, &kv, &kv, &seqs, bf16)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sliding-window") && err.contains("bf16"),
        "{err}"
    );
    let (mut dq, mut dk, mut dv) = (
        be.zeros(6 * 16).unwrap(),
        be.zeros(6 * 8).unwrap(),
        be.zeros(6 * 8).unwrap(),
    );
    let err = be
        .attention_backward(
            &mut dq, &mut dk, &mut dv, &o, &q, &kv, &kv, &o, &lse, &seqs, bf16,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("sliding-window"), "{err}");
    let bidirectional = AttnShape {
        window: Some(4),
        ..shape(2, 1, 8, false)
    };
    let err = be
        .attention_forward(&mut o, &mut lse, &q, &kv, &kv, &seqs, bidirectional)
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs causal attention"), "{err}");
}
