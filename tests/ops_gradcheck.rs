//! Every CPU backend op's backward checked against finite differences of its own forward
//! (loss accumulated in f64), and the forward of the products against naive f64 loops.
//! Shapes include odd sizes and single rows.

mod common;

use flexp::backend::cpu::Cpu;
use flexp::backend::{Activation, AdamW, Backend, LoraGradSeg, LoraSeg, LoraShape, Span};
use flexp::rng::Rng;

const EPS: f32 = 1e-2;

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Checks `grad` = d/dx Σ w·f(x) along random directions and single coordinates.
fn fd_check(
    name: &str,
    x: &[f32],
    w: &[f32],
    grad: &[f32],
    f: impl Fn(&[f32]) -> Vec<f32>,
    tol: f64,
) {
    let mut rng = Rng::new(99);
    let loss = |x: &[f32]| dot(&f(x), w);
    let mut dirs: Vec<Vec<f32>> = (0..3).map(|_| rng.vec_range(x.len(), -1.0, 1.0)).collect();
    for _ in 0..6.min(x.len()) {
        let mut e = vec![0.0; x.len()];
        e[rng.below(x.len())] = 1.0;
        dirs.push(e);
    }
    let gscale = grad.iter().map(|g| g.abs() as f64).fold(0.0, f64::max);
    for (k, u) in dirs.iter().enumerate() {
        let xp: Vec<f32> = x.iter().zip(u).map(|(a, b)| a + EPS * b).collect();
        let xm: Vec<f32> = x.iter().zip(u).map(|(a, b)| a - EPS * b).collect();
        let num = (loss(&xp) - loss(&xm)) / (2.0 * EPS as f64);
        let ana = dot(grad, u);
        let unorm: f64 = u.iter().map(|v| v.abs() as f64).sum();
        let err = (num - ana).abs() / (ana.abs() + gscale * unorm * 1e-2).max(1e-6);
        assert!(
            err < tol,
            "{name}: direction {k}: numeric {num:.6e} analytic {ana:.6e} (rel {err:.2e})"
        );
    }
}

fn rand(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.vec_range(n, -1.0, 1.0)
}

#[test]
fn matmul_all_transposes_match_naive() {
    let be = Cpu;
    let mut rng = Rng::new(1);
    for &(m, n, k) in &[(1, 1, 1), (7, 5, 3), (33, 17, 65), (130, 70, 9)] {
        for ta in [false, true] {
            for tb in [false, true] {
                let a = rand(&mut rng, m * k);
                let b = rand(&mut rng, k * n);
                let c0 = rand(&mut rng, m * n);
                for acc in [false, true] {
                    let mut c = c0.clone();
                    be.matmul(&mut c, &a, &b, m, n, k, ta, tb, acc).unwrap();
                    for i in 0..m {
                        for j in 0..n {
                            let mut s = if acc { c0[i * n + j] as f64 } else { 0.0 };
                            for p in 0..k {
                                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                                s += av as f64 * bv as f64;
                            }
                            assert!(
                                (c[i * n + j] as f64 - s).abs() < 1e-4 * (1.0 + s.abs()),
                                "({m},{n},{k},{ta},{tb},{acc})"
                            );
                        }
                    }
                }
            }
        }
    }
    let mut small = vec![0.0; 2];
    assert!(be
        .matmul(
            &mut small,
            &vec![0.0; 4],
            &vec![0.0; 4],
            2,
            2,
            2,
            false,
            false,
            false
        )
        .is_err());
}

