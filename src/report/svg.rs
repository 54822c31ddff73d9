//! A small hand-written SVG chart writer: line charts and grouped bar charts.
//!
//! Charts are a fixed 720×420 pixels, with a title, a legend, axes with "nice" tick values
//! (steps of 1, 2 or 5 times a power of ten), light gridlines and a fixed colorblind-safe palette
//! (Okabe–Ito). Non-finite values (NaN, ±∞) are skipped: a line is broken at them and a bar is not
//! drawn. Empty input renders a valid chart that says "no data". Rendering never panics.
//!
//! The output is a self-contained `<svg>` element (no XML declaration), so it can be embedded in
//! Markdown or HTML as is.

use std::fmt::Write as _;

/// Width of every chart, in pixels.
pub const WIDTH: f64 = 720.0;
/// Height of every chart, in pixels.
pub const HEIGHT: f64 = 420.0;

/// The Okabe–Ito palette, which stays distinguishable under the common color-vision deficiencies.
/// Yellow comes last: it is the hardest to see on white.
const PALETTE: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
];

/// Dash patterns used once the palette wraps around, so series 9+ stay distinct from 1..8.
const DASHES: [&str; 3] = ["", "6 3", "2 3"];

const FONT_SIZE: f64 = 12.0;
const TITLE_SIZE: f64 = 16.0;
const GRID_COLOR: &str = "#e3e3e3";
const AXIS_COLOR: &str = "#333333";
const TEXT_COLOR: &str = "#222222";
/// Roughly how many ticks an axis gets; the nice step decides the exact count.
const TARGET_TICKS: f64 = 5.0;
/// Lines with at most this many points also get a marker at each point.
const MAX_MARKED_POINTS: usize = 60;

/// The fill/stroke color of series `i`.
pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

fn dash(i: usize) -> &'static str {
    DASHES[(i / PALETTE.len()) % DASHES.len()]
}

/// Escapes `s` for use in XML text and attribute values. Characters XML 1.0 forbids (most ASCII
/// control characters) are dropped, since no escape makes them legal.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// One named line of a [`LineChart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend entry.
    pub name: String,
    /// `(x, y)` points, drawn in the given order; non-finite points break the line.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series named `name`.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
        }
    }
}

/// A line chart of one or more series over a shared pair of numeric axes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LineChart {
    /// Shown centred above the plot.
    pub title: String,
    /// Caption of the horizontal axis.
    pub x_label: String,
    /// Caption of the vertical axis.
    pub y_label: String,
    /// The lines, colored in order from the palette.
    pub series: Vec<Series>,
}

/// A grouped bar chart: for each category, one bar per group.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BarChart {
    /// Shown centred above the plot.
    pub title: String,
    /// Caption of the vertical axis.
    pub y_label: String,
    /// Caption of the horizontal axis (none when empty).
    pub x_label: String,
    /// The labels along the horizontal axis.
    pub categories: Vec<String>,
    /// `(legend name, one value per category)`. A non-finite value draws no bar; values past the
    /// number of categories are ignored, and missing ones draw no bar.
    pub groups: Vec<(String, Vec<f64>)>,
}

/// A numeric axis: its range and the tick values inside it.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
    ticks: Vec<f64>,
}

/// The smallest step of the form {1, 2, 5} × 10^k that is at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !raw.is_finite() || raw <= 0.0 {
        return 1.0;
    }
    let base = 10f64.powf(raw.log10().floor());
    let frac = raw / base;
    let m = if frac <= 1.0 + 1e-9 {
        1.0
    } else if frac <= 2.0 + 1e-9 {
        2.0
    } else if frac <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    m * base
}

impl Axis {
    /// An axis covering `[min, max]`, widened to whole nice steps. A degenerate range (one value,
    /// or all values equal) is padded so the data sit in the middle instead of on an edge.
    fn covering(min: f64, max: f64) -> Axis {
        Axis::covering_with(min, max, false)
    }

