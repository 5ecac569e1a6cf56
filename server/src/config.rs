//! Start-up settings: command-line flags, each with an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::app::{Limits, StreamLimits};

/// The credit ledger gRPC service. Without a subcommand it serves.
#[derive(Parser, Debug, Clone)]
#[command(name = "credit-server", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: Config,
}

/// What to do instead of serving.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Check the ledger's invariants (for every user, or one) and exit
    /// non-zero on any violation.
    Verify {
        /// Check only this user.
        #[arg(long)]
        user: Option<String>,
    },
    /// Publish the change feed (every transaction and alert event, in feed
    /// order) to NATS JetStream, with the transaction or event id as the
    /// message id; runs until stopped and resumes from its stored cursor.
    Relay {
        /// The NATS server.
        #[arg(long, env = "CREDIT_NATS_URL", default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// The JetStream stream (created when missing).
        #[arg(long, default_value = "CREDIT_FEED")]
        stream: String,
        /// Subjects are `<prefix>.transactions` and `<prefix>.alerts`.
        #[arg(long, default_value = "credit.feed")]
        subject_prefix: String,
        /// The name the relay's cursor is stored under (one relay per name).
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// Make a new random API key; prints the key (give it to the caller) and
    /// the line to put in the keys file (the server stores only its hash).
    NewKey {
        /// A name for the key, shown in logs.
        #[arg(long)]
        name: String,
        /// reader, service or admin.
        #[arg(long, value_parser = crate::auth::parse_role)]
        role: crate::auth::Role,
    },
}

/// Serving settings.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "CREDIT_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Database URL: sqlite://FILE?mode=rwc, postgres://... or mysql://...
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://credits.db?mode=rwc",
        global = true
    )]
    pub database_url: String,

    /// Log output format (the level comes from RUST_LOG, default info).
    #[arg(long, env = "CREDIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub pool: PoolSettings,

    #[command(flatten)]
    pub telemetry: TelemetrySettings,

    /// Most concurrent write transactions (PostgreSQL/MySQL; SQLite has one
    /// writer). Writes that arrive while they are busy share the next
    /// transaction (group commit).
    #[arg(long, env = "CREDIT_WRITE_SLOTS", default_value_t = DEFAULT_WRITE_SLOTS)]
    pub write_slots: usize,

    /// Most writes queued or in flight at once; beyond it writes are shed
    /// with RESOURCE_EXHAUSTED (reason OVERLOADED) instead of queueing.
    #[arg(long, env = "CREDIT_MAX_QUEUED_WRITES", default_value_t = 10_000)]
    pub max_queued_writes: usize,

    /// Seconds a hold lasts when Reserve gives neither ttl nor expire_time.
    #[arg(long, env = "CREDIT_HOLD_DEFAULT_TTL_SECS", default_value_t = 3600)]
    pub hold_default_ttl_secs: u32,

    /// The longest hold TTL a caller may ask for, in seconds.
    #[arg(long, env = "CREDIT_HOLD_MAX_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub hold_max_ttl_secs: u32,

    /// Milliseconds between the change feed's looks at the database for
    /// rows other processes committed and for new feed positions (SQLite,
    /// MariaDB: the feed's delay across processes; PostgreSQL is told at
    /// once by NOTIFY and polls only as a fallback).
    #[arg(long, env = "CREDIT_FEED_POLL_MS", default_value_t = 50)]
    pub feed_poll_ms: u64,

    /// Seconds between sweeps that write down expired holds and lots of
    /// users nobody writes to (EXPIRATION transactions, EXPIRED holds);
    /// 0 turns the sweeper off. Expiry itself never waits for it: reads
    /// leave expired credit out and every write writes its user's down.
    #[arg(long, env = "CREDIT_EXPIRY_SWEEP_SECS", default_value_t = 30)]
    pub expiry_sweep_secs: u64,

    #[command(flatten)]
    pub security: SecuritySettings,

    #[command(flatten)]
    pub limits: LimitSettings,

    #[command(flatten)]
    pub grpc_web: GrpcWebSettings,

    /// Seconds to let in-flight calls finish after SIGINT/SIGTERM.
    #[arg(long, env = "CREDIT_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
}

/// Default number of concurrent write transactions: enough to keep the
/// database busy, few enough that each gathers a batch under load.
pub const DEFAULT_WRITE_SLOTS: usize = 8;

impl Config {
    /// How the ledger uses its connections and queues.
    pub fn ledger(&self) -> crate::ledger::LedgerConfig {
        crate::ledger::LedgerConfig {
            write_slots: self.write_slots,
            max_queued_writes: self.max_queued_writes,
            acquire_timeout: self.pool.acquire_timeout(),
            holds: crate::ledger::HoldRules {
                default_ttl: chrono::TimeDelta::seconds(self.hold_default_ttl_secs as i64),
                max_ttl: chrono::TimeDelta::seconds(self.hold_max_ttl_secs as i64),
            },
            feed_poll: Duration::from_millis(self.feed_poll_ms.max(1)),
        }
    }
}

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

