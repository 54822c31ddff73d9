//! bf16 frozen weights (`precision = "bf16"`): the `linear` products of both backends against an
//! f64 reference of the bf16-rounded operands, the CUDA backend (on the SIMT emulator) against
//! the CPU one, and the configuration key. Model-level checks are in `model_fixtures.rs`
//! (PyTorch references) and `algorithms.rs` (training).

use flexp::backend::cpu::Cpu;
use flexp::backend::{Backend, WeightPrecision};
use flexp::rng::Rng;
use flexp::run::config::RawConfig;

/// Value of `x` after rounding to bf16 (nearest even), in f64.
fn r16(x: f32) -> f64 {
    f64::from(half::bf16::from_f32(x).to_f32())
}

/// `c0 (+)= a[m,k] · op` where `op(kk, j)` is the right operand, with both operands first
/// passed through `round`; returns the result and, per element, the sum of the terms' magnitudes
/// (the scale of f32 accumulation error).
#[allow(clippy::too_many_arguments)]
fn reference(
    a: &[f32],
    op: &dyn Fn(usize, usize) -> f32,
    c0: &[f32],
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    round: fn(f32) -> f64,
) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; m * n];
    let mut mag = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = if accumulate {
                f64::from(c0[i * n + j])
            } else {
                0.0
            };
            let mut g = s.abs();
            for kk in 0..k {
                let t = round(a[i * k + kk]) * round(op(kk, j));
                s += t;
                g += t.abs();
            }
            out[i * n + j] = s;
            mag[i * n + j] = g;
        }
    }
    (out, mag)
}

fn assert_matches(what: &str, got: &[f32], want: &(Vec<f64>, Vec<f64>), k: usize) {
    let (want, mag) = want;
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, (&w, &s))) in got.iter().zip(want.iter().zip(mag)).enumerate() {
        // f32 accumulation over k terms: a few ulp of the terms' total magnitude.
        let tol = 4.0 * f64::from(f32::EPSILON) * (s + 1e-3) * (k as f64).sqrt().max(1.0);
        assert!(
            (f64::from(g) - w).abs() <= tol,
            "{what}: element {i}: got {g}, want {w} (tol {tol:.2e})"
        );
    }
}

/// (m, out, in): m = 1, odd in/out, widths not multiples of 16 or of the kernels' tiles, and
/// the MiniLM shapes at a few rows.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 33, 7),
    (5, 17, 65),
    (37, 70, 129),
    (64, 384, 384),
    (19, 1536, 384),
    (23, 384, 1536),
];

/// Checks `linear` and `linear_backward_input` of `be` in `precision` against the f64
/// reference: bf16 rounds both operands, f32 neither.
fn check_backend<B: Backend>(
    be: &B,
    precision: WeightPrecision,
    label: &str,
    shapes: &[(usize, usize, usize)],
) {
    let round: fn(f32) -> f64 = match precision {
        WeightPrecision::F32 => f64::from,
        WeightPrecision::Bf16 => r16,
    };
    let mut rng = Rng::new(21);
    for &(m, out, inp) in shapes {
        let w = rng.vec_range(out * inp, -1.0, 1.0);
        let wt = be.weight(&w, out, inp, precision).unwrap();
        assert_eq!(be.weight_shape(&wt), (out, inp));
        assert_eq!(be.weight_precision(&wt), precision);
        for accumulate in [false, true] {
            let x = rng.vec_range(m * inp, -1.0, 1.0);
            let y0 = rng.vec_range(m * out, -1.0, 1.0);
            let mut y = be.upload(&y0).unwrap();
            be.linear(&mut y, &be.upload(&x).unwrap(), &wt, m, accumulate)
                .unwrap();
            let want = reference(
                &x,
                &|kk, j| w[j * inp + kk],
                &y0,
                m,
                out,
                inp,
                accumulate,
                round,
            );
            let what =
                format!("{label} {precision} linear m={m} out={out} in={inp} acc={accumulate}");
            assert_matches(&what, &be.download(&y).unwrap(), &want, inp);

            let dy = rng.vec_range(m * out, -1.0, 1.0);
            let dx0 = rng.vec_range(m * inp, -1.0, 1.0);
            let mut dx = be.upload(&dx0).unwrap();
            be.linear_backward_input(&mut dx, &be.upload(&dy).unwrap(), &wt, m, accumulate)
                .unwrap();
            let want = reference(
                &dy,
                &|kk, j| w[kk * inp + j],
                &dx0,
                m,
                inp,
                out,
                accumulate,
                round,
            );
            let what = format!("{label} {precision} linear_backward_input m={m} out={out} in={inp} acc={accumulate}");
            assert_matches(&what, &be.download(&dx).unwrap(), &want, out);
        }
    }
}

