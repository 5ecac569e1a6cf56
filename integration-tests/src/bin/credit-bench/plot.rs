//! `--plot FILE.svg`: throughput and p99 against client count, one line per
//! scenario and target, two charts side by side.

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
            .entry((r.scenario.name(), r.target))
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
    let max_clients = all().map(|p| p.0).fold(1.0, f64::max);
    let max_ops = all().map(|p| p.1).fold(1.0, f64::max);
    let min_p99 = all().map(|p| p.2).fold(f64::MAX, f64::min).max(0.01);
    let max_p99 = all().map(|p| p.2).fold(0.01, f64::max);
    // Client counts grow geometrically (1, 8, 32, 64): a log axis spaces them.
    let x_range = (0.8..max_clients * 1.25).log_scale();

    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (left, right) = root.split_horizontally(WIDTH / 2);

    let mut throughput = ChartBuilder::on(&left)
        .caption("throughput (ops/s)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range.clone(), 0.0..max_ops * 1.1)?;
    throughput
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("clients")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;

    // p99 spans orders of magnitude between 1 and 64 clients: log axis.
    let mut p99 = ChartBuilder::on(&right)
        .caption("p99 latency (ms)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, (min_p99 / 1.5..max_p99 * 1.5).log_scale())?;
    p99.configure_mesh()
        .light_line_style(TRANSPARENT)
        .y_labels(12)
        .x_desc("clients")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()?;

    for (i, ((scenario, target), points)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let label = format!("{scenario} {}", target.name());
        throughput
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        throughput.draw_series(
            points
                .iter()
                .map(|p| Circle::new((p.0, p.1), 3, color.filled())),
        )?;
        p99.draw_series(LineSeries::new(
            points.iter().map(|p| (p.0, p.2)),
            color.stroke_width(2),
        ))?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        p99.draw_series(
            points
                .iter()
                .map(|p| Circle::new((p.0, p.2), 3, color.filled())),
        )?;
    }
    throughput
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
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

/// The plot title for a set of results.
pub fn title(database: &str, scenarios: &[Scenario]) -> String {
    let names: Vec<&str> = scenarios.iter().map(|s| s.name()).collect();
    format!("credit-bench: {} on {database}", names.join(", "))
}
