//! The same workload as plain SQL against the same database: `raw` is the
//! minimal correct transaction per operation, `peer` the single-CTE
//! statement of the system we started from (PostgreSQL only). Each backend's
//! SQL sits in its own file, written out in full so a reader can see
//! exactly what the service is compared with.

mod mysql;
mod postgres;
mod sqlite;

use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sqlx;

use crate::args::DbKind;
use crate::workload::{Op, SPEND_AMOUNT, TOP_UP_AMOUNT};

/// Which SQL a balance change uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Raw,
    Peer,
}

/// A connection pool sized like the server's, per backend (sqlx is typed by
/// database, and the hot path should not pay for dispatch through `Any`).
#[derive(Clone)]
pub enum SqlTarget {
    Postgres(sqlx::PgPool),
    Sqlite(sqlite::Sqlite),
    MySql(sqlx::MySqlPool),
}

impl SqlTarget {
    pub async fn connect(kind: DbKind, url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let target = match kind {
            DbKind::Postgres => Self::Postgres(postgres::connect(url, max_connections).await?),
            DbKind::Sqlite => Self::Sqlite(sqlite::connect(url, max_connections).await?),
            DbKind::Mysql => Self::MySql(mysql::connect(url, max_connections).await?),
        };
        Ok(target)
    }

    /// Whether `style` exists on this backend (the peer statement is
    /// PostgreSQL's: `FOR UPDATE` inside a CTE and `ON CONFLICT`).
    pub fn supports(&self, style: Style) -> bool {
        style == Style::Raw || matches!(self, Self::Postgres(_))
    }

    /// Performs one operation; the error is a short code for the report.
    pub async fn call(&self, style: Style, op: Op, user: &str) -> Result<(), String> {
        let change;
        let work = match op {
            Op::Spend => {
                change = Change::new(
                    user,
                    -SPEND_AMOUNT,
                    "USAGE",
                    Some("bench"),
                    Some("bench spend"),
                );
                Work::Change(&change)
            }
            Op::TopUp => {
                change = Change::new(user, TOP_UP_AMOUNT, "TOP_UP", None, None);
                Work::Change(&change)
            }
            Op::Read => Work::Read(user),
            Op::History => Work::History(user),
            // Holds have no SQL baseline; the session never runs a
            // reserve-capture workload on a SQL target.
            Op::ReserveCapture => return Err("UNSUPPORTED".to_owned()),
        };
        let result = match self {
            Self::Postgres(pool) => postgres::run(pool, style, work).await,
            Self::Sqlite(db) => sqlite::run(db, work).await,
            Self::MySql(pool) => mysql::run(pool, work).await,
        };
        result.map_err(|e| e.code())
    }

    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(db) => db.close().await,
            Self::MySql(pool) => pool.close().await,
        }
    }
}

/// One balance change and its ledger row.
pub struct Change<'a> {
    user: &'a str,
    delta: i64,
    kind: &'static str,
    /// A fresh id, time-ordered like the server's.
    id: String,
    /// A fresh idempotency key: every benchmark call is a new request.
    key: String,
    graph_exec_id: Option<&'static str>,
    reason: Option<&'static str>,
    /// Microseconds, the precision every backend stores (as the server).
    at: DateTime<Utc>,
}

impl<'a> Change<'a> {
    fn new(
        user: &'a str,
        delta: i64,
        kind: &'static str,
        graph_exec_id: Option<&'static str>,
        reason: Option<&'static str>,
    ) -> Self {
        Change {
            user,
            delta,
            kind,
            id: uuid::Uuid::now_v7().to_string(),
            key: uuid::Uuid::new_v4().simple().to_string(),
            graph_exec_id,
            reason,
            at: Utc::now().trunc_subsecs(6),
        }
    }
}

/// What one call does in SQL.
pub enum Work<'a> {
    Change(&'a Change<'a>),
    Read(&'a str),
    History(&'a str),
}

/// Why a SQL call failed.
pub enum DbError {
    /// The balance check refused the change (the service's
    /// FAILED_PRECONDITION); never expected with the seed balance.
    Refused,
    /// The user has no balance row.
    NotFound,
    /// The database said no: its SQLSTATE, or a short kind.
    Database(String),
}

impl DbError {
    fn code(&self) -> String {
        match self {
            DbError::Refused => "REFUSED".to_owned(),
            DbError::NotFound => "NOT_FOUND".to_owned(),
            DbError::Database(code) => code.clone(),
        }
    }
}

/// Maps a sqlx error to a code worth counting.
fn classify(err: sqlx::Error) -> DbError {
    DbError::Database(match &err {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("SQL_{code}"),
            None => "SQL_ERROR".to_owned(),
        },
        sqlx::Error::PoolTimedOut => "POOL_TIMEOUT".to_owned(),
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed => "CONNECTION".to_owned(),
        _ => "SQL_OTHER".to_owned(),
    })
}

/// Opens a raw target, explaining which URL failed.
pub async fn open(kind: DbKind, url: &str, max_connections: u32) -> anyhow::Result<SqlTarget> {
    SqlTarget::connect(kind, url, max_connections)
        .await
        .with_context(|| format!("cannot open a SQL pool on {}", crate::database::redact(url)))
}
