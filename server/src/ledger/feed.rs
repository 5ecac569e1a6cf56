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

use super::alerts::AlertEvent;
use super::error::{FieldViolation, LedgerError};
use super::handle::Ledger;
use super::model::{Transaction, TxKind};
use super::store::Store;
use crate::entity::{alert_event, credit_transaction as ctx};

/// Most rows one sequencer pass numbers; a backlog takes several passes,
/// back to back.
const PASS_ROWS: u64 = 5_000;
/// How long the sequencer waits after a commit woke it, for the commits
/// right behind it: the price (at most this much later delivery) of one
/// pass per busy moment instead of one per commit.
const PASS_GATHER: Duration = Duration::from_millis(2);
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedFilter {
    /// `None`: every user.
    pub user_id: Option<String>,
    /// Empty: every kind.
    pub kinds: Vec<TxKind>,
    /// Whether transactions are wanted at all, and alert events.
    pub transactions: bool,
    pub alert_events: bool,
}

impl Default for FeedFilter {
    fn default() -> Self {
        Self {
            user_id: None,
            kinds: Vec::new(),
            transactions: true,
            alert_events: false,
        }
    }
}

impl FeedFilter {
    /// Every item: all users, transactions and alert events.
    pub fn everything() -> Self {
        Self {
            alert_events: true,
            ..Self::default()
        }
    }
}

/// One item of the feed.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum FeedItem {
    Transaction(Transaction),
    AlertEvent(AlertEvent),
}

/// One read of the feed.
#[derive(Debug, Clone)]
pub struct FeedPage {
    /// Matching items after the cursor, in feed order, each with its
    /// cursor.
    pub entries: Vec<(Cursor, FeedItem)>,
    /// Every position up to here has been looked at: a reader may resume
    /// from it (a heartbeat's cursor).
    pub scanned_to: Cursor,
    /// Whether more may follow right away (a page was full).
    pub more: bool,
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
    /// The recent feed, read once for every stream of this process
    /// (`feed_cache.rs`).
    cache: tokio::sync::Mutex<super::feed_cache::FeedCache>,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            committed: Notify::new(),
            changes: watch::Sender::new(0),
            head: watch::Sender::new(0),
            closing: watch::Sender::new(false),
            cache: Default::default(),
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