    /// Like [`Axis::covering`]; with `integral`, the step is at least 1, so integer data (rounds)
    /// get no fractional ticks such as 1.5.
    fn covering_with(min: f64, max: f64, integral: bool) -> Axis {
        let (mut min, mut max) = if min.is_finite() && max.is_finite() {
            (min.min(max), min.max(max))
        } else {
            (0.0, 1.0)
        };
        let scale = min.abs().max(max.abs());
        if max - min <= scale * 1e-12 {
            let pad = if scale > 0.0 { scale * 0.1 } else { 1.0 };
            min -= pad;
            max += pad;
        }
        let mut step = nice_step((max - min) / TARGET_TICKS);
        if integral {
            step = step.max(1.0);
        }
        let lo = (min / step).floor() * step;
        let hi = (max / step).ceil() * step;
        let count = ((hi - lo) / step).round();
        // Ranges near f64::MAX overflow the arithmetic above; fall back rather than loop forever.
        if !(lo.is_finite() && hi.is_finite() && (1.0..=100.0).contains(&count)) {
            return Axis {
                lo: 0.0,
                hi: 1.0,
                step: 0.2,
                ticks: (0..=5).map(|i| i as f64 * 0.2).collect(),
            };
        }
        let ticks = (0..=count as usize)
            .map(|i| {
                let t = lo + i as f64 * step;
                // Avoid "-0" and 1e-17 residue on the zero tick.
                if t.abs() < step * 1e-9 {
                    0.0
                } else {
                    t
                }
            })
            .collect();
        Axis {
            lo,
            hi,
            step,
            ticks,
        }
    }

    /// Maps `v` linearly from `[lo, hi]` to `[a, b]` (pixels).
    fn map(&self, v: f64, a: f64, b: f64) -> f64 {
        a + (v - self.lo) / (self.hi - self.lo) * (b - a)
    }

    /// The tick label of `v`: as many decimals as the step needs, scientific notation for very
    /// large or very small magnitudes.
    fn label(&self, v: f64) -> String {
        if v == 0.0 {
            return "0".to_string();
        }
        let mag = self.lo.abs().max(self.hi.abs());
        let step_exp = self.step.log10().floor();
        if mag >= 1e6 || self.step < 1e-4 {
            let prec = (v.abs().log10().floor() - step_exp).max(0.0) as usize;
            format!("{v:.prec$e}")
        } else {
            let decimals = (-step_exp).max(0.0) as usize;
            format!("{v:.decimals$}")
        }
    }
}

/// Rough width of `s` in pixels at `size`: sans-serif glyphs average ~0.56 em.
fn text_width(s: &str, size: f64) -> f64 {
    s.chars().count() as f64 * size * 0.56
}