#[test]
fn cpu_linear_matches_reference_in_both_precisions() {
    check_backend(&Cpu, WeightPrecision::F32, "cpu", SHAPES);
    check_backend(&Cpu, WeightPrecision::Bf16, "cpu", SHAPES);
}

#[test]
fn bf16_weights_store_rounded_values_in_half_the_memory() {
    let be = Cpu;
    let (out, inp) = (384, 1536);
    let w = Rng::new(3).vec_range(out * inp, -3.0, 3.0);
    let f = be.weight(&w, out, inp, WeightPrecision::F32).unwrap();
    let b = be.weight(&w, out, inp, WeightPrecision::Bf16).unwrap();
    assert_eq!(be.weight_to_host(&f).unwrap(), w);
    let rounded: Vec<f32> = w
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect();
    assert_eq!(be.weight_to_host(&b).unwrap(), rounded);
    // One packing per product (no padding at these multiples of 48): two f32 copies where the
    // packed f32 kernel runs (one row-major copy elsewhere), and two bf16 copies that together
    // take the bytes of one f32 matrix.
    let f32_copies = if flexp::backend::cpu::f32_kernel() == "avx512f" {
        2
    } else {
        1
    };
    assert_eq!(be.weight_bytes(&f), out * inp * 4 * f32_copies);
    assert_eq!(be.weight_bytes(&b), out * inp * 4);
    assert!(be.weight(&w[1..], out, inp, WeightPrecision::Bf16).is_err());
}

#[test]
fn shape_errors_name_the_op_instead_of_reading_out_of_bounds() {
    let be = Cpu;
    let w = be.weight(&[1.0; 12], 3, 4, WeightPrecision::Bf16).unwrap();
    let mut y = vec![0.0; 5];
    assert!(be.linear(&mut y, &vec![0.0; 8], &w, 2, false).is_err());
    let mut dx = vec![0.0; 8];
    assert!(be
        .linear_backward_input(&mut dx, &vec![0.0; 5], &w, 2, false)
        .is_err());
}

#[test]
fn precision_is_a_run_configuration_key() {
    let mut raw = RawConfig::default();
    assert_eq!(raw.resolve().unwrap().precision, WeightPrecision::F32);
    assert!(raw.resolved_toml().contains("\nprecision = \"f32\"\n"));
    raw.set("precision=bf16").unwrap();
    assert_eq!(raw.resolve().unwrap().precision, WeightPrecision::Bf16);
    assert!(raw.resolved_toml().contains("\nprecision = \"bf16\"\n"));
    raw.set("precision=fp8").unwrap();
    let err = raw.resolve().unwrap_err().to_string();
    assert!(err.contains("fp8") && err.contains("bf16"), "{err}");
    assert_eq!(
        "bf16".parse::<WeightPrecision>().unwrap().to_string(),
        "bf16"
    );
}

#[cfg(feature = "emulator")]
mod cuda {
    use super::*;
    use flexp::backend::cuda::CudaBackend;

    #[test]
    fn emulated_cuda_linear_matches_reference_in_both_precisions() {
        // The emulator runs every GPU thread as a fiber: the small shapes (ragged against the
        // 128x64 tile, m = 1, two grid blocks in each dimension) keep it quick.
        let gpu = CudaBackend::for_tests().unwrap();
        let shapes = &[(1, 1, 1), (1, 33, 7), (5, 17, 65), (130, 70, 33)];
        check_backend(&gpu, WeightPrecision::F32, "cuda", shapes);
        check_backend(&gpu, WeightPrecision::Bf16, "cuda", shapes);
    }

