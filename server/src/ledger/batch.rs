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
//!    A batch first locks with `SKIP LOCKED` (`LockMode::Skip`): a row held
//!    by another transaction is not waited for, so one account locked
//!    elsewhere cannot hold the batch's other users hostage. The requests
//!    of such a user are not applied in this batch at all (`Step::Skipped`:
//!    they read and write nothing) and go back to the queue; a user skipped
//!    a few times goes alone with a bounded wait (`LockMode::Wait`).
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

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{CaseStatement, Expr, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect, Statement,
};
use uuid::Uuid;

use super::alerts;
use super::error::LedgerError;
use super::holds;
use super::lookup::{self, Stored};
use super::lots;
use super::model::{Operation, Transaction, TxKind, WriteOutcome, WriteRequest};
use super::rows::to_row;
use super::rules::{self, Account, RefundTarget};
use super::store::HoldRules;
use crate::entity::{
    credit_allocation, credit_hold, credit_lot, credit_transaction as ctx, user_balance,
};

/// A write waiting to be applied: the request, the idempotency key it was
/// given when it entered the ledger (the caller's, or one made then: never
/// per attempt), and its fingerprint.
#[derive(Debug, Clone)]
pub struct Pending {
    pub req: WriteRequest,
    pub key: String,
    pub fingerprint: String,
    /// True when the key is the caller's. A server-made key is new when the
    /// write enters the ledger, and a write is sent to the database again
    /// only after a definite rollback, so it can match no stored row.
    pub caller_key: bool,
    /// The request's span, parent of the batch's span (for traces).
    pub span: tracing::Span,
}

/// How a batch takes its users' row locks (PostgreSQL, MariaDB/MySQL;
/// SQLite's single writer lock is taken by `BEGIN IMMEDIATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// `FOR UPDATE SKIP LOCKED`: users whose row another transaction holds
    /// are skipped, not waited for.
    Skip,
    /// `FOR UPDATE` with the wait bounded by `LOCK_WAIT_SECS`, for a batch
    /// of one user that was skipped before.
    Wait,
}

/// How long a `LockMode::Wait` batch waits for a row lock before the
/// database gives up (then the writes fail with a retryable conflict).
pub const LOCK_WAIT_SECS: u32 = 2;

/// What became of one request of a batch (a short-lived value per request,
/// so its size does not matter).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// Its answer (applied, replayed or refused), final once the batch
    /// commits.
    Done(Result<WriteOutcome, LedgerError>),
    /// Its user's row was locked elsewhere: nothing was read or written for
    /// it; send it again.
    Skipped,
}

/// Applies `batch` inside the open transaction `db`. The outer `Err` means
/// the transaction must be rolled back (a database failure); each `Step` is
/// one request's own outcome.
pub async fn apply_batch<C: ConnectionTrait>(
    db: &C,
    batch: &[Pending],
    mode: LockMode,
    now: DateTime<Utc>,
    rules: HoldRules,
) -> Result<Vec<Step>, LedgerError> {
    let (accounts, skipped) = lock_accounts(db, batch, mode).await?;
    let locked: Vec<&Pending> = batch
        .iter()
        .filter(|p| !skipped.contains(&p.req.user_id))
        .collect();
    let found = lookup::lookup(db, &locked, &accounts, now).await?;
    let targets = refund_targets(db, &locked).await?;
    let users: HashSet<&str> = accounts.keys().map(String::as_str).collect();
    let target_ids: HashSet<&str> = targets.keys().map(String::as_str).collect();
    let loaded = lots::load(db, &users, &target_ids).await?;
    let mut state = BatchState::new(accounts, found.stored, targets, now);
    state.holds = found.holds;
    state.hold_rules = rules;
    state.lots = loaded.lots;
    state.stored_allocations = loaded.allocations;
    state.refunds_of = loaded.refunds_of;
    for user in users_of(&state) {
        state.expire_due(&user)?;
    }
    let mut steps = Vec::with_capacity(batch.len());
    for p in batch {
        if skipped.contains(&p.req.user_id) {
            steps.push(Step::Skipped);
            continue;
        }
        let result = state.step(p);
        // An internal error may leave the batch's state half-changed:
        // nothing of the batch is written, and its writes go one by one.
        if let Err(err @ LedgerError::Internal(_)) = result {
            return Err(err);
        }
        steps.push(Step::Done(result));
    }
    state.recompute_lot_expiry();
    // Alerts see every transaction of the batch, in order (`alerts.rs`).
    let mut alert_users: Vec<&str> = state
        .rows
        .iter()
        .map(|r| r.user_id.as_str())
        .filter(|u| state.accounts.get(*u).is_some_and(|a| a.alerts > 0))
        .collect();
    alert_users.sort_unstable();
    alert_users.dedup();
    let alert_writes = match alert_users.is_empty() {
        true => None,
        false => {
            let mut loaded = alerts::load(db, &alert_users).await?;
            Some(alerts::evaluate(&mut loaded, &state.rows))
        }
    };
    state.write(db).await?;
    if let Some(writes) = alert_writes {
        writes.write(db).await?;
    }
    Ok(steps)
}

