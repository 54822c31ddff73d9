//! Dense ops of the CUDA backend (GEMM, LayerNorm, RMSNorm, cross-entropy, AdamW) on the SIMT
//! emulator against the CPU backend, which is the numerical reference. Sizes are chosen off the
//! kernels' tile and block sizes (1, 7, 37, 65, 130 ...) so ragged edges are exercised.
#![cfg(feature = "emulator")]

use flexp::backend::cpu::Cpu;
use flexp::backend::cuda::{CudaBackend, KArg, LaunchCfg};
use flexp::backend::{AdamW, Backend};
use flexp::rng::Rng;

fn cuda() -> CudaBackend {
    CudaBackend::for_tests().unwrap()
}

/// Asserts |got - want| <= atol + rtol * |want| element-wise, naming the first bad element.
fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let ok = err <= atol + rtol * w.abs();
        assert!(ok, "{what}: element {i}: got {g}, want {w} (|diff| {err})");
    }
}

fn rand_vec(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    rng.vec_range(n, lo, hi)
}

// ---------------------------------------------------------------- GEMM

/// Sizes around the 128x64x16 tile: single elements, k = 1, m = 1, n = 1, partial tiles in every
/// dimension, exact tiles, and more than one block in both grid dimensions.
const GEMM_SIZES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (7, 13, 5),
    (1, 70, 17),
    (129, 1, 1),
    (65, 33, 130),
    (128, 64, 64),
    (130, 70, 33),
];

/// f32 accumulation over k terms of magnitude <= 1: allow a few ulp per term.
fn gemm_tol(k: usize) -> (f32, f32) {
    (1e-5, 1e-6 * (k as f32 + 4.0))
}

#[test]
fn matmul_matches_cpu_for_all_transposes_and_accumulate() {
    let (cpu, gpu) = (Cpu, cuda());
    let mut rng = Rng::new(11);
    for &(m, n, k) in GEMM_SIZES {
        for ta in [false, true] {
            for tb in [false, true] {
                for acc in [false, true] {
                    let a = rand_vec(&mut rng, m * k, -1.0, 1.0);
                    let b = rand_vec(&mut rng, k * n, -1.0, 1.0);
                    let c0 = rand_vec(&mut rng, m * n, -1.0, 1.0);
                    let mut c_cpu = c0.clone();
                    cpu.matmul(&mut c_cpu, &a, &b, m, n, k, ta, tb, acc)
                        .unwrap();
                    let mut c_gpu = gpu.upload(&c0).unwrap();
                    let (ga, gb) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
                    gpu.matmul(&mut c_gpu, &ga, &gb, m, n, k, ta, tb, acc)
                        .unwrap();
                    let (rtol, atol) = gemm_tol(k);
                    assert_close(
                        &format!("matmul m={m} n={n} k={k} ta={ta} tb={tb} acc={acc}"),
                        &gpu.download(&c_gpu).unwrap(),
                        &c_cpu,
                        rtol,
                        atol,
                    );
                }
            }
        }
    }
}

#[test]
fn matmul_leaves_memory_past_the_output_alone() {
    // C larger than m*n: the tail must keep its values (the kernel writes only [m, n]).
    let gpu = cuda();
    let mut rng = Rng::new(12);
    let (m, n, k) = (5, 3, 4);
    let a = rand_vec(&mut rng, m * k, -1.0, 1.0);
    let b = rand_vec(&mut rng, k * n, -1.0, 1.0);
    let mut c = gpu.upload(&vec![7.0; m * n + 9]).unwrap();
    gpu.matmul(
        &mut c,
        &gpu.upload(&a).unwrap(),
        &gpu.upload(&b).unwrap(),
        m,
        n,
        k,
        false,
        false,
        false,
    )
    .unwrap();
    let out = gpu.download(&c).unwrap();
    assert!(out[m * n..].iter().all(|&v| v == 7.0), "{out:?}");
}

#[test]
fn matmul_with_empty_inner_dimension_zeroes_or_keeps() {
    let (cpu, gpu) = (Cpu, cuda());
    let c0 = vec![1.5f32; 6];
    for acc in [false, true] {
        let mut c_cpu = c0.clone();
        cpu.matmul(&mut c_cpu, &vec![], &vec![], 2, 3, 0, false, false, acc)
            .unwrap();
        let mut c_gpu = gpu.upload(&c0).unwrap();
        gpu.matmul(
            &mut c_gpu,
            &gpu.zeros(0).unwrap(),
            &gpu.zeros(0).unwrap(),
            2,
            3,
            0,
            false,
            false,
            acc,
        )
        .unwrap();
        assert_eq!(gpu.download(&c_gpu).unwrap(), c_cpu, "acc={acc}");
    }
    // m = 0: nothing to do, no launch.
    let mut c = gpu.zeros(0).unwrap();
    let a = gpu.zeros(0).unwrap();
    let b = gpu.upload(&[1.0; 4]).unwrap();
    gpu.matmul(&mut c, &a, &b, 0, 2, 2, false, false, false)
        .unwrap();
}

