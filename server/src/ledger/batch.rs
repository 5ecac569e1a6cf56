//! One database transaction that applies a batch of writes (one write is a
//! batch of one). Each request keeps its own checks, idempotency handling,
//! sequence, log row and answer; the batch shares the locks, the statements
//! and the commit flush.
//!
//! Why it is correct:
//! 1. The `user_balance` rows of every user in the batch are locked first,
//!    in user-id order (`SELECT ... ORDER BY user_id FOR UPDATE`; SQLite:
//!    `BEGIN IMMEDIATE` holds the database's single write lock). The row
//!    exists from the moment the user does, so there is always something to
//!    lock: no "insert if missing" race can lose a first write. Writes of
//!    one user therefore run one batch at a time, in any number of server
//!    processes; a fixed lock order means two batches cannot deadlock.
//! 2. Idempotency lookups run under those locks, so a concurrent duplicate
//!    waits for the first to commit and then finds it. Within a batch, a
//!    repeated key is answered from the earlier request. The unique index on
//!    (user_id, idempotency_key) is the last line of defence.
//! 3. Each request is checked against the balance left by the requests
//!    before it (`rules.rs`): checked arithmetic, the floor at zero, refund
//!    limits. A refused request writes nothing and does not stop the others.
//! 4. Balances, refunded totals and log rows are written in the same
//!    transaction, with `sequence = previous + 1` and `running_balance =`
//!    the balance after the request: no gaps, running balances chain.
//! 5. Callers are answered only after the commit (`group_commit.rs`).

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::{CaseStatement, Expr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect, Statement,
};
use uuid::Uuid;

use super::model::{Transaction, WriteOutcome, WriteRequest};
use super::now;
use super::rows::to_row;
use super::rules::{self, Account, RefundTarget};
use crate::entity::{credit_transaction as ctx, user_balance};
use crate::error::LedgerError;

/// A write waiting to be applied, with its fingerprint.
pub struct Pending {
    pub req: WriteRequest,
    pub fingerprint: String,
}

/// What an earlier request of the same batch did with an idempotency key.
enum KeyUse {
    Applied {
        fingerprint: String,
        outcome: WriteOutcome,
    },
}

