//! One invocation: set up (database, server, pools), run every scenario,
//! client count and target, check the invariants after each run, report,
//! and tear down whatever happened.

use anyhow::Context;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend};
use std::sync::Arc;
use std::time::Instant;

use crate::args::{Args, Scenario, TargetKind};
use crate::cpu::CpuSnapshot;
use crate::database::BenchDb;
use crate::feed::Watchers;
use crate::grpc::{self, Client};
use crate::invariants;
use crate::plot;
use crate::progress::Progress;
use crate::raw::{self, SqlTarget, Style};
use crate::report::{self, Document, RunResult};
use crate::rss::RssSampler;
use crate::runner::{self, RunSpec, Target};
use crate::server::{self, ServerProcess};
use crate::workload::{self, Workload};

/// Users seeded at once through the API.
const SEED_CONCURRENCY: usize = 32;

/// Everything a run needs, set up once.
struct Env {
    endpoint: String,
    /// The server this tool started, if any.
    server: Option<ServerProcess>,
    rss: Option<RssSampler>,
    db: Option<BenchDb>,
    /// For the invariant checks.
    check_db: Option<DatabaseConnection>,
    /// For the raw and peer targets.
    sql: Option<SqlTarget>,
    clients: Vec<Client>,
}

/// Runs the benchmark; `Ok(false)` when a check failed.
pub async fn run(args: Args) -> anyhow::Result<bool> {
    args.validate()?;
    let started_at = chrono::Utc::now();
    let mut env = Env {
        endpoint: String::new(),
        server: None,
        rss: None,
        db: None,
        check_db: None,
        sql: None,
        clients: Vec::new(),
    };
    let outcome = match set_up(&args, &mut env).await {
        Ok(()) => bench(&args, &mut env, started_at).await,
        Err(err) => Err(err),
    };
    let keep = args.keep_database || matches!(outcome, Ok(false));
    let teardown = tear_down(env, keep).await;
    let passed = outcome?;
    teardown?;
    Ok(passed)
}

async fn set_up(args: &Args, env: &mut Env) -> anyhow::Result<()> {
    match &args.server {
        Some(endpoint) => {
            server::wait_existing(endpoint).await?;
            env.endpoint = endpoint.clone();
            if let Some(url) = &args.database_url {
                env.db = Some(BenchDb::existing(url)?);
            }
        }
        None => {
            let binary = server::resolve_binary(args.server_bin.as_deref())?;
            let db = BenchDb::create(args.database, args.database_url.as_deref()).await?;
            let url = db.url.clone();
            env.db = Some(db);
            let process = ServerProcess::start(&binary, &url, args.db_max_connections)
                .await
                .context("cannot start credit-server")?;
            env.endpoint = process.endpoint.clone();
            env.rss = Some(RssSampler::start(process.pid));
            env.server = Some(process);
        }
    }
    env.clients = grpc::connect(&env.endpoint, args.connections).await?;
    if let Some(db) = &env.db {
        let mut options = ConnectOptions::new(db.url.clone());
        options.max_connections(2).sqlx_logging(false);
        env.check_db = Some(
            Database::connect(options)
                .await
                .with_context(|| format!("cannot open {}", db.describe()))?,
        );
        let wants_sql = args.targets.iter().any(|t| *t != TargetKind::Service);
        if wants_sql {
            env.sql = Some(raw::open(db.kind, &db.url, args.db_max_connections).await?);
        }
    }
    Ok(())
}

async fn tear_down(env: Env, keep: bool) -> anyhow::Result<()> {
    if let Some(sql) = &env.sql {
        sql.close().await;
    }
    if let Some(db) = env.check_db {
        db.close().await.ok();
    }
    drop(env.clients);
    drop(env.rss);
    let stopped = match env.server {
        Some(server) => server.stop().await,
        None => Ok(()),
    };
    let dropped = match env.db {
        Some(db) => db.finish(keep).await,
        None => Ok(()),
    };
    stopped?;
    dropped
}

