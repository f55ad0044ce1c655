//! Inline SVG line charts drawn on the server from the history ring: no
//! chart library, no script. A chart spans the samples there are, at least
//! [`MIN_SPAN`] of them (ten minutes) and at most the ring's hour, newest
//! on the right, and is scaled to its largest value; colours come from
//! classes in `console.css` (no inline style, which the CSP forbids).

use std::fmt::Write as _;

use super::history::{CAPACITY, Sample};
use super::html::{bytes, esc};

const HEIGHT: f64 = 100.0;
const WIDTH: f64 = CAPACITY as f64;
/// The narrowest time span a chart shows, in samples: a server that just
/// started shows its first minutes spread over ten, not squeezed into the
/// right edge of an hour.
const MIN_SPAN: usize = 60;

/// One line: its name and a value per sample (`None`: no data then).
pub(super) struct Series {
    pub(super) name: &'static str,
    pub(super) values: Vec<Option<f64>>,
}

fn line(name: &'static str, values: Vec<Option<f64>>) -> Series {
    Series { name, values }
}

/// How a chart shows its values.
#[derive(Clone, Copy)]
pub(super) enum Unit {
    Percent,
    PerSecond,
    BytesPerSecond,
    Millis,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Percent => format!("{v:.1}%"),
            Unit::PerSecond => format!("{v:.1}/s"),
            Unit::BytesPerSecond => format!("{}/s", bytes(v.max(0.0) as u64)),
            Unit::Millis if v < 1.0 => format!("{:.0} µs", v * 1000.0),
            Unit::Millis => format!("{v:.1} ms"),
        }
    }
}

/// The `points` of each unbroken run of values of one series.
fn runs(values: &[Option<f64>], max: f64) -> Vec<Vec<(f64, f64)>> {
    let span = values.len().clamp(MIN_SPAN, CAPACITY);
    let step = WIDTH / (span - 1) as f64;
    let offset = span.saturating_sub(values.len());
    let mut out = Vec::new();
    let mut current = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => {
                let x = (offset + i) as f64 * step;
                let y = HEIGHT - (v / max).clamp(0.0, 1.0) * (HEIGHT - 4.0) - 2.0;
                current.push((x, y));
            }
            None if !current.is_empty() => out.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A titled chart with a legend of each series' latest value.
pub(super) fn chart(id: &str, title: &str, unit: Unit, series: &[Series]) -> String {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0_f64, |m, v| m.max(*v));
    let max = match unit {
        Unit::Percent => 100.0,
        _ if max <= 0.0 => 1.0,
        _ => max,
    };
    let samples = series.first().map_or(0, |s| s.values.len());
    let mut svg = format!(
        "<svg class=\"chart\" id=\"{id}\" data-samples=\"{samples}\" viewBox=\"0 0 {CAPACITY} {HEIGHT}\" \
         preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{title}\">\
         <line class=\"grid\" x1=\"0\" y1=\"{mid}\" x2=\"{CAPACITY}\" y2=\"{mid}\"/>",
        id = esc(id),
        title = esc(title),
        mid = HEIGHT / 2.0,
    );
    for (n, s) in series.iter().enumerate() {
        for run in runs(&s.values, max) {
            let points: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            if run.len() == 1 {
                let (x, y) = run[0];
                let _ = write!(
                    svg,
                    "<circle class=\"s{n}\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"1.5\"/>"
                );
            } else {
                let _ = write!(
                    svg,
                    "<polyline class=\"s{n}\" points=\"{}\"/>",
                    points.join(" ")
                );
            }
        }
    }
    svg.push_str("</svg>");
    let mut legend = String::new();
    for (n, s) in series.iter().enumerate() {
        let last = s
            .values
            .iter()
            .rev()
            .flatten()
            .next()
            .map_or_else(|| "–".to_string(), |v| unit.show(*v));
        let _ = write!(
            legend,
            "<span class=\"key s{n}\">{}</span> {} ",
            esc(s.name),
            esc(&last)
        );
    }
    format!(
        "<figure class=\"chart-box\"><figcaption>{} <small>last {} min · max {}</small></figcaption>{svg}\
         <div class=\"legend\">{legend}</div></figure>",
        esc(title),
        samples.clamp(MIN_SPAN, CAPACITY) / 6,
        esc(&unit.show(max))
    )
}

/// The overview's charts: hit ratios, requests/s, bytes, p99 latency.
pub(super) fn overview_charts(samples: &[Sample]) -> String {
    let col = |f: fn(&Sample) -> Option<f64>| samples.iter().map(f).collect::<Vec<_>>();
    [
        chart(
            "chart-hits",
            "Hit ratio",
            Unit::Percent,
            &[
                line("AC", col(|s| s.ac_hit_pct)),
                line("CAS", col(|s| s.cas_hit_pct)),
            ],
        ),
        chart(
            "chart-requests",
            "Requests",
            Unit::PerSecond,
            &[
                line("HTTP", col(|s| Some(s.http.requests_per_s))),
                line("gRPC", col(|s| Some(s.grpc.requests_per_s))),
            ],
        ),
        chart(
            "chart-bytes",
            "Bytes in / out",
            Unit::BytesPerSecond,
            &[
                line("HTTP in", col(|s| Some(s.http.bytes_in_per_s))),
                line("HTTP out", col(|s| Some(s.http.bytes_out_per_s))),
                line("gRPC in", col(|s| Some(s.grpc.bytes_in_per_s))),
                line("gRPC out", col(|s| Some(s.grpc.bytes_out_per_s))),
            ],
        ),
        chart(
            "chart-latency",
            "p99 latency",
            Unit::Millis,
            &[
                line("HTTP", col(|s| s.http.p99_ms)),
                line("gRPC", col(|s| s.grpc.p99_ms)),
            ],
        ),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_runs_right_aligned_and_breaks_at_gaps() {
        let svg = chart(
            "c",
            "T <x>",
            Unit::PerSecond,
            &[Series {
                name: "a",
                values: vec![Some(1.0), Some(2.0), None, Some(2.0)],
            }],
        );
        assert!(svg.contains("T &lt;x&gt;"), "{svg}");
        assert!(svg.contains("data-samples=\"4\""), "{svg}");
        assert!(
            svg.contains("<polyline class=\"s0\" points=\"341.7,50.0 347.8,2.0\"/>"),
            "{svg}"
        );
        assert!(svg.contains("<circle class=\"s0\" cx=\"360.0\""), "{svg}");
        assert!(svg.contains("last 10 min"), "{svg}");
        assert!(!chart("e", "E", Unit::Millis, &[]).contains("polyline"));
    }
}