/// Applies `batch` inside the open transaction `db`. The outer `Err` means
/// the transaction must be rolled back (a database failure); the inner
/// results are each request's own answer.
pub async fn apply_batch<C: ConnectionTrait>(
    db: &C,
    batch: &[Pending],
) -> Result<Vec<Result<WriteOutcome, LedgerError>>, LedgerError> {
    let mut accounts = lock_accounts(db, batch).await?;
    let stored = stored_by_key(db, batch).await?;
    let mut targets = refund_targets(db, batch).await?;

    let created_at = now();
    let mut in_batch: HashMap<(String, String), KeyUse> = HashMap::new();
    let mut rows = Vec::new();
    let mut changed_accounts = HashSet::new();
    let mut changed_targets = HashSet::new();
    let mut results = Vec::with_capacity(batch.len());

    for pending in batch {
        let req = &pending.req;
        let Some(account) = accounts.get_mut(&req.user_id) else {
            results.push(Err(LedgerError::UserNotFound(req.user_id.clone())));
            continue;
        };
        if let Some(key) = &req.idempotency_key {
            let lookup = (req.user_id.clone(), key.clone());
            if let Some(original) = stored.get(&lookup) {
                results.push(replay(original, &pending.fingerprint, key));
                continue;
            }
            if let Some(KeyUse::Applied {
                fingerprint,
                outcome,
            }) = in_batch.get(&lookup)
            {
                results.push(if *fingerprint == pending.fingerprint {
                    Ok(WriteOutcome {
                        replayed: true,
                        ..outcome.clone()
                    })
                } else {
                    Err(LedgerError::IdempotencyKeyReused(key.clone()))
                });
                continue;
            }
        }

        let change = match rules::plan(&req.user_id, &req.operation, &targets) {
            Ok(change) => change,
            Err(err) => {
                results.push(Err(err));
                continue;
            }
        };
        let (balance, sequence) = match rules::apply(account, &change) {
            Ok(applied) => applied,
            Err(err) => {
                results.push(Err(err));
                continue;
            }
        };
        if let Some((target, amount)) = &change.refund_of
            && let Some(t) = targets.get_mut(target)
        {
            t.refunded += amount;
            changed_targets.insert(target.clone());
        }
        changed_accounts.insert(req.user_id.clone());

        let key = req
            .idempotency_key
            .clone()
            .unwrap_or_else(|| format!("server-{}", Uuid::new_v4()));
        let transaction = Transaction {
            id: Uuid::now_v7().to_string(),
            user_id: req.user_id.clone(),
            kind: change.kind,
            amount: change.delta,
            running_balance: balance,
            sequence,
            idempotency_key: key.clone(),
            usage: change.usage,
            reason: change.reason,
            metadata: req.metadata.clone(),
            refunded_transaction_id: change.refund_of.map(|(target, _)| target),
            refunded_amount: 0,
            created_at,
            created_by: Some(req.actor.name.clone()),
            created_by_subject: req.actor.certificate_subject.clone(),
        };
        rows.push(to_row(&transaction, pending.fingerprint.clone()).into_active_model());
        let outcome = WriteOutcome {
            transaction,
            balance,
            replayed: false,
        };
        in_batch.insert(
            (req.user_id.clone(), key),
            KeyUse::Applied {
                fingerprint: pending.fingerprint.clone(),
                outcome: outcome.clone(),
            },
        );
        results.push(Ok(outcome));
    }

    if rows.is_empty() {
        return Ok(results);
    }
    let changed: Vec<(&String, &Account)> = accounts
        .iter()
        .filter(|(user, _)| changed_accounts.contains(*user))
        .collect();
    write_accounts(db, &changed, created_at).await?;
    let refunded: Vec<(&String, i64)> = targets
        .iter()
        .filter(|(id, _)| changed_targets.contains(*id))
        .map(|(id, t)| (id, t.refunded))
        .collect();
    write_refunded(db, &refunded).await?;
    ctx::Entity::insert_many(rows)
        .exec_without_returning(db)
        .await?;
    Ok(results)
}

/// The original answer for a retry, or the refusal of a reused key.
fn replay(
    original: &ctx::Model,
    fingerprint: &str,
    key: &str,
) -> Result<WriteOutcome, LedgerError> {
    if original.fingerprint != fingerprint {
        return Err(LedgerError::IdempotencyKeyReused(key.to_owned()));
    }
    let transaction = Transaction::try_from(original.clone())?;
    Ok(WriteOutcome {
        balance: transaction.running_balance,
        transaction,
        replayed: true,
    })
}

/// Locks the balance rows of every user in the batch, in user-id order.
async fn lock_accounts<C: ConnectionTrait>(
    db: &C,
    batch: &[Pending],
) -> Result<HashMap<String, Account>, LedgerError> {
    let users: HashSet<&str> = batch.iter().map(|p| p.req.user_id.as_str()).collect();
    let rows = user_balance::Entity::find()
        .filter(user_balance::Column::UserId.is_in(users))
        .order_by_asc(user_balance::Column::UserId)
        .lock_exclusive()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let account = Account {
                balance: r.balance,
                last_sequence: r.last_sequence,
            };
            (r.user_id, account)
        })
        .collect())
}

