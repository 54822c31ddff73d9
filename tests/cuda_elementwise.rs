//! kernels/elementwise.cu on the SIMT emulator against the CPU backend: every op on the same
//! random inputs, at sizes that are not multiples of the block size, plus the edge cases the
//! CPU defines (duplicate scatter rows, accumulate flags, overlapping spans, bad ids) and the
//! f32 <-> bf16 casts against the `half` crate.
#![cfg(feature = "emulator")]

use flexp::backend::cpu::Cpu;
use flexp::backend::cuda::emulator::Emulator;
use flexp::backend::cuda::{CudaBackend, CudaBuf, KArg, LaunchCfg};
use flexp::backend::{Activation, Backend, Span};
use flexp::rng::Rng;
use std::sync::Arc;

/// The emulated device under a shuffled schedule (blocks out of order, threads interleaved at
/// memory accesses): these kernels' results must not depend on the order. `FLEXP_EMU_SEED`
/// picks another schedule for a whole run.
fn gpu() -> CudaBackend {
    let dev = Emulator::new();
    let seed = match dev.schedule_seed() {
        0 => 0xE1E_5EED,
        s => s,
    };
    CudaBackend::new(Arc::new(dev.with_schedule_seed(seed)))
}

fn up(be: &CudaBackend, v: &[f32]) -> CudaBuf {
    be.upload(v).unwrap()
}

fn down(be: &CudaBackend, b: &CudaBuf) -> Vec<f32> {
    be.download(b).unwrap()
}

/// Asserts `|got - want| <= tol(i)` element by element, naming the first offender.
fn close_by(what: &str, got: &[f32], want: &[f32], tol: impl Fn(usize) -> f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for i in 0..got.len() {
        let (g, w) = (got[i], want[i]);
        if g.is_nan() && w.is_nan() {
            continue;
        }
        assert!(
            (g - w).abs() <= tol(i),
            "{what}: element {i}: got {g}, want {w} (tolerance {})",
            tol(i)
        );
    }
}

fn exact(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for i in 0..got.len() {
        assert_eq!(
            got[i].to_bits(),
            want[i].to_bits(),
            "{what}: element {i}: got {}, want {}",
            got[i],
            want[i]
        );
    }
}

/// Both backends' error messages for the same bad call.
fn same_error<T: std::fmt::Debug, U: std::fmt::Debug>(
    cpu: flexp::error::Result<T>,
    gpu: flexp::error::Result<U>,
) {
    let c = cpu.expect_err("cpu accepts").to_string();
    let g = gpu.expect_err("cuda accepts").to_string();
    assert_eq!(g, c);
}

const SHAPES: &[(usize, usize)] = &[(1, 1), (7, 33), (65, 130), (3, 1000), (33, 7)];

#[test]
fn add_bias_and_add_assign_match_cpu() {
    let (be, cpu) = (gpu(), Cpu);
    let mut rng = Rng::new(1);
    for &(rows, dim) in SHAPES {
        // One spare row after the shape: it must stay untouched.
        let y = rng.vec_range((rows + 1) * dim, -2.0, 2.0);
        let bias = rng.vec_range(dim, -1.0, 1.0);
        let mut yc = y.clone();
        cpu.add_bias(&mut yc, &bias, rows, dim).unwrap();
        let mut yg = up(&be, &y);
        be.add_bias(&mut yg, &up(&be, &bias), rows, dim).unwrap();
        exact("add_bias", &down(&be, &yg), &yc);

        let x = rng.vec_range(rows * dim + 3, -2.0, 2.0);
        let len = rows * dim;
        let mut yc = y.clone();
        cpu.add_assign(&mut yc, &x, len).unwrap();
        let mut yg = up(&be, &y);
        be.add_assign(&mut yg, &up(&be, &x), len).unwrap();
        exact("add_assign", &down(&be, &yg), &yc);
    }
    // Shape errors carry the CPU's messages; zero sizes are no-ops.
    let mut y = up(&be, &[1.0; 10]);
    let b = up(&be, &[1.0; 3]);
    same_error(
        cpu.add_bias(&mut vec![1.0; 10], &vec![1.0; 3], 3, 4),
        be.add_bias(&mut y, &b, 3, 4),
    );
    same_error(
        cpu.add_assign(&mut vec![1.0; 10], &vec![1.0; 3], 5),
        be.add_assign(&mut y, &b, 5),
    );
    be.add_bias(&mut y, &b, 0, 3).unwrap();
    be.add_assign(&mut y, &b, 0).unwrap();
    assert_eq!(down(&be, &y), vec![1.0; 10]);
}