/// The users whose rows the batch holds, in a stable order.
fn users_of(state: &BatchState) -> Vec<String> {
    let mut users: Vec<String> = state.accounts.keys().cloned().collect();
    users.sort();
    users
}

/// The state of one batch as its requests are applied in order: the locked
/// accounts, the stored originals of the batch's keys, the refund targets,
/// the holds it may touch, and what the batch has written so far.
pub struct BatchState {
    pub(super) accounts: HashMap<String, Account>,
    pub(super) stored: Stored,
    targets: HashMap<String, RefundTarget>,
    /// The batch's one instant: every rule and timestamp uses it.
    pub(super) now: DateTime<Utc>,
    /// Holds by id: every ACTIVE hold of a user whose holds the batch may
    /// close or expire, and every hold a request names.
    pub(super) holds: HashMap<String, credit_hold::Model>,
    pub(super) hold_rules: HoldRules,
    /// Keys applied earlier in this batch, with their fingerprints.
    in_batch: HashMap<(String, String), (String, WriteOutcome)>,
    pub(super) rows: Vec<ctx::Model>,
    pub(super) changed_accounts: HashSet<String>,
    /// Accounts whose hold columns changed (held, next expiry, count).
    pub(super) changed_hold_accounts: HashSet<String>,
    changed_targets: HashSet<String>,
    pub(super) new_holds: HashSet<String>,
    pub(super) changed_holds: HashSet<String>,
    /// Lots by id: every lot of the batch's users with credit left, and
    /// the lots its refunds' targets touched (`lots.rs`).
    pub(super) lots: HashMap<String, credit_lot::Model>,
    /// Stored allocations of refund targets and their earlier refunds.
    pub(super) stored_allocations: HashMap<String, Vec<credit_allocation::Model>>,
    pub(super) refunds_of: HashMap<String, Vec<String>>,
    /// Allocations of the transactions this batch writes.
    pub(super) allocations: Vec<credit_allocation::Model>,
    pub(super) new_lots: HashSet<String>,
    pub(super) changed_lots: HashSet<String>,
    pub(super) changed_lot_users: HashSet<String>,
}

