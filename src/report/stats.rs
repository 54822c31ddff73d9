//! Statistics for comparing runs over seeds: Student's t distribution, 95% confidence intervals
//! of a mean, the paired t-test and Holm's correction for several tests.
//!
//! Seeds are few (3 to 10), so intervals use the t distribution with n − 1 degrees of freedom,
//! not the normal approximation. The t distribution's CDF goes through the regularized
//! incomplete beta function, evaluated by its continued fraction (modified Lentz method).

/// A two-sided interval `[lo, hi]` around `mean`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// The sample mean.
    pub mean: f64,
    /// Lower bound.
    pub lo: f64,
    /// Upper bound.
    pub hi: f64,
    /// Number of observations.
    pub n: usize,
}

/// The result of a paired t-test of `a − b` against zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairedTest {
    /// The mean difference with its 95% confidence interval.
    pub diff: Interval,
    /// The t statistic (infinite when every difference is the same non-zero value).
    pub t: f64,
    /// Degrees of freedom (pairs − 1).
    pub df: usize,
    /// Two-sided p-value.
    pub p: f64,
}

/// ln Γ(x) for x > 0 (through `libm`, the musl port).
fn ln_gamma(x: f64) -> f64 {
    libm::lgamma(x)
}

/// The regularized incomplete beta function I_x(a, b) for a, b > 0 and x in [0, 1].
pub fn incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    // The continued fraction converges fast only below the mean of the beta distribution;
    // above it, the symmetry I_x(a, b) = 1 − I_{1−x}(b, a) moves the evaluation there.
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - incomplete_beta(1.0 - x, b, a);
    }
    let ln_front = a * x.ln() + b * (1.0 - x).ln() + ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b);
    let front = ln_front.exp() / a;
    const TINY: f64 = 1e-300;
    let (mut f, mut c, mut d) = (1.0f64, 1.0f64, 0.0f64);
    for i in 0..=400u32 {
        let m = f64::from(i / 2);
        let numerator = if i == 0 {
            1.0
        } else if i % 2 == 0 {
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m))
        } else {
            -((a + m) * (a + b + m) * x) / ((a + 2.0 * m) * (a + 2.0 * m + 1.0))
        };
        d = 1.0 + numerator * d;
        if d.abs() < TINY {
            d = TINY;
        }
        d = 1.0 / d;
        c = 1.0 + numerator / c;
        if c.abs() < TINY {
            c = TINY;
        }
        let cd = c * d;
        f *= cd;
        if (1.0 - cd).abs() < 1e-15 {
            break;
        }
    }
    front * (f - 1.0)
}

/// P(|T| ≥ |t|) for Student's t with `df` degrees of freedom: the two-sided p-value.
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if t.is_infinite() {
        return 0.0;
    }
    incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
}

