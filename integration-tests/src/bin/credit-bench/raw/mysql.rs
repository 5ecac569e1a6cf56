//! MariaDB/MySQL: no `UPDATE ... RETURNING`, so the minimal correct
//! transaction locks the row (`SELECT ... FOR UPDATE`), checks, updates and
//! appends, at READ COMMITTED (no gap locks, as the server runs it).

use std::time::Duration;

use sea_orm::sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sea_orm::sqlx::{self, Executor, Row};

use super::{DbError, Work, classify};
use crate::workload::HISTORY_PAGE;

const LOCK: &str = "SELECT balance, last_sequence FROM user_balance WHERE user_id = ? FOR UPDATE";

const UPDATE_BALANCE: &str =
    "UPDATE user_balance SET balance = ?, last_sequence = ?, updated_at = ? WHERE user_id = ?";

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

pub async fn connect(url: &str, max_connections: u32) -> Result<MySqlPool, sqlx::Error> {
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                Ok(())
            })
        })
        .connect(url)
        .await
}

pub async fn run(pool: &MySqlPool, work: Work<'_>) -> Result<(), DbError> {
    match work {
        Work::Change(change) => {
            let mut txn = pool.begin().await.map_err(classify)?;
            let row = sqlx::query(LOCK)
                .bind(change.user)
                .fetch_optional(&mut *txn)
                .await
                .map_err(classify)?
                .ok_or(DbError::NotFound)?;
            let balance: i64 = row.try_get(0).map_err(classify)?;
            let sequence: i64 = row.try_get::<i64, _>(1).map_err(classify)? + 1;
            let new_balance = balance
                .checked_add(change.delta)
                .filter(|b| *b >= 0)
                // Dropping `txn` rolls back.
                .ok_or(DbError::Refused)?;
            sqlx::query(UPDATE_BALANCE)
                .bind(new_balance)
                .bind(sequence)
                .bind(change.at)
                .bind(change.user)
                .execute(&mut *txn)
                .await
                .map_err(classify)?;
            sqlx::query(INSERT_ENTRY)
                .bind(change.id.as_str())
                .bind(change.user)
                .bind(sequence)
                .bind(change.kind)
                .bind(change.delta)
                .bind(new_balance)
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
                .fetch_optional(pool)
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
                .fetch_all(pool)
                .await
                .map_err(classify)?;
            Ok(())
        }
    }
}
