//! `duel report`: one self-contained HTML page (no scripts, no network) with the
//! training curves, judgements over time, agreement and position bias, plus each
//! chart as its own SVG file.
//!
//! The charts are drawn as SVG by hand: a few polylines and bars need no plotting
//! library, and SVG keeps the page a single file that any browser shows.

use crate::stats::Stats;
use crate::store::{MetricKind, MetricValue, Result, Store};
use std::fmt::Write;

/// A series of points to draw as a line.
struct Series<'a> {
    name: &'a str,
    colour: &'a str,
    points: Vec<(f64, f64)>,
}

/// Text for HTML and SVG: data is untrusted.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}

const W: f64 = 640.0;
const H: f64 = 300.0;
const PAD: f64 = 48.0;

/// The start of a chart: the element, a white background and the title.
fn svg_open(title: &str, font_size: u32) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"{font_size}\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{}</text>",
        W / 2.0,
        escape(title)
    )
}

/// Ends an empty chart with a note.
fn no_data(mut svg: String) -> String {
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#888\">no data yet</text></svg>",
        W / 2.0,
        H / 2.0
    );
    svg
}

/// A line chart; `y_range` fixes the vertical axis (accuracy is 0..1), `guide` draws
/// a dashed horizontal line (the 50% of a coin flip).
fn line_chart(
    title: &str,
    x_label: &str,
    series: &[Series],
    y_range: Option<(f64, f64)>,
    guide: Option<f64>,
) -> String {
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    let mut svg = svg_open(title, 12);
    if all.is_empty() {
        return no_data(svg);
    }
    let (x0, x1) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (y0, y1) = y_range.unwrap_or_else(|| {
        all.iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(p.1), b.max(p.1))
            })
    });
    let (x1, y1) = (
        if x1 > x0 { x1 } else { x0 + 1.0 },
        if y1 > y0 { y1 } else { y0 + 1.0 },
    );
    let sx = |x: f64| PAD + (x - x0) / (x1 - x0) * (W - 2.0 * PAD);
    let sy = |y: f64| H - PAD - (y - y0) / (y1 - y0) * (H - 2.0 * PAD);
    let _ = write!(
        svg,
        "<line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#444\"/><line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{b}\" stroke=\"#444\"/>\
         <text x=\"{PAD}\" y=\"{t}\" text-anchor=\"middle\">{x0}</text><text x=\"{r}\" y=\"{t}\" text-anchor=\"middle\">{x1}</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text x=\"{l}\" y=\"{b}\" text-anchor=\"end\">{y0:.2}</text><text x=\"{l}\" y=\"{top}\" text-anchor=\"end\">{y1:.2}</text>",
        W / 2.0,
        H - 8.0,
        escape(x_label),
        b = H - PAD,
        r = W - PAD,
        t = H - PAD + 16.0,
        l = PAD - 4.0,
        top = PAD + 4.0,
    );
    if let Some(g) = guide
        && g >= y0
        && g <= y1
    {
        let _ = write!(
            svg,
            "<line x1=\"{PAD}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#999\" stroke-dasharray=\"4 4\"/>",
            W - PAD,
            y = sy(g)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" fill=\"{c}\">{}</text>",
            pts.join(" "),
            W - PAD - 120.0,
            PAD + 14.0 * i as f64,
            escape(s.name),
            c = s.colour
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A bar chart of counts by label.
fn bar_chart(title: &str, bars: &[(String, f64)]) -> String {
    let mut svg = svg_open(title, 11);
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max);
    if bars.is_empty() || max <= 0.0 {
        return no_data(svg);
    }
    let slot = (W - 2.0 * PAD) / bars.len() as f64;
    for (i, (label, v)) in bars.iter().enumerate() {
        let h = v / max * (H - 2.0 * PAD);
        let x = PAD + i as f64 * slot;
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#4a7ab5\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v}</text>\
             <text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x + slot * 0.1,
            H - PAD - h,
            slot * 0.8,
            x + slot / 2.0,
            H - PAD - h - 4.0,
            x + slot / 2.0,
            H - PAD + 14.0,
            escape(label)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The charts and the page, as (file name, contents).
pub fn build(store: &Store, stats: &Stats) -> Result<Vec<(String, String)>> {
    // The latest run's metrics.
    let run = store.latest_metric_run()?;
    let metric = |kind: MetricKind, value: MetricValue| -> Result<Vec<(f64, f64)>> {
        Ok(store
            .metric_series(run, kind, value)?
            .into_iter()
            .map(|(step, v)| (step as f64, v))
            .collect())
    };
    let loss = line_chart(
        "Training loss",
        "step",
        &[
            Series {
                name: "train loss",
                colour: "#c0392b",
                points: metric(MetricKind::Train, MetricValue::Loss)?,
            },
            Series {
                name: "held-out loss",
                colour: "#2c3e50",
                points: metric(MetricKind::Eval, MetricValue::Loss)?,
            },
        ],
        None,
        None,
    );
    let accuracy = line_chart(
        "Held-out accuracy",
        "step",
        &[Series {
            name: "held-out accuracy",
            colour: "#27ae60",
            points: metric(MetricKind::Eval, MetricValue::Accuracy)?,
        }],
        Some((0.0, 1.0)),
        Some(0.5),
    );
    // Judgements per day.
    let days: Vec<(String, f64)> = store
        .labels_per_day()?
        .into_iter()
        .map(|(day, n)| (day, n as f64))
        .collect();
    let mut total = 0.0;
    let cumulative: Vec<(f64, f64)> = days
        .iter()
        .enumerate()
        .map(|(i, (_, n))| {
            total += n;
            (i as f64, total)
        })
        .collect();
    let per_day = bar_chart("Judgements per day", &days);
    let growth = line_chart(
        "Judgements so far",
        "day",
        &[Series {
            name: "judgements",
            colour: "#8e44ad",
            points: cumulative,
        }],
        None,
        None,
    );
    let choices = bar_chart(
        "Choices",
        &stats
            .choices
            .iter()
            .map(|(c, n)| (c.to_string(), *n as f64))
            .collect::<Vec<_>>(),
    );

    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>duel report</title>\
         <style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\
         th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}svg{margin:1em 0}</style></head><body>",
    );
    let _ = write!(
        html,
        "<h1>duel report</h1><p>{} pairs, {} judged, {} judgements.</p>",
        stats.pairs, stats.judged, stats.labels
    );
    let _ = write!(html, "<h2>Reward model</h2>{loss}{accuracy}");
    let _ = write!(html, "<h2>Judgements</h2>{per_day}{growth}{choices}");
    let b = &stats.position_bias;
    let _ = write!(
        html,
        "<h2>Position bias</h2><p>The response on the left won {} of {} decisive judgements ({}; 50% is no bias).</p>",
        b.left_won,
        b.decisive,
        b.left_share
            .map(|x| format!("{:.1}%", 100.0 * x))
            .unwrap_or_else(|| "–".into())
    );
    html.push_str("<h2>Annotators</h2><table><tr><th>annotator</th><th>judgements</th><th>per hour</th><th>median s</th><th>left won</th><th>with majority</th><th>with model</th></tr>");
    let pct = |v: Option<f64>| {
        v.map(|x| format!("{:.1}%", 100.0 * x))
            .unwrap_or_else(|| "–".into())
    };
    for a in &stats.annotators {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} of {}</td><td>{} of {}</td></tr>",
            escape(&a.name),
            a.labels,
            a.per_hour
                .map(|x| format!("{x:.0}"))
                .unwrap_or_else(|| "–".into()),
            a.median_ms
                .map(|m| format!("{:.1}", m as f64 / 1000.0))
                .unwrap_or_else(|| "–".into()),
            pct(a.left_share),
            pct(a.with_majority),
            a.majority_pairs,
            pct(a.with_model),
            a.model_pairs
        );
    }
    html.push_str("</table>");
    let g = &stats.agreement;
    let _ = write!(
        html,
        "<h2>Agreement</h2><p>{} pairs judged by more than one annotator: {} agree, Cohen's kappa {}, Krippendorff's alpha {}.</p>\
         <table><tr><th>annotators</th><th>shared pairs</th><th>agree</th><th>kappa</th></tr>",
        g.pairs,
        g.percent
            .map(|x| format!("{x:.1}%"))
            .unwrap_or_else(|| "–".into()),
        g.kappa
            .map(|x| format!("{x:.3}"))
            .unwrap_or_else(|| "–".into()),
        g.alpha
            .map(|x| format!("{x:.3}"))
            .unwrap_or_else(|| "–".into()),
    );
    for p in &g.by_annotator_pair {
        let _ = write!(
            html,
            "<tr><td>{} / {}</td><td>{}</td><td>{:.1}%</td><td>{}</td></tr>",
            escape(&p.a),
            escape(&p.b),
            p.shared,
            p.percent,
            p.kappa
                .map(|x| format!("{x:.3}"))
                .unwrap_or_else(|| "–".into())
        );
    }
    html.push_str("</table>");
    let c = &stats.consensus;
    let _ = write!(
        html,
        "<h2>Verdicts</h2><p>Under the majority rule (what export and training read): {} pairs agreed, {} adjudicated, {} contested (left out).</p>",
        c.agreed, c.adjudicated, c.contested
    );
    if stats.annotators.iter().any(|a| a.gold.is_some()) {
        html.push_str("<h2>Gold pairs</h2><table><tr><th>annotator</th><th>judged</th><th>matched</th><th>accuracy</th><th>95% interval</th><th></th></tr>");
        for a in &stats.annotators {
            let Some(g) = &a.gold else { continue };
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%</td><td>{:.1}–{:.1}%</td><td>{}</td></tr>",
                escape(&a.name),
                g.judged,
                g.matched,
                100.0 * g.accuracy,
                100.0 * g.low,
                100.0 * g.high,
                if g.flagged { "below the bar" } else { "" }
            );
        }
        html.push_str("</table>");
    }
    if !stats.ratings.is_empty() {
        html.push_str("<h2>Generation settings</h2><table><tr><th>setting</th><th>rating</th><th>95% interval</th><th>judgements</th></tr>");
        for r in &stats.ratings {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{:.0}</td><td>{:.0} – {:.0}</td><td>{}</td></tr>",
                escape(&r.system),
                r.rating,
                r.low,
                r.high,
                r.battles
            );
        }
        html.push_str("</table><p>Bradley-Terry on the Elo scale, centred on 1000; intervals from 200 bootstrap resamples.</p>");
    }
    html.push_str("</body></html>\n");
    Ok(vec![
        ("index.html".into(), html),
        ("loss.svg".into(), loss),
        ("accuracy.svg".into(), accuracy),
        ("judgements_per_day.svg".into(), per_day),
        ("judgements_so_far.svg".into(), growth),
        ("choices.svg".into(), choices),
    ])
}