/// The host sizes grids to at most a few thousand blocks; a hand-made tiny grid makes the
/// grid-stride loops of the kernels take several trips at test sizes.
#[test]
fn grid_stride_loops_cover_everything_with_a_small_grid() {
    let be = gpu();
    let mut rng = Rng::new(2);
    let n = 5000;
    let y0 = rng.vec_range(n, -1.0, 1.0);
    let x = rng.vec_range(n, -1.0, 1.0);
    let y = up(&be, &y0);
    let xb = up(&be, &x);
    // SAFETY: ew_add_assign touches y and xb at [0, n), both n long.
    unsafe {
        be.launch(
            "ew_add_assign",
            LaunchCfg::linear(3, 256),
            &[y.arg(), xb.arg(), KArg::I32(n as i32)],
        )
    }
    .unwrap();
    let want: Vec<f32> = y0.iter().zip(&x).map(|(a, b)| a + b).collect();
    exact("add_assign (3 blocks)", &down(&be, &y), &want);
    // 2-D kernels: x over columns, y over spans, both smaller than the problem.
    let (rows, dim) = (9, 700);
    let xs = rng.vec_range(rows * dim, -1.0, 1.0);
    let spans = [
        Span { start: 0, len: 3 },
        Span { start: 2, len: 5 },
        Span { start: 8, len: 1 },
        Span { start: 4, len: 0 },
    ];
    let table: Vec<i32> = spans
        .iter()
        .flat_map(|s| [s.start as i32, s.len as i32])
        .collect();
    let mut want = vec![0.0; spans.len() * dim];
    Cpu.segment_mean(&mut want, &xs, &spans, dim).unwrap();
    let meta = be.upload_pod(&table).unwrap();
    let out = be.zeros(spans.len() * dim).unwrap();
    let xg = up(&be, &xs);
    // SAFETY: ew_segment_mean writes out (spans·dim) and reads the x rows of the spans table,
    // all inside the rows·dim of `xs`.
    unsafe {
        be.launch(
            "ew_segment_mean",
            LaunchCfg {
                grid: (1, 2, 1),
                block: (256, 1, 1),
                shared_bytes: 0,
            },
            &[
                out.arg(),
                xg.arg(),
                meta.arg(),
                KArg::I32(spans.len() as i32),
                KArg::I32(dim as i32),
            ],
        )
    }
    .unwrap();
    exact("segment_mean (1x2 blocks)", &down(&be, &out), &want);
}