#[test]
fn layer_norm_backward_matches_finite_differences() {
    let be = Cpu;
    let mut rng = Rng::new(2);
    for &(rows, d) in &[(1, 7), (5, 13), (40, 64)] {
        let x = rand(&mut rng, rows * d);
        let g = rng.vec_range(d, 0.5, 1.5);
        let b = rand(&mut rng, d);
        let w = rand(&mut rng, rows * d);
        let fwd = |x: &[f32]| {
            let (mut y, mut mu, mut rs) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows]);
            be.layer_norm_forward(&mut y, &mut mu, &mut rs, &x.to_vec(), &g, &b, rows, d, 1e-5)
                .unwrap();
            (y, mu, rs)
        };
        let (_, mu, rs) = fwd(&x);
        let mut dx = vec![0.0; rows * d];
        be.layer_norm_backward(&mut dx, &w, &x, &g, &mu, &rs, rows, d)
            .unwrap();
        fd_check(
            &format!("layer_norm {rows}x{d}"),
            &x,
            &w,
            &dx,
            |x| fwd(x).0,
            2e-3,
        );
        // Forward against the definition.
        let y = fwd(&x).0;
        for r in 0..rows {
            let row = &x[r * d..(r + 1) * d];
            let m = row.iter().map(|v| *v as f64).sum::<f64>() / d as f64;
            let v = row.iter().map(|v| (*v as f64 - m).powi(2)).sum::<f64>() / d as f64;
            for i in 0..d {
                let want = (row[i] as f64 - m) / (v + 1e-5).sqrt() * g[i] as f64 + b[i] as f64;
                assert!((y[r * d + i] as f64 - want).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn rms_norm_backward_matches_finite_differences() {
    let be = Cpu;
    let mut rng = Rng::new(3);
    for &(rows, d) in &[(1, 6), (9, 31)] {
        let x = rand(&mut rng, rows * d);
        let g = rng.vec_range(d, 0.5, 1.5);
        let w = rand(&mut rng, rows * d);
        let fwd = |x: &[f32]| {
            let (mut y, mut rs) = (vec![0.0; rows * d], vec![0.0; rows]);
            be.rms_norm_forward(&mut y, &mut rs, &x.to_vec(), &g, rows, d, 1e-6)
                .unwrap();
            (y, rs)
        };
        let (y, rs) = fwd(&x);
        for r in 0..rows {
            let row = &x[r * d..(r + 1) * d];
            let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d as f64;
            for i in 0..d {
                let want = row[i] as f64 / (ms + 1e-6).sqrt() * g[i] as f64;
                assert!((y[r * d + i] as f64 - want).abs() < 1e-5);
            }
        }
        let mut dx = vec![0.0; rows * d];
        be.rms_norm_backward(&mut dx, &w, &x, &g, &rs, rows, d)
            .unwrap();
        fd_check(
            &format!("rms_norm {rows}x{d}"),
            &x,
            &w,
            &dx,
            |x| fwd(x).0,
            2e-3,
        );
    }
}

#[test]
fn activations_match_definitions_and_finite_differences() {
    let be = Cpu;
    let mut rng = Rng::new(4);
    let n = 257;
    let x: Vec<f32> = rng.vec_range(n, -4.0, 4.0);
    let w = rand(&mut rng, n);
    let erf = |v: f64| libm::erf(v);
    for act in [
        Activation::GeluErf,
        Activation::GeluTanh,
        Activation::Silu,
        Activation::Relu,
    ] {
        let fwd = |x: &[f32]| {
            let mut y = vec![0.0; n];
            be.activation_forward(&mut y, &x.to_vec(), act, n).unwrap();
            y
        };
        let y = fwd(&x);
        for i in 0..n {
            let v = x[i] as f64;
            let want = match act {
                Activation::GeluErf => 0.5 * v * (1.0 + erf(v / 2f64.sqrt())),
                Activation::GeluTanh => {
                    0.5 * v
                        * (1.0
                            + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3)))
                                .tanh())
                }
                Activation::Silu => v / (1.0 + (-v).exp()),
                Activation::Relu => v.max(0.0),
            };
            assert!(
                (y[i] as f64 - want).abs() < 1e-5,
                "{act:?}({v}) = {} want {want}",
                y[i]
            );
        }
        // ReLU's kink: keep inputs away from 0 for the finite difference.
        let x2: Vec<f32> = x
            .iter()
            .map(|v| if v.abs() < 0.05 { 0.5 } else { *v })
            .collect();
        let mut dx = vec![0.0; n];
        be.activation_backward(&mut dx, &w, &x2, act, n).unwrap();
        fd_check(&format!("{act:?}"), &x2, &w, &dx, fwd, 2e-3);
        if act == Activation::GeluErf {
            // The closed form, in f64: Φ(x) + x·φ(x).
            for i in 0..n {
                let v = x2[i] as f64;
                let d = 0.5 * (1.0 + erf(v / 2f64.sqrt()))
                    + v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
                let want = w[i] as f64 * d;
                assert!(
                    (dx[i] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
                    "GeluErf'({v}) · {} = {} want {want}",
                    w[i],
                    dx[i]
                );
            }
        }
    }
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let be = Cpu;
    let mut rng = Rng::new(5);
    let n = 33;
    let g = rng.vec_range(n, -3.0, 3.0);
    let u = rand(&mut rng, n);
    let w = rand(&mut rng, n);
    let mut dg = vec![0.0; n];
    let mut du = vec![0.0; n];
    be.swiglu_backward(&mut dg, &mut du, &w, &g, &u, n).unwrap();
    let fwd = |g: &[f32], u: &[f32]| {
        let mut y = vec![0.0; n];
        be.swiglu_forward(&mut y, &g.to_vec(), &u.to_vec(), n)
            .unwrap();
        y
    };
    fd_check("swiglu d/dgate", &g, &w, &dg, |g| fwd(g, &u), 2e-3);
    fd_check("swiglu d/dup", &u, &w, &du, |u| fwd(&g, u), 2e-3);
}

#[test]
fn rope_rotates_pairs_and_inverse_is_the_transpose() {
    let be = Cpu;
    let mut rng = Rng::new(6);
    let (heads, hd) = (3, 8);
    let positions = vec![0u32, 1, 5, 17];
    let rows = positions.len();
    let x = rand(&mut rng, rows * heads * hd);
    let mut y = x.clone();
    be.rope(&mut y, &positions, heads, hd, 10000.0, false)
        .unwrap();
    // Definition: pair (i, i + hd/2) rotated by pos * theta^(-2i/hd).
    for (r, &p) in positions.iter().enumerate() {
        for h in 0..heads {
            for i in 0..hd / 2 {
                let ang = p as f64 * 10000f64.powf(-((2 * i) as f64) / hd as f64);
                let b = r * heads * hd + h * hd;
                let (x1, x2) = (x[b + i] as f64, x[b + i + hd / 2] as f64);
                assert!((y[b + i] as f64 - (x1 * ang.cos() - x2 * ang.sin())).abs() < 1e-5);
                assert!(
                    (y[b + i + hd / 2] as f64 - (x2 * ang.cos() + x1 * ang.sin())).abs() < 1e-5
                );
            }
        }
    }
    // The inverse undoes it, and <R x, w> = <x, R^T w> (the backward is the inverse rotation).
    let mut back = y.clone();
    be.rope(&mut back, &positions, heads, hd, 10000.0, true)
        .unwrap();
    common::assert_close("rope inverse", &back, &x, 1e-5);
    let w = rand(&mut rng, x.len());
    let mut rt_w = w.clone();
    be.rope(&mut rt_w, &positions, heads, hd, 10000.0, true)
        .unwrap();
    assert!((dot(&y, &w) - dot(&x, &rt_w)).abs() < 1e-4);
    assert!(
        be.rope(&mut vec![0.0; 5], &[0], 1, 5, 1e4, false).is_err(),
        "odd head_dim must be refused"
    );
}

#[test]
fn cross_entropy_matches_definition_and_finite_differences() {
    let be = Cpu;
    let mut rng = Rng::new(7);
    let (rows, c) = (5, 11);
    let logits: Vec<f32> = rng.vec_range(rows * c, -3.0, 3.0);
    let labels = vec![3i64, -100, 0, 10, 7];
    let weights = vec![0.5f32, 1.0, 0.25, 2.0, 1.0];
    let mut dl = vec![0.0; rows * c];
    let losses = be
        .cross_entropy(&mut dl, &logits, &labels, &weights, c)
        .unwrap();
    for r in 0..rows {
        let row = &logits[r * c..(r + 1) * c];
        let lse = row.iter().map(|v| (*v as f64).exp()).sum::<f64>().ln();
        let want = if labels[r] < 0 {
            0.0
        } else {
            lse - row[labels[r] as usize] as f64
        };
        assert!((losses[r] as f64 - want).abs() < 1e-5, "row {r}");
    }
    let total = |lg: &[f32]| -> Vec<f32> {
        let mut d = vec![0.0; rows * c];
        let l = be
            .cross_entropy(&mut d, &lg.to_vec(), &labels, &weights, c)
            .unwrap();
        l.iter().zip(&weights).map(|(a, b)| a * b).collect()
    };
    fd_check("cross_entropy", &logits, &vec![1.0; rows], &dl, total, 2e-3);
    assert!(be
        .cross_entropy(&mut dl, &logits, &[11, 0, 0, 0, 0], &weights, c)
        .is_err());
}

#[test]
fn segment_mean_backward_is_the_adjoint() {
    let be = Cpu;
    let mut rng = Rng::new(8);
    let d = 5;
    let spans = [
        Span { start: 0, len: 3 },
        Span { start: 3, len: 1 },
        Span { start: 4, len: 6 },
    ];
    let x = rand(&mut rng, 10 * d);
    let mut out = vec![0.0; 3 * d];
    be.segment_mean(&mut out, &x, &spans, d).unwrap();
    let w = rand(&mut rng, 3 * d);
    let mut dx = vec![0.0; 10 * d];
    be.segment_mean_backward(&mut dx, &w, &spans, d).unwrap();
    fd_check(
        "segment_mean",
        &x,
        &w,
        &dx,
        |x| {
            let mut o = vec![0.0; 3 * d];
            be.segment_mean(&mut o, &x.to_vec(), &spans, d).unwrap();
            o
        },
        1e-2,
    );
    assert!(
        (out[d] - x[3 * d]).abs() < 1e-7,
        "a length-1 span's mean is its row"
    );
}

#[test]
fn grouped_lora_matches_naive_and_finite_differences() {
    let be = Cpu;
    let mut rng = Rng::new(9);
    let s = LoraShape {
        d_in: 13,
        d_out: 7,
        rank: 3,
        scale: 1.5,
    };
    let spans = [
        Span { start: 0, len: 4 },
        Span { start: 4, len: 1 },
        Span { start: 7, len: 5 },
    ];
    let rows = 12;
    let ab: Vec<(Vec<f32>, Vec<f32>)> = (0..3)
        .map(|_| {
            (
                rand(&mut rng, s.rank * s.d_in),
                rand(&mut rng, s.d_out * s.rank),
            )
        })
        .collect();
    let x = rand(&mut rng, rows * s.d_in);
    let y0 = rand(&mut rng, rows * s.d_out);
    let fwd = |x: &[f32], ab: &[(Vec<f32>, Vec<f32>)]| -> (Vec<f32>, Vec<f32>) {
        let segs: Vec<LoraSeg<'_, Cpu>> = spans
            .iter()
            .zip(ab)
            .map(|(r, (a, b))| LoraSeg { rows: *r, a, b })
            .collect();
        let mut y = y0.clone();
        let mut u = vec![0.0; rows * s.rank];
        be.lora_forward(&mut y, &x.to_vec(), &mut u, &segs, s)
            .unwrap();
        (y, u)
    };
    let (y, u) = fwd(&x, &ab);
    // Naive: rows outside every segment (5, 6) are untouched.
    for (sp, (a, b)) in spans.iter().zip(&ab) {
        for r in sp.start..sp.end() {
            for o in 0..s.d_out {
                let mut acc = 0.0f64;
                for k in 0..s.rank {
                    let xa: f64 = (0..s.d_in)
                        .map(|i| x[r * s.d_in + i] as f64 * a[k * s.d_in + i] as f64)
                        .sum();
                    acc += xa * b[o * s.rank + k] as f64;
                }
                let want = y0[r * s.d_out + o] as f64 + s.scale as f64 * acc;
                assert!((y[r * s.d_out + o] as f64 - want).abs() < 1e-5);
            }
        }
    }
    assert_eq!(y[5 * s.d_out..7 * s.d_out], y0[5 * s.d_out..7 * s.d_out]);

    let w = rand(&mut rng, rows * s.d_out);
    let mut grads: Vec<(Vec<f32>, Vec<f32>)> = ab
        .iter()
        .map(|(a, b)| (vec![0.0; a.len()], vec![0.0; b.len()]))
        .collect();
    let mut dx = vec![0.0; rows * s.d_in];
    {
        let mut gsegs: Vec<LoraGradSeg<'_, Cpu>> = spans
            .iter()
            .zip(&ab)
            .zip(grads.iter_mut())
            .map(|((r, (a, b)), (da, db))| LoraGradSeg {
                rows: *r,
                a,
                b,
                da,
                db,
            })
            .collect();
        be.lora_backward(&mut dx, &w, &x, &u, &mut gsegs, s)
            .unwrap();
    }
    fd_check("lora dx", &x, &w, &dx, |x| fwd(x, &ab).0, 2e-3);
    for g in 0..3 {
        let a_fn = |a: &[f32]| {
            let mut ab2 = ab.clone();
            ab2[g].0 = a.to_vec();
            fwd(&x, &ab2).0
        };
        fd_check(
            &format!("lora dA[{g}]"),
            &ab[g].0,
            &w,
            &grads[g].0,
            a_fn,
            2e-3,
        );
        let b_fn = |b: &[f32]| {
            let mut ab2 = ab.clone();
            ab2[g].1 = b.to_vec();
            fwd(&x, &ab2).0
        };
        fd_check(
            &format!("lora dB[{g}]"),
            &ab[g].1,
            &w,
            &grads[g].1,
            b_fn,
            2e-3,
        );
    }
}

#[test]
fn adamw_matches_pytorch_update_rule() {
    let be = Cpu;
    let hp = AdamW {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut p = vec![0.5f32, -1.0, 2.0];
    let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
    let mut pr: Vec<f64> = p.iter().map(|x| *x as f64).collect();
    let (mut mr, mut vr) = (vec![0.0f64; 3], vec![0.0f64; 3]);
    for step in 1..=5u64 {
        let g = vec![0.1f32 * step as f32, -0.3, 0.05];
        be.adamw_step(&mut p, &g, &mut m, &mut v, hp, step).unwrap();
        for i in 0..3 {
            let gi = g[i] as f64;
            pr[i] *= 1.0 - 0.01 * 0.1;
            mr[i] = 0.9 * mr[i] + 0.1 * gi;
            vr[i] = 0.99 * vr[i] + 0.01 * gi * gi;
            let mh = mr[i] / (1.0 - 0.9f64.powi(step as i32));
            let vh = vr[i] / (1.0 - 0.99f64.powi(step as i32));
            pr[i] -= 0.01 * mh / (vh.sqrt() + 1e-8);
        }
    }
    for i in 0..3 {
        assert!(
            (p[i] as f64 - pr[i]).abs() < 1e-6,
            "param {i}: {} vs {}",
            p[i],
            pr[i]
        );
    }
}

#[test]
fn gather_scatter_embedding_roundtrip() {
    let be = Cpu;
    let table: Vec<f32> = (0..12).map(|v| v as f32).collect(); // 4 rows x 3
    let mut out = vec![0.0; 6];
    be.embedding(&mut out, &table, &[3, 0], 3, false).unwrap();
    assert_eq!(out, vec![9.0, 10.0, 11.0, 0.0, 1.0, 2.0]);
    be.embedding(&mut out, &table, &[1, 1], 3, true).unwrap();
    assert_eq!(out, vec![12.0, 14.0, 16.0, 3.0, 5.0, 7.0]);
    assert!(
        be.embedding(&mut out, &table, &[4], 3, false).is_err(),
        "id past the table"
    );
    let mut g = vec![0.0; 6];
    be.gather_rows(&mut g, &table, &[2, 1], 3).unwrap();
    assert_eq!(g, vec![6.0, 7.0, 8.0, 3.0, 4.0, 5.0]);
    let mut dst = vec![0.0; 12];
    be.scatter_rows(&mut dst, &g, &[0, 3], 3).unwrap();
    assert_eq!(&dst[0..3], &[6.0, 7.0, 8.0]);
    assert_eq!(&dst[9..12], &[3.0, 4.0, 5.0]);
}
