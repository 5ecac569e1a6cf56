//! The change feed: every committed transaction, in one order that a
//! reader can resume from exactly, on any server process.
//!
//! # Why a reader that resumes after a position never skips a row
//!
//! Ids and sequences are given before commit, and concurrent transactions
//! commit in another order than they started: a reader that remembered
//! "the last row I saw" could pass a row that commits later and sorts
//! earlier. So a row gets its place in the feed only after it has
//! committed, from a *sequencer*:
//!
//! 1. A write inserts its transactions with `feed_position = NULL`.
//! 2. A sequencer pass runs in one database transaction: it locks the single
//!    `feed_sequencer` row (`FOR UPDATE`; SQLite: `BEGIN IMMEDIATE`), so
//!    passes of all processes run one at a time; reads the rows that have
//!    committed without a position (uncommitted rows are invisible to it);
//!    numbers them `last + 1 ..= last + n`; stores `last + n`; commits.
//! 3. A reader reads `last_position` (the head) first, then the rows with
//!    `after < feed_position <= head`.
//!
//! Every position up to the head was given by a pass that has committed
//! (the head and its positions commit together), so the reader's second
//! statement sees all of them: there is no gap below the head that a later
//! commit could fill. A row that commits after a pass has begun gets a
//! position from a later pass, above every position given so far, so it is
//! after any cursor a reader holds. A position is given once: the pass
//! updates only rows whose position is still NULL under the sequencer lock,
//! and a unique index refuses a repeat. Hence "resume after cursor c" gives
//! every row with a position above c exactly once.
//!
//! **Order.** Positions follow commit order at the grain of one pass: a row
//! committed before a pass began is ahead of every row committed after it.
//! Within a pass rows are numbered user by user in `sequence` order; a
//! user's writes commit one after another under that user's row lock, so
//! a later sequence never commits before an earlier one and a user's rows
//! always appear in `sequence` order.
//!
//! **Wake-ups.** Every process runs a sequencer task, woken right after its
//! own commits and otherwise every poll interval (which also sequences the
//! rows of a process that died between its commit and its pass). A pass
//! that gives positions tells other processes: PostgreSQL by `pg_notify`
//! in the pass's transaction (delivered at commit to every process's
//! `LISTEN`), SQLite and MariaDB by the poll interval.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::sea_query::CaseStatement;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement,
};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::error::{FieldViolation, LedgerError};
use super::handle::Ledger;
use super::model::{Transaction, TxKind};
use super::store::Store;
use crate::entity::credit_transaction as ctx;

/// Most rows one sequencer pass numbers; a backlog takes several passes,
/// back to back.
const PASS_ROWS: u64 = 5_000;
/// Rows per position-setting UPDATE.
const UPDATE_CHUNK: usize = 500;
/// The PostgreSQL channel a pass announces its new head on.
pub const PG_CHANNEL: &str = "credit_feed";

/// A position in the feed: everything up to it has been delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor(pub i64);

impl Cursor {
    const PREFIX: &str = "f1.";

    /// The opaque text clients store.
    pub fn token(self) -> String {
        format!("{}{}", Self::PREFIX, self.0)
    }

    /// Parses a token made by [`Cursor::token`].
    pub fn parse(token: &str) -> Option<Cursor> {
        token
            .strip_prefix(Self::PREFIX)
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .map(Cursor)
    }
}

/// Which transactions a feed reader wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedFilter {
    /// `None`: every user.
    pub user_id: Option<String>,
    /// Empty: every kind.
    pub kinds: Vec<TxKind>,
}

/// One read of the feed.
#[derive(Debug, Clone)]
pub struct FeedPage {
    /// Matching transactions after the cursor, in feed order, each with its
    /// cursor.
    pub entries: Vec<(Cursor, Transaction)>,
    /// Every position up to here has been looked at: a reader may resume
    /// from it (a heartbeat's cursor).
    pub scanned_to: Cursor,
}

/// What the feed tells this process's streams, shared by every clone of
/// the ledger.
#[derive(Clone, Default)]
pub struct FeedSignals {
    inner: Arc<Signals>,
}