/// Stored transactions that carry one of the batch's caller-given keys.
async fn stored_by_key<C: ConnectionTrait>(
    db: &C,
    batch: &[Pending],
) -> Result<HashMap<(String, String), ctx::Model>, LedgerError> {
    let wanted: HashSet<(&str, &str)> = batch
        .iter()
        .filter_map(|p| Some((p.req.user_id.as_str(), p.req.idempotency_key.as_deref()?)))
        .collect();
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = if db.get_database_backend() == DbBackend::Postgres {
        // One probe of the unique (user_id, idempotency_key) index per pair,
        // whatever the table's statistics say. With `user_id IN .. AND key
        // IN ..` a fresh, never-analysed table lets PostgreSQL scan all of a
        // busy user's rows instead (milliseconds per batch, growing).
        let (users, keys): (Vec<String>, Vec<String>) = wanted
            .iter()
            .map(|(u, k)| ((*u).to_owned(), (*k).to_owned()))
            .unzip();
        let sql = "SELECT t.* FROM credit_transaction t \
                   JOIN unnest($1::text[], $2::text[]) AS w(user_id, idempotency_key) \
                   ON t.user_id = w.user_id AND t.idempotency_key = w.idempotency_key";
        ctx::Entity::find()
            .from_raw_sql(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                [users.into(), keys.into()],
            ))
            .all(db)
            .await?
    } else {
        let users: HashSet<&str> = wanted.iter().map(|(u, _)| *u).collect();
        let keys: HashSet<&str> = wanted.iter().map(|(_, k)| *k).collect();
        ctx::Entity::find()
            .filter(ctx::Column::UserId.is_in(users))
            .filter(ctx::Column::IdempotencyKey.is_in(keys))
            .all(db)
            .await?
    };
    Ok(rows
        .into_iter()
        .filter(|r| wanted.contains(&(r.user_id.as_str(), r.idempotency_key.as_str())))
        .map(|r| ((r.user_id.clone(), r.idempotency_key.clone()), r))
        .collect())
}

/// The transactions the batch's refunds point at (read under the owners'
/// row locks, so their refunded totals are current).
async fn refund_targets<C: ConnectionTrait>(
    db: &C,
    batch: &[Pending],
) -> Result<HashMap<String, RefundTarget>, LedgerError> {
    let ids: HashSet<&str> = batch
        .iter()
        .filter_map(|p| match &p.req.operation {
            super::model::Operation::Refund { transaction_id, .. } => Some(transaction_id.as_str()),
            _ => None,
        })
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = ctx::Entity::find()
        .filter(ctx::Column::Id.is_in(ids))
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let refunded = row.refunded_amount;
            (row.id.clone(), RefundTarget { row, refunded })
        })
        .collect())
}

/// One UPDATE for every changed balance row (a CASE per column).
async fn write_accounts<C: ConnectionTrait>(
    db: &C,
    changed: &[(&String, &Account)],
    updated_at: chrono::DateTime<chrono::Utc>,
) -> Result<(), LedgerError> {
    use user_balance::Column as C;
    let case = |value: fn(&Account) -> i64, column: C| {
        changed
            .iter()
            .fold(CaseStatement::new(), |case, (user, account)| {
                case.case(C::UserId.eq(user.as_str()), value(account))
            })
            .finally(Expr::col(column))
    };
    let result = user_balance::Entity::update_many()
        .col_expr(C::Balance, case(|a| a.balance, C::Balance).into())
        .col_expr(
            C::LastSequence,
            case(|a| a.last_sequence, C::LastSequence).into(),
        )
        .col_expr(C::UpdatedAt, Expr::value(updated_at))
        .filter(C::UserId.is_in(changed.iter().map(|(u, _)| u.as_str())))
        .exec(db)
        .await?;
    if result.rows_affected != changed.len() as u64 {
        return Err(LedgerError::Conflict(format!(
            "updated {} balance rows of {} locked",
            result.rows_affected,
            changed.len()
        )));
    }
    Ok(())
}

/// One UPDATE for the refunded totals of every refunded transaction.
async fn write_refunded<C: ConnectionTrait>(
    db: &C,
    refunded: &[(&String, i64)],
) -> Result<(), LedgerError> {
    if refunded.is_empty() {
        return Ok(());
    }
    let case = refunded
        .iter()
        .fold(CaseStatement::new(), |case, (id, total)| {
            case.case(ctx::Column::Id.eq(id.as_str()), *total)
        })
        .finally(Expr::col(ctx::Column::RefundedAmount));
    ctx::Entity::update_many()
        .col_expr(ctx::Column::RefundedAmount, case.into())
        .filter(ctx::Column::Id.is_in(refunded.iter().map(|(id, _)| id.as_str())))
        .exec(db)
        .await?;
    Ok(())
}