/// Shortens `s` to at most `max` characters, marking the cut with an ellipsis.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// A value for a tooltip: up to 4 decimals, trailing zeros removed.
fn short_number(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// What a legend entry looks like.
enum Swatch {
    Line,
    Box,
}

/// The parts every chart shares: the SVG envelope, title, legend, axes and gridlines.
struct Canvas {
    out: String,
    /// Plot area, in pixels.
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Canvas {
    /// Starts a chart: envelope, background, title and legend. `y_axis` sizes the left margin.
    fn new(title: &str, legend: &[String], swatch: Swatch, y_axis: &Axis) -> Canvas {
        let mut out = String::with_capacity(8192);
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif" font-size="{FONT_SIZE}">"#
        );
        let _ = writeln!(out, "<title>{}</title>", escape(title));
        let _ = writeln!(
            out,
            r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="26" text-anchor="middle" font-size="{TITLE_SIZE}" font-weight="bold" fill="{TEXT_COLOR}">{}</text>"#,
            WIDTH / 2.0,
            escape(&truncate(title, 80))
        );

        // The left margin fits the widest y tick label plus the rotated axis caption.
        let widest = y_axis
            .ticks
            .iter()
            .map(|&t| text_width(&y_axis.label(t), FONT_SIZE))
            .fold(0.0, f64::max);
        let left = (widest + 44.0).clamp(56.0, 160.0);
        let right = WIDTH - 24.0;

        // Legend: entries laid out left to right, wrapping to a new row when the plot width is
        // used up.
        let mut legend_svg = String::new();
        let (mut x, mut y) = (left, 48.0);
        let row_height = 18.0;
        for (i, name) in legend.iter().enumerate() {
            let name = truncate(name, 40);
            let entry_width = 24.0 + text_width(&name, FONT_SIZE) + 18.0;
            if x > left && x + entry_width > right {
                x = left;
                y += row_height;
            }
            match swatch {
                Swatch::Line => {
                    let _ = writeln!(
                        legend_svg,
                        r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2.5"{}/>"#,
                        x,
                        y - 4.0,
                        x + 18.0,
                        y - 4.0,
                        color(i),
                        dash_attr(i)
                    );
                }
                Swatch::Box => {
                    let _ = writeln!(
                        legend_svg,
                        r#"<rect x="{:.1}" y="{:.1}" width="14" height="10" fill="{}"/>"#,
                        x + 2.0,
                        y - 9.0,
                        color(i)
                    );
                }
            }
            let _ = writeln!(
                legend_svg,
                r#"<text x="{:.1}" y="{:.1}" fill="{TEXT_COLOR}">{}</text>"#,
                x + 24.0,
                y,
                escape(&name)
            );
            x += entry_width;
        }
        if !legend.is_empty() {
            let _ = writeln!(out, "<g class=\"legend\">\n{legend_svg}</g>");
        }
        let top = if legend.is_empty() { 48.0 } else { y + 14.0 };

        Canvas {
            out,
            left,
            right,
            top,
            bottom: HEIGHT - 58.0,
        }
    }

    /// Horizontal gridlines and labels for the y ticks, and the y axis caption.
    fn y_axis(&mut self, axis: &Axis, caption: &str) {
        let mut g = String::new();
        for &t in &axis.ticks {
            let y = axis.map(t, self.bottom, self.top);
            let _ = writeln!(
                g,
                r#"<line x1="{:.1}" y1="{y:.2}" x2="{:.1}" y2="{y:.2}" stroke="{GRID_COLOR}"/>"#,
                self.left, self.right
            );
            let _ = writeln!(
                g,
                r#"<text x="{:.1}" y="{y:.2}" dy="0.32em" text-anchor="end" fill="{TEXT_COLOR}">{}</text>"#,
                self.left - 6.0,
                escape(&axis.label(t))
            );
        }
        let cy = (self.top + self.bottom) / 2.0;
        let _ = writeln!(
            g,
            r#"<text x="16" y="{cy:.1}" text-anchor="middle" transform="rotate(-90 16 {cy:.1})" fill="{TEXT_COLOR}">{}</text>"#,
            escape(&truncate(caption, 60))
        );
        let _ = writeln!(self.out, "<g class=\"y-axis\">\n{g}</g>");
    }

    /// The x axis caption, centred under the plot.
    fn x_caption(&mut self, caption: &str) {
        let _ = writeln!(
            self.out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="{TEXT_COLOR}">{}</text>"#,
            (self.left + self.right) / 2.0,
            HEIGHT - 14.0,
            escape(&truncate(caption, 90))
        );
    }

    /// The two axis lines: left edge, and the horizontal line at `y` (bottom or the zero line).
    fn axis_lines(&mut self, base_y: f64) {
        let _ = writeln!(
            self.out,
            r#"<g class="axes" stroke="{AXIS_COLOR}" stroke-width="1">
<line x1="{l:.1}" y1="{t:.1}" x2="{l:.1}" y2="{b:.1}"/>
<line x1="{l:.1}" y1="{base_y:.2}" x2="{r:.1}" y2="{base_y:.2}"/>
</g>"#,
            l = self.left,
            r = self.right,
            t = self.top,
            b = self.bottom,
        );
    }

    /// A grey "no data" note in the middle of the plot area.
    fn no_data(&mut self) {
        let _ = writeln!(
            self.out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#888888" font-size="14">no data</text>"##,
            (self.left + self.right) / 2.0,
            (self.top + self.bottom) / 2.0
        );
    }

    fn finish(mut self) -> String {
        self.out.push_str("</svg>");
        self.out
    }
}

fn dash_attr(i: usize) -> String {
    match dash(i) {
        "" => String::new(),
        d => format!(r#" stroke-dasharray="{d}""#),
    }
}

/// The finite range of `values`, or `None` if there is no finite value.
fn finite_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

impl LineChart {
    /// An empty chart with the given captions; add lines with [`LineChart::series`] or push to
    /// the `series` field.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        LineChart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
        }
    }

    /// Adds a line (builder style).
    pub fn series(mut self, name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        self.series.push(Series::new(name, points));
        self
    }

    /// Renders the chart as an SVG document.
    pub fn render(&self) -> String {
        let finite_points = || {
            self.series
                .iter()
                .flat_map(|s| s.points.iter())
                .filter(|(x, y)| x.is_finite() && y.is_finite())
        };
        let xr = finite_range(finite_points().map(|p| p.0));
        let yr = finite_range(finite_points().map(|p| p.1));
        let (x_axis, y_axis) = match (xr, yr) {
            (Some((x0, x1)), Some((y0, y1))) => {
                let integral = |v: f64| v.fract() == 0.0;
                (
                    Axis::covering_with(x0, x1, finite_points().all(|p| integral(p.0))),
                    Axis::covering_with(y0, y1, finite_points().all(|p| integral(p.1))),
                )
            }
            _ => (Axis::covering(0.0, 1.0), Axis::covering(0.0, 1.0)),
        };
        let has_data = xr.is_some();

        let names: Vec<String> = self.series.iter().map(|s| s.name.clone()).collect();
        let mut c = Canvas::new(&self.title, &names, Swatch::Line, &y_axis);
        c.y_axis(&y_axis, &self.y_label);

        // Vertical gridlines and x tick labels.
        let mut g = String::new();
        for &t in &x_axis.ticks {
            let x = x_axis.map(t, c.left, c.right);
            let _ = writeln!(
                g,
                r#"<line x1="{x:.2}" y1="{:.1}" x2="{x:.2}" y2="{:.1}" stroke="{GRID_COLOR}"/>"#,
                c.top, c.bottom
            );
            let _ = writeln!(
                g,
                r#"<text x="{x:.2}" y="{:.1}" text-anchor="middle" fill="{TEXT_COLOR}">{}</text>"#,
                c.bottom + 18.0,
                escape(&x_axis.label(t))
            );
        }
        let _ = writeln!(c.out, "<g class=\"x-axis\">\n{g}</g>");
        c.x_caption(&self.x_label);
        c.axis_lines(c.bottom);

        if !has_data {
            c.no_data();
            return c.finish();
        }

        for (i, s) in self.series.iter().enumerate() {
            // Split at non-finite points: a gap shows the missing value instead of bridging it.
            let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
            for &(x, y) in &s.points {
                if x.is_finite() && y.is_finite() {
                    let px = x_axis.map(x, c.left, c.right);
                    let py = y_axis.map(y, c.bottom, c.top);
                    segments.last_mut().expect("never empty").push((px, py));
                } else if !segments.last().expect("never empty").is_empty() {
                    segments.push(Vec::new());
                }
            }
            let n_points: usize = segments.iter().map(Vec::len).sum();
            let mut g = String::new();
            for seg in segments.iter().filter(|s| s.len() > 1) {
                let pts: Vec<String> = seg.iter().map(|(x, y)| format!("{x:.2},{y:.2}")).collect();
                let _ = writeln!(
                    g,
                    r#"<polyline fill="none" stroke="{}" stroke-width="2" stroke-linejoin="round"{} points="{}"/>"#,
                    color(i),
                    dash_attr(i),
                    pts.join(" ")
                );
            }
            // Markers make short series readable and are the only mark an isolated point gets.
            for seg in &segments {
                if n_points <= MAX_MARKED_POINTS || seg.len() == 1 {
                    for (x, y) in seg {
                        let _ = writeln!(
                            g,
                            r#"<circle cx="{x:.2}" cy="{y:.2}" r="3" fill="{}"/>"#,
                            color(i)
                        );
                    }
                }
            }
            let _ = writeln!(
                c.out,
                "<g class=\"series\">\n<title>{}</title>\n{g}</g>",
                escape(&s.name)
            );
        }
        c.finish()
    }
}

