//! Results: one row per run, the service/raw and service/peer ratios, the
//! reserve+capture pair / spend cost ratios, and the JSON document.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::args::{DbKind, Scenario, TargetKind};
use crate::feed::FeedStats;
use crate::runner::Measurement;
use crate::workload::Op;

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub scenario: Scenario,
    pub target: TargetKind,
    pub clients: usize,
    /// Successful calls in the measured window.
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub latency_ms: Latency,
    /// Per operation, when the scenario mixes several.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_op: BTreeMap<&'static str, OpStats>,
    /// Failed calls by gRPC code (service) or SQLSTATE/kind (SQL).
    pub errors: BTreeMap<String, u64>,
    /// Peak VmRSS of the server process during the run (service runs of a
    /// server this tool started).
    pub server_peak_rss_mb: Option<f64>,
    /// CPU capacity (%) that work other than the benchmark's (server,
    /// database, clients) used during the run: above a few percent,
    /// something competed with it.
    pub other_cpu_percent: Option<f64>,
    pub users_checked: u64,
    pub invariant_violations: Vec<String>,
    /// The feed scenario: how many all-users watch streams ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watchers: Option<usize>,
    /// What those watchers received, and how fast.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<FeedStats>,
}

/// Latency percentiles of successful calls, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl RunResult {
    pub fn new(
        scenario: Scenario,
        target: TargetKind,
        clients: usize,
        m: &Measurement,
    ) -> RunResult {
        let seconds = m.elapsed.as_secs_f64();
        let used: Vec<(Op, &Histogram<u64>)> = Op::ALL
            .into_iter()
            .zip(&m.by_op)
            .filter(|(_, h)| !h.is_empty())
            .collect();
        let by_op = if used.len() > 1 {
            used.iter()
                .map(|(op, h)| {
                    let stats = OpStats {
                        ops: h.len(),
                        latency_ms: Latency::of(h),
                    };
                    (op.name(), stats)
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        RunResult {
            scenario,
            target,
            clients,
            ops: m.ok,
            seconds,
            ops_per_sec: if seconds > 0.0 {
                m.ok as f64 / seconds
            } else {
                0.0
            },
            latency_ms: Latency::of(&m.latency),
            by_op,
            errors: m.errors.clone(),
            server_peak_rss_mb: None,
            other_cpu_percent: None,
            users_checked: 0,
            invariant_violations: Vec::new(),
            watchers: None,
            feed: None,
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// One operation's share of a mixed run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OpStats {
    pub ops: u64,
    pub latency_ms: Latency,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// service/raw or service/peer for one scenario and client count.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub scenario: Scenario,
    pub clients: usize,
    /// `raw` or `peer`.
    pub baseline: TargetKind,
    /// Service throughput over the baseline's.
    pub throughput: f64,
    /// Service p99 over the baseline's (lower is better).
    pub p99: f64,
}

/// Every ratio the results allow.
pub fn ratios(results: &[RunResult]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for service in results.iter().filter(|r| r.target == TargetKind::Service) {
        for baseline in results.iter().filter(|r| {
            r.target != TargetKind::Service
                && r.scenario == service.scenario
                && r.clients == service.clients
        }) {
            if baseline.ops_per_sec > 0.0 {
                out.push(Ratio {
                    scenario: service.scenario,
                    clients: service.clients,
                    baseline: baseline.target,
                    throughput: service.ops_per_sec / baseline.ops_per_sec,
                    p99: service.latency_ms.p99 / baseline.latency_ms.p99.max(1e-3),
                });
            }
        }
    }
    out
}

/// What a reserve+capture pair costs against one spend on a hot account:
/// a reserve-capture run next to the spend-hot run of the same target and
/// client count in the same invocation.
#[derive(Debug, Clone, Serialize)]
pub struct PairRatio {
    pub clients: usize,
    pub target: TargetKind,
    pub spend_ops_per_sec: f64,
    pub pairs_per_sec: f64,
    /// Pair time over spend time: spend ops/s over pairs/s (2.0 = a pair
    /// costs two spends).
    pub pair_over_spend: f64,
    /// The pair's p99 over the spend's.
    pub p99: f64,
}

/// What a spend on a user with five lots costs against a spend on a user
/// with one: a spend-lots run next to the spend-hot run of the same target
/// and client count in the same invocation.
#[derive(Debug, Clone, Serialize)]
pub struct LotRatio {
    pub clients: usize,
    pub target: TargetKind,
    pub spend_ops_per_sec: f64,
    pub lots_ops_per_sec: f64,
    /// Time of a spend over lots over that of a plain one: spend-hot ops/s
    /// over spend-lots ops/s (1.3 = 30% more).
    pub lots_over_plain: f64,
    /// spend-lots p99 over spend-hot p99.
    pub p99: f64,
}

/// Each run of `scenario` with the spend-hot run of the same target and
/// client count: (run, spend-hot run).
fn with_spend_hot(
    results: &[RunResult],
    scenario: Scenario,
) -> impl Iterator<Item = (&RunResult, &RunResult)> {
    results
        .iter()
        .filter(move |r| r.scenario == scenario && r.ops_per_sec > 0.0)
        .filter_map(|run| {
            let spend = results.iter().find(|r| {
                r.scenario == Scenario::SpendHot
                    && r.target == run.target
                    && r.clients == run.clients
            })?;
            Some((run, spend))
        })
}

/// Every pair/spend ratio the results allow.
pub fn pair_ratios(results: &[RunResult]) -> Vec<PairRatio> {
    with_spend_hot(results, Scenario::ReserveCapture)
        .map(|(pair, spend)| PairRatio {
            clients: pair.clients,
            target: pair.target,
            spend_ops_per_sec: spend.ops_per_sec,
            pairs_per_sec: pair.ops_per_sec,
            pair_over_spend: spend.ops_per_sec / pair.ops_per_sec,
            p99: pair.latency_ms.p99 / spend.latency_ms.p99.max(1e-3),
        })
        .collect()
}

/// Every lots/plain ratio the results allow.
pub fn lot_ratios(results: &[RunResult]) -> Vec<LotRatio> {
    with_spend_hot(results, Scenario::SpendLots)
        .map(|(lots, spend)| LotRatio {
            clients: lots.clients,
            target: lots.target,
            spend_ops_per_sec: spend.ops_per_sec,
            lots_ops_per_sec: lots.ops_per_sec,
            lots_over_plain: spend.ops_per_sec / lots.ops_per_sec,
            p99: lots.latency_ms.p99 / spend.latency_ms.p99.max(1e-3),
        })
        .collect()
}

/// What watchers cost the writes: a feed run with watchers next to the one
/// without, same target and client count.
#[derive(Debug, Clone, Serialize)]
pub struct FeedRatio {
    pub clients: usize,
    pub watchers: usize,
    pub writes_per_sec_without: f64,
    pub writes_per_sec_with: f64,
    /// With over without (0.9 = writes lost 10%).
    pub with_over_without: f64,
    pub delivery_p50_ms: f64,
    pub delivery_p99_ms: f64,
    pub delivery_max_ms: f64,
    /// Whether every watcher received every acknowledged write.
    pub every_write_delivered: bool,
}

/// Every with/without-watchers pair the results allow.
pub fn feed_ratios(results: &[RunResult]) -> Vec<FeedRatio> {
    results
        .iter()
        .filter_map(|with| {
            let feed = with.feed.as_ref()?;
            let without = results.iter().find(|r| {
                r.scenario == Scenario::Feed
                    && r.watchers == Some(0)
                    && r.target == with.target
                    && r.clients == with.clients
            })?;
            Some(FeedRatio {
                clients: with.clients,
                watchers: feed.watchers,
                writes_per_sec_without: without.ops_per_sec,
                writes_per_sec_with: with.ops_per_sec,
                with_over_without: with.ops_per_sec / without.ops_per_sec.max(1e-9),
                delivery_p50_ms: feed.p50_ms,
                delivery_p99_ms: feed.p99_ms,
                delivery_max_ms: feed.max_ms,
                every_write_delivered: feed.fewest_per_watcher >= with.ops,
            })
        })
        .collect()
}

/// A run's name in the table: the scenario, and for the feed scenario its
/// watchers (`feed 10w`).
fn run_name(r: &RunResult) -> String {
    match r.watchers {
        Some(n) => format!("{} {n}w", r.scenario.name()),
        None => r.scenario.name().to_owned(),
    }
}

/// The human-readable table and ratio lines.
pub fn render(results: &[RunResult], notes: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:<8} {:>7} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>5}  errors",
        "scenario",
        "target",
        "clients",
        "ops",
        "ops/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "rss MB",
        "other"
    );
    for r in results {
        let rss = r
            .server_peak_rss_mb
            .map_or_else(|| "-".to_owned(), |mb| format!("{mb:.1}"));
        let errors = if r.errors.is_empty() {
            "0".to_owned()
        } else {
            r.errors
                .iter()
                .map(|(code, n)| format!("{code}={n}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            out,
            "{:<15} {:<8} {:>7} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>5}  {errors}",
            run_name(r),
            r.target.name(),
            r.clients,
            r.ops,
            r.ops_per_sec,
            r.latency_ms.p50,
            r.latency_ms.p90,
            r.latency_ms.p99,
            r.latency_ms.max,
            rss,
            r.other_cpu_percent
                .map_or_else(|| "-".to_owned(), |p| format!("{p:.0}%")),
        );
        for (op, stats) in &r.by_op {
            let _ = writeln!(
                out,
                "{:<15} {:<8} {:>7} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                format!("  {op}"),
                "",
                "",
                stats.ops,
                stats.ops as f64 / r.seconds.max(1e-9),
                stats.latency_ms.p50,
                stats.latency_ms.p90,
                stats.latency_ms.p99,
                stats.latency_ms.max,
            );
        }
    }
    let ratios = ratios(results);
    if !ratios.is_empty() {
        out.push('\n');
    }
    for ratio in &ratios {
        let _ = writeln!(
            out,
            "{} @ {} clients: service/{} = {:.2}x throughput, {:.2}x p99",
            ratio.scenario.name(),
            ratio.clients,
            ratio.baseline.name(),
            ratio.throughput,
            ratio.p99,
        );
    }
    let feed_ratios = feed_ratios(results);
    if !feed_ratios.is_empty() {
        out.push('\n');
    }
    for f in &feed_ratios {
        let _ = writeln!(
            out,
            "feed @ {} clients: writes with {} watchers / without = {:.2}x ({:.0} vs {:.0}/s); \
             delivery p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {}",
            f.clients,
            f.watchers,
            f.with_over_without,
            f.writes_per_sec_with,
            f.writes_per_sec_without,
            f.delivery_p50_ms,
            f.delivery_p99_ms,
            f.delivery_max_ms,
            match f.every_write_delivered {
                true => "every watcher received every acknowledged write",
                false => "SOME WATCHER MISSED WRITES",
            }
        );
    }
    let pair_ratios = pair_ratios(results);
    let pairs: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.scenario == Scenario::ReserveCapture)
        .collect();
    if !pairs.is_empty() {
        out.push('\n');
    }
    for pair in pairs {
        match pair_ratios
            .iter()
            .find(|p| p.clients == pair.clients && p.target == pair.target)
        {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "reserve-capture @ {} clients: pair/spend = {:.2}x time \
                     (spend-hot {:.0} ops/s / reserve-capture {:.0} pairs/s), {:.2}x p99",
                    p.clients, p.pair_over_spend, p.spend_ops_per_sec, p.pairs_per_sec, p.p99,
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "reserve-capture @ {} clients: no pair/spend ratio (needs a spend-hot {} run \
                     at {} clients in the same invocation: --scenario spend-hot,reserve-capture)",
                    pair.clients,
                    pair.target.name(),
                    pair.clients,
                );
            }
        }
    }
    let lot_ratios = lot_ratios(results);
    for lots in results.iter().filter(|r| r.scenario == Scenario::SpendLots) {
        match lot_ratios
            .iter()
            .find(|l| l.clients == lots.clients && l.target == lots.target)
        {
            Some(l) => {
                let _ = writeln!(
                    out,
                    "spend-lots @ {} clients: lots/plain = {:.2}x time \
                     (spend-hot {:.0} ops/s / spend-lots {:.0} ops/s), {:.2}x p99",
                    l.clients, l.lots_over_plain, l.spend_ops_per_sec, l.lots_ops_per_sec, l.p99,
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "spend-lots @ {} clients: no lots/plain ratio (needs a spend-hot {} run at {} \
                     clients in the same invocation: --scenario spend-hot,spend-lots)",
                    lots.clients,
                    lots.target.name(),
                    lots.clients,
                );
            }
        }
    }
    for r in results
        .iter()
        .filter(|r| !r.invariant_violations.is_empty())
    {
        let _ = writeln!(
            out,
            "\nINVARIANT VIOLATED ({} {} @ {} clients):",
            r.scenario.name(),
            r.target.name(),
            r.clients
        );
        for v in &r.invariant_violations {
            let _ = writeln!(out, "  {v}");
        }
    }
    for note in notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

/// The document `--json` prints.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    pub tool: &'static str,
    pub version: &'static str,
    pub started_at: String,
    pub database: DbKind,
    pub server: String,
    pub cpus: usize,
    /// The 1-minute load average when the tool started.
    pub load_average_at_start: Option<f64>,
    pub connections: usize,
    pub db_max_connections: u32,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub users: usize,
    pub runs: &'a [RunResult],
    pub ratios: Vec<Ratio>,
    /// Reserve+capture pair time over spend time (reserve-capture next to
    /// spend-hot).
    pub pair_ratios: Vec<PairRatio>,
    /// Time of a spend over five lots over a plain one (spend-lots next to
    /// spend-hot).
    pub lot_ratios: Vec<LotRatio>,
    pub feed_ratios: Vec<FeedRatio>,
    pub server_peak_rss_mb: Option<f64>,
    pub notes: &'a [String],
    pub passed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(scenario: Scenario, clients: usize, ops_per_sec: f64, p99: f64) -> RunResult {
        RunResult {
            scenario,
            target: TargetKind::Service,
            clients,
            ops: 0,
            seconds: 1.0,
            ops_per_sec,
            latency_ms: Latency {
                p50: p99,
                p90: p99,
                p99,
                max: p99,
                mean: p99,
            },
            by_op: BTreeMap::new(),
            errors: BTreeMap::new(),
            server_peak_rss_mb: None,
            other_cpu_percent: None,
            users_checked: 1,
            invariant_violations: Vec::new(),
            watchers: None,
            feed: None,
        }
    }

    #[test]
    fn feed_ratio_pairs_the_runs_with_and_without_watchers() {
        let mut without = run(Scenario::Feed, 8, 1000.0, 2.0);
        without.watchers = Some(0);
        let mut with = run(Scenario::Feed, 8, 900.0, 2.5);
        with.ops = 4500;
        with.watchers = Some(10);
        with.feed = Some(FeedStats {
            watchers: 10,
            delivered: 45_000,
            fewest_per_watcher: 4500,
            p50_ms: 1.0,
            p99_ms: 5.0,
            max_ms: 9.0,
            reopened: 0,
        });
        let mut other = run(Scenario::Feed, 16, 5000.0, 2.0);
        other.watchers = Some(0);
        let ratios = feed_ratios(&[without, other, with.clone()]);
        assert_eq!(ratios.len(), 1);
        let r = &ratios[0];
        assert!((r.with_over_without - 0.9).abs() < 1e-9, "{r:?}");
        assert!(r.every_write_delivered);
        if let Some(f) = with.feed.as_mut() {
            f.fewest_per_watcher = 4499;
        }
        let mut without = run(Scenario::Feed, 8, 1000.0, 2.0);
        without.watchers = Some(0);
        assert!(!feed_ratios(&[without, with])[0].every_write_delivered);
    }

    #[test]
    fn pair_over_spend_matches_runs_by_client_count() {
        let results = [
            run(Scenario::SpendHot, 1, 1000.0, 1.0),
            run(Scenario::SpendHot, 64, 12000.0, 10.0),
            run(Scenario::ReserveCapture, 1, 500.0, 2.0),
            run(Scenario::ReserveCapture, 64, 4000.0, 40.0),
            run(Scenario::ReserveCapture, 8, 3000.0, 5.0),
        ];
        let ratios = pair_ratios(&results);
        assert_eq!(ratios.len(), 2);
        assert_eq!(ratios[0].clients, 1);
        assert!((ratios[0].pair_over_spend - 2.0).abs() < 1e-9);
        assert!((ratios[1].pair_over_spend - 3.0).abs() < 1e-9);
        assert!((ratios[1].p99 - 4.0).abs() < 1e-9);
        let text = render(&results, &[]);
        assert!(text.contains("reserve-capture @ 1 clients: pair/spend = 2.00x"));
        assert!(text.contains("reserve-capture @ 8 clients: no pair/spend ratio"));
    }

    #[test]
    fn lots_over_plain_matches_runs_by_client_count() {
        let results = [
            run(Scenario::SpendHot, 1, 1000.0, 1.0),
            run(Scenario::SpendLots, 1, 800.0, 1.5),
            run(Scenario::SpendLots, 8, 800.0, 1.5),
        ];
        let ratios = lot_ratios(&results);
        assert_eq!(ratios.len(), 1);
        assert!((ratios[0].lots_over_plain - 1.25).abs() < 1e-9);
        assert!((ratios[0].p99 - 1.5).abs() < 1e-9);
        let text = render(&results, &[]);
        assert!(text.contains("spend-lots @ 1 clients: lots/plain = 1.25x"));
        assert!(text.contains("spend-lots @ 8 clients: no lots/plain ratio"));
    }
}
