//! SQLite: `BEGIN IMMEDIATE` (the write lock first, so the transaction can
//! never fail on a lock upgrade), the conditional `UPDATE ... RETURNING`,
//! the ledger row, `COMMIT`. Connections get the server's pragmas (WAL,
//! synchronous=FULL, busy timeout): the same durability, so the ratio
//! compares code paths, not fsync settings.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sea_orm::sqlx::{self, Row};
use tokio::sync::Mutex;

use super::{DbError, Work, classify};
use crate::workload::HISTORY_PAGE;

const CHANGE_BALANCE: &str = "\
UPDATE user_balance
   SET balance = balance + ?1, last_sequence = last_sequence + 1, updated_at = ?2
 WHERE user_id = ?3 AND balance + ?1 >= 0
RETURNING balance, last_sequence";

const INSERT_ENTRY: &str = "\
INSERT INTO credit_transaction
    (id, user_id, sequence, type, amount, running_balance, idempotency_key, fingerprint,
     refunded_amount, graph_exec_id, reason, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, 'bench', 0, ?, ?, ?)";

const READ: &str = "SELECT balance, last_sequence, updated_at FROM user_balance WHERE user_id = ?";

const HISTORY: &str = "\
SELECT id, sequence, type, amount, running_balance, idempotency_key, graph_exec_id, reason,
       metadata, refunded_transaction_id, refunded_amount, created_at
  FROM credit_transaction WHERE user_id = ? ORDER BY sequence DESC LIMIT ?";

/// A pool like the server's, and this process's writer queue.
#[derive(Clone)]
pub struct Sqlite {
    pool: SqlitePool,
    /// SQLite has one writer. Like the server, writers queue here rather
    /// than in SQLite's busy handler, which sleeps and retries and would
    /// make the baseline slower than it needs to be.
    writer: Arc<Mutex<()>>,
}

pub async fn connect(url: &str, max_connections: u32) -> Result<Sqlite, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(max_connections)
        .connect_with(options)
        .await?;
    Ok(Sqlite {
        pool,
        writer: Arc::new(Mutex::new(())),
    })
}

impl Sqlite {
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub async fn run(db: &Sqlite, work: Work<'_>) -> Result<(), DbError> {
    match work {
        Work::Change(change) => {
            let _writer = db.writer.lock().await;
            let mut txn = db
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(classify)?;
            let row = sqlx::query(CHANGE_BALANCE)
                .bind(change.delta)
                .bind(change.at)
                .bind(change.user)
                .fetch_optional(&mut *txn)
                .await
                .map_err(classify)?;
            // Dropping `txn` rolls back.
            let row = row.ok_or(DbError::Refused)?;
            let balance: i64 = row.try_get(0).map_err(classify)?;
            let sequence: i64 = row.try_get(1).map_err(classify)?;
            sqlx::query(INSERT_ENTRY)
                .bind(change.id.as_str())
                .bind(change.user)
                .bind(sequence)
                .bind(change.kind)
                .bind(change.delta)
                .bind(balance)
                .bind(change.key.as_str())
                .bind(change.graph_exec_id)
                .bind(change.reason)
                .bind(change.at)
                .execute(&mut *txn)
                .await
                .map_err(classify)?;
            txn.commit().await.map_err(classify)
        }
        Work::Read(user) => {
            let row = sqlx::query(READ)
                .bind(user)
                .fetch_optional(&db.pool)
                .await
                .map_err(classify)?
                .ok_or(DbError::NotFound)?;
            row.try_get::<i64, _>(0).map_err(classify)?;
            Ok(())
        }
        Work::History(user) => {
            sqlx::query(HISTORY)
                .bind(user)
                .bind(i64::from(HISTORY_PAGE))
                .fetch_all(&db.pool)
                .await
                .map_err(classify)?;
            Ok(())
        }
    }
}
