//! The database under the ledger: how write transactions start, how direct
//! reads are bounded, and the one clock writes are stamped with.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    AccessMode, DatabaseConnection, DatabaseTransaction, DbBackend, IsolationLevel,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

use super::error::{Cause, LedgerError, Overload};
use super::faults::Faults;
use super::pool;
use crate::telemetry::metrics as m;

/// The database and the way write transactions start on it.
#[derive(Clone)]
pub struct Store {
    pub db: DatabaseConnection,
    /// SQLite has a single writer per database file. Queueing this process's
    /// writers here, instead of in SQLite's sleeping busy handler, keeps
    /// latency flat under load; correctness still comes from `BEGIN
    /// IMMEDIATE` (other processes wait on the busy timeout).
    sqlite_writer: Option<Arc<Mutex<()>>>,
    /// Connections history and single-transaction reads may hold at once:
    /// what the write slots and balance-read slots leave, so a flood of
    /// reads cannot take the connections writes need.
    direct_reads: Arc<Semaphore>,
    /// How long a direct read waits for its turn before it is shed.
    acquire_timeout: Duration,
    pub faults: Arc<Faults>,
    pub clock: Clock,
    pub holds: HoldRules,
    /// Tells the change feed's sequencer and streams about commits.
    pub feed: super::feed::FeedSignals,
}

/// How long holds last.
#[derive(Debug, Clone, Copy)]
pub struct HoldRules {
    /// A hold's TTL when the caller gives neither ttl nor expire_time.
    pub default_ttl: chrono::TimeDelta,
    /// The longest TTL a caller may ask for.
    pub max_ttl: chrono::TimeDelta,
}

impl Default for HoldRules {
    fn default() -> Self {
        Self {
            default_ttl: chrono::TimeDelta::hours(1),
            max_ttl: chrono::TimeDelta::days(7),
        }
    }
}

impl Store {
    pub fn new(
        db: DatabaseConnection,
        direct_reads: usize,
        acquire_timeout: Duration,
        holds: HoldRules,
    ) -> Self {
        let sqlite = db.get_database_backend() == DbBackend::Sqlite;
        Self {
            db,
            sqlite_writer: sqlite.then(|| Arc::new(Mutex::new(()))),
            direct_reads: Arc::new(Semaphore::new(direct_reads.max(1))),
            acquire_timeout,
            faults: Arc::default(),
            clock: Clock::default(),
            holds,
            feed: Default::default(),
        }
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Starts a write transaction. SQLite: `BEGIN IMMEDIATE` takes the write
    /// lock up front (a deferred transaction that reads first would fail
    /// with "database is locked" when it later writes). MySQL: READ
    /// COMMITTED, so the idempotency lookup after the row lock sees rows
    /// committed while we waited and InnoDB takes no gap locks. PostgreSQL's
    /// default is already READ COMMITTED.
    pub async fn begin_write(&self) -> Result<WriteTxn, LedgerError> {
        let guard = match &self.sqlite_writer {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let options = match self.backend() {
            DbBackend::Sqlite => TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            },
            DbBackend::MySql => TransactionOptions {
                isolation_level: Some(IsolationLevel::ReadCommitted),
                access_mode: Some(AccessMode::ReadWrite),
                ..Default::default()
            },
            _ => TransactionOptions::default(),
        };
        let waiting = std::time::Instant::now();
        metrics::gauge!(m::POOL_WAITERS).increment(1.0);
        let txn = self.db.begin_with_options(options).await;
        metrics::gauge!(m::POOL_WAITERS).decrement(1.0);
        metrics::histogram!(m::ACQUIRE_SECONDS).record(waiting.elapsed().as_secs_f64());
        let txn = txn.map_err(|e| self.explain(e.into()))?;
        Ok(WriteTxn { txn, _guard: guard })
    }

    /// Waits for a direct-read turn (at most the acquire timeout).
    pub async fn direct_read(&self) -> Result<OwnedSemaphorePermit, LedgerError> {
        let permit = self.direct_reads.clone().acquire_owned();
        metrics::gauge!(m::POOL_WAITERS).increment(1.0);
        let permit = tokio::time::timeout(self.acquire_timeout, permit).await;
        metrics::gauge!(m::POOL_WAITERS).decrement(1.0);
        match permit {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(LedgerError::Internal("the read limiter closed".into())),
            Err(_) => Err(LedgerError::Overloaded(Overload::DirectReads)),
        }
    }

    /// A pool timeout is overload when every connection is in use, and an
    /// outage when the pool had room but could not open a connection (sqlx
    /// retries a refused connect until the acquire timeout, then reports
    /// the same timeout).
    pub fn explain(&self, err: LedgerError) -> LedgerError {
        match err {
            LedgerError::Overloaded(Overload::DatabaseConnections)
                if !pool::state(&self.db).saturated() =>
            {
                LedgerError::Unavailable(Cause::msg(
                    "no database connection could be opened within the acquire timeout",
                ))
            }
            other => other,
        }
    }
}

/// `t` as a query parameter: MySQL takes a zoned time as a TIMESTAMP (1970
/// to 2038 only) while our columns are DATETIME in UTC, so it gets the
/// plain UTC time.
pub fn time_value(backend: DbBackend, t: DateTime<Utc>) -> sea_orm::Value {
    match backend {
        DbBackend::MySql => t.naive_utc().into(),
        _ => t.into(),
    }
}

/// A write transaction, holding this process's SQLite writer slot if any.
pub struct WriteTxn {
    pub txn: DatabaseTransaction,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTxn {
    /// Commits. Any failure here leaves the outcome unknown (the commit may
    /// have reached the database before the connection broke), so it is
    /// never an error a caller could take as "not applied".
    pub async fn commit(self) -> Result<(), LedgerError> {
        self.txn
            .commit()
            .await
            .map_err(|e| LedgerError::OutcomeUnknown(Cause::new(e)))
    }

    /// Rolls back; a failure here only means the connection is gone, which
    /// rolls the transaction back too.
    pub async fn rollback(self) {
        if let Err(err) = self.txn.rollback().await {
            tracing::warn!(%err, "rollback failed");
        }
    }
}

/// The ledger's clock: the server's system clock in UTC, at the microsecond
/// precision every supported database stores. Hold expiry is decided by it
/// (keep servers NTP-synced: a server whose clock is off by d decides
/// expiry d early or late). Tests move it forward instead of sleeping.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_micros: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        let offset = chrono::TimeDelta::microseconds(self.offset_micros.load(Ordering::Relaxed));
        (Utc::now() + offset).trunc_subsecs(6)
    }

    /// Moves this ledger's time forward by `by` (tests only).
    pub fn advance(&self, by: Duration) {
        let micros = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.offset_micros.fetch_add(micros, Ordering::Relaxed);
    }
}