    /// The recent feed shared by this process's streams.
    pub(super) fn cache(&self) -> &tokio::sync::Mutex<super::feed_cache::FeedCache> {
        &self.inner.cache
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
        let committed = tokio::select! {
            () = signals.inner.committed.notified() => true,
            () = tokio::time::sleep(poll) => false,
        };
        if committed {
            // Let the commits of a busy moment gather: one pass numbers
            // them all instead of one pass per commit, each a write
            // transaction of its own beside the ledger's.
            tokio::time::sleep(PASS_GATHER).await;
        }
        loop {
            // After a commit there are rows to number: no need to look.
            match store.sequence_pass(!committed).await {
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
    async fn sequence_pass(&self, look_first: bool) -> Result<(i64, bool), LedgerError> {
        if look_first && !self.unsequenced(&self.db).await? {
            return Ok((self.feed_head(&self.db).await?, false));
        }
        let txn = self.begin_write().await?;
        let result = self.number_rows(&txn.txn).await;
        match result {
            Ok((head, 0, _)) => {
                txn.rollback().await;
                Ok((head, false))
            }
            Ok((head, _, more)) => {
                txn.commit().await?;
                Ok((head, more))
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
        if row.is_some() {
            return Ok(true);
        }
        let event: Option<String> = alert_event::Entity::find()
            .select_only()
            .column(alert_event::Column::Id)
            .filter(alert_event::Column::FeedPosition.is_null())
            .limit(1)
            .into_tuple()
            .one(db)
            .await?;
        Ok(event.is_some())
    }

    /// Inside the pass's transaction: lock, number, store the head.
    async fn number_rows(
        &self,
        db: &sea_orm::DatabaseTransaction,
    ) -> Result<(i64, usize, bool), LedgerError> {
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
        let txs: Vec<(String, String, i64)> = ctx::Entity::find()
            .select_only()
            .column(ctx::Column::Id)
            .column(ctx::Column::UserId)
            .column(ctx::Column::Sequence)
            .filter(ctx::Column::FeedPosition.is_null())
            .order_by_asc(ctx::Column::UserId)
            .order_by_asc(ctx::Column::Sequence)
            .limit(PASS_ROWS)
            .into_tuple()
            .all(db)
            .await?;
        let events: Vec<(String, String, i64)> = alert_event::Entity::find()
            .select_only()
            .column(alert_event::Column::Id)
            .column(alert_event::Column::UserId)
            .column(alert_event::Column::Sequence)
            .filter(alert_event::Column::FeedPosition.is_null())
            .order_by_asc(alert_event::Column::UserId)
            .order_by_asc(alert_event::Column::Sequence)
            .order_by_asc(alert_event::Column::Id)
            .limit(PASS_ROWS)
            .into_tuple()
            .all(db)
            .await?;
        let order = pass_order(&txs, &events, PASS_ROWS as usize);
        // A pass reads at most PASS_ROWS of each table: more may wait.
        let more = txs.len() as u64 >= PASS_ROWS || events.len() as u64 >= PASS_ROWS;
        if order.is_empty() {
            return Ok((last, 0, more));
        }
        let mut next = last;
        let mut tx_positions = Vec::new();
        let mut event_positions = Vec::new();
        for (row, is_event) in &order {
            next += 1;
            match is_event {
                false => tx_positions.push((row.as_str(), next)),
                true => event_positions.push((row.as_str(), next)),
            }
        }
        set_positions::<ctx::Entity, _>(
            db,
            ctx::Column::Id,
            ctx::Column::FeedPosition,
            &tx_positions,
        )
        .await?;
        set_positions::<alert_event::Entity, _>(
            db,
            alert_event::Column::Id,
            alert_event::Column::FeedPosition,
            &event_positions,
        )
        .await?;
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
        Ok((head, order.len(), more))
    }
}

/// The order one pass numbers rows in: user by user, in sequence order, an
/// alert event right after the transaction that crossed its threshold (it
/// carries that transaction's sequence). `txs` and `events` are (id, user,
/// sequence) sorted by (user, sequence), each at most `limit` long; when
/// one was cut at `limit`, rows sorting after its last one wait for the
/// next pass (they may sort before rows it did not read), so nothing is
/// numbered out of order.
fn pass_order(
    txs: &[(String, String, i64)],
    events: &[(String, String, i64)],
    limit: usize,
) -> Vec<(String, bool)> {
    let key =
        |(_, user, sequence): &(String, String, i64), event: bool| (user.clone(), *sequence, event);
    let mut bound: Option<(String, i64, bool)> = None;
    for (list, event) in [(txs, false), (events, true)] {
        if list.len() >= limit
            && let Some(last) = list.last()
        {
            let k = key(last, event);
            bound = Some(match bound {
                Some(b) if b < k => b,
                _ => k,
            });
        }
    }
    let mut all: Vec<((String, i64, bool), String)> = txs
        .iter()
        .map(|r| (key(r, false), r.0.clone()))
        .chain(events.iter().map(|r| (key(r, true), r.0.clone())))
        .filter(|(k, _)| bound.as_ref().is_none_or(|b| k <= b))
        .collect();
    // Stable: events of one transaction keep their id order.
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all.into_iter()
        .map(|((_, _, event), id)| (id, event))
        .collect()
}

/// Sets `position` of the rows `(id, position)` of one table, in chunks,
/// only where it is still NULL; every row must be set (module docs).
async fn set_positions<E, C>(
    db: &sea_orm::DatabaseTransaction,
    id: C,
    position: C,
    rows: &[(&str, i64)],
) -> Result<(), LedgerError>
where
    E: EntityTrait<Column = C>,
    C: ColumnTrait,
{
    for chunk in rows.chunks(UPDATE_CHUNK) {
        let case = chunk.iter().fold(CaseStatement::new(), |case, (row, at)| {
            case.case(id.eq(*row), *at)
        });
        let updated = E::update_many()
            .col_expr(position, case.into())
            .filter(id.is_in(chunk.iter().map(|(row, _)| *row)))
            .filter(position.is_null())
            .exec(db)
            .await?
            .rows_affected;
        if updated != chunk.len() as u64 {
            return Err(LedgerError::Internal(format!(
                "feed sequencer: {updated} of {} rows numbered; another pass ran without the lock",
                chunk.len()
            )));
        }
    }
    Ok(())
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
                let (head, full) = self.store.sequence_pass(true).await?;
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
                more: false,
            });
        }
        let mut items: Vec<(Cursor, FeedItem)> = Vec::new();
        // Each list read is cut at `limit`; positions past the end of a cut
        // list are left for the next page, so the merge misses nothing.
        let mut bound = head;
        if filter.transactions {
            let mut query = ctx::Entity::find()
                .filter(ctx::Column::FeedPosition.gt(after.0))
                .filter(ctx::Column::FeedPosition.lte(head));
            if let Some(user_id) = &filter.user_id {
                query = query.filter(ctx::Column::UserId.eq(user_id.as_str()));
            }
            if !filter.kinds.is_empty() {
                query =
                    query.filter(ctx::Column::Type.is_in(filter.kinds.iter().map(|k| k.as_str())));
            }
            let rows = query
                .order_by_asc(ctx::Column::FeedPosition)
                .limit(limit)
                .all(db)
                .await?;
            if rows.len() as u64 == limit
                && let Some(last) = rows.last()
            {
                bound = bound.min(last.feed_position.unwrap_or(head));
            }
            for row in rows {
                let position = row.feed_position.unwrap_or_default();
                items.push((Cursor(position), FeedItem::Transaction(row.try_into()?)));
            }
        }
        if filter.alert_events {
            let mut query = alert_event::Entity::find()
                .filter(alert_event::Column::FeedPosition.gt(after.0))
                .filter(alert_event::Column::FeedPosition.lte(head));
            if let Some(user_id) = &filter.user_id {
                query = query.filter(alert_event::Column::UserId.eq(user_id.as_str()));
            }
            let rows = query
                .order_by_asc(alert_event::Column::FeedPosition)
                .limit(limit)
                .all(db)
                .await?;
            if rows.len() as u64 == limit
                && let Some(last) = rows.last()
            {
                bound = bound.min(last.feed_position.unwrap_or(head));
            }
            for row in rows {
                let position = row.feed_position.unwrap_or_default();
                items.push((Cursor(position), FeedItem::AlertEvent(row.into())));
            }
        }
        items.retain(|(cursor, _)| cursor.0 <= bound);
        items.sort_by_key(|(cursor, _)| *cursor);
        Ok(FeedPage {
            entries: items,
            scanned_to: Cursor(bound),
            more: bound < head,
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
