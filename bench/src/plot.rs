//! Line charts as standalone SVG files (no plotting dependency): throughput against threads,
//! and resident memory through the fragmentation workload.

#![forbid(unsafe_code)]

use std::fmt::Write;

/// One line of a chart.
pub struct Line {
    /// The legend entry.
    pub name: String,
    /// An SVG colour.
    pub color: &'static str,
    /// Drawn thicker (this project's allocator).
    pub bold: bool,
    /// (x, y) points in data units, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// A chart's axes and labels.
pub struct Chart<'a> {
    /// The title above the plot.
    pub title: &'a str,
    /// The x axis label.
    pub x_label: &'a str,
    /// The y axis label.
    pub y_label: &'a str,
    /// Labelled x positions (the x range is their span).
    pub x_ticks: Vec<(f64, String)>,
    /// Vertical separators with a label, at x positions.
    pub x_sections: Vec<(f64, String)>,
    /// A logarithmic y axis (decades); otherwise linear from zero.
    pub log_y: bool,
}

/// Distinct colours for up to nine allocators, this project's first.
pub const PALETTE: [&str; 9] =
    ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"];

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 210.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A round step for about `ticks` intervals over `span`.
fn nice_step(span: f64, ticks: f64) -> f64 {
    let raw = span / ticks;
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn format_tick(value: f64) -> String {
    if value == 0.0 {
        "0".into()
    } else if value.abs() >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Renders `lines` on `chart` as an SVG document.
pub fn render(chart: &Chart<'_>, lines: &[Line]) -> String {
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let x_min = chart.x_ticks.iter().map(|tick| tick.0).fold(f64::INFINITY, f64::min);
    let x_max = chart.x_ticks.iter().map(|tick| tick.0).fold(f64::NEG_INFINITY, f64::max);
    let (x_min, x_max) = if x_max > x_min { (x_min, x_max) } else { (x_min - 1.0, x_min + 1.0) };
    let ys = lines.iter().flat_map(|line| line.points.iter().map(|point| point.1));
    let y_values: Vec<f64> = ys.filter(|y| y.is_finite() && (!chart.log_y || *y > 0.0)).collect();
    let y_low = y_values.iter().copied().fold(f64::INFINITY, f64::min);
    let y_high = y_values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (y_min, y_max, y_ticks): (f64, f64, Vec<f64>) = if chart.log_y {
        let low = if y_low.is_finite() { y_low.log10().floor() } else { 0.0 };
        let high = if y_high.is_finite() { y_high.log10().ceil().max(low + 1.0) } else { 1.0 };
        (low, high, (low as i32..=high as i32).map(f64::from).collect())
    } else {
        let high = if y_high.is_finite() && y_high > 0.0 { y_high } else { 1.0 };
        let step = nice_step(high, 5.0);
        let top = (high / step).ceil() * step;
        (0.0, top, (0..=((top / step).round() as usize)).map(|i| i as f64 * step).collect())
    };
    let x_of = |x: f64| LEFT + (x - x_min) / (x_max - x_min) * plot_width;
    let y_of = |y: f64| {
        let y = if chart.log_y { y.max(f64::MIN_POSITIVE).log10() } else { y };
        TOP + plot_height - (y - y_min) / (y_max - y_min) * plot_height
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        LEFT + plot_width / 2.0,
        escape(chart.title)
    );
    for &tick in &y_ticks {
        let y = TOP + plot_height - (tick - y_min) / (y_max - y_min) * plot_height;
        let label = if chart.log_y { format_tick(10f64.powf(tick)) } else { format_tick(tick) };
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
            LEFT + plot_width,
            LEFT - 6.0,
            y + 4.0
        );
    }
    for (x, label) in &chart.x_ticks {
        let x = x_of(*x);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#999\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            TOP + plot_height,
            TOP + plot_height + 5.0,
            TOP + plot_height + 18.0,
            escape(label)
        );
    }
    for (x, label) in &chart.x_sections {
        let x = x_of(*x);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#bbb\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#555\">{}</text>",
            TOP + plot_height,
            x + 3.0,
            TOP + 12.0,
            escape(label)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_width}" height="{plot_height}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_width / 2.0,
        HEIGHT - 18.0,
        escape(chart.x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        TOP + plot_height / 2.0,
        TOP + plot_height / 2.0,
        escape(chart.y_label)
    );
    for (index, line) in lines.iter().enumerate() {
        let points: Vec<String> = line
            .points
            .iter()
            .filter(|point| point.1.is_finite() && (!chart.log_y || point.1 > 0.0))
            .map(|&(x, y)| format!("{:.1},{:.1}", x_of(x), y_of(y)))
            .collect();
        let width = if line.bold { 3.0 } else { 1.6 };
        if !points.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="{width}"/>"#,
                points.join(" "),
                line.color
            );
            if line.points.len() <= 8 {
                for point in &points {
                    let (x, y) = point.split_once(',').unwrap_or(("0", "0"));
                    let _ = writeln!(svg, r#"<circle cx="{x}" cy="{y}" r="3" fill="{}"/>"#, line.color);
                }
            }
        }
        let legend_y = TOP + 10.0 + index as f64 * 18.0;
        let legend_x = LEFT + plot_width + 14.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{legend_x}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="{}" stroke-width="{width}"/><text x="{}" y="{:.1}">{}</text>"#,
            legend_x + 22.0,
            line.color,
            legend_x + 28.0,
            legend_y + 4.0,
            escape(&line.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}