impl BatchState {
    pub fn new(
        accounts: HashMap<String, Account>,
        stored: Stored,
        targets: HashMap<String, RefundTarget>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            accounts,
            stored,
            targets,
            now,
            holds: HashMap::new(),
            hold_rules: HoldRules::default(),
            in_batch: HashMap::new(),
            rows: Vec::new(),
            changed_accounts: HashSet::new(),
            changed_hold_accounts: HashSet::new(),
            changed_targets: HashSet::new(),
            new_holds: HashSet::new(),
            changed_holds: HashSet::new(),
            lots: HashMap::new(),
            stored_allocations: HashMap::new(),
            refunds_of: HashMap::new(),
            allocations: Vec::new(),
            new_lots: HashSet::new(),
            changed_lots: HashSet::new(),
            changed_lot_users: HashSet::new(),
        }
    }

    /// Applies one request against the state the requests before it left:
    /// a replay of its key, a refusal, or a new transaction or hold. A
    /// refusal changes nothing.
    pub fn step(&mut self, pending: &Pending) -> Result<WriteOutcome, LedgerError> {
        let req = &pending.req;
        if !self.accounts.contains_key(&req.user_id) {
            return Err(LedgerError::UserNotFound(req.user_id.clone()));
        }
        let lookup = (req.user_id.clone(), pending.key.clone());
        if let Some(outcome) = self.replay(&lookup, &pending.fingerprint)? {
            return Ok(outcome);
        }
        if let Some((fingerprint, outcome)) = self.in_batch.get(&lookup) {
            if *fingerprint != pending.fingerprint {
                return Err(LedgerError::IdempotencyKeyReused(pending.key.clone()));
            }
            return Ok(WriteOutcome {
                replayed: true,
                ..outcome.clone()
            });
        }
        let outcome = match &req.operation {
            Operation::Reserve { .. } => self.reserve(pending)?,
            Operation::Capture { .. } | Operation::Release { .. } => self.close_hold(pending)?,
            Operation::Settle => self.settle(&req.user_id),
            _ => self.change_balance(pending)?,
        };
        self.in_batch
            .insert(lookup, (pending.fingerprint.clone(), outcome.clone()));
        Ok(outcome)
    }

    /// A settle: the batch's first step (`expire_due`)
    /// already wrote down every expiry due for the user. A next lot expiry
    /// still due then (its lot's credit all earmarked) is recomputed, so a
    /// sweep does not find the same user due again for nothing.
    fn settle(&mut self, user: &str) -> WriteOutcome {
        let account = &self.accounts[user];
        if account.lots_expire_at.is_some_and(|at| at <= self.now) {
            self.changed_lot_users.insert(user.to_owned());
        }
        let account = &self.accounts[user];
        WriteOutcome {
            transaction: None,
            hold: None,
            lot: None,
            balance: account.balance,
            available: account.available(),
            replayed: false,
        }
    }

    /// A top-up, spend, grant or refund: one transaction.
    fn change_balance(&mut self, pending: &Pending) -> Result<WriteOutcome, LedgerError> {
        let req = &pending.req;
        let Some(account) = self.accounts.get_mut(&req.user_id) else {
            return Err(LedgerError::UserNotFound(req.user_id.clone()));
        };
        // Refused before anything changes (the ledger's clock decides).
        if let Operation::TopUp { lot, .. } | Operation::Grant { lot, .. } = &req.operation
            && lot.expire_time.is_some_and(|at| at <= self.now)
        {
            return Err(LedgerError::invalid("expire_time", "must be in the future"));
        }
        let change = rules::plan(&req.user_id, &req.operation, &self.targets)?;
        let (balance, sequence) = rules::apply(account, &change)?;
        if let Some((target, amount)) = &change.refund_of
            && let Some(t) = self.targets.get_mut(target)
        {
            t.refunded += amount;
            self.changed_targets.insert(target.clone());
        }
        self.changed_accounts.insert(req.user_id.clone());

        let mut transaction = Transaction {
            id: Uuid::now_v7().to_string(),
            user_id: req.user_id.clone(),
            kind: change.kind,
            amount: change.delta,
            running_balance: balance,
            sequence,
            idempotency_key: pending.key.clone(),
            usage: change.usage,
            reason: change.reason,
            metadata: req.metadata.clone(),
            refunded_transaction_id: change.refund_of.map(|(target, _)| target),
            refunded_amount: 0,
            created_at: self.now,
            created_by: Some(req.actor.name.clone()),
            created_by_subject: req.actor.certificate_subject.clone(),
            hold_id: None,
            allocations: Vec::new(),
        };
        let user = req.user_id.as_str();
        let mut lot = None;
        transaction.allocations = match (&req.operation, &transaction.refunded_transaction_id) {
            (Operation::TopUp { amount, lot: terms }, _) => {
                let (made, allocations) =
                    self.add_lot(user, &transaction.id, TxKind::TopUp, *amount, *terms)?;
                lot = Some(made);
                allocations
            }
            (
                Operation::Grant {
                    amount, lot: terms, ..
                },
                _,
            ) => {
                let (made, allocations) =
                    self.add_lot(user, &transaction.id, TxKind::Grant, *amount, *terms)?;
                lot = Some(made);
                allocations
            }
            (Operation::Refund { .. }, Some(target)) => {
                let kind = self
                    .targets
                    .get(target)
                    .and_then(|t| TxKind::parse(&t.row.r#type));
                match kind {
                    Some(TxKind::Usage) => self.return_to_lots(user, target, transaction.amount)?,
                    // Taking back a top-up or grant starts with its own lot;
                    // only a top-up may leave a deficit (`rules::apply`).
                    kind => {
                        let first = self.lot_of(target);
                        let top_up = kind == Some(TxKind::TopUp);
                        self.draw(user, -transaction.amount, first.as_deref(), top_up)?
                    }
                }
            }
            _ => self.draw(user, -transaction.amount, None, false)?,
        };
        self.record_allocations(&transaction, &transaction.allocations.clone());
        self.rows
            .push(to_row(&transaction, pending.fingerprint.clone()));
        self.expire_lots(user)?;
        // What the batch's expiry may have taken since is in the answer.
        let account = &self.accounts[user];
        let (balance, available) = (account.balance, account.available());
        let lot = lot.map(|l| lots::to_lot(&l, self.now)).transpose()?;
        Ok(WriteOutcome {
            transaction: Some(transaction),
            hold: None,
            lot,
            balance,
            available,
            replayed: false,
        })
    }

    /// The original answer when the key was used before: a closing capture
    /// or release, a reserve, or a transaction, in that order (a capture's
    /// transaction carries its key too). `IdempotencyKeyReused` when the
    /// parameters differ.
    fn replay(
        &self,
        lookup: &(String, String),
        fingerprint: &str,
    ) -> Result<Option<WriteOutcome>, LedgerError> {
        let reused = || LedgerError::IdempotencyKeyReused(lookup.1.clone());
        if let Some(hold) = self.stored.closes.get(lookup) {
            if hold.close_fingerprint.as_deref() != Some(fingerprint) {
                return Err(reused());
            }
            let transaction = self
                .stored
                .transactions
                .get(lookup)
                .map(|t| Transaction::try_from(t.clone()))
                .transpose()?;
            return Ok(Some(WriteOutcome {
                transaction,
                // Closed holds never change again: as it is now is as it was.
                hold: Some(holds::to_hold(hold, self.now)?),
                lot: None,
                balance: hold.close_balance.unwrap_or_default(),
                available: hold.close_available.unwrap_or_default(),
                replayed: true,
            }));
        }
        if let Some(hold) = self.stored.reserves.get(lookup) {
            if hold.fingerprint != fingerprint {
                return Err(reused());
            }
            return Ok(Some(WriteOutcome {
                transaction: None,
                hold: Some(holds::as_reserved(hold)?),
                lot: None,
                balance: hold.reserve_balance,
                available: hold.reserve_available,
                replayed: true,
            }));
        }
        match self.stored.transactions.get(lookup) {
            Some(original) => replay(original, fingerprint, &lookup.1).map(Some),
            None => Ok(None),
        }
    }

    /// Writes what the batch changed: balances, refunded totals, holds, log
    /// rows.
    async fn write<C: ConnectionTrait>(self, db: &C) -> Result<(), LedgerError> {
        holds::write(db, &self).await?;
        let changed: Vec<(&String, &Account)> = self
            .accounts
            .iter()
            .filter(|(user, _)| {
                self.changed_accounts.contains(*user) || self.changed_hold_accounts.contains(*user)
            })
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let with_holds = !self.changed_hold_accounts.is_empty();
        write_accounts(db, &changed, self.now, with_holds).await?;
        let refunded: Vec<(&String, i64)> = self
            .targets
            .iter()
            .filter(|(id, _)| self.changed_targets.contains(*id))
            .map(|(id, t)| (id, t.refunded))
            .collect();
        write_refunded(db, &refunded).await?;
        lots::write(db, &self).await?;
        if !self.rows.is_empty() {
            ctx::Entity::insert_many(
                self.rows
                    .into_iter()
                    .map(IntoActiveModel::into_active_model),
            )
            .exec_without_returning(db)
            .await?;
        }
        Ok(())
    }
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
        // Not recorded for plain transactions (their answers carry none).
        available: transaction.running_balance,
        transaction: Some(transaction),
        hold: None,
        lot: None,
        replayed: true,
    })
}

