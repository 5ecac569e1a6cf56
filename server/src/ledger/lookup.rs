//! What a batch reads under its row locks before it applies anything: the
//! stored originals of its caller-given keys (transactions and holds), the
//! holds its captures and releases name, and the ACTIVE holds of users whose
//! earliest hold expiry has passed (to write that expiry down).
//!
//! Each of these is a round trip of its own if asked separately, and round
//! trips are most of what a write costs (a spend is six: BEGIN, lock, key
//! lookup, two writes, COMMIT). So when a batch needs any hold, all of it is
//! one `UNION ALL` statement: the hold branches return hold rows, the
//! transaction branch only the ids of transactions that already carry one
//! of the batch's keys. Such a hit means a retry (or a reused key), which
//! is rare, so the full rows of those transactions are read afterwards, by
//! primary key, in a round trip only retries pay for. A batch that needs no
//! hold (the users never had one, nothing is named or due) reads its keys'
//! transactions directly, as before holds existed.
//!
//! Every branch probes its own index: (user_id, idempotency_key) and
//! (user_id, close_key) are unique on holds, (user_id, idempotency_key) on
//! transactions, (user_id, state, expire_time) serves the due holds, and
//! the primary key the named ones. `key IN .. OR close_key IN ..` in one
//! branch would let a database scan all of a busy user's holds instead.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Asterisk, Expr, Query, SelectStatement, SimpleExpr, UnionType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, ExprTrait, FromQueryResult, Iterable,
    QueryFilter,
};

use super::batch::Pending;
use super::error::LedgerError;
use super::model::{HoldState, Operation};
use super::rules::Account;
use crate::entity::{credit_hold as holds, credit_transaction as ctx};

/// What a caller's key already named, under the batch's locks.
#[derive(Debug, Default)]
pub struct Stored {
    /// Transactions by (user, key).
    pub transactions: HashMap<(String, String), ctx::Model>,
    /// Holds by (user, the key they were reserved with).
    pub reserves: HashMap<(String, String), holds::Model>,
    /// Holds by (user, the key of the capture or release that closed them).
    pub closes: HashMap<(String, String), holds::Model>,
}

/// Everything `lookup` found.
#[derive(Debug, Default)]
pub struct Found {
    pub stored: Stored,
    /// Holds by id: every hold a request names and, for each user whose
    /// earliest expiry has passed, all their ACTIVE holds (a capture or
    /// release needs only its own hold, because `holds_expire_at` is kept
    /// as a lower bound: see `holds.rs`). Holds found by key are here too;
    /// they change nothing unless named or due.
    pub holds: HashMap<String, holds::Model>,
}

/// The name of the column that carries a transaction branch's hits.
const TX_ID: &str = "tx_id";

/// Reads what `batch` (its locked requests) needs, in one round trip when
/// it needs holds (two when one of its keys was used before).
pub async fn lookup<C: ConnectionTrait>(
    db: &C,
    batch: &[&Pending],
    accounts: &HashMap<String, Account>,
    now: DateTime<Utc>,
) -> Result<Found, LedgerError> {
    let wanted: HashSet<(&str, &str)> = batch
        .iter()
        .filter(|p| p.caller_key)
        .map(|p| (p.req.user_id.as_str(), p.key.as_str()))
        .collect();
    // Keys are unique per user across transactions and holds; only users
    // who ever had a hold can have a key on one.
    let hold_keys: HashSet<(&str, &str)> = wanted
        .iter()
        .filter(|(u, _)| accounts.get(*u).is_some_and(|a| a.hold_count > 0))
        .copied()
        .collect();
    let named: HashSet<&str> = batch
        .iter()
        .filter_map(|p| match &p.req.operation {
            Operation::Capture { hold_id, .. } | Operation::Release { hold_id, .. } => {
                Some(hold_id.as_str())
            }
            _ => None,
        })
        .collect();
    let due: HashSet<&str> = accounts
        .iter()
        .filter(|(_, a)| a.holds_expire_at.is_some_and(|at| at <= now))
        .map(|(u, _)| u.as_str())
        .collect();

    let backend = db.get_database_backend();
    let mut branches: Vec<SelectStatement> = Vec::new();
    if !hold_keys.is_empty() {
        branches.push(hold_branch(by_pairs(
            backend,
            holds::Column::UserId,
            holds::Column::IdempotencyKey,
            &hold_keys,
        )));
        branches.push(hold_branch(by_pairs(
            backend,
            holds::Column::UserId,
            holds::Column::CloseKey,
            &hold_keys,
        )));
    }
    if !named.is_empty() {
        branches.push(hold_branch(holds::Column::Id.is_in(named)));
    }
    if !due.is_empty() {
        branches.push(hold_branch(
            holds::Column::UserId
                .is_in(due)
                .and(holds::Column::State.eq(HoldState::Active.as_str())),
        ));
    }
    if branches.is_empty() {
        // No hold involved: the keys' transactions, whole, in one probe.
        return Ok(Found {
            stored: Stored {
                transactions: transactions(db, &wanted, None).await?,
                ..Stored::default()
            },
            holds: HashMap::new(),
        });
    }
    if !wanted.is_empty() {
        branches.push(transaction_branch(backend, &wanted));
    }
    let mut branches = branches.into_iter();
    let mut union = branches.next().expect("at least one branch");
    for branch in branches {
        union.union(UnionType::All, branch);
    }
    let rows = db.query_all(&union).await?;

    let mut found = Found::default();
    let mut hits = HashSet::new();
    for row in rows {
        if let Some(id) = row.try_get::<Option<String>>("", TX_ID)? {
            hits.insert(id);
            continue;
        }
        let hold = holds::Model::from_query_result(&row, "")?;
        let reserve = (hold.user_id.as_str(), hold.idempotency_key.as_str());
        if hold_keys.contains(&reserve) {
            let key = (hold.user_id.clone(), hold.idempotency_key.clone());
            found.stored.reserves.insert(key, hold.clone());
        }
        if let Some(close_key) = &hold.close_key
            && hold_keys.contains(&(hold.user_id.as_str(), close_key.as_str()))
        {
            let key = (hold.user_id.clone(), close_key.clone());
            found.stored.closes.insert(key, hold.clone());
        }
        found.holds.insert(hold.id.clone(), hold);
    }
    if !hits.is_empty() {
        found.stored.transactions = transactions(db, &wanted, Some(hits)).await?;
    }
    Ok(found)
}

