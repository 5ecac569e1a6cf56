//! PostgreSQL: the minimal correct spend is one statement, and so is the
//! peer's. Under READ COMMITTED a conditional `UPDATE ... WHERE balance +
//! delta >= 0` waits for the row lock and re-checks the committed row, so
//! it cannot overspend; the ledger row takes its sequence and running
//! balance from the updated row in the same statement.

use sea_orm::sqlx::postgres::{PgPool, PgPoolOptions};
use sea_orm::sqlx::{self, Row};

use super::{Change, DbError, Style, Work, classify};
use crate::workload::HISTORY_PAGE;

/// The minimal correct transaction per balance change.
const RAW_CHANGE: &str = "\
WITH b AS (
    UPDATE user_balance
       SET balance = balance + $2, last_sequence = last_sequence + 1, updated_at = $3
     WHERE user_id = $1 AND balance + $2 >= 0
 RETURNING balance, last_sequence)
INSERT INTO credit_transaction
    (id, user_id, sequence, type, amount, running_balance, idempotency_key, fingerprint,
     refunded_amount, graph_exec_id, reason, created_at)
SELECT $4, $1, b.last_sequence, $5, $2, b.balance, $6, 'bench', 0, $7, $8, $3 FROM b";

/// The single-CTE statement of the system we started from, on our tables:
/// lock the balance row FOR UPDATE (falling back to 0 when there is none,
/// which was that system's flaw for new users), upsert the balance from the
/// locked value, and insert the ledger row from the upsert's result. The
/// sequence columns are carried along so the invariants can be checked.
const PEER_CHANGE: &str = "\
WITH locked AS (
    SELECT balance, last_sequence FROM user_balance WHERE user_id = $1 FOR UPDATE
), current_balance AS (
    SELECT COALESCE((SELECT balance FROM locked), 0) AS balance,
           COALESCE((SELECT last_sequence FROM locked), 0) AS last_sequence
), upserted AS (
    INSERT INTO user_balance (user_id, balance, opening_balance, last_sequence, updated_at)
    SELECT $1, balance + $2, 0, last_sequence + 1, $3 FROM current_balance
     WHERE balance + $2 >= 0
    ON CONFLICT (user_id) DO UPDATE
       SET balance = EXCLUDED.balance,
           last_sequence = EXCLUDED.last_sequence,
           updated_at = EXCLUDED.updated_at
    RETURNING balance, last_sequence
)
INSERT INTO credit_transaction
    (id, user_id, sequence, type, amount, running_balance, idempotency_key, fingerprint,
     refunded_amount, graph_exec_id, reason, created_at)
SELECT $4, $1, last_sequence, $5, $2, balance, $6, 'bench', 0, $7, $8, $3 FROM upserted";

const READ: &str = "SELECT balance, last_sequence, updated_at FROM user_balance WHERE user_id = $1";

const HISTORY: &str = "\
SELECT id, sequence, type, amount, running_balance, idempotency_key, graph_exec_id, reason,
       metadata, refunded_transaction_id, refunded_amount, created_at
  FROM credit_transaction WHERE user_id = $1 ORDER BY sequence DESC LIMIT $2";

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .connect(url)
        .await
}

pub async fn run(pool: &PgPool, style: Style, work: Work<'_>) -> Result<(), DbError> {
    match work {
        Work::Change(change) => {
            let sql = match style {
                Style::Raw => RAW_CHANGE,
                Style::Peer => PEER_CHANGE,
            };
            let done = bind_change(sqlx::query(sql), change)
                .execute(pool)
                .await
                .map_err(classify)?;
            if done.rows_affected() == 1 {
                Ok(())
            } else {
                Err(DbError::Refused)
            }
        }
        Work::Read(user) => {
            let row = sqlx::query(READ)
                .bind(user)
                .fetch_optional(pool)
                .await
                .map_err(classify)?;
            let row = row.ok_or(DbError::NotFound)?;
            // Decode what the API answers with, as the server must.
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

fn bind_change<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    change: &'q Change<'q>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(change.user)
        .bind(change.delta)
        .bind(change.at)
        .bind(change.id.as_str())
        .bind(change.kind)
        .bind(change.key.as_str())
        .bind(change.graph_exec_id)
        .bind(change.reason)
}
