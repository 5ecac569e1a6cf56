//! The [`Ledger`] handle: the database, the write queue and the balance-read
//! queue of one server process. Cheap to clone; clones share all three.

use std::time::Duration;

use sea_orm::{DatabaseConnection, DbBackend};

use super::balance_reads::{self, BalanceReads, ReadStats};
use super::faults::Fault;
use super::feed::{self, FeedTasks};
use super::group_commit::{GroupCommit, WriteStats};
use super::pool::{self, PoolState};
use super::store::{HoldRules, Store};

/// How the ledger uses its connections.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Most concurrent write transactions (SQLite always uses one: it has a
    /// single writer).
    pub write_slots: usize,
    /// Most writes queued or in flight at once; more are shed with
    /// `Overloaded`.
    pub max_queued_writes: usize,
    /// How long a history read waits for a free connection before it is
    /// shed (the pool's acquire timeout).
    pub acquire_timeout: Duration,
    /// Default and longest hold TTL.
    pub holds: HoldRules,
    /// How often the change feed's sequencer looks for rows other
    /// processes committed, and (SQLite, MariaDB) for new feed positions;
    /// this process's own commits wake it at once.
    pub feed_poll: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            write_slots: 8,
            max_queued_writes: 10_000,
            acquire_timeout: Duration::from_secs(5),
            holds: HoldRules::default(),
            feed_poll: Duration::from_millis(50),
        }
    }
}

/// Connections kept free of every queue: health checks, the verifier,
/// migrations.
const SPARE_CONNECTIONS: usize = 1;

/// The ledger over one database.
#[derive(Clone)]
pub struct Ledger {
    pub(super) store: Store,
    pub(super) writer: GroupCommit,
    pub(super) reads: BalanceReads,
    /// The feed's sequencer and listener, stopped with the last clone.
    _feed: std::sync::Arc<FeedTasks>,
}

impl Ledger {
    /// A ledger with the default [`LedgerConfig`] but `write_slots`.
    pub fn new(db: DatabaseConnection, write_slots: usize) -> Result<Self, String> {
        Self::with_config(
            db,
            LedgerConfig {
                write_slots,
                ..LedgerConfig::default()
            },
        )
    }

    /// A ledger whose connections are split between writes, balance reads
    /// and other reads, so that no kind of request can take every
    /// connection. Fails when the pool is too small for `config`. Must be
    /// called inside a tokio runtime.
    pub fn with_config(db: DatabaseConnection, config: LedgerConfig) -> Result<Self, String> {
        let connections = pool::state(&db).max as usize;
        let write_slots = match db.get_database_backend() {
            DbBackend::Sqlite => 1,
            _ => config.write_slots.max(1),
        };
        let read_slots = balance_reads::slots_for(connections);
        let reserved = write_slots + read_slots + SPARE_CONNECTIONS;
        if connections <= reserved {
            return Err(format!(
                "a pool of {connections} database connections leaves none for history reads: \
                 {write_slots} write slots + {read_slots} balance-read slots + {SPARE_CONNECTIONS} \
                 spare need at least {} (raise --db-max-connections or lower --write-slots)",
                reserved + 1
            ));
        }
        let store = Store::new(
            db,
            connections - reserved,
            config.acquire_timeout,
            config.holds,
        );
        Ok(Self {
            writer: GroupCommit::start(store.clone(), write_slots, config.max_queued_writes),
            reads: BalanceReads::start(store.clone(), read_slots),
            _feed: std::sync::Arc::new(feed::start(
                store.clone(),
                store.feed.clone(),
                config.feed_poll,
            )),
            store,
        })
    }

    /// The underlying connection pool.
    pub fn db(&self) -> &DatabaseConnection {
        &self.store.db
    }

    /// The connection pool's state now.
    pub fn pool_state(&self) -> PoolState {
        pool::state(&self.store.db)
    }

    /// How many write transactions committed, and how many writes they held.
    pub fn write_stats(&self) -> WriteStats {
        self.writer.stats()
    }

    /// How many queries balance reads ran, and how many reads they answered.
    pub fn read_stats(&self) -> ReadStats {
        self.reads.stats()
    }

    /// Arms a test fault for `user_id` (see [`Fault`]); never reachable from
    /// the network.
    #[doc(hidden)]
    pub fn inject_fault(&self, fault: Fault, user_id: &str) {
        self.store.faults.arm(fault, user_id);
    }

    /// Moves this ledger's clock forward (tests of expiry, without sleeping).
    #[doc(hidden)]
    /// The ledger's clock (the system clock, plus what tests advanced).
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.store.clock.now()
    }

    pub fn advance_clock(&self, by: Duration) {
        self.store.clock.advance(by);
    }

    /// Disarms every test fault.
    #[doc(hidden)]
    pub fn clear_faults(&self) {
        self.store.faults.clear();
    }
}
