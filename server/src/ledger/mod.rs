//! The money rules. Every balance change is one database transaction that
//! locks the user's `user_balance` row first (see `write.rs` for why that is
//! correct); reads never lock. No gRPC types here.

mod balance_reads;
mod batch;
mod fingerprint;
mod group_commit;
mod history;
pub mod model;
mod page_token;
mod rows;
mod rules;
mod users;
mod write;

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    AccessMode, DatabaseConnection, DatabaseTransaction, DbBackend, IsolationLevel,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use tokio::sync::Mutex;

use crate::error::LedgerError;
use balance_reads::BalanceReads;
pub use balance_reads::ReadStats;
use group_commit::GroupCommit;
pub use group_commit::WriteStats;

/// The ledger over one database. Cheap to clone; clones share the pool and
/// the write queue.
#[derive(Clone)]
pub struct Ledger {
    store: Store,
    writer: GroupCommit,
    reads: BalanceReads,
}

impl Ledger {
    /// A ledger whose writes share at most `write_slots` concurrent database
    /// transactions (SQLite always uses one: it has a single writer). Must be
    /// called inside a tokio runtime.
    pub fn new(db: DatabaseConnection, write_slots: usize) -> Self {
        let sqlite = db.get_database_backend() == DbBackend::Sqlite;
        let store = Store {
            db,
            sqlite_writer: sqlite.then(|| Arc::new(Mutex::new(()))),
        };
        let slots = if sqlite { 1 } else { write_slots };
        Self {
            writer: GroupCommit::start(store.clone(), slots),
            reads: BalanceReads::start(store.db.clone(), balance_reads::SLOTS),
            store,
        }
    }

    /// The underlying connection pool.
    pub fn db(&self) -> &DatabaseConnection {
        &self.store.db
    }

    fn writer(&self) -> &GroupCommit {
        &self.writer
    }

    /// How many write transactions committed, and how many writes they held.
    pub fn write_stats(&self) -> WriteStats {
        self.writer.stats()
    }

    /// How many queries balance reads ran, and how many reads they answered.
    pub fn read_stats(&self) -> ReadStats {
        self.reads.stats()
    }
}

/// The database and the way write transactions start on it.
#[derive(Clone)]
struct Store {
    db: DatabaseConnection,
    /// SQLite has a single writer per database file. Queueing this process's
    /// writers here, instead of in SQLite's sleeping busy handler, keeps
    /// latency flat under load; correctness still comes from `BEGIN
    /// IMMEDIATE` (other processes wait on the busy timeout).
    sqlite_writer: Option<Arc<Mutex<()>>>,
}

impl Store {
    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Starts a write transaction. SQLite: `BEGIN IMMEDIATE` takes the write
    /// lock up front (a deferred transaction that reads first would fail
    /// with "database is locked" when it later writes). MySQL: READ
    /// COMMITTED, so the idempotency lookup after the row lock sees rows
    /// committed while we waited and InnoDB takes no gap locks. PostgreSQL's
    /// default is already READ COMMITTED.
    async fn begin_write(&self) -> Result<WriteTxn, LedgerError> {
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
        let txn = self.db.begin_with_options(options).await?;
        Ok(WriteTxn { txn, _guard: guard })
    }
}

/// A write transaction, holding this process's SQLite writer slot if any.
struct WriteTxn {
    txn: DatabaseTransaction,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTxn {
    async fn commit(self) -> Result<(), LedgerError> {
        Ok(self.txn.commit().await?)
    }

    /// Rolls back; a failure here only means the connection is gone, which
    /// rolls the transaction back too.
    async fn rollback(self) {
        if let Err(err) = self.txn.rollback().await {
            tracing::warn!(%err, "rollback failed");
        }
    }
}

/// Now, at the microsecond precision every supported database stores.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