    #[test]
    fn emulated_cuda_bf16_linear_runs_on_tensor_cores_where_shapes_allow() {
        // in and out multiples of 8 (ragged against the 128x128 tile and the 32-deep K step):
        // both products go to kernels/gemm_tc.cu; in = 65 keeps the SIMT bf16 kernel.
        let dev = std::sync::Arc::new(flexp::backend::cuda::emulator::Emulator::new());
        let gpu = CudaBackend::new(dev.clone());
        check_backend(
            &gpu,
            WeightPrecision::Bf16,
            "cuda",
            &[(1, 8, 8), (77, 136, 40), (130, 24, 264)],
        );
        let n = dev.launch_counts();
        let count = |k: &str| n.get(k).copied().unwrap_or(0);
        // Three shapes, two accumulate modes each.
        assert_eq!(count("gemm_tc_bf16_nt"), 6, "{n:?}");
        assert_eq!(count("gemm_tc_bf16_nn"), 6, "{n:?}");
        assert_eq!(count("gemm_bf16_nt") + count("gemm_bf16_nn"), 0, "{n:?}");
        check_backend(&gpu, WeightPrecision::Bf16, "cuda", &[(5, 16, 65)]);
        let n = dev.launch_counts();
        assert_eq!(n.get("gemm_bf16_nt"), Some(&2), "{n:?}");
        // out = 16 is a multiple of 8 but k = out for the input gradient, n = in = 65 is not.
        assert_eq!(n.get("gemm_bf16_nn"), Some(&2), "{n:?}");
    }

    #[test]
    fn emulated_cuda_bf16_linear_matches_cpu() {
        // Both backends multiply the same bf16 values with f32 sums: only the order differs.
        let (cpu, gpu) = (Cpu, CudaBackend::for_tests().unwrap());
        let mut rng = Rng::new(5);
        let (m, out, inp) = (70, 130, 65);
        let w = rng.vec_range(out * inp, -1.0, 1.0);
        let wc = cpu.weight(&w, out, inp, WeightPrecision::Bf16).unwrap();
        let wg = gpu.weight(&w, out, inp, WeightPrecision::Bf16).unwrap();
        assert_eq!(
            gpu.weight_to_host(&wg).unwrap(),
            cpu.weight_to_host(&wc).unwrap()
        );
        assert_eq!(gpu.weight_bytes(&wg), out * inp * 2);
        let x = rng.vec_range(m * inp, -1.0, 1.0);
        let mut yc = vec![0.0; m * out];
        cpu.linear(&mut yc, &x, &wc, m, false).unwrap();
        let mut yg = gpu.zeros(m * out).unwrap();
        gpu.linear(&mut yg, &gpu.upload(&x).unwrap(), &wg, m, false)
            .unwrap();
        for (i, (g, c)) in gpu.download(&yg).unwrap().iter().zip(&yc).enumerate() {
            assert!(
                (g - c).abs() <= 1e-5 * (1.0 + c.abs()),
                "y[{i}]: {g} vs {c}"
            );
        }
        let dy = rng.vec_range(m * out, -1.0, 1.0);
        let mut dxc = vec![0.0; m * inp];
        cpu.linear_backward_input(&mut dxc, &dy, &wc, m, false)
            .unwrap();
        let mut dxg = gpu.zeros(m * inp).unwrap();
        gpu.linear_backward_input(&mut dxg, &gpu.upload(&dy).unwrap(), &wg, m, false)
            .unwrap();
        for (i, (g, c)) in gpu.download(&dxg).unwrap().iter().zip(&dxc).enumerate() {
            assert!(
                (g - c).abs() <= 1e-5 * (1.0 + c.abs()),
                "dx[{i}]: {g} vs {c}"
            );
        }
        // Shape errors are refused on the host, as on the CPU.
        let mut small = gpu.zeros(5).unwrap();
        assert!(gpu
            .linear(&mut small, &gpu.upload(&x).unwrap(), &wg, m, false)
            .is_err());
    }
}