/// One branch over holds: every column, and no transaction id.
fn hold_branch(condition: SimpleExpr) -> SelectStatement {
    let mut select = Query::select();
    for column in holds::Column::iter() {
        select.column((holds::Entity, column));
    }
    select
        .expr_as(Expr::cust("NULL"), Alias::new(TX_ID))
        .from(holds::Entity)
        .and_where(condition);
    select
}

/// The branch over transactions: a NULL for every hold column (a bare NULL
/// takes its type from the hold branches on every backend), and the id of
/// each transaction that carries one of `wanted`'s keys.
fn transaction_branch(backend: DbBackend, wanted: &HashSet<(&str, &str)>) -> SelectStatement {
    let mut select = Query::select();
    for column in holds::Column::iter() {
        select.expr_as(Expr::cust("NULL"), column);
    }
    select
        .expr_as(Expr::col(ctx::Column::Id), Alias::new(TX_ID))
        .from(ctx::Entity)
        .and_where(by_pairs(
            backend,
            ctx::Column::UserId,
            ctx::Column::IdempotencyKey,
            wanted,
        ));
    select
}

/// The transactions that carry one of `wanted`'s keys, optionally only
/// those with an id in `ids`.
async fn transactions<C: ConnectionTrait>(
    db: &C,
    wanted: &HashSet<(&str, &str)>,
    ids: Option<HashSet<String>>,
) -> Result<HashMap<(String, String), ctx::Model>, LedgerError> {
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let mut select = ctx::Entity::find();
    select = match ids {
        Some(ids) => select.filter(ctx::Column::Id.is_in(ids)),
        None => select.filter(by_pairs(
            db.get_database_backend(),
            ctx::Column::UserId,
            ctx::Column::IdempotencyKey,
            wanted,
        )),
    };
    Ok(select
        .all(db)
        .await?
        .into_iter()
        .filter(|r| wanted.contains(&(r.user_id.as_str(), r.idempotency_key.as_str())))
        .map(|r| ((r.user_id.clone(), r.idempotency_key.clone()), r))
        .collect())
}

/// Rows whose (`user`, `key`) is one of `wanted` (or, off PostgreSQL, a
/// superset: the caller keeps only exact pairs).
///
/// PostgreSQL: one probe of the unique (user_id, key) index per pair, via
/// `unnest`, whatever the table's statistics say; with `user_id IN .. AND
/// key IN ..` a fresh, never-analysed table lets it scan all of a busy
/// user's rows instead (milliseconds per batch, growing). MariaDB and
/// SQLite turn the two IN lists into index ranges.
fn by_pairs<Col: ColumnTrait>(
    backend: DbBackend,
    user: Col,
    key: Col,
    wanted: &HashSet<(&str, &str)>,
) -> SimpleExpr {
    if backend == DbBackend::Postgres {
        let (users, keys): (Vec<String>, Vec<String>) = wanted
            .iter()
            .map(|(u, k)| ((*u).to_owned(), (*k).to_owned()))
            .unzip();
        let pairs = Query::select()
            .column(Asterisk)
            .from_function(
                sea_orm::sea_query::Func::cust(Alias::new("unnest"))
                    .arg(Expr::val(users).cast_as(Alias::new("text[]")))
                    .arg(Expr::val(keys).cast_as(Alias::new("text[]"))),
                Alias::new("w"),
            )
            .to_owned();
        return Expr::tuple([Expr::col(user), Expr::col(key)]).in_subquery(pairs);
    }
    let users: HashSet<&str> = wanted.iter().map(|(u, _)| *u).collect();
    let keys: HashSet<&str> = wanted.iter().map(|(_, k)| *k).collect();
    user.is_in(users).and(key.is_in(keys))
}