struct Signals {
    /// Wakes the sequencer: a write of this process committed.
    committed: Notify,
    /// Counts the changes this process learned of (its own commits, new
    /// feed positions from anywhere); balance watchers re-read on each.
    changes: watch::Sender<u64>,
    /// The highest feed position this process knows was given.
    head: watch::Sender<i64>,
    /// True once the server is shutting down: streams end.
    closing: watch::Sender<bool>,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            committed: Notify::new(),
            changes: watch::Sender::new(0),
            head: watch::Sender::new(0),
            closing: watch::Sender::new(false),
        }
    }
}

impl FeedSignals {
    /// A write transaction of this process committed.
    pub fn committed(&self) {
        self.inner.committed.notify_one();
        self.bump();
    }

    fn bump(&self) {
        self.inner.changes.send_modify(|c| *c = c.wrapping_add(1));
    }

    /// The feed's head is at least `head`.
    fn advance(&self, head: i64) {
        let moved = self.inner.head.send_if_modified(|h| {
            let moved = head > *h;
            if moved {
                *h = head;
            }
            moved
        });
        if moved {
            self.bump();
        }
    }

    /// Changes as this process learns of them.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// The highest position known to be given.
    pub fn head(&self) -> watch::Receiver<i64> {
        self.inner.head.subscribe()
    }

    /// Whether the server is shutting down.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.inner.closing.subscribe()
    }

    /// Ends every stream (graceful shutdown).
    pub fn close(&self) {
        self.inner.closing.send_replace(true);
    }
}

/// The sequencer (and on PostgreSQL the listener) of one ledger; stops when
/// the last clone of the ledger is dropped.
pub(super) struct FeedTasks(Vec<JoinHandle<()>>);

impl Drop for FeedTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts the sequencer task (and the PostgreSQL listener).
pub(super) fn start(store: Store, signals: FeedSignals, poll: Duration) -> FeedTasks {
    let mut tasks = vec![tokio::spawn(sequence_forever(
        store.clone(),
        signals.clone(),
        poll,
    ))];
    if store.backend() == DbBackend::Postgres {
        tasks.push(tokio::spawn(listen_forever(store, signals, poll)));
    }
    FeedTasks(tasks)
}

async fn sequence_forever(store: Store, signals: FeedSignals, poll: Duration) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = signals.inner.committed.notified() => {}
            () = tokio::time::sleep(poll) => {}
        }
        loop {
            match store.sequence_pass().await {
                Ok((head, full)) => {
                    if failing {
                        tracing::info!("feed sequencer working again");
                        failing = false;
                    }
                    signals.advance(head);
                    if !full {
                        break;
                    }
                }
                Err(err) => {
                    if !failing {
                        tracing::warn!(error = %err, "feed sequencer pass failed; retrying every poll interval");
                        failing = true;
                    }
                    break;
                }
            }
        }
    }
}

/// PostgreSQL: learns new heads from other processes' passes at once.
async fn listen_forever(store: Store, signals: FeedSignals, retry: Duration) {
    use sea_orm::sqlx::postgres::{PgListener, PgPoolOptions};
    let options = store.db.get_postgres_connection_pool().connect_options();
    // Its own connection: the ledger's pool is split among writes and reads.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with((*options).clone());
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(PG_CHANNEL).await?;
            tracing::debug!("feed listener on {PG_CHANNEL}");
            loop {
                // `None`: the connection was lost and is being re-made;
                // notifications may have been missed, so look at the head.
                match listener.try_recv().await? {
                    Some(note) => match note.payload().parse::<i64>() {
                        Ok(head) => signals.advance(head),
                        Err(_) => signals.inner.committed.notify_one(),
                    },
                    None => signals.inner.committed.notify_one(),
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), sea_orm::sqlx::Error>(())
        };
        if let Err(err) = listener.await {
            tracing::warn!(error = %err, "feed listener failed; the poll interval still delivers");
        }
        tokio::time::sleep(retry.max(Duration::from_millis(500))).await;
    }
}