/// The targets this environment can drive, and notes on the others.
fn targets(args: &Args, env: &Env, scenario: Scenario, notes: &mut Vec<String>) -> Vec<Target> {
    let mut out = Vec::new();
    let mut kinds = args.targets.clone();
    kinds.sort();
    kinds.dedup();
    if scenario.service_only() {
        let skipped: Vec<&str> = kinds
            .iter()
            .filter(|k| **k != TargetKind::Service)
            .map(|k| k.name())
            .collect();
        if !skipped.is_empty() {
            note(
                notes,
                format!(
                    "{}: skipped for {} (holds, lots and the feed have no SQL baseline; it runs on \
                     the service only)",
                    skipped.join(", "),
                    scenario.name()
                ),
            );
        }
        if !kinds.contains(&TargetKind::Service) {
            note(
                notes,
                format!(
                    "{}: not run (service only, and --targets has no service)",
                    scenario.name()
                ),
            );
        }
        kinds.retain(|k| *k == TargetKind::Service);
    }
    for kind in kinds {
        match (kind, &env.sql) {
            (TargetKind::Service, _) => out.push((kind, Target::Service(env.clients.clone()))),
            (_, None) => note(
                notes,
                format!(
                    "{}: skipped, no database to run SQL against (with --server, pass \
                     --database-url of the server's database)",
                    kind.name()
                ),
            ),
            (TargetKind::Peer, Some(_)) if scenario == Scenario::Read => note(
                notes,
                "peer: n/a for read (the same SELECT as raw)".to_owned(),
            ),
            (TargetKind::Peer, Some(sql)) if !sql.supports(Style::Peer) => note(
                notes,
                "peer: n/a on this database (its statement is PostgreSQL's)".to_owned(),
            ),
            (TargetKind::Raw, Some(sql)) => out.push((kind, Target::Sql(sql.clone(), Style::Raw))),
            (TargetKind::Peer, Some(sql)) => {
                out.push((kind, Target::Sql(sql.clone(), Style::Peer)))
            }
        }
    }
    out.into_iter().map(|(_, t)| t).collect()
}

/// The 1-minute load average (Linux).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn note(notes: &mut Vec<String>, text: String) {
    if !notes.contains(&text) {
        notes.push(text);
    }
}

fn kind_of(target: &Target) -> TargetKind {
    match target {
        Target::Service(_) => TargetKind::Service,
        Target::Sql(_, Style::Raw) => TargetKind::Raw,
        Target::Sql(_, Style::Peer) => TargetKind::Peer,
    }
}

/// Uncounted load for the warm-up time (pools, prepared statements,
/// caches), then fresh planner statistics: a live database has them within
/// a minute of its tables changing (autovacuum, InnoDB's persistent
/// statistics), but a run of seconds on a database created moments ago
/// would otherwise be planned as if its tables were still empty.
async fn warm_up(
    target: &Target,
    workload: &Arc<Workload>,
    spec: RunSpec,
    db: Option<&DatabaseConnection>,
    progress: bool,
    label: &str,
) -> anyhow::Result<()> {
    if spec.duration.is_zero() {
        return Ok(());
    }
    let bar = Progress::timed(
        progress,
        format!("{label} warm-up"),
        spec.duration.as_millis() as u64,
    );
    runner::measure(target, workload.clone(), spec, &bar).await?;
    if let Some(db) = db {
        // Holds are looked up by key and by id: their table needs
        // statistics as much as the ledger's once a scenario places them.
        // So are lots and their allocations, which every service write
        // reads and writes.
        let holds = workload.scenario == Scenario::ReserveCapture;
        let sql = match (db.get_database_backend(), holds) {
            (DbBackend::Postgres, false) => {
                "ANALYZE user_balance, credit_transaction, credit_lot, credit_allocation"
            }
            (DbBackend::Postgres, true) => {
                "ANALYZE user_balance, credit_transaction, credit_lot, credit_allocation, \
                 credit_hold"
            }
            (DbBackend::MySql, false) => {
                "ANALYZE TABLE user_balance, credit_transaction, credit_lot, credit_allocation"
            }
            (DbBackend::MySql, true) => {
                "ANALYZE TABLE user_balance, credit_transaction, credit_lot, credit_allocation, \
                 credit_hold"
            }
            _ => "ANALYZE",
        };
        db.execute_unprepared(sql)
            .await
            .with_context(|| format!("refreshing planner statistics ({sql})"))?;
    }
    Ok(())
}

