//! The stored cursors of broker relays (`relay.rs` in the server): one row
//! per relay name.

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use super::error::LedgerError;
use super::feed::Cursor;
use super::handle::Ledger;

impl Ledger {
    /// Where the relay `name` is: `None` before its first stored cursor.
    pub async fn relay_cursor(&self, name: &str) -> Result<Option<Cursor>, LedgerError> {
        let backend = self.store.backend();
        let sql = match backend {
            DbBackend::Postgres => "SELECT position FROM relay_cursor WHERE name = $1",
            _ => "SELECT position FROM relay_cursor WHERE name = ?",
        };
        let row = self
            .db()
            .query_one_raw(Statement::from_sql_and_values(backend, sql, [name.into()]))
            .await?;
        Ok(match row {
            Some(row) => Some(Cursor(row.try_get::<i64>("", "position")?)),
            None => None,
        })
    }

    /// Stores where the relay `name` is (after the broker confirmed every
    /// message up to `cursor`).
    pub async fn store_relay_cursor(&self, name: &str, cursor: Cursor) -> Result<(), LedgerError> {
        let backend = self.store.backend();
        let now = self.store.clock.now();
        let sql = match backend {
            DbBackend::Postgres => {
                "INSERT INTO relay_cursor (name, position, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, \
                 updated_at = EXCLUDED.updated_at"
            }
            DbBackend::MySql => {
                "INSERT INTO relay_cursor (name, position, updated_at) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE position = VALUES(position), updated_at = VALUES(updated_at)"
            }
            _ => {
                "INSERT INTO relay_cursor (name, position, updated_at) VALUES (?, ?, ?) \
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position, \
                 updated_at = excluded.updated_at"
            }
        };
        self.db()
            .execute_raw(Statement::from_sql_and_values(
                backend,
                sql,
                [name.into(), cursor.0.into(), now.into()],
            ))
            .await?;
        Ok(())
    }
}
