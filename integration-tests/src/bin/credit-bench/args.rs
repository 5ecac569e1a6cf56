//! Command-line flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Serialize;

/// Load tool for the credit service: drives the real server (started here as
/// a child process, or an existing one) and the same workload as raw SQL
/// against the same database, then checks the ledger's invariants.
#[derive(Parser, Debug, Clone)]
#[command(name = "credit-bench", version, about)]
pub struct Args {
    /// Workloads to run, comma-separated. `reserve-capture` counts one
    /// Reserve + Capture pair as one operation (its ops/s are pairs/s, its
    /// latency is per pair), runs on the service only, and next to
    /// `spend-hot` in the same invocation prints the pair/spend cost ratio.
    /// `spend-lots` (service only) spends on one user with five lots; next
    /// to `spend-hot` it prints the lots/plain cost ratio. `feed` (service
    /// only) runs spend-spread without and then with --watchers all-users
    /// watch streams and prints their cost and the delivery latency.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "spend-hot")]
    pub scenario: Vec<Scenario>,

    /// Concurrent clients; a comma-separated list runs a sweep.
    #[arg(long, value_delimiter = ',', default_value = "8")]
    pub clients: Vec<usize>,

    /// gRPC connections (HTTP/2 channels) shared round-robin by the clients.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,

    /// Measured time per run: `10`, `10s`, `500ms`.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,

    /// Load before each measured run that is not counted (warms pools,
    /// prepared statements and caches); then the tool refreshes the
    /// database's planner statistics (ANALYZE), as a live database has them.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,

    /// Database the tool creates for the server it starts.
    #[arg(long, value_enum, default_value_t = DbKind::Sqlite)]
    pub database: DbKind,

    /// Started server: the admin URL of the database server, in which a
    /// fresh `credit_bench_<random>` database is created and dropped at the
    /// end (default postgres://postgres@127.0.0.1:5432/test or
    /// mysql://root@127.0.0.1:3306/test; unused for SQLite).
    /// With --server: the URL of that server's own database (enables the raw
    /// baselines and SQL invariant checks).
    #[arg(long)]
    pub database_url: Option<String>,

    /// Use an existing server (http://host:port) instead of starting one.
    #[arg(long)]
    pub server: Option<String>,

    /// The credit-server binary to start (default: the credit-server next to
    /// this executable).
    #[arg(long, env = "CREDIT_SERVER_BIN")]
    pub server_bin: Option<PathBuf>,

    /// Database pool size of the started server and of the raw SQL runs.
    #[arg(long, default_value_t = 16)]
    pub db_max_connections: u32,

    /// Users per target for spend-spread, read, mixed and feed (spend-hot,
    /// reserve-capture and spend-lots use one user).
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,

    /// What to measure, comma-separated: the service, the minimal correct
    /// SQL transaction per operation (`raw`), and the single-statement CTE
    /// of the system we started from (`peer`, PostgreSQL only). Holds have
    /// no SQL equivalent: reserve-capture runs on `service` only, and so
    /// does spend-lots (the baselines keep no lots).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "service,raw,peer"
    )]
    pub targets: Vec<TargetKind>,

    /// Print one JSON document on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Draw throughput and p99 against clients into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,

    /// Exit non-zero when any call failed (for smoke tests).
    #[arg(long)]
    pub fail_on_errors: bool,

    /// Keep the created database at the end (always kept when an invariant
    /// is violated).
    #[arg(long)]
    pub keep_database: bool,

    /// All-users WatchTransactions streams during the feed scenario's
    /// second pass.
    #[arg(long, default_value_t = 10)]
    pub watchers: usize,

    /// Give up on one call after this long (counted as DEADLINE_EXCEEDED).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub op_timeout: Duration,
}

/// A workload.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Every client spends on one user.
    SpendHot,
    /// Spends on users picked at random among --users.
    SpendSpread,
    /// GetBalance of users picked at random.
    Read,
    /// 70% spends, 5% top-ups, 20% balance reads, 5% history pages.
    Mixed,
    /// Every client, on one user: Reserve 100 credits, then Capture a random
    /// 1..=120 of that hold (above 100 the excess comes from the available
    /// balance). One pair is one operation. Service only.
    ReserveCapture,
    /// Spends spread over --users (as spend-spread), measured twice in a
    /// row: without watchers, then with --watchers all-users
    /// WatchTransactions streams reading every transaction. Prints what the
    /// watchers cost the writes and the feed's delivery latency. Service
    /// only.
    Feed,
    /// Every client spends on one user who holds five lots of different
    /// priorities and expiries (`spend-hot` on a user with several kinds
    /// of credit). Service only: the SQL baselines keep no lots.
    SpendLots,
}

impl Scenario {
    /// Whether the scenario places holds, which the SQL baselines do not
    /// model: it runs on the service only.
    pub fn service_only(self) -> bool {
        matches!(
            self,
            Scenario::ReserveCapture | Scenario::SpendLots | Scenario::Feed
        )
    }

    /// What one counted operation is, for the report's units.
    pub fn unit(self) -> &'static str {
        match self {
            Scenario::ReserveCapture => "pairs",
            _ => "ops",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::SpendHot => "spend-hot",
            Scenario::SpendSpread => "spend-spread",
            Scenario::Read => "read",
            Scenario::Mixed => "mixed",
            Scenario::ReserveCapture => "reserve-capture",
            Scenario::SpendLots => "spend-lots",
            Scenario::Feed => "feed",
        }
    }
}

/// The database engine.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DbKind {
    Sqlite,
    Postgres,
    Mysql,
}

impl DbKind {
    pub fn name(self) -> &'static str {
        match self {
            DbKind::Sqlite => "sqlite",
            DbKind::Postgres => "postgres",
            DbKind::Mysql => "mysql",
        }
    }

    /// The kind a database URL names.
    pub fn from_url(url: &str) -> Option<DbKind> {
        if url.starts_with("sqlite:") {
            Some(DbKind::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(DbKind::Postgres)
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Some(DbKind::Mysql)
        } else {
            None
        }
    }
}

/// What one run drives.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Service,
    Raw,
    Peer,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Service => "service",
            TargetKind::Raw => "raw",
            TargetKind::Peer => "peer",
        }
    }
}

/// `10`, `10s`, `2.5s`, `500ms`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {text:?} (try 10s or 500ms)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("not a duration: {text:?}"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

impl Args {
    /// Rejects flag combinations that cannot run.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.clients.is_empty() && self.clients.iter().all(|&c| c > 0),
            "--clients needs positive counts"
        );
        anyhow::ensure!(self.connections > 0, "--connections must be positive");
        anyhow::ensure!(self.users > 0, "--users must be positive");
        anyhow::ensure!(
            self.db_max_connections > 0,
            "--db-max-connections must be positive"
        );
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be positive");
        anyhow::ensure!(!self.targets.is_empty(), "--targets is empty");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
