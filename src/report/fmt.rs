//! Number formatting for reports (paper style) and a Markdown table builder.
//!
//! Units: accuracy in percent with one decimal; communication in MB (10^6 bytes); compute in
//! GFLOP (10^9 floating-point operations); memory in MiB (2^20 bytes); time in seconds.

/// Shown for a value that is absent, null or not finite.
pub(crate) const MISSING: &str = "–";

/// `v` if it is present and finite.
pub(crate) fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite())
}

/// `v` with `decimals` decimals, or [`MISSING`]. Never prints "-0.0".
pub(crate) fn fixed(v: Option<f64>, decimals: usize) -> String {
    match finite(v) {
        Some(x) => {
            let s = format!("{x:.decimals$}");
            match s.strip_prefix('-') {
                Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
                _ => s,
            }
        }
        None => MISSING.to_string(),
    }
}

/// An accuracy fraction as a percentage with one decimal: 0.875 → "87.5".
pub(crate) fn pct(v: Option<f64>) -> String {
    fixed(v.map(|x| x * 100.0), 1)
}

/// "mean ± std" of accuracy fractions, in percent; just the mean when the std is unknown.
pub(crate) fn pct_pm(mean: Option<f64>, std: Option<f64>) -> String {
    match (finite(mean), finite(std)) {
        (Some(_), Some(_)) => format!("{} ± {}", pct(mean), pct(std)),
        (Some(_), None) => pct(mean),
        _ => MISSING.to_string(),
    }
}

/// Bytes as MB (10^6 bytes), two decimals.
pub(crate) fn mb(bytes: Option<f64>) -> String {
    fixed(bytes.map(|b| b / 1e6), 2)
}

/// FLOPs as GFLOP, two decimals.
pub(crate) fn gflop(flops: Option<f64>) -> String {
    fixed(flops.map(|f| f / 1e9), 2)
}

/// Bytes as MiB (2^20 bytes), one decimal.
pub(crate) fn mib(bytes: Option<f64>) -> String {
    fixed(bytes.map(|b| b / 1_048_576.0), 1)
}

/// Seconds, one decimal.
pub(crate) fn secs(s: Option<f64>) -> String {
    fixed(s, 1)
}

/// An optional integer, or [`MISSING`].
pub(crate) fn int(v: Option<u64>) -> String {
    v.map_or_else(|| MISSING.to_string(), |v| v.to_string())
}

/// An optional string, or [`MISSING`].
pub(crate) fn text(v: Option<&str>) -> String {
    v.map_or_else(|| MISSING.to_string(), str::to_string)
}

/// Mean and sample standard deviation (n − 1 denominator) of the finite values in `xs`. `None`
/// when there is no finite value; the std is `None` with a single value.
pub(crate) fn mean_std(xs: impl IntoIterator<Item = Option<f64>>) -> Option<(f64, Option<f64>)> {
    let v: Vec<f64> = xs.into_iter().filter_map(finite).collect();
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.len() > 1)
        .then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    Some((mean, std))
}

/// Makes `s` safe inside a Markdown table cell: pipes would end the cell, newlines the row.
pub(crate) fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// Column alignment in a Markdown table.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// A Markdown (GFM) table. `columns` gives each header and its alignment; cells are used as is
/// (escape them with [`cell`] where they hold user text).
pub(crate) fn table(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    out.push('|');
    for (h, _) in columns {
        out.push_str(&format!(" {h} |"));
    }
    out.push_str("\n|");
    for (_, a) in columns {
        out.push_str(match a {
            Align::Left => "---|",
            Align::Right => "---:|",
        });
    }
    out.push('\n');
    for row in rows {
        out.push('|');
        for c in row {
            out.push_str(&format!(" {c} |"));
        }
        out.push('\n');
    }
    out
}

/// A CSV field, quoted (with doubled quotes) when it holds a comma, quote or line break.
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(pct(Some(0.875)), "87.5");
        assert_eq!(pct(None), MISSING);
        assert_eq!(pct(Some(f64::NAN)), MISSING);
        assert_eq!(pct_pm(Some(0.5), Some(0.021)), "50.0 ± 2.1");
        assert_eq!(fixed(Some(-0.0001), 2), "0.00");
        assert_eq!(mb(Some(12_345_678.0)), "12.35");
        assert_eq!(gflop(Some(2.5e9)), "2.50");
        assert_eq!(mib(Some(3.0 * 1_048_576.0)), "3.0");
    }

    #[test]
    fn sample_std() {
        let (m, s) = mean_std([Some(0.80), Some(0.84), None, Some(0.88)]).unwrap();
        assert!((m - 0.84).abs() < 1e-12);
        assert!((s.unwrap() - 0.04).abs() < 1e-12);
        assert_eq!(mean_std([Some(1.0)]), Some((1.0, None)));
        assert_eq!(mean_std([None]), None);
    }
}