impl Store {
    /// The last position given out.
    async fn feed_head(&self, db: &impl ConnectionTrait) -> Result<i64, LedgerError> {
        let sql = "SELECT last_position FROM feed_sequencer WHERE id = 1";
        head_of(
            db.query_one_raw(Statement::from_string(self.backend(), sql))
                .await?,
        )
    }

    /// One sequencer pass (module docs): numbers committed rows that have no
    /// position yet. Returns the head afterwards and whether the pass was
    /// full (more rows may wait). Looks without a lock first, so an idle
    /// poll costs one indexed read and no write lock.
    async fn sequence_pass(&self) -> Result<(i64, bool), LedgerError> {
        if !self.unsequenced(&self.db).await? {
            return Ok((self.feed_head(&self.db).await?, false));
        }
        let txn = self.begin_write().await?;
        let result = self.number_rows(&txn.txn).await;
        match result {
            Ok((head, 0)) => {
                txn.rollback().await;
                Ok((head, false))
            }
            Ok((head, n)) => {
                txn.commit().await?;
                Ok((head, n as u64 == PASS_ROWS))
            }
            Err(err) => {
                txn.rollback().await;
                Err(err)
            }
        }
    }

    async fn unsequenced(&self, db: &impl ConnectionTrait) -> Result<bool, LedgerError> {
        let row: Option<String> = ctx::Entity::find()
            .select_only()
            .column(ctx::Column::Id)
            .filter(ctx::Column::FeedPosition.is_null())
            .limit(1)
            .into_tuple()
            .one(db)
            .await?;
        Ok(row.is_some())
    }

    /// Inside the pass's transaction: lock, number, store the head.
    async fn number_rows(
        &self,
        db: &sea_orm::DatabaseTransaction,
    ) -> Result<(i64, usize), LedgerError> {
        let backend = self.backend();
        let lock = match backend {
            // BEGIN IMMEDIATE already holds the only write lock.
            DbBackend::Sqlite => "SELECT last_position FROM feed_sequencer WHERE id = 1",
            _ => "SELECT last_position FROM feed_sequencer WHERE id = 1 FOR UPDATE",
        };
        let last = head_of(
            db.query_one_raw(Statement::from_string(backend, lock))
                .await?,
        )?;
        // Read after the lock: a pass that ran while we waited has numbered
        // its rows, and this statement sees them as numbered.
        let ids: Vec<String> = ctx::Entity::find()
            .select_only()
            .column(ctx::Column::Id)
            .filter(ctx::Column::FeedPosition.is_null())
            .order_by_asc(ctx::Column::UserId)
            .order_by_asc(ctx::Column::Sequence)
            .limit(PASS_ROWS)
            .into_tuple()
            .all(db)
            .await?;
        if ids.is_empty() {
            return Ok((last, 0));
        }
        let mut next = last;
        for chunk in ids.chunks(UPDATE_CHUNK) {
            let first = next + 1;
            let case = chunk
                .iter()
                .zip(first..)
                .fold(CaseStatement::new(), |case, (id, position)| {
                    case.case(ctx::Column::Id.eq(id.as_str()), position)
                });
            let updated = ctx::Entity::update_many()
                .col_expr(ctx::Column::FeedPosition, case.into())
                .filter(ctx::Column::Id.is_in(chunk.iter().map(String::as_str)))
                .filter(ctx::Column::FeedPosition.is_null())
                .exec(db)
                .await?
                .rows_affected;
            if updated != chunk.len() as u64 {
                return Err(LedgerError::Internal(format!(
                    "feed sequencer: {updated} of {} rows numbered; another pass ran without the lock",
                    chunk.len()
                )));
            }
            next += chunk.len() as i64;
        }
        let head = next;
        db.execute_raw(Statement::from_sql_and_values(
            backend,
            match backend {
                DbBackend::Postgres => "UPDATE feed_sequencer SET last_position = $1 WHERE id = 1",
                _ => "UPDATE feed_sequencer SET last_position = ? WHERE id = 1",
            },
            [head.into()],
        ))
        .await?;
        if backend == DbBackend::Postgres {
            // Delivered to every LISTEN when this pass commits, not before.
            db.execute_raw(Statement::from_sql_and_values(
                backend,
                "SELECT pg_notify($1, $2)",
                [PG_CHANNEL.into(), head.to_string().into()],
            ))
            .await?;
        }
        Ok((head, ids.len()))
    }
}