impl BarChart {
    /// An empty chart with the given captions.
    pub fn new(title: impl Into<String>, y_label: impl Into<String>) -> Self {
        BarChart {
            title: title.into(),
            y_label: y_label.into(),
            x_label: String::new(),
            categories: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// Renders the chart as an SVG document.
    pub fn render(&self) -> String {
        let n_cat = self.categories.len();
        let values = || {
            self.groups
                .iter()
                .flat_map(|(_, v)| v.iter().take(n_cat).copied())
        };
        let range = finite_range(values());
        // Bars grow from zero, so zero is always on the axis.
        let y_axis = match range {
            Some((lo, hi)) => {
                let (lo, hi) = (lo.min(0.0), hi.max(0.0));
                if hi - lo == 0.0 {
                    Axis::covering(0.0, 1.0)
                } else {
                    Axis::covering(lo, hi)
                }
            }
            None => Axis::covering(0.0, 1.0),
        };

        let names: Vec<String> = self.groups.iter().map(|(n, _)| n.clone()).collect();
        let mut c = Canvas::new(&self.title, &names, Swatch::Box, &y_axis);
        c.y_axis(&y_axis, &self.y_label);
        let zero_y = y_axis.map(0.0, c.bottom, c.top);

        if n_cat == 0 {
            c.axis_lines(c.bottom);
            c.no_data();
            return c.finish();
        }

        let slot = (c.right - c.left) / n_cat as f64;
        let n_groups = self.groups.len().max(1);
        let bar_w = slot * 0.8 / n_groups as f64;

        // Category labels; when they would overlap, only every k-th is shown.
        // Labels get the slot's width (at least 8 characters, at most 40).
        let max_chars = ((slot - 6.0) / text_width("m", FONT_SIZE)).clamp(8.0, 40.0) as usize;
        let labels: Vec<String> = self
            .categories
            .iter()
            .map(|s| truncate(s, max_chars))
            .collect();
        let widest = labels
            .iter()
            .map(|l| text_width(l, FONT_SIZE))
            .fold(0.0, f64::max);
        let every = ((widest + 6.0) / slot).ceil().max(1.0) as usize;
        let mut g = String::new();
        for (j, label) in labels.iter().enumerate().filter(|(j, _)| j % every == 0) {
            let x = c.left + (j as f64 + 0.5) * slot;
            let _ = writeln!(
                g,
                r#"<text x="{x:.2}" y="{:.1}" text-anchor="middle" fill="{TEXT_COLOR}">{}</text>"#,
                c.bottom + 18.0,
                escape(label)
            );
        }
        let _ = writeln!(c.out, "<g class=\"x-axis\">\n{g}</g>");
        if !self.x_label.is_empty() {
            c.x_caption(&self.x_label);
        }

        let mut any_bar = false;
        for (i, (name, vals)) in self.groups.iter().enumerate() {
            let mut g = String::new();
            for (j, &v) in vals.iter().take(n_cat).enumerate() {
                if !v.is_finite() {
                    continue;
                }
                any_bar = true;
                let x = c.left + j as f64 * slot + slot * 0.1 + i as f64 * bar_w;
                let y = y_axis.map(v, c.bottom, c.top);
                let (top, h) = if y < zero_y {
                    (y, zero_y - y)
                } else {
                    (zero_y, y - zero_y)
                };
                let _ = writeln!(
                    g,
                    r#"<rect x="{x:.2}" y="{top:.2}" width="{:.2}" height="{h:.2}" fill="{}"><title>{}: {}</title></rect>"#,
                    (bar_w - 1.0).max(0.5),
                    color(i),
                    escape(&format!("{name}, {}", self.categories[j])),
                    short_number(v)
                );
            }
            let _ = writeln!(c.out, "<g class=\"bars\">\n{g}</g>");
        }
        c.axis_lines(zero_y);
        if !any_bar {
            c.no_data();
        }
        c.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps_are_1_2_5() {
        assert_eq!(nice_step(0.9), 1.0);
        assert_eq!(nice_step(1.5), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert!((nice_step(0.013) - 0.02).abs() < 1e-12);
        assert_eq!(nice_step(f64::NAN), 1.0);
    }

    #[test]
    fn axis_covers_data_with_nice_ticks() {
        let a = Axis::covering(3.0, 97.0);
        assert_eq!((a.lo, a.hi, a.step), (0.0, 100.0, 20.0));
        assert_eq!(a.ticks, vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(a.label(40.0), "40");
        let a = Axis::covering(0.5, 0.5);
        assert!(a.lo < 0.5 && a.hi > 0.5);
        let a = Axis::covering(0.0, 0.0);
        assert!(a.lo < 0.0 && a.hi > 0.0);
        let a = Axis::covering(-1e308, 1e308);
        assert!(a.ticks.len() <= 101);
    }

    #[test]
    fn tick_labels() {
        let a = Axis::covering(0.0, 1.0);
        assert_eq!(a.label(0.2), "0.2");
        let a = Axis::covering(0.0, 3e9);
        assert_eq!(a.label(1e9), "1e9");
        assert_eq!(a.label(0.0), "0");
    }

    #[test]
    fn escapes_markup_and_drops_control_characters() {
        assert_eq!(escape("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;");
    }
}