async fn bench(
    args: &Args,
    env: &mut Env,
    started_at: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<bool> {
    let progress = !args.no_progress;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let database = env.db.as_ref().map(|db| db.kind).unwrap_or(args.database);
    let mut notes = Vec::new();
    let mut results: Vec<RunResult> = Vec::new();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load_at_start = load_average();
    if let Some(load) = load_at_start.filter(|l| *l > cpus as f64) {
        // Other work on the machine takes CPU from the server, the database
        // and the clients alike; the figures are then not the machine's.
        note(
            &mut notes,
            format!("load average {load:.1} on {cpus} CPUs before the run: figures are unreliable"),
        );
    }

    for &scenario in &args.scenario {
        let targets = targets(args, env, scenario, &mut notes);
        let count = workload::user_count(scenario, args.users);
        let mut workloads = Vec::new();
        for target in &targets {
            let prefix = workload::user_prefix(&run_id, scenario, kind_of(target));
            let users = workload::user_ids(&prefix, count);
            let bar = Progress::items(
                progress,
                format!("seed {} {}", scenario.name(), kind_of(target).name()),
                users.len() as u64,
            );
            grpc::seed_users(&env.clients, &users, SEED_CONCURRENCY, &bar).await?;
            if scenario == Scenario::SpendLots {
                grpc::seed_lots(&env.clients[0], &users).await?;
            }
            bar.finish();
            workloads.push((prefix, Arc::new(Workload { scenario, users })));
        }

        for &clients in &args.clients {
            for (target, (prefix, workload)) in targets.iter().zip(&workloads) {
                let kind = kind_of(target);
                let spec = RunSpec {
                    clients,
                    duration: args.duration,
                    op_timeout: args.op_timeout,
                };
                let label = format!("{} {} x{clients}", scenario.name(), kind.name());
                let warm = RunSpec {
                    duration: args.warmup,
                    ..spec
                };
                warm_up(
                    target,
                    workload,
                    warm,
                    env.check_db.as_ref(),
                    progress,
                    &label,
                )
                .await?;
                // The feed scenario measures the same writes twice in a
                // row: without watchers, then with them.
                let passes = match scenario {
                    Scenario::Feed => vec![0, args.watchers],
                    _ => vec![0],
                };
                for watchers in passes {
                    let label = match scenario {
                        Scenario::Feed => format!("{label} {watchers} watchers"),
                        _ => label.clone(),
                    };
                    let bar = Progress::timed(progress, label, args.duration.as_millis() as u64);
                    let feed = match watchers {
                        0 => None,
                        n => Some(Watchers::start(&env.endpoint, n).await?),
                    };
                    if let Some(rss) = &env.rss {
                        rss.take_peak_mb();
                    }
                    let server_pid = env.server.as_ref().map(|s| s.pid);
                    let cpu_before = CpuSnapshot::take(server_pid);
                    let wall = Instant::now();
                    let m = runner::measure(target, workload.clone(), spec, &bar).await?;
                    let mut result = RunResult::new(scenario, kind, clients, &m);
                    if scenario == Scenario::Feed {
                        result.watchers = Some(watchers);
                    }
                    if let Some(feed) = feed {
                        result.feed = Some(feed.finish(m.ok).await?);
                    }
                    result.other_cpu_percent =
                        cpu_before
                            .zip(CpuSnapshot::take(server_pid))
                            .map(|(before, after)| {
                                before.foreign_percent(&after, wall.elapsed().as_secs_f64(), cpus)
                            });
                    if kind == TargetKind::Service {
                        result.server_peak_rss_mb = env.rss.as_ref().and_then(|r| r.take_peak_mb());
                    }
                    if let Some(server) = &mut env.server {
                        anyhow::ensure!(
                            server.is_running(),
                            "credit-server died during {} {} x{clients}; its log:\n{}",
                            scenario.name(),
                            kind.name(),
                            server.log_tail()
                        );
                    }
                    // Every pair captured its hold: none may be left active.
                    let holds = scenario == Scenario::ReserveCapture;
                    let check = match &env.check_db {
                        Some(db) => {
                            let mut check =
                                invariants::check_sql(db, prefix, workload.users.len(), holds)
                                    .await?;
                            // The server's verifier judges what the server
                            // wrote. The raw baselines write balances and log
                            // rows by hand, without lots or allocations: the
                            // set-level SQL above judges them.
                            if kind == TargetKind::Service {
                                check
                                    .violations
                                    .extend(invariants::verify_sample(db, &workload.users).await?);
                            }
                            check
                        }
                        None => {
                            invariants::check_api(&env.clients[0], &workload.users, holds).await?
                        }
                    };
                    result.users_checked = check.users_checked;
                    result.invariant_violations = check.violations;
                    if let Some(feed) = &result.feed
                        && feed.fewest_per_watcher < result.ops
                    {
                        result.invariant_violations.push(format!(
                            "a watcher received {} of the {} acknowledged writes",
                            feed.fewest_per_watcher, result.ops
                        ));
                    }
                    if !args.json && !progress {
                        eprintln!(
                            "{} {} x{clients}: {:.0} {}/s, p99 {:.2} ms",
                            scenario.name(),
                            kind.name(),
                            result.ops_per_sec,
                            scenario.unit(),
                            result.latency_ms.p99
                        );
                    }
                    results.push(result);
                }
            }
        }
    }
    if env.check_db.is_none() {
        note(
            &mut notes,
            "invariants checked through the API (no database URL): the opening balance is \
             not visible there"
                .to_owned(),
        );
    }

    if args.scenario.contains(&Scenario::ReserveCapture) {
        note(
            &mut notes,
            format!(
                "reserve-capture: one op is one Reserve of {} + one Capture of 1..={} (ops/s are \
                 pairs/s, latencies are per pair); held must be 0 after each run",
                workload::RESERVE_AMOUNT,
                workload::CAPTURE_MAX
            ),
        );
    }

    if args.scenario.contains(&Scenario::Feed) {
        note(
            &mut notes,
            format!(
                "feed: spends spread over {} users, measured without watchers and then with {} \
                 all-users WatchTransactions streams (one connection each); delivery latency is \
                 arrival minus the transaction's created_at, which the server takes before \
                 commit (an upper bound on commit-to-delivery)",
                args.users, args.watchers
            ),
        );
    }

    if args.scenario.contains(&Scenario::SpendLots) {
        note(
            &mut notes,
            format!(
                "spend-lots: the user holds 5 lots (its seed top-up and {} more of other \
                 priorities and expiries, each {} credits); every spend reads them all and draws \
                 {} from the first in draw order",
                workload::EXTRA_LOTS.len(),
                workload::SEED_BALANCE,
                workload::SPEND_AMOUNT
            ),
        );
    }

    let violated = results.iter().any(|r| !r.invariant_violations.is_empty());
    let errors: u64 = results.iter().map(RunResult::error_count).sum();
    let errors_fail = args.fail_on_errors && errors > 0;
    if errors_fail {
        note(
            &mut notes,
            format!("{errors} calls failed (--fail-on-errors)"),
        );
    }
    let passed = !violated && !errors_fail;

    let table = report::render(&results, &notes);
    if args.json {
        eprint!("{table}");
        let doc = Document {
            tool: "credit-bench",
            version: env!("CARGO_PKG_VERSION"),
            started_at: started_at.to_rfc3339(),
            database,
            server: env.endpoint.clone(),
            cpus,
            load_average_at_start: load_at_start,
            connections: args.connections,
            db_max_connections: args.db_max_connections,
            duration_secs: args.duration.as_secs_f64(),
            warmup_secs: args.warmup.as_secs_f64(),
            users: args.users,
            ratios: report::ratios(&results),
            pair_ratios: report::pair_ratios(&results),
            lot_ratios: report::lot_ratios(&results),
            feed_ratios: report::feed_ratios(&results),
            server_peak_rss_mb: results
                .iter()
                .filter_map(|r| r.server_peak_rss_mb)
                .reduce(f64::max),
            runs: &results,
            notes: &notes,
            passed,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{table}");
    }
    if let Some(path) = &args.plot {
        plot::draw(
            path,
            &plot::title(database.name(), &args.scenario),
            &results,
        )?;
        eprintln!("plot written to {}", path.display());
    }
    if violated {
        eprintln!("FAILED: the ledger's invariants were violated");
    }
    Ok(passed)
}
