//! `--plot FILE.svg`: throughput and p99 against client count, one line per
//! scenario and target, two charts side by side. A reserve-capture line
//! counts pairs (one Reserve + one Capture) and their latency, labelled so.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::args::{Scenario, TargetKind};
use crate::report::RunResult;

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 520;

/// The points of one line: (clients, ops/s, p99 ms), by client count.
type Series = Vec<(f64, f64, f64)>;

pub fn draw(path: &Path, title: &str, results: &[RunResult]) -> anyhow::Result<()> {
    let mut lines: BTreeMap<(&'static str, TargetKind), Series> = BTreeMap::new();
    for r in results {
        lines
            .entry((line_name(r.scenario), r.target))
            .or_default()
            .push((r.clients as f64, r.ops_per_sec, r.latency_ms.p99));
    }
    for points in lines.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    anyhow::ensure!(!lines.is_empty(), "nothing to plot");
    render(path, title, &lines).with_context(|| format!("cannot draw {}", path.display()))
}

fn render(
    path: &Path,
    title: &str,
    lines: &BTreeMap<(&'static str, TargetKind), Series>,
) -> anyhow::Result<()> {
    let all = || lines.values().flatten();
    // Client counts grow geometrically (1, 8, 32, 64) and p99 spans orders
    // of magnitude: both axes are logarithmic, drawn as log2(clients) and
    // log10(ms) on linear axes so the ticks land on readable values.
    let x = |clients: f64| clients.log2();
    let y = |ms: f64| ms.max(0.001).log10();
    let max_x = all().map(|p| x(p.0)).fold(0.0, f64::max);
    let max_ops = all().map(|p| p.1).fold(1.0, f64::max);
    let min_y = all().map(|p| y(p.2)).fold(f64::MAX, f64::min);
    let max_y = all().map(|p| y(p.2)).fold(f64::MIN, f64::max);
    let x_range = -0.3..max_x + 0.3;
    let y_range = (min_y - 0.2).floor()..(max_y + 0.2).ceil();
    let single_scenario = lines
        .keys()
        .map(|k| k.0)
        .collect::<Vec<_>>()
        .windows(2)
        .all(|w| w[0] == w[1]);

    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (left, right) = root.split_horizontally(WIDTH / 2);

    // Ticks at whole powers of two only.
    let clients_label = |v: &f64| {
        if (v - v.round()).abs() < 1e-6 {
            format!("{}", 2f64.powf(v.round()))
        } else {
            String::new()
        }
    };
    let x_ticks = max_x.ceil() as usize + 2;
    let mut throughput = ChartBuilder::on(&left)
        .caption(
            if lines
                .keys()
                .any(|k| k.0 == line_name(Scenario::ReserveCapture))
            {
                "throughput (ops/s; reserve-capture: pairs/s)"
            } else {
                "throughput (ops/s)"
            },
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range.clone(), 0.0..max_ops * 1.1)?;
    throughput
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("clients")
        .x_labels(x_ticks)
        .x_label_formatter(&clients_label)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;

    let mut p99 = ChartBuilder::on(&right)
        .caption("p99 latency (ms, log scale)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, y_range)?;
    p99.configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("clients")
        .x_labels(x_ticks)
        .x_label_formatter(&clients_label)
        .y_labels(10)
        .y_label_formatter(&|v| format!("{}", round_sig(10f64.powf(*v))))
        .draw()?;

    for (i, ((scenario, target), points)) in lines.iter().enumerate() {
        let color = if single_scenario {
            target_color(*target)
        } else {
            Palette99::pick(i).to_rgba()
        };
        let label = format!("{scenario} {}", target.name());
        let style = color.stroke_width(2);
        throughput
            .draw_series(LineSeries::new(points.iter().map(|p| (x(p.0), p.1)), style))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
        throughput.draw_series(
            points
                .iter()
                .map(|p| Circle::new((x(p.0), p.1), 3, color.filled())),
        )?;
        p99.draw_series(LineSeries::new(
            points.iter().map(|p| (x(p.0), y(p.2))),
            style,
        ))?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
        p99.draw_series(
            points
                .iter()
                .map(|p| Circle::new((x(p.0), y(p.2)), 3, color.filled())),
        )?;
    }
    throughput
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    p99.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// A line's name in the legend.
fn line_name(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::ReserveCapture => "reserve-capture (pairs)",
        other => other.name(),
    }
}

/// Service red, raw blue, peer green: the same in every plot.
fn target_color(target: TargetKind) -> RGBAColor {
    match target {
        TargetKind::Service => RGBColor(214, 39, 40).to_rgba(),
        TargetKind::Raw => RGBColor(31, 119, 180).to_rgba(),
        TargetKind::Peer => RGBColor(44, 160, 44).to_rgba(),
    }
}

/// Two significant digits, for tick labels.
fn round_sig(v: f64) -> f64 {
    if v <= 0.0 {
        return 0.0;
    }
    let scale = 10f64.powf(v.log10().floor() - 1.0);
    (v / scale).round() * scale
}

/// The plot title for a set of results.
pub fn title(database: &str, scenarios: &[Scenario]) -> String {
    let names: Vec<&str> = scenarios.iter().map(|s| s.name()).collect();
    format!("credit-bench: {} on {database}", names.join(", "))
}