#[test]
fn gather_scatter_and_embedding_match_cpu() {
    let (be, cpu) = (gpu(), Cpu);
    let mut rng = Rng::new(3);
    for &(src_rows, dim) in SHAPES {
        let src = rng.vec_range(src_rows * dim, -3.0, 3.0);
        let n = 2 * src_rows + 1;
        let rows: Vec<u32> = (0..n).map(|_| rng.below(src_rows) as u32).collect();
        let dst0 = rng.vec_range(n * dim + 2, -1.0, 1.0);

        let mut dc = dst0.clone();
        cpu.gather_rows(&mut dc, &src, &rows, dim).unwrap();
        let mut dg = up(&be, &dst0);
        be.gather_rows(&mut dg, &up(&be, &src), &rows, dim).unwrap();
        exact("gather_rows", &down(&be, &dg), &dc);

        for accumulate in [false, true] {
            let mut dc = dst0.clone();
            cpu.embedding(&mut dc, &src, &rows, dim, accumulate)
                .unwrap();
            let mut dg = up(&be, &dst0);
            be.embedding(&mut dg, &up(&be, &src), &rows, dim, accumulate)
                .unwrap();
            exact("embedding", &down(&be, &dg), &dc);
        }

        // Scatter into a bigger buffer, with rows named more than once (the last write wins)
        // and rows never named (untouched).
        let dst_rows = src_rows + 3;
        let srcs = rng.vec_range(n * dim, -3.0, 3.0);
        let targets: Vec<u32> = (0..n).map(|_| rng.below(dst_rows) as u32).collect();
        let dst0 = rng.vec_range(dst_rows * dim, -1.0, 1.0);
        let mut dc = dst0.clone();
        cpu.scatter_rows(&mut dc, &srcs, &targets, dim).unwrap();
        let mut dg = up(&be, &dst0);
        be.scatter_rows(&mut dg, &up(&be, &srcs), &targets, dim)
            .unwrap();
        exact("scatter_rows", &down(&be, &dg), &dc);
    }

    // Errors: a source row past the end, an id past the vocabulary, a short destination.
    let src = vec![1.0f32; 12];
    let srcg = up(&be, &src);
    let mut dg = up(&be, &[0.0; 12]);
    same_error(
        cpu.gather_rows(&mut vec![0.0; 12], &src, &[0, 3], 4),
        be.gather_rows(&mut dg, &srcg, &[0, 3], 4),
    );
    same_error(
        cpu.embedding(&mut vec![0.0; 12], &src, &[1, 7, 2], 4, false),
        be.embedding(&mut dg, &srcg, &[1, 7, 2], 4, false),
    );
    same_error(
        cpu.scatter_rows(&mut vec![0.0; 12], &src, &[0, 5], 4),
        be.scatter_rows(&mut dg, &srcg, &[0, 5], 4),
    );
    same_error(
        cpu.gather_rows(&mut vec![0.0; 12], &src, &[0, 1, 2, 0], 4),
        be.gather_rows(&mut dg, &srcg, &[0, 1, 2, 0], 4),
    );
    // Nothing to do.
    be.gather_rows(&mut dg, &srcg, &[], 4).unwrap();
    be.scatter_rows(&mut dg, &srcg, &[], 4).unwrap();
    be.embedding(&mut dg, &srcg, &[], 4, true).unwrap();
    assert_eq!(down(&be, &dg), vec![0.0; 12]);
}

const ACTS: [Activation; 4] = [
    Activation::GeluErf,
    Activation::GeluTanh,
    Activation::Silu,
    Activation::Relu,
];

/// Inputs for the activations: a dense sweep of the interesting range, wide random values, and
/// the points where implementations usually differ (0, signed zero, huge arguments).
fn act_inputs(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n / 2)
        .map(|i| -8.0 + 16.0 * i as f32 / (n / 2) as f32)
        .collect();
    x.extend(rng.vec_range(n - n / 2 - 8, -30.0, 30.0));
    x.extend([0.0, -0.0, 1e-30, -1e-30, 100.0, -100.0, 87.5, -90.0]);
    x
}

/// The CPU evaluates exp and erf with polynomial approximations (src/backend/cpu/math.rs:
/// erf to 5e-7 absolute, exp to 3e-7 relative) where the kernels call the exact erff / expf /
/// tanhf (within 2 ulp on a GPU). The activations are x times such a term, so the two differ by
/// at most about 0.5·|x|·5e-7 plus a few ulps (1.2e-7 relative each) of the value: the tolerance
/// is 1e-7 + 3e-7·|x| + 6e-7·|y|. The observed differences stay below half of it; a wrong
/// constant or branch moves results by 1e-4 or more.
fn act_tol(x: f32, y: f32) -> f32 {
    1e-7 + 3e-7 * x.abs() + 6e-7 * y.abs()
}