fn head_of(row: Option<sea_orm::QueryResult>) -> Result<i64, LedgerError> {
    let row = row.ok_or_else(|| {
        LedgerError::Internal("feed_sequencer has no row: is the database migrated?".into())
    })?;
    Ok(row.try_get::<i64>("", "last_position")?)
}

impl Ledger {
    /// This process's feed signals (streams wait on them).
    pub fn feed_signals(&self) -> &FeedSignals {
        &self.store.feed
    }

    /// The feed's head now: a cursor for "from now".
    pub async fn feed_head(&self) -> Result<Cursor, LedgerError> {
        let _turn = self.store.direct_read().await?;
        Ok(Cursor(self.store.feed_head(&self.store.db).await?))
    }

    /// Where a stream starts: right after `start_after`, or from now. A
    /// cursor past the head was not made by this ledger.
    ///
    /// "From now" runs a sequencer pass first, so every transaction
    /// committed before the call has a position at or below the start and
    /// every later one above it. The head alone would lag commits by up to
    /// a poll interval (SQLite, MariaDB, other processes' writes), and a
    /// watch "from now" would then replay writes the caller had already
    /// seen acknowledged.
    pub async fn feed_start(&self, start_after: Option<Cursor>) -> Result<Cursor, LedgerError> {
        let Some(cursor) = start_after else {
            loop {
                let (head, full) = self.store.sequence_pass().await?;
                self.store.feed.advance(head);
                if !full {
                    return Ok(Cursor(head));
                }
            }
        };
        let head = self.feed_head().await?;
        if cursor <= head {
            return Ok(cursor);
        }
        Err(LedgerError::InvalidArgument(vec![FieldViolation::new(
            "start_after",
            format!(
                "cursor {} is ahead of this ledger's feed (at {}): it comes from another \
                 ledger; resume with a cursor this feed sent, or leave it empty to start now",
                cursor.token(),
                head.token()
            ),
        )]))
    }

    /// Up to `limit` transactions matching `filter` after `after`, in feed
    /// order. Reads the head first, then the rows up to it (module docs:
    /// every position up to a head read is visible to the next statement).
    pub async fn feed_page(
        &self,
        filter: &FeedFilter,
        after: Cursor,
        limit: u64,
    ) -> Result<FeedPage, LedgerError> {
        let _turn = self.store.direct_read().await?;
        let db = &self.store.db;
        let head = self.store.feed_head(db).await?;
        self.store.feed.advance(head);
        if head <= after.0 {
            return Ok(FeedPage {
                entries: Vec::new(),
                scanned_to: after,
            });
        }
        let mut query = ctx::Entity::find()
            .filter(ctx::Column::FeedPosition.gt(after.0))
            .filter(ctx::Column::FeedPosition.lte(head));
        if let Some(user_id) = &filter.user_id {
            query = query.filter(ctx::Column::UserId.eq(user_id.as_str()));
        }
        if !filter.kinds.is_empty() {
            query = query.filter(ctx::Column::Type.is_in(filter.kinds.iter().map(|k| k.as_str())));
        }
        let rows = query
            .order_by_asc(ctx::Column::FeedPosition)
            .limit(limit)
            .all(db)
            .await?;
        let full = rows.len() as u64 == limit;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let position = row.feed_position.unwrap_or_default();
            entries.push((Cursor(position), Transaction::try_from(row)?));
        }
        let scanned_to = match (full, entries.last()) {
            (true, Some((cursor, _))) => *cursor,
            _ => Cursor(head),
        };
        Ok(FeedPage {
            entries,
            scanned_to,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_other_text() {
        assert_eq!(Cursor::parse(&Cursor(42).token()), Some(Cursor(42)));
        assert_eq!(Cursor::parse("f1.0"), Some(Cursor(0)));
        for bad in [
            "",
            "42",
            "f1.",
            "f1.-1",
            "f1.x",
            "f2.42",
            "f1.99999999999999999999",
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
    }
}
