//! Prometheus metrics, through the `metrics` facade (so the ledger records
//! them without knowing the exporter) and `metrics-exporter-prometheus` on
//! its own listener.
//!
//! Request metrics follow the convention of go-grpc-prometheus, which most
//! gRPC dashboards read: `grpc_server_handled_total{grpc_service,
//! grpc_method, grpc_type, grpc_code}` and the histogram
//! `grpc_server_handling_seconds`. The service's own metrics start with
//! `credit_`. Without `--metrics-listen` no recorder is installed and every
//! metric call is a no-op.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Calls finished, by method and gRPC code.
pub const HANDLED: &str = "grpc_server_handled_total";
/// Calls started, by method.
pub const STARTED: &str = "grpc_server_started_total";
/// Seconds from a call's arrival to its answer, by method.
pub const HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
/// Calls in flight now.
pub const IN_FLIGHT: &str = "credit_requests_in_flight";
/// Calls refused to shed load, by what ran out (`resource`).
pub const SHED: &str = "credit_requests_shed_total";
/// Database connections, by `state` (`idle`, `in_use`), and the pool's
/// maximum.
pub const POOL_CONNECTIONS: &str = "credit_db_pool_connections";
pub const POOL_MAX: &str = "credit_db_pool_max_connections";
/// Tasks waiting for a database connection (or a history-read turn) now.
pub const POOL_WAITERS: &str = "credit_db_pool_waiters";
/// Seconds spent waiting for a connection when starting a write.
pub const ACQUIRE_SECONDS: &str = "credit_db_acquire_seconds";
/// Writes per group-commit transaction.
pub const BATCH_SIZE: &str = "credit_write_batch_size";
/// Seconds from a write transaction's BEGIN to its COMMIT.
pub const BATCH_SECONDS: &str = "credit_write_batch_seconds";
/// Writes queued or in flight now.
pub const WRITE_QUEUE: &str = "credit_write_queue_depth";
/// Write batches by outcome (`committed`, `failed`, `unavailable`,
/// `panicked`).
pub const BATCHES: &str = "credit_write_batches_total";
/// Users a batch skipped because another transaction held their row.
pub const SKIPPED_USERS: &str = "credit_write_skipped_users_total";
/// Balance reads answered, and the queries that answered them (their ratio
/// is the sharing).
pub const BALANCE_READS: &str = "credit_balance_reads_total";
pub const BALANCE_QUERIES: &str = "credit_balance_read_queries_total";
/// Writes answered from the stored original (a retry with the same key).
pub const REPLAYS: &str = "credit_idempotent_replays_total";
/// Writes applied, by transaction `type`.
pub const APPLIED: &str = "credit_writes_applied_total";
/// Spends refused for want of credits.
pub const INSUFFICIENT: &str = "credit_insufficient_balance_total";
/// Violations the last verification found, and verification runs.
pub const VIOLATIONS: &str = "credit_ledger_violations";
pub const VERIFICATIONS: &str = "credit_ledger_verifications_total";
/// Always 1, labelled with the server's version.
pub const BUILD_INFO: &str = "credit_build_info";
/// Users whose due expiries the sweeper wrote down.
pub const SWEPT_USERS: &str = "credit_expiry_swept_users_total";

/// Buckets for latencies (seconds): 250 µs to 10 s.
const SECONDS_BUCKETS: [f64; 14] = [
    0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Buckets for batch sizes (writes).
const SIZE_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Installs the recorder and serves `/metrics` on `listen` (must be called
/// inside a tokio runtime).
pub fn serve(listen: SocketAddr) -> Result<(), BuildError> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &SIZE_BUCKETS)?
        .install()?;
    describe();
    ::metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(())
}

fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HANDLED, "gRPC calls finished, by method and code");
    describe_counter!(STARTED, "gRPC calls started, by method");
    describe_histogram!(HANDLING_SECONDS, Unit::Seconds, "gRPC call latency");
    describe_gauge!(IN_FLIGHT, "gRPC calls in flight");
    describe_counter!(SHED, "calls shed, by the resource that ran out");
    describe_gauge!(POOL_CONNECTIONS, "database connections by state");
    describe_gauge!(POOL_MAX, "most database connections the pool may open");
    describe_gauge!(POOL_WAITERS, "tasks waiting for a database connection");
    describe_histogram!(
        ACQUIRE_SECONDS,
        Unit::Seconds,
        "wait for a connection to start a write"
    );
    describe_histogram!(
        BATCH_SIZE,
        Unit::Count,
        "writes per group-commit transaction"
    );
    describe_histogram!(
        BATCH_SECONDS,
        Unit::Seconds,
        "write transaction time, BEGIN to COMMIT"
    );
    describe_gauge!(WRITE_QUEUE, "writes queued or in flight");
    describe_counter!(BATCHES, "write batches by outcome");
    describe_counter!(
        SKIPPED_USERS,
        "users skipped because their row was locked elsewhere"
    );
    describe_counter!(BALANCE_READS, "balance reads answered");
    describe_counter!(BALANCE_QUERIES, "queries run for balance reads");
    describe_counter!(REPLAYS, "writes answered from the stored original");
    describe_counter!(APPLIED, "writes applied, by transaction type");
    describe_counter!(INSUFFICIENT, "spends refused for want of credits");
    describe_gauge!(VIOLATIONS, "violations found by the last verification");
    describe_counter!(VERIFICATIONS, "ledger verifications run");
    describe_gauge!(BUILD_INFO, "always 1, labelled with the version");
    describe_counter!(
        SWEPT_USERS,
        "users whose due expiries the sweeper wrote down"
    );
}
