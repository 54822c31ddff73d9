//! kernels/align.cu on the SIMT emulator against the host reference of FlexP-SFL's
//! gradient-projection alignment (flexp::algorithms::flat): segmented inner products, the
//! client rule (project each conflicting (client, group) segment, then add lambda times the
//! alignment gradient) and the server rule (mean of the rows projected against their mean).
#![cfg(feature = "emulator")]

use flexp::algorithms::flat;
use flexp::backend::cuda::{CudaBackend, CudaBuf};
use flexp::backend::{Backend, Span};
use flexp::rng::Rng;

fn up(be: &CudaBackend, v: &[f32]) -> CudaBuf {
    be.upload(v).unwrap()
}

/// The kernels round each update to f32 from the same f64 value as the host, but a GPU may fuse
/// `g + c·a` into one FMA (one rounding fewer in f64), which can move the f32 result by one ulp;
/// two ulps of tolerance, no more.
fn close_ulp(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for i in 0..got.len() {
        let (g, w) = (got[i], want[i]);
        let tol = 2.0 * f32::EPSILON * w.abs().max(f32::MIN_POSITIVE);
        assert!(
            (g - w).abs() <= tol,
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

/// How a segment's alignment gradient relates to its CE gradient.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `<g, a> > 0`: left alone by the projection.
    Agree,
    /// `<g, a> < 0`: projected.
    Conflict,
    /// `a = 0`: left alone whatever `g` is.
    ZeroA,
    /// Independent random vectors (either sign).
    Random,
}

/// Fills `g[r]`, `a[r]` for a segment of the given kind.
fn fill(rng: &mut Rng, g: &mut [f32], a: &mut [f32], kind: Kind) {
    for i in 0..g.len() {
        let av = rng.range(-1.0, 1.0);
        let noise = rng.range(-0.5, 0.5);
        let (gv, av) = match kind {
            Kind::Agree => (0.8 * av + noise, av),
            Kind::Conflict => (-0.8 * av + noise, av),
            Kind::ZeroA => (noise, 0.0),
            Kind::Random => (rng.range(-1.0, 1.0), av),
        };
        g[i] = gv;
        a[i] = av;
    }
}

/// K clients, each a flat vector cut into ragged groups (lengths around the kernel's 4096-element
/// chunk, single elements, empty groups), one segment per (client, group); a gap between clients
/// belongs to no segment.
fn make_problem(rng: &mut Rng, k: usize) -> (Vec<f32>, Vec<f32>, Vec<Span>, Vec<Kind>) {
    const LENS: &[usize] = &[1, 7, 0, 300, 4095, 4096, 4097, 33, 9000, 2];
    const KINDS: [Kind; 4] = [Kind::Agree, Kind::Conflict, Kind::ZeroA, Kind::Random];
    let mut segs = Vec::new();
    let mut kinds = Vec::new();
    let mut off = 0;
    for c in 0..k {
        // Every client has at least an agreeing and a conflicting group.
        let groups = 3 + rng.below(4);
        for j in 0..groups {
            let len = LENS[(c * 3 + j * 7 + rng.below(LENS.len())) % LENS.len()];
            let kind = match j {
                0 => Kind::Conflict,
                1 => Kind::Agree,
                _ => KINDS[rng.below(4)],
            };
            segs.push(Span { start: off, len });
            kinds.push(kind);
            off += len;
        }
        off += 5; // the gap
    }
    let mut g = rng.vec_range(off, -1.0, 1.0);
    let mut a = rng.vec_range(off, -1.0, 1.0);
    for (s, &kind) in segs.iter().zip(&kinds) {
        fill(
            rng,
            &mut g[s.start..s.end()],
            &mut a[s.start..s.end()],
            kind,
        );
    }
    (g, a, segs, kinds)
}

#[test]
fn segmented_inner_products_match_flat_dot() {
    let be = CudaBackend::for_tests().unwrap();
    let mut rng = Rng::new(11);
    let (g, a, segs, kinds) = make_problem(&mut rng, 4);
    let got = be.align_dots(&up(&be, &g), &up(&be, &a), &segs).unwrap();
    assert_eq!(got.len(), segs.len());
    for ((s, &(ga, aa)), kind) in segs.iter().zip(&got).zip(&kinds) {
        let (gs, as_) = (&g[s.start..s.end()], &a[s.start..s.end()]);
        let want_ga = flat::dot(gs, as_);
        let want_aa = flat::dot(as_, as_);
        // Same f64 products, summed in another order: relative 1e-12 of the sum of magnitudes.
        let scale: f64 = gs
            .iter()
            .zip(as_)
            .map(|(x, y)| (*x as f64 * *y as f64).abs())
            .sum();
        assert!(
            (ga - want_ga).abs() <= 1e-12 * scale.max(1e-300),
            "{s:?} {kind:?}: <g,a> {ga} vs {want_ga}"
        );
        assert!(
            (aa - want_aa).abs() <= 1e-12 * want_aa,
            "{s:?}: <a,a> {aa} vs {want_aa}"
        );
        // Short segments may fall either way; long ones follow their construction.
        match kind {
            Kind::Agree if s.len >= 30 => assert!(ga > 0.0),
            Kind::Conflict if s.len >= 30 => assert!(ga < 0.0),
            Kind::ZeroA => assert_eq!((ga, aa), (0.0, 0.0)),
            _ => {}
        }
    }
}

/// The host rule of flexp_sfl.rs for `align = proj`, segment by segment.
fn client_rule_reference(g: &[f32], a: &[f32], segs: &[Span], lambda: f32) -> Vec<f32> {
    let mut want = g.to_vec();
    for s in segs {
        flat::project_conflict(&mut want[s.start..s.end()], &a[s.start..s.end()]);
        flat::axpy(
            &mut want[s.start..s.end()],
            lambda as f64,
            &a[s.start..s.end()],
        );
    }
    want
}

#[test]
fn client_rule_matches_project_conflict_then_axpy() {
    let be = CudaBackend::for_tests().unwrap();
    let mut rng = Rng::new(12);
    for k in 1..=5 {
        let (g, a, segs, _) = make_problem(&mut rng, k);
        for lambda in [0.0f32, 0.25] {
            let want = client_rule_reference(&g, &a, &segs, lambda);
            let mut gg = up(&be, &g);
            be.align_project(&mut gg, &up(&be, &a), &segs, lambda)
                .unwrap();
            let got = be.download(&gg).unwrap();
            close_ulp(&format!("K={k} lambda={lambda}"), &got, &want);
            // Conflicting segments were projected onto the plane normal to a, the others left
            // alone (with lambda = 0); both cases occur.
            let (mut projected, mut kept) = (0, 0);
            for s in segs.iter().filter(|s| s.len > 0 && lambda == 0.0) {
                let r = s.start..s.end();
                let ga = flat::dot(&g[r.clone()], &a[r.clone()]);
                let aa = flat::dot(&a[r.clone()], &a[r.clone()]);
                if ga < 0.0 && aa > 0.0 {
                    projected += 1;
                    assert!(got[r.clone()] != g[r.clone()], "{s:?} not projected");
                    let after = flat::dot(&got[r.clone()], &a[r.clone()]);
                    let scale = aa.sqrt() * flat::dot(&g[r.clone()], &g[r.clone()]).sqrt();
                    assert!(after.abs() < 1e-5 * scale, "{s:?}: <g',a> = {after}");
                } else {
                    kept += 1;
                    assert_eq!(got[r.clone()], g[r], "{s:?} changed");
                }
            }
            if lambda == 0.0 {
                assert!(
                    projected > 0 && kept > 0,
                    "{projected} projected, {kept} kept"
                );
            }
            // The gaps between clients belong to no segment: untouched.
            let mut covered = vec![false; g.len()];
            for s in &segs {
                covered[s.start..s.end()].iter_mut().for_each(|c| *c = true);
            }
            for i in (0..g.len()).filter(|&i| !covered[i]) {
                assert_eq!(got[i], g[i], "gap element {i}");
            }
        }
    }
}

#[test]
fn client_rule_is_deterministic() {
    let be = CudaBackend::for_tests().unwrap();
    let mut rng = Rng::new(13);
    let (g, a, segs, _) = make_problem(&mut rng, 3);
    let ab = up(&be, &a);
    let run = || {
        let mut gg = up(&be, &g);
        be.align_project(&mut gg, &ab, &segs, 0.25).unwrap();
        be.download(&gg)
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

/// K rows of length n around a common direction; with K >= 3 the last row points the other way,
/// so that it conflicts with the mean.
fn make_rows(rng: &mut Rng, k: usize, n: usize) -> Vec<Vec<f32>> {
    let base = rng.vec_range(n, -1.0, 1.0);
    (0..k)
        .map(|r| {
            let sign = if k > 2 && r == k - 1 { -1.0 } else { 1.0 };
            base.iter()
                .map(|&b| sign * b + rng.range(-0.3, 0.3))
                .collect()
        })
        .collect()
}

#[test]
fn server_rule_matches_projected_mean() {
    let be = CudaBackend::for_tests().unwrap();
    let mut rng = Rng::new(14);
    for k in 1..=5 {
        for n in [1usize, 7, 4097, 9000] {
            let rows = make_rows(&mut rng, k, n);
            let stacked: Vec<f32> = rows.concat();
            let gb = up(&be, &stacked);

            let mut out = be.zeros(n + 1).unwrap();
            be.mean_rows(&gb, k, n, &mut out).unwrap();
            let got = be.download(&out).unwrap();
            let want = flat::weighted_sum(&rows, &vec![1.0 / k as f64; k]);
            close_ulp(&format!("mean K={k} n={n}"), &got[..n], &want);
            assert_eq!(got[n], 0.0, "wrote past n");

            let mut out = be.zeros(n).unwrap();
            be.projected_mean(&gb, k, n, &mut out).unwrap();
            let got = be.download(&out).unwrap();
            let want = flat::projected_mean(&rows);
            close_ulp(&format!("projected_mean K={k} n={n}"), &got, &want);
            if k > 2 && n > 1 {
                // The last row conflicted, so the projection changed the mean.
                let plain = flat::weighted_sum(&rows, &vec![1.0 / k as f64; k]);
                assert!(want != plain, "K={k} n={n}: no conflict in the test data");
            }
            // The input rows are read only.
            assert_eq!(be.download(&gb).unwrap(), stacked);
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let be = CudaBackend::for_tests().unwrap();
    let g = up(&be, &[1.0; 10]);
    let a = up(&be, &[1.0; 8]);
    let mut gm = up(&be, &[1.0; 10]);
    let seg = |start, len| Span { start, len };
    // Past the end of a (8 elements), overlapping, fine.
    let e = be
        .align_project(&mut gm, &a, &[seg(0, 4), seg(4, 5)], 0.1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("align a") && e.contains("needs 9"), "{e}");
    let e = be
        .align_project(&mut gm, &a, &[seg(3, 4), seg(0, 4)], 0.1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("overlap"), "{e}");
    assert!(be.align_dots(&g, &a, &[seg(0, 4), seg(2, 2)]).is_err());
    // Empty segments may sit anywhere; no segments at all is a no-op.
    be.align_project(&mut gm, &a, &[seg(2, 0), seg(0, 4), seg(3, 0)], 0.1)
        .unwrap();
    be.align_project(&mut gm, &a, &[], 0.1).unwrap();
    assert!(be.align_dots(&g, &a, &[]).unwrap().is_empty());

    let mut out = be.zeros(4).unwrap();
    let e = be
        .projected_mean(&g, 3, 4, &mut out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("projected_mean grads"), "{e}");
    let e = be.mean_rows(&g, 2, 5, &mut out).unwrap_err().to_string();
    assert!(e.contains("mean_rows out"), "{e}");
    assert!(be.projected_mean(&g, 0, 4, &mut out).is_err());
    be.projected_mean(&g, 0, 0, &mut out).unwrap();
    be.projected_mean(&g, 3, 0, &mut out).unwrap();
    assert_eq!(be.download(&out).unwrap(), vec![0.0; 4]);
}
