//! Database errors, classified once at the storage edge: which failures are
//! conflicts worth a retry, which mean the database is out of reach, and
//! which are overload. The codes are named per backend, so a reader can
//! check each against its documentation.

use sea_orm::sqlx::Error as Sqlx;
use sea_orm::sqlx::mysql::MySqlDatabaseError;
use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr};

use super::error::{Cause, LedgerError, Overload};

/// PostgreSQL SQLSTATEs (Appendix A of its manual).
mod postgres {
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const DEADLOCK_DETECTED: &str = "40P01";
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";
    /// The server terminated the session: fast shutdown, failover,
    /// `pg_terminate_backend`.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CRASH_SHUTDOWN: &str = "57P02";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// A write reached a standby (a failover is under way).
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    /// Class 08: connection exceptions.
    pub const CONNECTION_EXCEPTION_CLASS: &str = "08";
}

/// MariaDB/MySQL error numbers.
mod mysql {
    pub const ER_LOCK_WAIT_TIMEOUT: &str = "1205";
    pub const ER_LOCK_DEADLOCK: &str = "1213";
    pub const ER_CON_COUNT_ERROR: &str = "1040";
    pub const ER_SERVER_SHUTDOWN: &str = "1053";
    /// Galera: the node is not ready for queries (not in the primary
    /// component).
    pub const ER_UNKNOWN_COM_ERROR: &str = "1047";
    pub const ER_QUERY_INTERRUPTED: &str = "1317";
    /// MySQL 8's NOWAIT refusal.
    pub const ER_LOCK_NOWAIT: &str = "3572";
}

/// SQLite result codes (primary and extended).
mod sqlite {
    pub const BUSY: &str = "5";
    pub const LOCKED: &str = "6";
    pub const BUSY_RECOVERY: &str = "261";
    pub const LOCKED_SHAREDCACHE: &str = "262";
    pub const BUSY_SNAPSHOT: &str = "517";
    pub const BUSY_TIMEOUT: &str = "773";
}

/// What a database error means for the request that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Another transaction got in the way; retrying is safe.
    Conflict,
    /// The database cannot be reached (or is shutting down, or is a
    /// standby); retrying later is safe.
    Unavailable,
    /// No pooled connection came free in time.
    PoolTimeout,
    /// A bug or a broken database.
    Other,
}

/// Classifies `err`.
pub fn classify(err: &DbErr) -> Class {
    let sqlx = match err {
        DbErr::ConnectionAcquire(ConnAcquireErr::Timeout) => return Class::PoolTimeout,
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return Class::Unavailable,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => e,
        // A unique key caught a race the row lock should have prevented.
        _ if err.sql_err().is_some() => return Class::Conflict,
        _ => return Class::Other,
    };
    match sqlx.as_ref() {
        Sqlx::PoolTimedOut => Class::PoolTimeout,
        Sqlx::Io(_) | Sqlx::PoolClosed | Sqlx::WorkerCrashed | Sqlx::Tls(_) | Sqlx::Protocol(_) => {
            Class::Unavailable
        }
        Sqlx::Database(db) => {
            // MySQL reports a SQLSTATE as its code (HY000 for most lock
            // errors); its error number is what tells them apart.
            let code = match db.try_downcast_ref::<MySqlDatabaseError>() {
                Some(mysql) => mysql.number().to_string(),
                None => db.code().unwrap_or_default().into_owned(),
            };
            classify_code(&code, db.message())
        }
        _ => Class::Other,
    }
}

/// Classifies a database error code (the codes of the three backends do
/// not overlap).
fn classify_code(code: &str, message: &str) -> Class {
    use {mysql::*, postgres::*, sqlite::*};
    match code {
        SERIALIZATION_FAILURE | DEADLOCK_DETECTED | LOCK_NOT_AVAILABLE => Class::Conflict,
        ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT | ER_LOCK_NOWAIT => Class::Conflict,
        BUSY | LOCKED | BUSY_RECOVERY | LOCKED_SHAREDCACHE | BUSY_SNAPSHOT | BUSY_TIMEOUT => {
            Class::Conflict
        }
        ADMIN_SHUTDOWN | CRASH_SHUTDOWN | CANNOT_CONNECT_NOW | READ_ONLY_SQL_TRANSACTION => {
            Class::Unavailable
        }
        ER_CON_COUNT_ERROR | ER_SERVER_SHUTDOWN | ER_UNKNOWN_COM_ERROR | ER_QUERY_INTERRUPTED => {
            Class::Unavailable
        }
        c if c.starts_with(CONNECTION_EXCEPTION_CLASS) && c.len() == 5 => Class::Unavailable,
        // SQLite reports some lock waits only in the text.
        _ if message.contains("database is locked") => Class::Conflict,
        _ => Class::Other,
    }
}

impl From<DbErr> for LedgerError {
    fn from(err: DbErr) -> Self {
        match classify(&err) {
            Class::Conflict => Self::Conflict(Cause::new(err)),
            Class::Unavailable => Self::Unavailable(Cause::new(err)),
            // Whether a pool timeout is overload or an outage depends on
            // the pool's state; `Store::explain` decides where it knows.
            Class::PoolTimeout => Self::Overloaded(Overload::DatabaseConnections),
            Class::Other => Self::Internal(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_classify_per_backend() {
        for (code, class) in [
            ("40001", Class::Conflict),
            ("40P01", Class::Conflict),
            ("55P03", Class::Conflict),
            ("57P01", Class::Unavailable),
            ("57P02", Class::Unavailable),
            ("57P03", Class::Unavailable),
            ("08006", Class::Unavailable),
            ("08001", Class::Unavailable),
            ("25006", Class::Unavailable),
            ("1213", Class::Conflict),
            ("1205", Class::Conflict),
            ("1053", Class::Unavailable),
            ("1047", Class::Unavailable),
            ("5", Class::Conflict),
            ("517", Class::Conflict),
            ("23505", Class::Other),
            ("42P01", Class::Other),
            ("1062", Class::Other),
            ("0800", Class::Other),
        ] {
            assert_eq!(classify_code(code, ""), class, "code {code}");
        }
        assert_eq!(classify_code("1", "database is locked"), Class::Conflict);
    }

    #[test]
    fn pool_timeouts_are_told_apart_from_lost_connections() {
        assert_eq!(
            classify(&DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)),
            Class::PoolTimeout
        );
        assert_eq!(
            classify(&DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed)),
            Class::Unavailable
        );
        let io = DbErr::Query(RuntimeErr::SqlxError(std::sync::Arc::new(Sqlx::Io(
            std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        ))));
        assert_eq!(classify(&io), Class::Unavailable);
    }
}