#[test]
fn activations_match_cpu_within_the_cpu_approximation_error() {
    let (be, cpu) = (gpu(), Cpu);
    let mut rng = Rng::new(4);
    for n in [1usize, 17, 4099] {
        let x = if n < 16 {
            vec![0.7]
        } else {
            act_inputs(&mut rng, n)
        };
        let n = x.len();
        let dy = rng.vec_range(n, -2.0, 2.0);
        let (xg, dyg) = (up(&be, &x), up(&be, &dy));
        for act in ACTS {
            let mut yc = vec![0.0; n];
            cpu.activation_forward(&mut yc, &x, act, n).unwrap();
            let mut yg = be.zeros(n).unwrap();
            be.activation_forward(&mut yg, &xg, act, n).unwrap();
            close_by(&format!("{act:?} forward"), &down(&be, &yg), &yc, |i| {
                act_tol(x[i], yc[i])
            });

            let mut dc = vec![0.0; n];
            cpu.activation_backward(&mut dc, &dy, &x, act, n).unwrap();
            let mut dg = be.zeros(n).unwrap();
            be.activation_backward(&mut dg, &dyg, &xg, act, n).unwrap();
            close_by(&format!("{act:?} backward"), &down(&be, &dg), &dc, |i| {
                act_tol(x[i], dc[i]) * (1.0 + dy[i].abs())
            });
        }
    }
    // A partial length leaves the rest alone.
    let x = rng.vec_range(10, -1.0, 1.0);
    let mut yg = up(&be, &[5.0; 10]);
    be.activation_forward(&mut yg, &up(&be, &x), Activation::Relu, 6)
        .unwrap();
    let y = down(&be, &yg);
    assert_eq!(&y[6..], &[5.0; 4]);
    assert_eq!(
        y[..6],
        x[..6].iter().map(|v| v.max(0.0)).collect::<Vec<_>>()[..]
    );
    let mut dg = be.zeros(3).unwrap();
    same_error(
        cpu.activation_backward(&mut vec![0.0; 3], &vec![0.0; 2], &vec![0.0; 3], ACTS[0], 3),
        be.activation_backward(
            &mut dg,
            &up(&be, &[0.0; 2]),
            &up(&be, &[0.0; 3]),
            ACTS[0],
            3,
        ),
    );
}

#[test]
fn swiglu_matches_cpu() {
    let (be, cpu) = (gpu(), Cpu);
    let mut rng = Rng::new(5);
    for n in [1usize, 7, 1000] {
        let mut gate = act_inputs(&mut rng, n.max(16));
        gate.truncate(n);
        let upv = rng.vec_range(n, -3.0, 3.0);
        let dy = rng.vec_range(n, -2.0, 2.0);
        let mut yc = vec![0.0; n];
        cpu.swiglu_forward(&mut yc, &gate, &upv, n).unwrap();
        let mut yg = be.zeros(n).unwrap();
        be.swiglu_forward(&mut yg, &up(&be, &gate), &up(&be, &upv), n)
            .unwrap();
        // silu(g) · u: the silu tolerance scaled by |u|.
        close_by("swiglu forward", &down(&be, &yg), &yc, |i| {
            act_tol(gate[i], yc[i]) * (1.0 + upv[i].abs())
        });

        let (mut dgc, mut duc) = (vec![0.0; n], vec![0.0; n]);
        cpu.swiglu_backward(&mut dgc, &mut duc, &dy, &gate, &upv, n)
            .unwrap();
        let (mut dgg, mut dug) = (be.zeros(n).unwrap(), be.zeros(n).unwrap());
        be.swiglu_backward(
            &mut dgg,
            &mut dug,
            &up(&be, &dy),
            &up(&be, &gate),
            &up(&be, &upv),
            n,
        )
        .unwrap();
        close_by("swiglu dup", &down(&be, &dug), &duc, |i| {
            act_tol(gate[i], duc[i]) * (1.0 + dy[i].abs())
        });
        close_by("swiglu dgate", &down(&be, &dgg), &dgc, |i| {
            act_tol(gate[i], dgc[i]) * (1.0 + dy[i].abs()) * (1.0 + upv[i].abs())
        });
    }
    let mut y = be.zeros(4).unwrap();
    same_error(
        cpu.swiglu_forward(&mut vec![0.0; 4], &vec![0.0; 4], &vec![0.0; 3], 4),
        be.swiglu_forward(&mut y, &up(&be, &[0.0; 4]), &up(&be, &[0.0; 3]), 4),
    );
}