/// The t value with P(|T| ≥ t) = `p` (two-sided), e.g. `p = 0.05` for a 95% interval.
pub fn t_critical(p: f64, df: f64) -> f64 {
    if !(p > 0.0 && p < 1.0) || df <= 0.0 {
        return f64::NAN;
    }
    // The p-value falls monotonically in t: bisect on a bracket that grows until it holds p.
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while t_two_sided_p(hi, df) > p {
        lo = hi;
        hi *= 2.0;
        if hi > 1e12 {
            return f64::INFINITY;
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_two_sided_p(mid, df) > p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-12 * hi {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// Sample mean and sample standard deviation (n − 1 denominator; `None` for one value).
fn mean_sd(xs: &[f64]) -> (f64, Option<f64>) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let sd = (xs.len() > 1)
        .then(|| (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (mean, sd)
}

/// The 95% interval of a mean from `n` values with sample standard deviation `sd`.
fn interval95(mean: f64, sd: f64, n: usize) -> Interval {
    let half = t_critical(0.05, (n - 1) as f64) * sd / (n as f64).sqrt();
    Interval {
        mean,
        lo: mean - half,
        hi: mean + half,
        n,
    }
}

/// The mean of `xs` with its 95% confidence interval (t with n − 1 degrees of freedom).
/// `None` for fewer than two values, where no interval exists.
pub fn mean_ci95(xs: &[f64]) -> Option<Interval> {
    let (mean, sd) = mean_sd(xs);
    Some(interval95(mean, sd?, xs.len()))
}

/// Paired t-test of `a[i] − b[i]` against zero (the pairs share a seed: the same data split).
/// `None` when the lengths differ or there are fewer than two pairs.
pub fn paired_t(a: &[f64], b: &[f64]) -> Option<PairedTest> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let (mean, sd) = mean_sd(&d);
    let sd = sd?;
    let diff = interval95(mean, sd, d.len());
    let se = sd / (d.len() as f64).sqrt();
    let t = if se > 0.0 {
        mean / se
    } else if mean == 0.0 {
        0.0
    } else {
        f64::INFINITY.copysign(mean)
    };
    let df = d.len() - 1;
    Some(PairedTest {
        diff,
        t,
        df,
        p: if t == 0.0 {
            1.0
        } else {
            t_two_sided_p(t, df as f64)
        },
    })
}

/// Holm's step-down adjustment of p-values for testing several hypotheses at once: the
/// adjusted values keep the family-wise error rate at the level they are compared with.
/// NaN p-values stay NaN and do not count as tests.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let m = order.len();
    let mut out = vec![f64::NAN; p.len()];
    let mut running = 0.0f64;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max((p[i] * (m - rank) as f64).min(1.0));
        out[i] = running;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    // With one degree of freedom t is Cauchy: P(|T| ≥ t) = 1 − (2/π) atan(t). With two it has
    // the closed form 1 − t / sqrt(2 + t²). Both are independent of the continued fraction.
    #[test]
    fn p_values_match_the_closed_forms_for_one_and_two_degrees_of_freedom() {
        for t in [0.1, 0.5, 1.0, 2.0, 4.303, 12.706, 40.0] {
            let cauchy = 1.0 - 2.0 / std::f64::consts::PI * f64::atan(t);
            assert!(close(t_two_sided_p(t, 1.0), cauchy, 1e-12), "df 1, t {t}");
            let two = 1.0 - t / (2.0 + t * t).sqrt();
            assert!(close(t_two_sided_p(t, 2.0), two, 1e-12), "df 2, t {t}");
        }
    }

    // Critical values of the two-sided 95% level as printed in t tables.
    #[test]
    fn critical_values_match_the_printed_table() {
        for (df, want) in [
            (1.0, 12.706),
            (2.0, 4.303),
            (3.0, 3.182),
            (4.0, 2.776),
            (9.0, 2.262),
            (29.0, 2.045),
            (1000.0, 1.962),
        ] {
            let got = t_critical(0.05, df);
            assert!(close(got, want, 5e-4), "df {df}: {got} vs {want}");
        }
    }

    #[test]
    fn incomplete_beta_matches_closed_forms() {
        // I_x(1, 1) = x; I_x(a, 1) = x^a; I_x(1, b) = 1 − (1 − x)^b.
        for x in [0.01, 0.2, 0.5, 0.77, 0.99] {
            assert!(close(incomplete_beta(x, 1.0, 1.0), x, 1e-13));
            assert!(close(incomplete_beta(x, 3.5, 1.0), x.powf(3.5), 1e-13));
            assert!(close(
                incomplete_beta(x, 1.0, 2.5),
                1.0 - (1.0 - x).powf(2.5),
                1e-13
            ));
        }
    }

    #[test]
    fn paired_test_by_hand() {
        // Differences 1, 2, 4: mean 7/3, sd sqrt(7/3), se sqrt(7/9), t = sqrt(7), df 2, so
        // p = 1 − sqrt(7)/3 by the closed form above; the 95% half-width is 4.303 · sqrt(7/9).
        let r = paired_t(&[11.0, 12.0, 14.0], &[10.0, 10.0, 10.0]).unwrap();
        assert!(close(r.t, 7f64.sqrt(), 1e-12));
        assert_eq!(r.df, 2);
        assert!(close(r.p, 1.0 - 7f64.sqrt() / 3.0, 1e-12), "{}", r.p);
        assert!(close(r.diff.mean, 7.0 / 3.0, 1e-12));
        // t(0.05, 2) from the closed form: t / sqrt(2 + t²) = 0.95, t² = 1.805 / 0.0975.
        let half = (1.805f64 / 0.0975).sqrt() * (7.0f64 / 9.0).sqrt();
        assert!(close(r.diff.hi - r.diff.mean, half, 1e-9));
        assert!(close(r.diff.mean - r.diff.lo, half, 1e-9));
        // Swapping the sides flips the sign only.
        let s = paired_t(&[10.0, 10.0, 10.0], &[11.0, 12.0, 14.0]).unwrap();
        assert!(close(s.t, -r.t, 1e-12) && close(s.p, r.p, 1e-15));
        // Identical runs: no difference, p = 1; a constant non-zero difference: p = 0.
        assert_eq!(paired_t(&[1.0, 2.0], &[1.0, 2.0]).unwrap().p, 1.0);
        assert_eq!(paired_t(&[2.0, 3.0], &[1.0, 2.0]).unwrap().p, 0.0);
        assert!(paired_t(&[1.0], &[2.0]).is_none());
        assert!(paired_t(&[1.0, 2.0], &[2.0]).is_none());
    }

    #[test]
    fn mean_interval_by_hand() {
        // 2, 4, 9: mean 5, sd sqrt(13), half-width t(0.05, 2) · sd / sqrt(3), with t(0.05, 2)
        // from the closed form of two degrees of freedom.
        let ci = mean_ci95(&[2.0, 4.0, 9.0]).unwrap();
        assert!(close(ci.mean, 5.0, 1e-12));
        let half = (1.805f64 / 0.0975).sqrt() * 13f64.sqrt() / 3f64.sqrt();
        assert!(close(ci.hi - 5.0, half, 1e-9) && close(5.0 - ci.lo, half, 1e-9));
        assert_eq!(ci.n, 3);
        assert!(mean_ci95(&[1.0]).is_none());
    }

    #[test]
    fn holm_by_hand() {
        // Sorted 0.01, 0.02, 0.04 times 3, 2, 1 = 0.03, 0.04, 0.04 (monotone), in input order.
        let got = holm(&[0.04, 0.01, 0.02]);
        for (g, w) in got.iter().zip([0.04, 0.03, 0.04]) {
            assert!(close(*g, w, 1e-15), "{got:?}");
        }
        let got = holm(&[0.5, f64::NAN, 0.6]);
        assert!(close(got[0], 1.0, 0.0) && got[1].is_nan() && close(got[2], 1.0, 0.0));
    }
}
