//! Start-up settings: command-line flags, each with an environment fallback.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// The credit ledger gRPC service.
#[derive(Parser, Debug, Clone)]
#[command(name = "credit-server", version, about)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "CREDIT_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Database URL: sqlite://FILE?mode=rwc, postgres://... or mysql://...
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://credits.db?mode=rwc"
    )]
    pub database_url: String,

    /// Log output format (the level comes from RUST_LOG, default info).
    #[arg(long, env = "CREDIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub pool: PoolSettings,

    /// Most concurrent write transactions (PostgreSQL/MySQL; SQLite has one
    /// writer). Writes that arrive while they are busy share the next
    /// transaction (group commit).
    #[arg(long, env = "CREDIT_WRITE_SLOTS", default_value_t = DEFAULT_WRITE_SLOTS)]
    pub write_slots: usize,

    /// Seconds to let in-flight calls finish after SIGINT/SIGTERM.
    #[arg(long, env = "CREDIT_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
}

/// Default number of concurrent write transactions: enough to keep the
/// database busy, few enough that each gathers a batch under load.
pub const DEFAULT_WRITE_SLOTS: usize = 8;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Database connection pool settings.
#[derive(clap::Args, Debug, Clone)]
pub struct PoolSettings {
    /// Most database connections the server opens.
    #[arg(
        long = "db-max-connections",
        env = "CREDIT_DB_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub max_connections: u32,

    /// Milliseconds a request waits for a free database connection before
    /// failing with UNAVAILABLE.
    #[arg(
        long = "db-acquire-timeout-ms",
        env = "CREDIT_DB_ACQUIRE_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub acquire_timeout_ms: u64,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout_ms: 5000,
        }
    }
}

impl PoolSettings {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
}