#[test]
fn matmul_rejects_short_buffers_like_the_cpu() {
    let (cpu, gpu) = (Cpu, cuda());
    let (m, n, k) = (4, 5, 6);
    let cpu_err = cpu
        .matmul(
            &mut vec![0.0; m * n],
            &vec![0.0; m * k - 1],
            &vec![0.0; k * n],
            m,
            n,
            k,
            false,
            false,
            false,
        )
        .unwrap_err()
        .to_string();
    let mut c = gpu.zeros(m * n).unwrap();
    let gpu_err = gpu
        .matmul(
            &mut c,
            &gpu.zeros(m * k - 1).unwrap(),
            &gpu.zeros(k * n).unwrap(),
            m,
            n,
            k,
            false,
            false,
            false,
        )
        .unwrap_err()
        .to_string();
    assert_eq!(gpu_err, cpu_err);
}

/// Rounds to the nearest bf16 (ties to even), returning the bits and the value as f32.
fn to_bf16(v: &[f32]) -> (Vec<u16>, Vec<f32>) {
    let h: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
    (
        h.iter().map(|x| x.to_bits()).collect(),
        h.iter().map(|x| x.to_f32()).collect(),
    )
}

/// Launches a bf16 GEMM kernel by name (C f32 [m, n] starting as `c0`, A and B as bf16 bits)
/// with blocks of `tile` = (columns, rows) of C, and returns C. The bf16 kernels are not behind
/// the Backend trait (its buffers are f32).
fn bf16_gemm_by_name(
    gpu: &CudaBackend,
    name: &str,
    tile: (usize, usize),
    (m, n, k): (usize, usize, usize),
    acc: bool,
    (a_bits, b_bits): (&[u16], &[u16]),
    c0: &[f32],
) -> Vec<f32> {
    let c = gpu.upload(c0).unwrap();
    let (ga, gb) = (
        gpu.upload_pod(a_bits).unwrap(),
        gpu.upload_pod(b_bits).unwrap(),
    );
    let cfg = LaunchCfg {
        grid: (n.div_ceil(tile.0) as u32, m.div_ceil(tile.1) as u32, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    // SAFETY: gemm_bf16_* and gemm_tc_bf16_* (C, A, B, m, n, k, acc) read m·k and k·n bf16 (the
    // two uploads; for the tensor-core kernels the callers keep k and n multiples of 8, so rows
    // are 16-byte aligned) and update m·n f32 of C; the grid covers C with the kernel's tiles.
    unsafe {
        gpu.launch(
            name,
            cfg,
            &[
                c.arg(),
                ga.arg(),
                gb.arg(),
                KArg::I32(m as i32),
                KArg::I32(n as i32),
                KArg::I32(k as i32),
                KArg::I32(acc as i32),
            ],
        )
    }
    .unwrap();
    gpu.download(&c).unwrap()
}

#[test]
fn bf16_matmul_matches_cpu_on_rounded_inputs() {
    // The bf16 kernels are not behind the Backend trait (its buffers are f32): launch them by
    // name. Inputs are rounded to bf16 first and the CPU multiplies the rounded values, so the
    // only difference left is f32 summation order.
    let (cpu, gpu) = (Cpu, cuda());
    let mut rng = Rng::new(13);
    for &(m, n, k) in &[(1, 1, 1), (7, 13, 5), (65, 33, 130), (130, 70, 33)] {
        for ta in [false, true] {
            for tb in [false, true] {
                for acc in [false, true] {
                    let (a_bits, a) = to_bf16(&rand_vec(&mut rng, m * k, -1.0, 1.0));
                    let (b_bits, b) = to_bf16(&rand_vec(&mut rng, k * n, -1.0, 1.0));
                    let c0 = rand_vec(&mut rng, m * n, -1.0, 1.0);
                    let mut c_cpu = c0.clone();
                    cpu.matmul(&mut c_cpu, &a, &b, m, n, k, ta, tb, acc)
                        .unwrap();
                    let name = format!(
                        "gemm_bf16_{}{}",
                        if ta { 't' } else { 'n' },
                        if tb { 't' } else { 'n' }
                    );
                    let got = bf16_gemm_by_name(
                        &gpu,
                        &name,
                        (64, 128),
                        (m, n, k),
                        acc,
                        (&a_bits, &b_bits),
                        &c0,
                    );
                    let (rtol, atol) = gemm_tol(k);
                    assert_close(
                        &format!("{name} m={m} n={n} k={k} acc={acc}"),
                        &got,
                        &c_cpu,
                        rtol,
                        atol,
                    );
                }
            }
        }
    }
}

#[test]
fn tensor_core_gemm_matches_cpu_on_rounded_inputs() {
    // kernels/gemm_tc.cu by name: B stored [n, k] (_nt, the forward product) or [k, n] (_nn, the
    // input gradient). Shapes ragged against the 128x128 tile and the 32-deep K step (k = 40,
    // 72 and 520 end in a part-filled stage), m = 1, several blocks in each dimension; k and n
    // are multiples of 8, the kernels' alignment condition.
    let (cpu, gpu) = (Cpu, cuda());
    let mut rng = Rng::new(29);
    for &(m, n, k) in &[(1, 8, 8), (77, 136, 40), (130, 24, 520), (129, 264, 72)] {
        for tb in [false, true] {
            for acc in [false, true] {
                let (a_bits, a) = to_bf16(&rand_vec(&mut rng, m * k, -1.0, 1.0));
                let (b_bits, b) = to_bf16(&rand_vec(&mut rng, k * n, -1.0, 1.0));
                let c0 = rand_vec(&mut rng, m * n, -1.0, 1.0);
                let mut c_cpu = c0.clone();
                cpu.matmul(&mut c_cpu, &a, &b, m, n, k, false, tb, acc)
                    .unwrap();
                let name = if tb {
                    "gemm_tc_bf16_nt"
                } else {
                    "gemm_tc_bf16_nn"
                };
                let got = bf16_gemm_by_name(
                    &gpu,
                    name,
                    (128, 128),
                    (m, n, k),
                    acc,
                    (&a_bits, &b_bits),
                    &c0,
                );
                let (rtol, atol) = gemm_tol(k);
                assert_close(
                    &format!("{name} m={m} n={n} k={k} acc={acc}"),
                    &got,
                    &c_cpu,
                    rtol,
                    atol,
                );
            }
        }
    }
}

// ---------------------------------------------------------------- norms

/// Row lengths: 1, below and at one warp, odd, BERT/MiniLM hidden sizes, past 512 (256 threads
/// with more than 2 elements each).
const NORM_DIMS: &[usize] = &[1, 2, 31, 32, 37, 100, 384, 600];
/// Not a multiple of any rows-per-block (1, 2, 4 or 8).
const NORM_ROWS: usize = 9;

/// Inputs with a large common offset, so a one-pass E[x²] − E[x]² variance would lose digits.
fn norm_input(rng: &mut Rng, n: usize) -> Vec<f32> {
    rand_vec(rng, n, -1.0, 1.0)
        .iter()
        .map(|v| v * 2.0 + 3.0)
        .collect()
}

#[test]
fn layer_norm_forward_and_backward_match_cpu() {
    let (cpu, gpu) = (Cpu, cuda());
    let mut rng = Rng::new(21);
    let eps = 1e-5;
    for &dim in NORM_DIMS {
        let rows = NORM_ROWS;
        let x = norm_input(&mut rng, rows * dim);
        let gamma = rand_vec(&mut rng, dim, 0.5, 1.5);
        let beta = rand_vec(&mut rng, dim, -0.5, 0.5);
        let dy = rand_vec(&mut rng, rows * dim, -1.0, 1.0);

        let (mut y, mut mean, mut rstd) = (vec![0.0; rows * dim], vec![0.0; rows], vec![0.0; rows]);
        cpu.layer_norm_forward(
            &mut y, &mut mean, &mut rstd, &x, &gamma, &beta, rows, dim, eps,
        )
        .unwrap();
        let (gx, gg, gbeta) = (
            gpu.upload(&x).unwrap(),
            gpu.upload(&gamma).unwrap(),
            gpu.upload(&beta).unwrap(),
        );
        let mut gy = gpu.zeros(rows * dim).unwrap();
        let (mut gmean, mut grstd) = (gpu.zeros(rows).unwrap(), gpu.zeros(rows).unwrap());
        gpu.layer_norm_forward(
            &mut gy, &mut gmean, &mut grstd, &gx, &gg, &gbeta, rows, dim, eps,
        )
        .unwrap();
        assert_close(
            &format!("ln mean dim={dim}"),
            &gpu.download(&gmean).unwrap(),
            &mean,
            1e-6,
            1e-6,
        );
        assert_close(
            &format!("ln rstd dim={dim}"),
            &gpu.download(&grstd).unwrap(),
            &rstd,
            2e-5,
            0.0,
        );
        assert_close(
            &format!("ln y dim={dim}"),
            &gpu.download(&gy).unwrap(),
            &y,
            2e-5,
            2e-5,
        );

        // The backward reads the CPU's statistics on both sides, so it is checked on its own.
        let mut dx = vec![0.0; rows * dim];
        cpu.layer_norm_backward(&mut dx, &dy, &x, &gamma, &mean, &rstd, rows, dim)
            .unwrap();
        let mut gdx = gpu.zeros(rows * dim).unwrap();
        gpu.layer_norm_backward(
            &mut gdx,
            &gpu.upload(&dy).unwrap(),
            &gx,
            &gg,
            &gpu.upload(&mean).unwrap(),
            &gpu.upload(&rstd).unwrap(),
            rows,
            dim,
        )
        .unwrap();
        assert_close(
            &format!("ln dx dim={dim}"),
            &gpu.download(&gdx).unwrap(),
            &dx,
            2e-5,
            2e-5,
        );
    }
}

#[test]
fn rms_norm_forward_and_backward_match_cpu() {
    let (cpu, gpu) = (Cpu, cuda());
    let mut rng = Rng::new(22);
    let eps = 1e-6;
    for &dim in NORM_DIMS {
        let rows = NORM_ROWS;
        let x = norm_input(&mut rng, rows * dim);
        let gamma = rand_vec(&mut rng, dim, 0.5, 1.5);
        let dy = rand_vec(&mut rng, rows * dim, -1.0, 1.0);

        let (mut y, mut rstd) = (vec![0.0; rows * dim], vec![0.0; rows]);
        cpu.rms_norm_forward(&mut y, &mut rstd, &x, &gamma, rows, dim, eps)
            .unwrap();
        let (gx, gg) = (gpu.upload(&x).unwrap(), gpu.upload(&gamma).unwrap());
        let (mut gy, mut grstd) = (gpu.zeros(rows * dim).unwrap(), gpu.zeros(rows).unwrap());
        gpu.rms_norm_forward(&mut gy, &mut grstd, &gx, &gg, rows, dim, eps)
            .unwrap();
        assert_close(
            &format!("rms rstd dim={dim}"),
            &gpu.download(&grstd).unwrap(),
            &rstd,
            2e-6,
            0.0,
        );
        assert_close(
            &format!("rms y dim={dim}"),
            &gpu.download(&gy).unwrap(),
            &y,
            1e-5,
            1e-6,
        );

        let mut dx = vec![0.0; rows * dim];
        cpu.rms_norm_backward(&mut dx, &dy, &x, &gamma, &rstd, rows, dim)
            .unwrap();
        let mut gdx = gpu.zeros(rows * dim).unwrap();
        gpu.rms_norm_backward(
            &mut gdx,
            &gpu.upload(&dy).unwrap(),
            &gx,
            &gg,
            &gpu.upload(&rstd).unwrap(),
            rows,
            dim,
        )
        .unwrap();
        assert_close(
            &format!("rms dx dim={dim}"),
            &gpu.download(&gdx).unwrap(),
            &dx,
            2e-5,
            2e-6,
        );
    }
}

#[test]
fn norms_with_a_single_row_and_no_rows() {
    let (cpu, gpu) = (Cpu, cuda());
    let mut rng = Rng::new(23);
    let dim = 384;
    let x = norm_input(&mut rng, dim);
    let gamma = rand_vec(&mut rng, dim, 0.5, 1.5);
    let beta = rand_vec(&mut rng, dim, -0.5, 0.5);
    let (mut y, mut mean, mut rstd) = (vec![0.0; dim], vec![0.0; 1], vec![0.0; 1]);
    cpu.layer_norm_forward(
        &mut y, &mut mean, &mut rstd, &x, &gamma, &beta, 1, dim, 1e-12,
    )
    .unwrap();
    let (mut gy, mut gm, mut gr) = (
        gpu.zeros(dim).unwrap(),
        gpu.zeros(1).unwrap(),
        gpu.zeros(1).unwrap(),
    );
    let (gx, gg, gb) = (
        gpu.upload(&x).unwrap(),
        gpu.upload(&gamma).unwrap(),
        gpu.upload(&beta).unwrap(),
    );
    gpu.layer_norm_forward(&mut gy, &mut gm, &mut gr, &gx, &gg, &gb, 1, dim, 1e-12)
        .unwrap();
    assert_close("ln single row", &gpu.download(&gy).unwrap(), &y, 2e-5, 2e-5);
    // rows = 0 launches nothing and succeeds.
    gpu.layer_norm_forward(&mut gy, &mut gm, &mut gr, &gx, &gg, &gb, 0, dim, 1e-12)
        .unwrap();
    gpu.rms_norm_forward(&mut gy, &mut gr, &gx, &gg, 0, dim, 1e-6)
        .unwrap();
}

#[test]
fn norms_reject_short_buffers_like_the_cpu() {
    let (cpu, gpu) = (Cpu, cuda());
    let (rows, dim) = (3, 8);
    let cpu_err = cpu
        .layer_norm_forward(
            &mut vec![0.0; rows * dim],
            &mut vec![0.0; rows],
            &mut vec![0.0; rows - 1],
            &vec![0.0; rows * dim],
            &vec![0.0; dim],
            &vec![0.0; dim],
            rows,
            dim,
            1e-5,
        )
        .unwrap_err()
        .to_string();
    let z = |n| gpu.zeros(n).unwrap();
    let gpu_err = gpu
        .layer_norm_forward(
            &mut z(rows * dim),
            &mut z(rows),
            &mut z(rows - 1),
            &z(rows * dim),
            &z(dim),
            &z(dim),
            rows,
            dim,
            1e-5,
        )
        .unwrap_err()
        .to_string();
    assert_eq!(gpu_err, cpu_err);
    let cpu_err = cpu
        .rms_norm_backward(
            &mut vec![0.0; rows * dim],
            &vec![0.0; rows * dim],
            &vec![0.0; rows * dim],
            &vec![0.0; dim - 1],
            &vec![0.0; rows],
            rows,
            dim,
        )
        .unwrap_err()
        .to_string();
    let gpu_err = gpu
        .rms_norm_backward(
            &mut z(rows * dim),
            &z(rows * dim),
            &z(rows * dim),
            &z(dim - 1),
            &z(rows),
            rows,
            dim,
        )
        .unwrap_err()
        .to_string();
    assert_eq!(gpu_err, cpu_err);
}

// ---------------------------------------------------------------- cross-entropy

fn check_cross_entropy(
    logits: &[f32],
    labels: &[i64],
    weights: &[f32],
    classes: usize,
    what: &str,
) {
    let (cpu, gpu) = (Cpu, cuda());
    let rows = labels.len();
    let mut d_cpu = vec![9.0; rows * classes];
    let loss_cpu = cpu
        .cross_entropy(&mut d_cpu, &logits.to_vec(), labels, weights, classes)
        .unwrap();
    // dlogits starts as NaN-filled device memory would: every element must be written.
    let mut d_gpu = gpu.upload(&vec![f32::NAN; rows * classes]).unwrap();
    let loss_gpu = gpu
        .cross_entropy(
            &mut d_gpu,
            &gpu.upload(logits).unwrap(),
            labels,
            weights,
            classes,
        )
        .unwrap();
    assert_close(&format!("{what} losses"), &loss_gpu, &loss_cpu, 1e-5, 1e-5);
    assert_close(
        &format!("{what} dlogits"),
        &gpu.download(&d_gpu).unwrap(),
        &d_cpu,
        1e-5,
        1e-7,
    );
}

#[test]
fn cross_entropy_three_classes_with_ignored_rows_and_weights() {
    let mut rng = Rng::new(31);
    let classes = 3;
    let labels = [0i64, 2, -1, 1, -100, 2, 0];
    let logits = rand_vec(&mut rng, labels.len() * classes, -4.0, 4.0);
    let weights = rand_vec(&mut rng, labels.len(), 0.1, 2.0);
    check_cross_entropy(&logits, &labels, &weights, classes, "ce3");
}

#[test]
fn cross_entropy_thousand_classes() {
    let mut rng = Rng::new(32);
    let classes = 1000;
    let labels = [999i64, 0, -1, 517, 3, 42];
    // Wide logits: the row max dominates, so an unstabilised exp would overflow.
    let mut logits = rand_vec(&mut rng, labels.len() * classes, -30.0, 30.0);
    // A masked class (-inf) in a used row contributes nothing.
    logits[classes + 5] = f32::NEG_INFINITY;
    let weights = rand_vec(&mut rng, labels.len(), 0.1, 2.0);
    check_cross_entropy(&logits, &labels, &weights, classes, "ce1000");
}

#[test]
fn cross_entropy_lm_head_vocabulary() {
    // GPT-2's vocabulary: the row streams through in many strides of 256 threads.
    let mut rng = Rng::new(33);
    let classes = 50257;
    let labels = [50256i64, -1, 1234];
    let logits = rand_vec(&mut rng, labels.len() * classes, -5.0, 5.0);
    check_cross_entropy(&logits, &labels, &[1.0, 1.0, 0.25], classes, "ce50257");
}

#[test]
fn cross_entropy_single_class_and_edge_shapes() {
    let mut rng = Rng::new(34);
    let logits = rand_vec(&mut rng, 4, -2.0, 2.0);
    check_cross_entropy(&logits, &[0, 0, -1, 0], &[1.0, 0.5, 1.0, 2.0], 1, "ce1");
    let gpu = cuda();
    // No rows: no launch, no losses.
    let mut d = gpu.zeros(0).unwrap();
    assert!(gpu
        .cross_entropy(&mut d, &gpu.zeros(0).unwrap(), &[], &[], 10)
        .unwrap()
        .is_empty());
    // A label past the last class is refused before any launch, with the CPU's message.
    let mut d = gpu.zeros(6).unwrap();
    let err = gpu
        .cross_entropy(&mut d, &gpu.zeros(6).unwrap(), &[0, 3], &[1.0, 1.0], 3)
        .unwrap_err()
        .to_string();
    let cpu_err = Cpu
        .cross_entropy(&mut vec![0.0; 6], &vec![0.0; 6], &[0, 3], &[1.0, 1.0], 3)
        .unwrap_err()
        .to_string();
    assert_eq!(err, cpu_err);
    // Too few weights.
    assert!(gpu
        .cross_entropy(&mut d, &gpu.zeros(6).unwrap(), &[0, 1], &[1.0], 3)
        .is_err());
}

// ---------------------------------------------------------------- AdamW

#[test]
fn adamw_matches_cpu_over_several_steps() {
    let (cpu, gpu) = (Cpu, cuda());
    let mut rng = Rng::new(41);
    let hp = AdamW {
        lr: 2e-3,
        beta1: 0.9,
        beta2: 0.98,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    for n in [1usize, 1037] {
        let p0 = rand_vec(&mut rng, n, -1.0, 1.0);
        let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        let mut gp = gpu.upload(&p0).unwrap();
        let (mut gm, mut gv) = (gpu.zeros(n).unwrap(), gpu.zeros(n).unwrap());
        for step in 1..=6u64 {
            let g = rand_vec(&mut rng, n, -0.5, 0.5);
            cpu.adamw_step(&mut p, &g, &mut m, &mut v, hp, step)
                .unwrap();
            gpu.adamw_step(
                &mut gp,
                &gpu.upload(&g).unwrap(),
                &mut gm,
                &mut gv,
                hp,
                step,
            )
            .unwrap();
            assert_close(
                &format!("adamw m n={n} step={step}"),
                &gpu.download(&gm).unwrap(),
                &m,
                1e-6,
                1e-9,
            );
            assert_close(
                &format!("adamw v n={n} step={step}"),
                &gpu.download(&gv).unwrap(),
                &v,
                1e-6,
                1e-12,
            );
            assert_close(
                &format!("adamw p n={n} step={step}"),
                &gpu.download(&gp).unwrap(),
                &p,
                1e-6,
                1e-7,
            );
        }
    }
}

#[test]
fn adamw_rejects_short_moments_like_the_cpu() {
    let (cpu, gpu) = (Cpu, cuda());
    let hp = AdamW::default();
    let cpu_err = cpu
        .adamw_step(
            &mut vec![0.0; 8],
            &vec![0.0; 8],
            &mut vec![0.0; 7],
            &mut vec![0.0; 8],
            hp,
            1,
        )
        .unwrap_err()
        .to_string();
    let z = |n| gpu.zeros(n).unwrap();
    let gpu_err = gpu
        .adamw_step(&mut z(8), &z(8), &mut z(7), &mut z(8), hp, 1)
        .unwrap_err()
        .to_string();
    assert_eq!(gpu_err, cpu_err);
}