/// Locks the balance rows of every user in the batch, in user-id order.
/// Returns the locked accounts and the users skipped because another
/// transaction holds their row (`LockMode::Skip`); a user in neither does
/// not exist.
async fn lock_accounts<C: ConnectionTrait>(
    db: &C,
    batch: &[Pending],
    mode: LockMode,
) -> Result<(HashMap<String, Account>, HashSet<String>), LedgerError> {
    let users: HashSet<&str> = batch.iter().map(|p| p.req.user_id.as_str()).collect();
    let backend = db.get_database_backend();
    let select = user_balance::Entity::find()
        .filter(user_balance::Column::UserId.is_in(users.iter().copied()))
        .order_by_asc(user_balance::Column::UserId);
    let rows = match (backend, mode) {
        // BEGIN IMMEDIATE already holds the only write lock.
        (DbBackend::Sqlite, _) => select.all(db).await?,
        (_, LockMode::Skip) => {
            select
                .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                .all(db)
                .await?
        }
        (_, LockMode::Wait) => {
            bound_lock_wait(db, Some(LOCK_WAIT_SECS)).await?;
            let rows = select.lock_exclusive().all(db).await;
            bound_lock_wait(db, None).await?;
            rows?
        }
    };
    let accounts: HashMap<String, Account> = rows
        .into_iter()
        .map(|r| {
            let account = Account {
                balance: r.balance,
                last_sequence: r.last_sequence,
                held: r.held,
                holds_expire_at: r.holds_expire_at,
                hold_count: r.hold_count,
                promotional: r.promotional,
                deficit: r.deficit,
                lots_expire_at: r.lots_expire_at,
                alerts: r.alert_count,
            };
            (r.user_id, account)
        })
        .collect();
    let missing: Vec<&str> = users
        .into_iter()
        .filter(|u| !accounts.contains_key(*u))
        .collect();
    if missing.is_empty() || backend == DbBackend::Sqlite || mode == LockMode::Wait {
        return Ok((accounts, HashSet::new()));
    }
    // Users are never deleted, so a row that exists but was not returned is
    // held by another transaction.
    let skipped = user_balance::Entity::find()
        .select_only()
        .column(user_balance::Column::UserId)
        .filter(user_balance::Column::UserId.is_in(missing))
        .into_tuple::<String>()
        .all(db)
        .await?
        .into_iter()
        .collect();
    Ok((accounts, skipped))
}