/// The gated unit with any activation (Gemma's GeGLU is `gelu_tanh`), forward and backward.
#[test]
fn gated_unit_matches_cpu() {
    let (be, cpu) = (gpu(), Cpu);
    let mut rng = Rng::new(15);
    for act in [Activation::GeluTanh, Activation::GeluErf, Activation::Silu] {
        for n in [1usize, 7, 1000] {
            let mut gate = act_inputs(&mut rng, n.max(16));
            gate.truncate(n);
            let upv = rng.vec_range(n, -3.0, 3.0);
            let dy = rng.vec_range(n, -2.0, 2.0);
            let mut yc = vec![0.0; n];
            cpu.gated_forward(&mut yc, &gate, &upv, act, n).unwrap();
            let mut yg = be.zeros(n).unwrap();
            be.gated_forward(&mut yg, &up(&be, &gate), &up(&be, &upv), act, n)
                .unwrap();
            close_by("gated forward", &down(&be, &yg), &yc, |i| {
                act_tol(gate[i], yc[i]) * (1.0 + upv[i].abs())
            });
            let (mut dgc, mut duc) = (vec![0.0; n], vec![0.0; n]);
            cpu.gated_backward(&mut dgc, &mut duc, &dy, &gate, &upv, act, n)
                .unwrap();
            let (mut dgg, mut dug) = (be.zeros(n).unwrap(), be.zeros(n).unwrap());
            be.gated_backward(
                &mut dgg,
                &mut dug,
                &up(&be, &dy),
                &up(&be, &gate),
                &up(&be, &upv),
                act,
                n,
            )
            .unwrap();
            close_by("gated dup", &down(&be, &dug), &duc, |i| {
                act_tol(gate[i], duc[i]) * (1.0 + dy[i].abs())
            });
            close_by("gated dgate", &down(&be, &dgg), &dgc, |i| {
                act_tol(gate[i], dgc[i]) * (1.0 + dy[i].abs()) * (1.0 + upv[i].abs())
            });
        }
    }
    let mut y = be.zeros(4).unwrap();
    same_error(
        cpu.gated_forward(
            &mut vec![0.0; 4],
            &vec![0.0; 4],
            &vec![0.0; 3],
            Activation::GeluTanh,
            4,
        ),
        be.gated_forward(
            &mut y,
            &up(&be, &[0.0; 4]),
            &up(&be, &[0.0; 3]),
            Activation::GeluTanh,
            4,
        ),
    );
}

/// `x *= alpha` (Gemma's embedding scale): bit for bit, one rounding per element.
#[test]
fn scale_matches_cpu() {
    let (be, cpu) = (gpu(), Cpu);
    let mut rng = Rng::new(16);
    for n in [1usize, 7, 1000] {
        let x = rng.vec_range(n, -3.0, 3.0);
        let mut xc = x.clone();
        cpu.scale(&mut xc, 25.298_22, n).unwrap();
        let mut xg = up(&be, &x);
        be.scale(&mut xg, 25.298_22, n).unwrap();
        exact("scale", &down(&be, &xg), &xc);
        assert!(xc.iter().zip(&x).all(|(a, b)| *a == b * 25.298_22));
    }
    same_error(
        cpu.scale(&mut vec![0.0; 3], 2.0, 4),
        be.scale(&mut up(&be, &[0.0; 3]), 2.0, 4),
    );
}