/// Who may call, and how the connection is protected.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecuritySettings {
    /// File of API keys, one `NAME ROLE sha256:HEX` per line (see
    /// `credit-server new-key`).
    #[arg(long, env = "CREDIT_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// API keys as `NAME ROLE sha256:HEX` entries separated by commas.
    #[arg(long, env = "CREDIT_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,

    /// Allow listening on a non-loopback address without API keys.
    #[arg(long, env = "CREDIT_INSECURE")]
    pub insecure: bool,

    /// PEM certificate chain: serve TLS (with --tls-key).
    #[arg(long, env = "CREDIT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "CREDIT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): require client certificates signed by them.
    #[arg(long, env = "CREDIT_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Metrics, access log and traces.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TelemetrySettings {
    /// Serve Prometheus metrics on this address (`GET /metrics`); off when
    /// unset. Loopback only unless --insecure, like the gRPC port without
    /// keys.
    #[arg(long, env = "CREDIT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log one line per finished call at info (method, code, reason,
    /// duration, request id, user id).
    #[arg(
        long,
        env = "CREDIT_ACCESS_LOG",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "true|false"
    )]
    pub access_log: bool,

    /// Export trace spans over OTLP/gRPC to this endpoint
    /// (e.g. http://127.0.0.1:4317); off when unset.
    #[arg(long, env = "CREDIT_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// gRPC-Web, for browsers.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GrpcWebSettings {
    /// Also speak gRPC-Web (HTTP/1.1 and HTTP/2) on the gRPC port, so web
    /// pages can call the service.
    #[arg(long = "grpc-web", env = "CREDIT_GRPC_WEB")]
    pub enabled: bool,

    /// Origins (e.g. https://app.example.com) whose pages may call across
    /// origins (CORS), separated by commas; `*` allows any. Without it only
    /// same-origin callers work.
    #[arg(
        long = "grpc-web-allowed-origins",
        env = "CREDIT_GRPC_WEB_ALLOWED_ORIGINS",
        value_delimiter = ',',
        requires = "enabled"
    )]
    pub allowed_origins: Vec<String>,
}

impl GrpcWebSettings {
    /// The serving options, or `None` when gRPC-Web is off.
    pub fn options(&self) -> Option<crate::app::GrpcWeb> {
        self.enabled.then(|| crate::app::GrpcWeb {
            allowed_origins: self.allowed_origins.clone(),
        })
    }
}

/// Request limits.
#[derive(clap::Args, Debug, Clone)]
pub struct LimitSettings {
    /// Largest request message in bytes.
    #[arg(long, env = "CREDIT_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Largest request metadata (all headers) in bytes.
    #[arg(long, env = "CREDIT_MAX_METADATA_BYTES", default_value_t = 16 * 1024)]
    pub max_metadata_bytes: u32,

    /// Milliseconds a call may take before it is cut off.
    #[arg(long, env = "CREDIT_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,

    /// Calls in flight at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "CREDIT_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,

    /// Open WatchTransactions/WatchBalance streams per server process; more
    /// are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "CREDIT_MAX_STREAMS", default_value_t = 1000)]
    pub max_streams: usize,

    /// Open streams per API key (the anonymous caller counts as one key).
    #[arg(long, env = "CREDIT_MAX_STREAMS_PER_KEY", default_value_t = 100)]
    pub max_streams_per_key: usize,

    /// Seconds between a stream's heartbeats when nothing happens.
    #[arg(long, env = "CREDIT_STREAM_HEARTBEAT_SECS", default_value_t = 3)]
    pub stream_heartbeat_secs: u64,

    /// Seconds a stream may stay unable to send (its consumer reads slower
    /// than the ledger changes and its buffer is full) before it is cut off
    /// with RESOURCE_EXHAUSTED; the consumer resumes from its last cursor.
    #[arg(long, env = "CREDIT_SLOW_CONSUMER_SECS", default_value_t = 10)]
    pub slow_consumer_secs: u64,
}

impl LimitSettings {
    pub fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes,
            max_header_bytes: self.max_metadata_bytes,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_concurrent_requests: self.max_concurrent_requests,
            streams: StreamLimits {
                max_streams: self.max_streams,
                max_streams_per_key: self.max_streams_per_key,
                heartbeat: Duration::from_secs(self.stream_heartbeat_secs.max(1)),
                slow_consumer: Duration::from_secs(self.slow_consumer_secs.max(1)),
            },
        }
    }
}

/// Metrics tell about every user's traffic: they stay on loopback unless
/// the operator says otherwise.
pub fn check_metrics_exposure(listen: SocketAddr, insecure: bool) -> Result<(), String> {
    if insecure || listen.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "refusing to serve metrics on {listen}: they are not authenticated. Listen on \
             127.0.0.1 (and scrape through a proxy), or pass --insecure"
        ))
    }
}

/// The safe default: without API keys every caller is an admin, so the
/// server listens only on loopback unless told `--insecure`.
pub fn check_exposure(listen: SocketAddr, has_keys: bool, insecure: bool) -> Result<(), String> {
    if has_keys || insecure || listen.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "refusing to listen on {listen} without API keys: anyone who can reach it could \
             grant credits. Configure --api-keys-file (see `credit-server new-key`), listen on \
             127.0.0.1, or pass --insecure"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_servers_stay_on_loopback() {
        let public: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        assert!(check_exposure(public, false, false).is_err());
        assert!(check_exposure(public, true, false).is_ok());
        assert!(check_exposure(public, false, true).is_ok());
        assert!(check_exposure(local, false, false).is_ok());
        assert!(check_exposure("[::1]:1".parse().unwrap(), false, false).is_ok());
    }
}
