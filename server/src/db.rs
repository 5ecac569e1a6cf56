//! Opening the database and bringing its schema up to date.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

use crate::config::PoolSettings;

/// Connects to `url` with the pool `settings`.
///
/// SQLite runs in WAL mode with `synchronous=FULL`: a write is acknowledged
/// only after its commit reached the disk, which is what a ledger owes its
/// callers; WAL lets reads go on while one writer commits.
///
/// PostgreSQL connections plan every prepared statement once
/// (`plan_cache_mode = force_generic_plan`). Left to itself, PostgreSQL
/// keeps re-planning a statement whose custom plans look cheaper than the
/// generic one, and the key lookups bind arrays (`unnest($1::text[], ..)`),
/// whose custom plans always do: that planning was a third of a spend's
/// database time (0.2 ms of 0.7) and half of a reserve's. Every statement
/// the server prepares is an index probe or a per-user range, whose plan
/// does not depend on the values bound.
pub async fn connect(url: &str, settings: &PoolSettings) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(settings.max_connections)
        .min_connections(1)
        .acquire_timeout(settings.acquire_timeout())
        .connect_timeout(settings.acquire_timeout())
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
        })
        .map_sqlx_postgres_opts(|o| o.options([("plan_cache_mode", "force_generic_plan")]));
    Database::connect(options).await
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}