#[test]
fn rope_matches_cpu_forward_and_inverse() {
    let (be, cpu) = (gpu(), Cpu);
    let mut rng = Rng::new(6);
    for &(rows, heads, head_dim, theta, max_pos) in &[
        (1usize, 1usize, 2usize, 10_000.0f32, 10usize),
        (7, 3, 8, 10_000.0, 600),
        (33, 2, 64, 500_000.0, 200_000),
        (5, 4, 130, 10_000.0, 5_000_000),
    ] {
        let n = rows * heads * head_dim;
        let x = rng.vec_range(n + 5, -2.0, 2.0);
        let positions: Vec<u32> = (0..rows).map(|_| rng.below(max_pos) as u32).collect();
        for inverse in [false, true] {
            let mut xc = x.clone();
            cpu.rope(&mut xc, &positions, heads, head_dim, theta, inverse)
                .unwrap();
            let mut xg = up(&be, &x);
            be.rope(&mut xg, &positions, heads, head_dim, theta, inverse)
                .unwrap();
            // f64 angles on both sides; the kernel's f32 sin/cos of the reduced angle are within
            // ~2 ulp of the CPU's rounded f64 ones, times |x| <= 2, over two products.
            close_by(
                &format!("rope {rows}x{heads}x{head_dim} pos<{max_pos} inverse={inverse}"),
                &down(&be, &xg),
                &xc,
                |_| 2e-6,
            );
        }
        // Forward then inverse is the identity.
        let mut xg = up(&be, &x);
        be.rope(&mut xg, &positions, heads, head_dim, theta, false)
            .unwrap();
        be.rope(&mut xg, &positions, heads, head_dim, theta, true)
            .unwrap();
        close_by("rope round trip", &down(&be, &xg), &x, |_| 4e-6);
    }
    let mut xg = up(&be, &[0.0; 12]);
    same_error(
        cpu.rope(&mut vec![0.0; 12], &[0, 1], 2, 3, 1e4, false),
        be.rope(&mut xg, &[0, 1], 2, 3, 1e4, false),
    );
    same_error(
        cpu.rope(&mut vec![0.0; 12], &[0, 1], 2, 4, 1e4, false),
        be.rope(&mut xg, &[0, 1], 2, 4, 1e4, false),
    );
}

#[test]
fn segment_mean_forward_and_backward_match_cpu() {
    let (be, cpu) = (gpu(), Cpu);
    let mut rng = Rng::new(7);
    for dim in [1usize, 7, 130, 300] {
        // Ragged spans: empty, single rows, overlapping, out of order, and rows covered by none.
        let spans = [
            Span { start: 0, len: 5 },
            Span { start: 5, len: 1 },
            Span { start: 9, len: 0 },
            Span { start: 3, len: 4 },
            Span { start: 12, len: 17 },
            Span { start: 40, len: 2 },
            Span { start: 12, len: 1 },
        ];
        let rows = 43;
        let x = rng.vec_range(rows * dim, -2.0, 2.0);
        let out0 = rng.vec_range(spans.len() * dim + 1, -1.0, 1.0);
        let mut oc = out0.clone();
        cpu.segment_mean(&mut oc, &x, &spans, dim).unwrap();
        let mut og = up(&be, &out0);
        be.segment_mean(&mut og, &up(&be, &x), &spans, dim).unwrap();
        exact("segment_mean", &down(&be, &og), &oc);

        let dout = rng.vec_range(spans.len() * dim, -1.0, 1.0);
        let dx0 = rng.vec_range(rows * dim + 2, -1.0, 1.0);
        let mut dc = dx0.clone();
        cpu.segment_mean_backward(&mut dc, &dout, &spans, dim)
            .unwrap();
        let mut dg = up(&be, &dx0);
        be.segment_mean_backward(&mut dg, &up(&be, &dout), &spans, dim)
            .unwrap();
        // The same additions in the same order; only FMA contraction on a GPU could differ.
        close_by("segment_mean_backward", &down(&be, &dg), &dc, |i| {
            1e-7 * (1.0 + dc[i].abs())
        });
    }
    let mut og = be.zeros(4).unwrap();
    let spans = [Span { start: 0, len: 3 }];
    same_error(
        cpu.segment_mean(&mut vec![0.0; 4], &vec![0.0; 8], &spans, 4),
        be.segment_mean(&mut og, &up(&be, &[0.0; 8]), &spans, 4),
    );
    same_error(
        cpu.segment_mean_backward(&mut vec![0.0; 4], &vec![0.0; 4], &spans, 4),
        be.segment_mean_backward(&mut og, &up(&be, &[0.0; 4]), &spans, 4),
    );
    be.segment_mean(&mut og, &up(&be, &[0.0; 8]), &[], 4)
        .unwrap();
    be.segment_mean_backward(&mut og, &up(&be, &[0.0; 8]), &[], 4)
        .unwrap();
}