/// Bounds (or, with `None`, restores) how long the next lock waits.
/// PostgreSQL: `SET LOCAL`, gone at commit. MySQL: a session setting, so it
/// is put back right after the locking statement.
async fn bound_lock_wait<C: ConnectionTrait>(
    db: &C,
    seconds: Option<u32>,
) -> Result<(), LedgerError> {
    let backend = db.get_database_backend();
    let sql = match (backend, seconds) {
        (DbBackend::Postgres, Some(s)) => format!("SET LOCAL lock_timeout = '{s}s'"),
        (DbBackend::Postgres, None) => return Ok(()),
        (DbBackend::MySql, Some(s)) => format!("SET SESSION innodb_lock_wait_timeout = {s}"),
        (DbBackend::MySql, None) => {
            "SET SESSION innodb_lock_wait_timeout = @@GLOBAL.innodb_lock_wait_timeout".to_owned()
        }
        _ => return Ok(()),
    };
    db.execute_raw(Statement::from_string(backend, sql)).await?;
    Ok(())
}

/// The transactions the batch's refunds point at (read under the owners'
/// row locks, so their refunded totals are current).
async fn refund_targets<C: ConnectionTrait>(
    db: &C,
    batch: &[&Pending],
) -> Result<HashMap<String, RefundTarget>, LedgerError> {
    let ids: HashSet<&str> = batch
        .iter()
        .filter_map(|p| match &p.req.operation {
            Operation::Refund { transaction_id, .. } => Some(transaction_id.as_str()),
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

/// One UPDATE for every changed balance row (a CASE per column); the hold
/// columns only when the batch changed some.
async fn write_accounts<C: ConnectionTrait>(
    db: &C,
    changed: &[(&String, &Account)],
    updated_at: chrono::DateTime<chrono::Utc>,
    with_holds: bool,
) -> Result<(), LedgerError> {
    use user_balance::Column as C;
    let case = |value: fn(&Account) -> sea_orm::Value, column: C| {
        changed
            .iter()
            .fold(CaseStatement::new(), |case, (user, account)| {
                case.case(C::UserId.eq(user.as_str()), Expr::val(value(account)))
            })
            .finally(Expr::col(column))
    };
    let mut update = user_balance::Entity::update_many()
        .col_expr(C::Balance, case(|a| a.balance.into(), C::Balance).into())
        .col_expr(
            C::LastSequence,
            case(|a| a.last_sequence.into(), C::LastSequence).into(),
        )
        .col_expr(C::UpdatedAt, Expr::value(updated_at))
        .col_expr(
            C::Promotional,
            case(|a| a.promotional.into(), C::Promotional).into(),
        )
        .col_expr(C::Deficit, case(|a| a.deficit.into(), C::Deficit).into())
        .col_expr(
            C::LotsExpireAt,
            case(|a| a.lots_expire_at.into(), C::LotsExpireAt).into(),
        );
    if with_holds {
        update = update
            .col_expr(C::Held, case(|a| a.held.into(), C::Held).into())
            .col_expr(
                C::HoldsExpireAt,
                case(|a| a.holds_expire_at.into(), C::HoldsExpireAt).into(),
            )
            .col_expr(
                C::HoldCount,
                case(|a| a.hold_count.into(), C::HoldCount).into(),
            );
    }
    let result = update
        .filter(C::UserId.is_in(changed.iter().map(|(u, _)| u.as_str())))
        .exec(db)
        .await?;
    if result.rows_affected != changed.len() as u64 {
        return Err(LedgerError::Internal(format!(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::fingerprint::fingerprint;
    use crate::ledger::model::{Actor, Expiry, HoldState, Usage};
    use chrono::TimeDelta;

    fn pending(user: &str, key: Option<&str>, operation: Operation) -> Pending {
        let req = WriteRequest {
            user_id: user.into(),
            idempotency_key: key.map(str::to_owned),
            operation,
            metadata: None,
            actor: Actor {
                name: "billing".into(),
                certificate_subject: None,
            },
        };
        Pending {
            fingerprint: fingerprint(&req),
            key: key.map_or_else(|| format!("server-{}", Uuid::new_v4()), str::to_owned),
            caller_key: key.is_some(),
            req,
            span: tracing::Span::none(),
        }
    }

    fn spend(amount: i64) -> Operation {
        Operation::Spend {
            amount,
            usage: Usage::default(),
        }
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn state(balances: &[(&str, i64)], now: DateTime<Utc>) -> BatchState {
        let accounts = balances
            .iter()
            .map(|(u, b)| {
                let account = Account {
                    balance: *b,
                    last_sequence: 3,
                    ..Account::default()
                };
                ((*u).to_owned(), account)
            })
            .collect();
        let mut state = BatchState::new(accounts, Stored::default(), HashMap::new(), now);
        // Each balance in one lot, as the migration leaves a balance.
        for (u, b) in balances.iter().filter(|(_, b)| *b > 0) {
            let lot = credit_lot::Model {
                id: format!("lot-{u}"),
                user_id: (*u).to_owned(),
                category: "PAID".into(),
                priority: 100,
                granted_amount: *b,
                remaining: *b,
                held: 0,
                returned_amount: 0,
                expired_amount: 0,
                expire_time: None,
                source_transaction_id: None,
                created_at: now,
            };
            state.lots.insert(lot.id.clone(), lot);
        }
        state
    }

    /// Each request sees the balance the ones before it left; a refusal
    /// changes nothing and does not stop the others; sequences and running
    /// balances chain; a key repeated in the batch replays, or is refused
    /// when its parameters differ.
    #[test]
    fn each_request_keeps_its_own_rules_inside_a_batch() {
        let mut s = state(&[("a", 10), ("b", 0)], at(0));
        let first = s.step(&pending("a", Some("k1"), spend(6))).unwrap();
        let tx = first.transaction.clone().unwrap();
        assert_eq!((first.balance, tx.sequence), (4, 4));
        assert_eq!(tx.created_by.as_deref(), Some("billing"));
        let refused = s.step(&pending("a", None, spend(5)));
        assert!(matches!(
            refused,
            Err(LedgerError::InsufficientBalance {
                available: 4,
                requested: 5
            })
        ));
        let second = s.step(&pending("a", None, spend(4))).unwrap();
        assert_eq!(
            (second.balance, second.transaction.unwrap().sequence),
            (0, 5)
        );
        let replay = s.step(&pending("a", Some("k1"), spend(6))).unwrap();
        assert!(replay.replayed);
        assert_eq!(replay.transaction.unwrap().id, tx.id);
        assert!(matches!(
            s.step(&pending("a", Some("k1"), spend(7))),
            Err(LedgerError::IdempotencyKeyReused(_))
        ));
        // The same key for another user is another key.
        let other = s.step(&pending(
            "b",
            Some("k1"),
            Operation::TopUp {
                amount: 2,
                lot: Default::default(),
            },
        ));
        assert_eq!(other.unwrap().transaction.unwrap().sequence, 4);
        assert!(matches!(
            s.step(&pending("nobody", None, spend(1))),
            Err(LedgerError::UserNotFound(_))
        ));
        assert_eq!(s.rows.len(), 3, "three transactions were applied");
        assert_eq!(s.changed_accounts.len(), 2);
    }

    fn reserve(amount: i64, ttl_secs: i64) -> Operation {
        Operation::Reserve {
            amount,
            expiry: Expiry::Ttl(TimeDelta::seconds(ttl_secs)),
            usage: Usage::default(),
        }
    }

    fn capture(hold: &str, amount: i64) -> Operation {
        Operation::Capture {
            hold_id: hold.into(),
            amount,
            usage: None,
        }
    }

    /// Holds take from the available balance only; a spend sees what holds
    /// leave; a capture settles once, for less, more (from what is
    /// available) or nothing; every close after the first is refused.
    #[test]
    fn holds_take_from_the_available_balance_and_close_once() {
        let mut s = state(&[("a", 500)], at(0));
        let mut holds = Vec::new();
        for i in 0..10 {
            match s.step(&pending("a", Some(&format!("r{i}")), reserve(100, 60))) {
                Ok(o) => holds.push(o.hold.unwrap().id),
                Err(LedgerError::InsufficientBalance {
                    available: 0,
                    requested: 100,
                }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(holds.len(), 5, "exactly five reserves of 100 fit in 500");
        assert!(matches!(
            s.step(&pending("a", None, spend(1))),
            Err(LedgerError::InsufficientBalance { available: 0, .. })
        ));
        // Capture for less: the rest is released.
        let less = s
            .step(&pending("a", Some("c0"), capture(&holds[0], 30)))
            .unwrap();
        assert_eq!((less.balance, less.available), (470, 70));
        let tx = less.transaction.unwrap();
        assert_eq!(
            (tx.amount, tx.hold_id.as_deref()),
            (-30, Some(holds[0].as_str()))
        );
        assert_eq!(less.hold.unwrap().state, HoldState::Captured);
        // Capture for more: the excess comes from what is available.
        let more = s
            .step(&pending("a", None, capture(&holds[1], 170)))
            .unwrap();
        assert_eq!((more.balance, more.available), (300, 0));
        // More than hold + available: refused, the hold stays active.
        assert!(matches!(
            s.step(&pending("a", None, capture(&holds[2], 101))),
            Err(LedgerError::InsufficientBalance {
                available: 100,
                requested: 101
            })
        ));
        // Capture of 0 releases; release releases.
        let zero = s.step(&pending("a", None, capture(&holds[2], 0))).unwrap();
        assert!(zero.transaction.is_none());
        assert_eq!(zero.hold.unwrap().state, HoldState::Released);
        let released = s
            .step(&pending(
                "a",
                None,
                Operation::Release {
                    hold_id: holds[3].clone(),
                    reason: None,
                },
            ))
            .unwrap();
        assert_eq!(released.available, 200);
        // Closed once.
        for (hold, op) in [
            (&holds[0], capture(&holds[0], 1)),
            (&holds[3], capture(&holds[3], 1)),
        ] {
            assert!(
                matches!(
                    s.step(&pending("a", None, op)),
                    Err(LedgerError::HoldNotActive { .. })
                ),
                "{hold} closed twice"
            );
        }
        // A retry of the first capture replays it.
        let again = s
            .step(&pending("a", Some("c0"), capture(&holds[0], 30)))
            .unwrap();
        assert!(again.replayed);
        assert!(matches!(
            s.step(&pending(
                "a",
                None,
                capture("00000000-0000-0000-0000-000000000000", 1)
            )),
            Err(LedgerError::HoldNotFound { .. })
        ));
        let account = &s.accounts["a"];
        assert_eq!((account.balance, account.held), (300, 100));
    }

    /// Expiry is exact: at `expire_time` a hold no longer holds and cannot
    /// be captured, and the batch writes its expiry down first.
    #[test]
    fn holds_expire_at_their_expire_time() {
        let mut s = state(&[("a", 100)], at(0));
        let hold = s
            .step(&pending("a", None, reserve(80, 10)))
            .unwrap()
            .hold
            .unwrap();
        assert_eq!(hold.expire_time, at(10));
        let row = s.holds[&hold.id].clone();
        let account = s.accounts["a"].clone();
        assert_eq!((account.held, account.holds_expire_at), (80, Some(at(10))));
        for (now, expired) in [(at(9), false), (at(10), true), (at(11), true)] {
            let accounts = HashMap::from([("a".to_owned(), account.clone())]);
            let mut later = BatchState::new(accounts, Stored::default(), HashMap::new(), now);
            later.holds = HashMap::from([(row.id.clone(), row.clone())]);
            later.lots = s.lots.clone();
            later.expire_due("a").unwrap();
            let result = later.step(&pending("a", None, capture(&hold.id, 10)));
            if expired {
                assert!(
                    matches!(result, Err(LedgerError::HoldExpired { .. })),
                    "{now}"
                );
                assert_eq!(later.accounts["a"].held, 0);
                assert_eq!(later.accounts["a"].holds_expire_at, None);
                assert_eq!(later.holds[&row.id].state, "EXPIRED");
                assert_eq!(later.holds[&row.id].closed_at, Some(at(10)));
            } else {
                assert_eq!(result.unwrap().balance, 90, "{now}");
            }
        }
        // A TTL beyond the maximum is refused.
        assert!(matches!(
            s.step(&pending("a", None, reserve(1, 8 * 24 * 3600))),
            Err(LedgerError::InvalidArgument(_))
        ));
    }

    /// Expiries are written down in the order they happened, dated when
    /// the credit stopped being spendable: a lot's own credit at its
    /// expire_time; what a hold that outlived its lot gave back, at the
    /// hold's expire_time; what a hold gave back before its lot expired,
    /// with the lot, in one transaction.
    #[test]
    fn expiries_are_dated_when_the_credit_stopped_being_spendable() {
        let grant = |amount, expires| Operation::Grant {
            amount,
            reason: None,
            lot: crate::ledger::model::LotTerms {
                expire_time: Some(expires),
                ..Default::default()
            },
        };
        /// (amount, created_at) of the EXPIRATIONs a batch writes.
        type Expirations = Vec<(i64, DateTime<Utc>)>;
        // (lot expiry, hold ttl, when the next write comes, EXPIRATIONs)
        let cases: [(i64, i64, i64, Expirations); 4] = [
            (10, 20, 30, vec![(-10, at(10)), (-20, at(20))]),
            (20, 10, 30, vec![(-30, at(20))]),
            (20, 10, 15, vec![]),
            (10, 10, 30, vec![(-30, at(10))]),
        ];
        for (lot_expiry, ttl, next_write, want) in cases {
            let mut s = state(&[("a", 0)], at(0));
            s.step(&pending("a", None, grant(30, at(lot_expiry))))
                .unwrap();
            s.step(&pending("a", None, reserve(20, ttl))).unwrap();
            let mut later = BatchState::new(
                s.accounts.clone(),
                Stored::default(),
                HashMap::new(),
                at(next_write),
            );
            later.holds = s.holds.clone();
            later.lots = s.lots.clone();
            later.expire_due("a").unwrap();
            let got: Vec<(i64, DateTime<Utc>)> = later
                .rows
                .iter()
                .map(|r| (r.amount, r.created_at))
                .collect();
            assert_eq!(
                got, want,
                "lot at {lot_expiry}, hold ttl {ttl}, write at {next_write}"
            );
            let account = &later.accounts["a"];
            let left = 30 + want.iter().map(|(n, _)| n).sum::<i64>();
            assert_eq!((account.balance, account.held), (left, 0));
            // Sequences chain in the order the expiries were written.
            for (i, r) in later.rows.iter().enumerate() {
                assert_eq!(r.sequence, 5 + i as i64, "{r:?}");
            }
        }
    }
}
