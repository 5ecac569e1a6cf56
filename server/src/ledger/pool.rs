//! The state of the database connection pool, for telling overload from an
//! outage and for the metrics.

use sea_orm::{DatabaseConnection, DbBackend};

/// A snapshot of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    /// Connections open (idle or in use).
    pub size: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// Most connections the pool may open.
    pub max: u32,
}

impl PoolState {
    /// Every connection the pool may open is open and in use: a wait for
    /// one is overload, not an outage.
    pub fn saturated(&self) -> bool {
        self.size >= self.max && self.idle == 0
    }
}

/// The pool's state now.
pub fn state(db: &DatabaseConnection) -> PoolState {
    macro_rules! read {
        ($pool:expr) => {{
            let pool = $pool;
            PoolState {
                size: pool.size(),
                idle: pool.num_idle() as u32,
                max: pool.options().get_max_connections(),
            }
        }};
    }
    match db.get_database_backend() {
        DbBackend::Postgres => read!(db.get_postgres_connection_pool()),
        DbBackend::MySql => read!(db.get_mysql_connection_pool()),
        _ => read!(db.get_sqlite_connection_pool()),
    }
}