fn bf16_bits(be: &CudaBackend, mem: &flexp::backend::cuda::DeviceMem, n: usize) -> Vec<u16> {
    let mut out: Vec<u16> = be.download_pod(mem).unwrap();
    out.truncate(n);
    out
}

#[test]
fn bf16_casts_round_to_nearest_even_like_the_half_crate() {
    let be = gpu();
    let mut rng = Rng::new(8);
    let mut x: Vec<f32> = rng.vec_range(3000, -1e3, 1e3);
    x.extend((0..2000).map(|_| f32::from_bits(rng.next_u64() as u32)));
    // Ties (lower half exactly 0x8000) round to even: 0x3f80_8000 down, 0x3f81_8000 up.
    x.extend(
        [
            0x3f80_8000u32,
            0x3f81_8000,
            0xbf80_8000,
            0x3f80_7fff,
            0x3f80_8001,
            0x7f7f_ffff, // f32::MAX rounds up to infinity
            0x0000_0001, // smallest subnormal
            0x807f_ffff,
            0x7fc0_0000, // quiet NaN
            0x7f80_0001, // signalling NaN: must stay NaN
            0xff80_0001,
            0x7f80_0000,
            0xff80_0000,
            0x0000_0000,
            0x8000_0000,
        ]
        .map(f32::from_bits),
    );
    let n = x.len();
    let xg = up(&be, &x);
    let h = be.cast_to_bf16(&xg).unwrap();
    assert_eq!(h.bytes(), n * 2);
    let bits = bf16_bits(&be, &h, n);
    for i in 0..n {
        let want = half::bf16::from_f32(x[i]);
        if x[i].is_nan() {
            assert!(
                half::bf16::from_bits(bits[i]).is_nan(),
                "NaN {:#x}",
                x[i].to_bits()
            );
        } else {
            assert_eq!(
                bits[i],
                want.to_bits(),
                "{} ({:#x}) -> {:#x}, half says {:#x}",
                x[i],
                x[i].to_bits(),
                bits[i],
                want.to_bits()
            );
        }
    }
    // Back to f32: exact for every one of the 65536 bf16 values (NaN stays NaN).
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let hmem = be.upload_pod(&all).unwrap();
    let back = down(&be, &be.cast_from_bf16(&hmem, all.len()).unwrap());
    for (&b, &f) in all.iter().zip(&back) {
        let want = half::bf16::from_bits(b).to_f32();
        if want.is_nan() {
            assert!(f.is_nan(), "{b:#x}");
        } else {
            assert_eq!(f.to_bits(), want.to_bits(), "{b:#x}");
        }
    }
    // Round trip through the casts equals half's rounding.
    let rt = down(&be, &be.cast_from_bf16(&h, n).unwrap());
    for i in 0..n {
        let want = half::bf16::from_f32(x[i]).to_f32();
        assert!(rt[i].to_bits() == want.to_bits() || (rt[i].is_nan() && want.is_nan()));
    }
    // A partial cast, an empty one, and a too-short source.
    assert_eq!(
        down(&be, &be.cast_from_bf16(&h, 3).unwrap()),
        rt[..3].to_vec()
    );
    let empty = be.cast_to_bf16(&be.zeros(0).unwrap()).unwrap();
    assert_eq!(empty.bytes(), 0);
    assert!(be.cast_from_bf16(&h, n + 1).is_err());
}
