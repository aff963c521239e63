//! A small SVG chart for `wginfer bench --plot`: grouped bars of median
//! latency and of throughput per configuration, one colour per device, with
//! axes, units and a legend. Written directly (SVG is text; a plotting crate
//! would bring font handling the chart does not need).

use std::fmt::Write;

use super::bench::Record;

const COLORS: [&str; 6] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A round tick step giving about five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    mag * if n < 1.5 {
        1.0
    } else if n < 3.0 {
        2.0
    } else if n < 7.0 {
        5.0
    } else {
        10.0
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[allow(clippy::too_many_arguments)]
fn panel(
    out: &mut String,
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
    title: &str,
    cats: &[String],
    series: &[String],
    value: &dyn Fn(usize, usize) -> Option<f64>,
) {
    let max = (0..cats.len())
        .flat_map(|c| (0..series.len()).filter_map(move |s| value(c, s)))
        .fold(0.0f64, f64::max);
    let step = tick_step(max);
    let top = (max / step).ceil().max(1.0) * step;
    let (left, bottom) = (x0 + 70.0, y0 + h - 60.0);
    let (pw, ph) = (w - 90.0, h - 100.0);
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="15" font-weight="bold" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        y0 + 22.0,
        esc(title)
    );
    // Grid and y ticks.
    let mut t = 0.0;
    while t <= top + step * 0.01 {
        let y = bottom - ph * t / top;
        let _ = writeln!(
            out,
            r##"<line x1="{left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            left + pw
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#,
            left - 6.0,
            y + 4.0,
            fmt_num(t)
        );
        t += step;
    }
    let _ = writeln!(
        out,
        r##"<line x1="{left:.1}" y1="{bottom:.1}" x2="{:.1}" y2="{bottom:.1}" stroke="#333"/>"##,
        left + pw
    );
    let _ = writeln!(
        out,
        r##"<line x1="{left:.1}" y1="{bottom:.1}" x2="{left:.1}" y2="{:.1}" stroke="#333"/>"##,
        bottom - ph
    );
    // Bars.
    let group = pw / cats.len().max(1) as f64;
    let bar = (group * 0.8) / series.len().max(1) as f64;
    for (c, cat) in cats.iter().enumerate() {
        let gx = left + group * c as f64 + group * 0.1;
        for s in 0..series.len() {
            if let Some(v) = value(c, s) {
                let bh = ph * v / top;
                let x = gx + bar * s as f64;
                let _ = writeln!(
                    out,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                    bottom - bh,
                    (bar - 2.0).max(1.0),
                    COLORS[s % COLORS.len()],
                    esc(&series[s]),
                    fmt_num(v)
                );
            }
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" transform="rotate(-30 {:.1} {:.1})">{}</text>"#,
            gx + group * 0.4,
            bottom + 16.0,
            gx + group * 0.4,
            bottom + 16.0,
            esc(cat)
        );
    }
}

/// The chart: median latency (ms) and throughput side by side.
pub fn chart(title: &str, records: &[Record], op: bool) -> String {
    let mut cats: Vec<String> = Vec::new();
    let mut series: Vec<String> = Vec::new();
    let cat_of = |r: &Record| {
        if op {
            format!("{} n={}", r.format, r.batch)
        } else {
            format!("{} b={}", r.format, r.batch)
        }
    };
    let series_of = |r: &Record| format!("{} ({})", r.device, r.backend);
    for r in records {
        if !cats.contains(&cat_of(r)) {
            cats.push(cat_of(r));
        }
        if !series.contains(&series_of(r)) {
            series.push(series_of(r));
        }
    }
    let find = |c: usize, s: usize| {
        records
            .iter()
            .find(|r| cat_of(r) == cats[c] && series_of(r) == series[s])
    };
    let (w, h) = (1000.0, 480.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" font-size="17" text-anchor="middle">wginfer bench: {}</text>"#,
        w / 2.0,
        esc(title)
    );
    let mut inner = String::new();
    panel(
        &mut inner,
        0.0,
        30.0,
        w / 2.0,
        h - 90.0,
        "median latency (ms, lower is better)",
        &cats,
        &series,
        &|c, s| find(c, s).map(|r| r.p50_ms),
    );
    let label = if op {
        "throughput (GFLOP/s, higher is better)"
    } else {
        "throughput (samples/s, higher is better)"
    };
    let pick = |r: &Record| if op { r.gflops.unwrap_or(0.0) } else { r.items_per_s };
    panel(
        &mut inner,
        w / 2.0,
        30.0,
        w / 2.0,
        h - 90.0,
        label,
        &cats,
        &series,
        &|c, s| find(c, s).map(pick),
    );
    out.push_str(&inner);
    // Legend.
    for (i, s) in series.iter().enumerate() {
        let x = 40.0 + 320.0 * (i % 3) as f64;
        let y = h - 40.0 + 18.0 * (i / 3) as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/>"#,
            y - 10.0,
            COLORS[i % COLORS.len()]
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{y}" font-size="12">{}</text>"#,
            x + 18.0,
            esc(s)
        );
    }
    out.push_str("</svg>\n");
    out
}
