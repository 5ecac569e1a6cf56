//! Lots: every credit that comes in (a top-up, a grant, a migrated legacy
//! balance) is a lot with a category, a draw priority and maybe an expiry;
//! every transaction records which lots it changed (`credit_allocation`).
//! Everything here runs inside a write batch, under the per-user row lock
//! (`batch.rs`), so the argument there carries over. What keeps it right:
//!
//! - `balance == sum(remaining of the user's lots) - deficit`, written in
//!   the same transaction as every change: each balance change goes through
//!   `adjust` (one lot) or the deficit, by exactly its amount, and each is
//!   recorded as an allocation of its transaction (so a transaction's
//!   allocations add up to its amount, and a lot's history explains it).
//! - The draw order is fixed: priority, then soonest expiry (never-expiring
//!   last), then oldest, then id (`draw_order`). Spends, the excess of a
//!   capture and top-up refunds take only unearmarked credit of unexpired
//!   lots (`remaining - held`); a reserve earmarks it (`held`), a capture
//!   spends its earmarks, a release or hold expiry gives them back.
//! - Expiry needs no job: the batch loads every lot of its users with
//!   credit left, and first writes down what time did since each user's
//!   last write, in the order it happened (`expire_due`): an EXPIRATION
//!   transaction for each lot past its expire_time with unearmarked credit
//!   left, dated when that credit stopped being spendable (the lot's
//!   expire_time, or the expire_time of a hold that outlived the lot), so
//!   no rule ever sees expired credit as spendable. Earmarked credit stays
//!   until its hold ends, then expires at once if its lot has. Reads
//!   subtract what a write has not yet written down (`balance_reads.rs`),
//!   and the sweeper writes it down for users nobody writes to
//!   (`sweeper.rs`).
//! - A deficit exists only after a TOP_UP refund took more than the lots
//!   had (the documented case where a balance may go below zero); the next
//!   credit pays it back before it fills its lot.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{CaseStatement, Expr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::batch::BatchState;
use super::error::LedgerError;
use super::model::{Allocation, Lot, LotCategory, LotTerms, Transaction, TxKind};
use super::rows::to_row;
use crate::entity::{credit_allocation as alloc, credit_lot as lots, credit_transaction as ctx};

/// Default priorities: grants are drawn before top-ups.
pub const TOP_UP_PRIORITY: i32 = 100;
pub const GRANT_PRIORITY: i32 = 50;

/// Credits a hold earmarked in one lot (stored as JSON on the hold).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Earmark {
    pub lot_id: String,
    pub amount: i64,
}

/// Parses a hold's stored earmarks (none for a hold from before lots).
pub fn earmarks_of(json: Option<&str>) -> Result<Vec<Earmark>, LedgerError> {
    json.map(serde_json::from_str)
        .transpose()
        .map_err(|e| LedgerError::Internal(format!("hold earmarks: {e}")))
        .map(Option::unwrap_or_default)
}

/// The stored form of earmarks.
pub fn earmarks_json(earmarks: &[Earmark]) -> String {
    serde_json::to_string(earmarks).unwrap_or_else(|_| "[]".to_owned())
}

/// What the lots of a batch's users look like when the batch starts: every
/// lot with credit left, the lots its refunds' targets touched, and those
/// targets' allocations (with those of earlier refunds of them).
#[derive(Debug, Default)]
pub struct Loaded {
    pub lots: HashMap<String, lots::Model>,
    /// Allocations by transaction id, in position order.
    pub allocations: HashMap<String, Vec<alloc::Model>>,
    /// Earlier refunds of each refund target, by target id.
    pub refunds_of: HashMap<String, Vec<String>>,
}

/// Loads, under the batch's locks, what `users`' writes and the refunds of
/// `targets` need.
pub async fn load<C: ConnectionTrait>(
    db: &C,
    users: &HashSet<&str>,
    targets: &HashSet<&str>,
) -> Result<Loaded, LedgerError> {
    let mut loaded = Loaded::default();
    if users.is_empty() {
        return Ok(loaded);
    }
    for lot in lots::Entity::find()
        .filter(lots::Column::UserId.is_in(users.iter().copied()))
        .filter(lots::Column::Remaining.gt(0))
        .all(db)
        .await?
    {
        loaded.lots.insert(lot.id.clone(), lot);
    }
    if targets.is_empty() {
        return Ok(loaded);
    }
    let refunds: Vec<(String, Option<String>)> = ctx::Entity::find()
        .filter(ctx::Column::RefundedTransactionId.is_in(targets.iter().copied()))
        .all(db)
        .await?
        .into_iter()
        .map(|t| (t.id, t.refunded_transaction_id))
        .collect();
    let mut ids: Vec<String> = targets.iter().map(|t| (*t).to_owned()).collect();
    for (id, target) in refunds {
        if let Some(target) = target {
            loaded
                .refunds_of
                .entry(target)
                .or_default()
                .push(id.clone());
        }
        ids.push(id);
    }
    let rows = alloc::Entity::find()
        .filter(alloc::Column::TransactionId.is_in(ids))
        .order_by_asc(alloc::Column::Position)
        .all(db)
        .await?;
    let missing: HashSet<String> = rows
        .iter()
        .filter_map(|a| a.lot_id.clone())
        .filter(|id| !loaded.lots.contains_key(id))
        .collect();
    for row in rows {
        loaded
            .allocations
            .entry(row.transaction_id.clone())
            .or_default()
            .push(row);
    }
    if !missing.is_empty() {
        for lot in lots::Entity::find()
            .filter(lots::Column::Id.is_in(missing))
            .all(db)
            .await?
        {
            loaded.lots.insert(lot.id.clone(), lot);
        }
    }
    Ok(loaded)
}

/// The draw order: priority, soonest expiry (never last), oldest, id.
fn draw_order(lot: &lots::Model) -> (i32, bool, Option<DateTime<Utc>>, DateTime<Utc>, String) {
    (
        lot.priority,
        lot.expire_time.is_none(),
        lot.expire_time,
        lot.created_at,
        lot.id.clone(),
    )
}

/// A lot's credit that may be drawn or earmarked at `now`.
fn drawable(lot: &lots::Model, now: DateTime<Utc>) -> i64 {
    if lot.expire_time.is_some_and(|at| at <= now) {
        return 0;
    }
    lot.remaining - lot.held
}

impl BatchState {
    /// `user`'s lots that may be drawn now, in draw order.
    fn drawable_lots(&self, user: &str) -> Vec<String> {
        let mut candidates: Vec<&lots::Model> = self
            .lots
            .values()
            .filter(|l| l.user_id == user && drawable(l, self.now) > 0)
            .collect();
        candidates.sort_by_key(|l| draw_order(l));
        candidates.into_iter().map(|l| l.id.clone()).collect()
    }

    /// Changes lot `id`'s remaining credits by `delta` (and the user's
    /// promotional part with it).
    fn adjust(&mut self, id: &str, delta: i64) -> Result<(), LedgerError> {
        let lot = self
            .lots
            .get_mut(id)
            .ok_or_else(|| LedgerError::Internal(format!("lot {id} was not loaded")))?;
        lot.remaining = lot
            .remaining
            .checked_add(delta)
            .ok_or(LedgerError::BalanceOverflow {
                balance: lot.remaining,
                delta,
            })?;
        if lot.category == LotCategory::Promotional.as_str()
            && let Some(account) = self.accounts.get_mut(&lot.user_id)
        {
            account.promotional += delta;
        }
        let user = lot.user_id.clone();
        self.changed_lots.insert(id.to_owned());
        self.changed_lot_users.insert(user);
        Ok(())
    }

    /// Changes `user`'s deficit by `delta`.
    fn adjust_deficit(&mut self, user: &str, delta: i64) {
        if let Some(account) = self.accounts.get_mut(user) {
            account.deficit += delta;
        }
        self.changed_lot_users.insert(user.to_owned());
    }

    /// Takes `amount` unearmarked credits from `user`'s lots in draw order,
    /// `first` before the others (a refunded top-up's own lot). What the
    /// lots cannot give becomes deficit when `allow_deficit`; otherwise it
    /// is an error (the balance rules let no such take through).
    pub(super) fn draw(
        &mut self,
        user: &str,
        amount: i64,
        first: Option<&str>,
        allow_deficit: bool,
    ) -> Result<Vec<Allocation>, LedgerError> {
        let mut order = self.drawable_lots(user);
        if let Some(first) = first
            && let Some(at) = order.iter().position(|id| id == first)
        {
            let id = order.remove(at);
            order.insert(0, id);
        }
        let mut left = amount;
        let mut allocations = Vec::new();
        for id in order {
            if left == 0 {
                break;
            }
            let take = drawable(&self.lots[&id], self.now).min(left);
            self.adjust(&id, -take)?;
            allocations.push(Allocation {
                lot_id: Some(id),
                amount: -take,
            });
            left -= take;
        }
        if left > 0 {
            if !allow_deficit {
                return Err(LedgerError::Internal(format!(
                    "the lots of {user} hold {} credits fewer than the balance allows",
                    left
                )));
            }
            self.adjust_deficit(user, left);
            allocations.push(Allocation {
                lot_id: None,
                amount: -left,
            });
        }
        Ok(allocations)
    }

    /// Earmarks `amount` unearmarked credits of `user`'s lots, in draw
    /// order, for a hold.
    pub(super) fn earmark(&mut self, user: &str, amount: i64) -> Vec<Earmark> {
        let mut left = amount;
        let mut earmarks = Vec::new();
        for id in self.drawable_lots(user) {
            if left == 0 {
                break;
            }
            let lot = self.lots.get_mut(&id).expect("a drawable lot is loaded");
            let take = drawable(lot, self.now).min(left);
            lot.held += take;
            left -= take;
            self.changed_lots.insert(id.clone());
            earmarks.push(Earmark {
                lot_id: id,
                amount: take,
            });
        }
        self.changed_lot_users.insert(user.to_owned());
        earmarks
    }

    /// Ends a hold's earmarks: the first `spend` credits of them are spent
    /// (allocations of the capture), the rest go back to their lots (and
    /// expire at once where the lot has: `expire_lots`). Returns the spent
    /// allocations and what the earmarks could not cover of `spend`.
    pub(super) fn end_earmarks(
        &mut self,
        user: &str,
        earmarks: &[Earmark],
        spend: i64,
    ) -> Result<(Vec<Allocation>, i64), LedgerError> {
        let mut left = spend;
        let mut allocations = Vec::new();
        for earmark in earmarks {
            let Some(lot) = self.lots.get_mut(&earmark.lot_id) else {
                return Err(LedgerError::Internal(format!(
                    "earmarked lot {} was not loaded",
                    earmark.lot_id
                )));
            };
            lot.held -= earmark.amount;
            self.changed_lots.insert(earmark.lot_id.clone());
            let used = earmark.amount.min(left);
            if used > 0 {
                self.adjust(&earmark.lot_id, -used)?;
                allocations.push(Allocation {
                    lot_id: Some(earmark.lot_id.clone()),
                    amount: -used,
                });
                left -= used;
            }
        }
        self.changed_lot_users.insert(user.to_owned());
        Ok((allocations, left))
    }

    /// A new lot for a TOP_UP or GRANT of `amount`: it first pays back any
    /// deficit, then holds the rest.
    pub(super) fn add_lot(
        &mut self,
        user: &str,
        transaction_id: &str,
        kind: TxKind,
        amount: i64,
        terms: LotTerms,
    ) -> Result<(lots::Model, Vec<Allocation>), LedgerError> {
        let (default_category, default_priority) = match kind {
            TxKind::Grant => (LotCategory::Promotional, GRANT_PRIORITY),
            _ => (LotCategory::Paid, TOP_UP_PRIORITY),
        };
        let deficit = self.accounts.get(user).map_or(0, |a| a.deficit);
        let settled = deficit.min(amount);
        let mut allocations = Vec::new();
        if settled > 0 {
            self.adjust_deficit(user, -settled);
            allocations.push(Allocation {
                lot_id: None,
                amount: settled,
            });
        }
        let lot = lots::Model {
            id: Uuid::now_v7().to_string(),
            user_id: user.to_owned(),
            category: terms
                .category
                .unwrap_or(default_category)
                .as_str()
                .to_owned(),
            priority: terms.priority.unwrap_or(default_priority),
            granted_amount: amount,
            remaining: 0,
            held: 0,
            returned_amount: 0,
            expired_amount: 0,
            expire_time: terms.expire_time,
            source_transaction_id: Some(transaction_id.to_owned()),
            created_at: self.now,
        };
        let id = lot.id.clone();
        self.lots.insert(id.clone(), lot);
        self.new_lots.insert(id.clone());
        self.adjust(&id, amount - settled)?;
        // A credit that went wholly to the deficit leaves its lot empty and
        // records no allocation of 0 to it.
        if amount > settled {
            allocations.push(Allocation {
                lot_id: Some(id.clone()),
                amount: amount - settled,
            });
        }
        Ok((self.lots[&id].clone(), allocations))
    }

    /// Puts `amount` refunded credits of the USAGE transaction `target`
    /// back where it took them, the last-drawn first, less what earlier
    /// refunds of it put back.
    pub(super) fn return_to_lots(
        &mut self,
        user: &str,
        target: &str,
        amount: i64,
    ) -> Result<Vec<Allocation>, LedgerError> {
        // Per lot (None: the deficit): what the target took, less what
        // refunds returned (earlier ones, and this batch's).
        let mut returnable: Vec<(Option<String>, i64)> = Vec::new();
        for a in self.loaded_allocations(target) {
            match returnable.iter_mut().find(|(lot, _)| *lot == a.lot_id) {
                Some((_, n)) => *n -= a.amount,
                None => returnable.push((a.lot_id.clone(), -a.amount)),
            }
        }
        let refunds: Vec<String> = self.refunds_of.get(target).cloned().unwrap_or_default();
        for refund in refunds {
            for a in self.loaded_allocations(&refund) {
                if let Some((_, n)) = returnable.iter_mut().find(|(lot, _)| *lot == a.lot_id) {
                    *n -= a.amount;
                }
            }
        }
        let mut left = amount;
        let mut allocations = Vec::new();
        for (lot, n) in returnable.into_iter().rev() {
            let give = n.min(left);
            if give <= 0 {
                continue;
            }
            match &lot {
                Some(id) => {
                    self.adjust(id, give)?;
                    if let Some(l) = self.lots.get_mut(id) {
                        l.returned_amount += give;
                    }
                }
                None => self.adjust_deficit(user, -give),
            }
            allocations.push(Allocation {
                lot_id: lot,
                amount: give,
            });
            left -= give;
        }
        if left > 0 {
            // A transaction from before lots: its credits go to a new PAID
            // lot (they were paid for, and have no lot to go back to).
            let (_, more) = self.add_lot(user, target, TxKind::TopUp, left, LotTerms::default())?;
            allocations.extend(more);
        }
        Ok(allocations)
    }

    /// The lot a TOP_UP or GRANT made (none for one from before lots).
    pub(super) fn lot_of(&self, source: &str) -> Option<String> {
        self.loaded_allocations(source)
            .iter()
            .find_map(|a| a.lot_id.clone())
    }

    /// A transaction's allocations, as loaded or written by this batch.
    fn loaded_allocations(&self, transaction: &str) -> Vec<alloc::Model> {
        let mut all: Vec<alloc::Model> = self
            .stored_allocations
            .get(transaction)
            .cloned()
            .unwrap_or_default();
        all.extend(
            self.allocations
                .iter()
                .filter(|a| a.transaction_id == transaction)
                .cloned(),
        );
        all
    }

    /// Records `allocations` as `transaction`'s.
    pub(super) fn record_allocations(
        &mut self,
        transaction: &Transaction,
        allocations: &[Allocation],
    ) {
        for (position, a) in allocations.iter().enumerate() {
            self.allocations.push(alloc::Model {
                transaction_id: transaction.id.clone(),
                position: position as i32,
                user_id: transaction.user_id.clone(),
                lot_id: a.lot_id.clone(),
                amount: a.amount,
            });
        }
    }

    /// After a step: the credit a capture, release or refund gave back to a
    /// lot that has expired expires now (the batch's first step,
    /// `expire_due`, already expired everything else that was due).
    pub(super) fn expire_lots(&mut self, user: &str) -> Result<(), LedgerError> {
        let now = self.now;
        self.expire_lots_where(user, |at| at <= now, Some(now))
    }

    /// Writes down, in the order it happened, what time did to `user`
    /// since the user's last write: each hold past its expire_time ends
    /// (`expire_hold`: its earmarks go back to their lots), and each lot
    /// past its expire_time loses its unearmarked credit. The dates follow
    /// when the credit stopped being spendable: a lot's own credit expires
    /// at its expire_time; credit a hold gave back to a lot that had
    /// expired before the hold did expires at the hold's expire_time (it
    /// was the hold's until then); credit a hold gave back before its lot
    /// expired is the lot's again and expires with it, in one transaction.
    pub(super) fn expire_due(&mut self, user: &str) -> Result<(), LedgerError> {
        let now = self.now;
        let holds = self.due_holds(user);
        for (ended, id) in &holds {
            let ended = *ended;
            // First the lots that expired before this hold did.
            self.expire_lots_where(user, |at| at < ended, None)?;
            let earmarks = self.expire_hold(id)?;
            self.end_earmarks(user, &earmarks, 0)?;
            // What it gave back to those lots expires as the hold does.
            self.expire_lots_where(user, |at| at < ended, Some(ended))?;
        }
        self.recompute_hold_expiry_if_due(user);
        self.expire_lots_where(user, |at| at <= now, None)
    }

    /// Writes an EXPIRATION transaction for each of `user`'s lots whose
    /// expire_time `is_due` and that has unearmarked credit left, dated the
    /// expire_time, or `freed_at` when later (credit that became
    /// unearmarked after its lot expired).
    fn expire_lots_where(
        &mut self,
        user: &str,
        is_due: impl Fn(DateTime<Utc>) -> bool,
        freed_at: Option<DateTime<Utc>>,
    ) -> Result<(), LedgerError> {
        let mut due: Vec<(String, i64, DateTime<Utc>)> = self
            .lots
            .values()
            .filter(|l| l.user_id == user && l.remaining > l.held)
            .filter_map(|l| {
                let at = l.expire_time.filter(|at| is_due(*at))?;
                let dated = freed_at.map_or(at, |freed| at.max(freed));
                Some((l.id.clone(), l.remaining - l.held, dated))
            })
            .collect();
        due.sort_by_key(|(id, _, at)| (*at, id.clone()));
        for (id, amount, at) in due {
            self.adjust(&id, -amount)?;
            if let Some(l) = self.lots.get_mut(&id) {
                l.expired_amount += amount;
            }
            let Some(account) = self.accounts.get_mut(user) else {
                return Err(LedgerError::UserNotFound(user.to_owned()));
            };
            account.balance -= amount;
            account.last_sequence += 1;
            let tx_id = Uuid::now_v7().to_string();
            let transaction = Transaction {
                // The key is made here, and a v7 UUID no caller can guess.
                idempotency_key: format!("expiration:{tx_id}"),
                id: tx_id,
                user_id: user.to_owned(),
                kind: TxKind::Expiration,
                amount: -amount,
                running_balance: account.balance,
                sequence: account.last_sequence,
                usage: None,
                reason: Some(format!("lot {id} expired")),
                metadata: None,
                refunded_transaction_id: None,
                refunded_amount: 0,
                created_at: at,
                created_by: None,
                created_by_subject: None,
                hold_id: None,
                allocations: vec![Allocation {
                    lot_id: Some(id),
                    amount: -amount,
                }],
            };
            self.record_allocations(&transaction, &transaction.allocations.clone());
            self.rows.push(to_row(&transaction, "-".to_owned()));
            self.changed_accounts.insert(user.to_owned());
        }
        Ok(())
    }

    /// Sets `lots_expire_at` of every user whose lots changed: the earliest
    /// expire_time among their lots with unearmarked credit left (all of
    /// which the batch loaded).
    pub(super) fn recompute_lot_expiry(&mut self) {
        for user in self.changed_lot_users.clone() {
            let next = self
                .lots
                .values()
                .filter(|l| l.user_id == user && l.remaining > l.held)
                .filter_map(|l| l.expire_time)
                .min();
            if let Some(account) = self.accounts.get_mut(&user) {
                account.lots_expire_at = next;
            }
            self.changed_accounts.insert(user);
        }
    }
}

/// Inserts the batch's new lots and allocations and updates the lots it
/// changed.
pub async fn write<C: ConnectionTrait>(db: &C, state: &BatchState) -> Result<(), LedgerError> {
    let new: Vec<lots::ActiveModel> = state
        .new_lots
        .iter()
        .filter_map(|id| state.lots.get(id))
        .map(|l| l.clone().into_active_model())
        .collect();
    if !new.is_empty() {
        lots::Entity::insert_many(new)
            .exec_without_returning(db)
            .await?;
    }
    let changed: Vec<&lots::Model> = state
        .changed_lots
        .difference(&state.new_lots)
        .filter_map(|id| state.lots.get(id))
        .collect();
    if !changed.is_empty() {
        use lots::Column as C;
        let case = |value: fn(&lots::Model) -> i64, column: C| -> sea_orm::sea_query::SimpleExpr {
            changed
                .iter()
                .fold(CaseStatement::new(), |case, l| {
                    case.case(C::Id.eq(l.id.as_str()), Expr::val(value(l)))
                })
                .finally(Expr::col(column))
                .into()
        };
        let result = lots::Entity::update_many()
            .col_expr(C::Remaining, case(|l| l.remaining, C::Remaining))
            .col_expr(C::Held, case(|l| l.held, C::Held))
            .col_expr(
                C::ReturnedAmount,
                case(|l| l.returned_amount, C::ReturnedAmount),
            )
            .col_expr(
                C::ExpiredAmount,
                case(|l| l.expired_amount, C::ExpiredAmount),
            )
            .filter(C::Id.is_in(changed.iter().map(|l| l.id.as_str())))
            .exec(db)
            .await?;
        if result.rows_affected != changed.len() as u64 {
            return Err(LedgerError::Internal(format!(
                "updated {} lots of {} changed",
                result.rows_affected,
                changed.len()
            )));
        }
    }
    if !state.allocations.is_empty() {
        alloc::Entity::insert_many(
            state
                .allocations
                .iter()
                .cloned()
                .map(IntoActiveModel::into_active_model),
        )
        .exec_without_returning(db)
        .await?;
    }
    Ok(())
}

/// A stored lot as the domain type, as of `now`: an expired lot keeps only
/// what active holds earmarked.
pub fn to_lot(row: &lots::Model, now: DateTime<Utc>) -> Result<Lot, LedgerError> {
    let category = LotCategory::parse(&row.category).ok_or_else(|| {
        LedgerError::Internal(format!(
            "lot {} has unknown category {:?}",
            row.id, row.category
        ))
    })?;
    let expired = row.expire_time.is_some_and(|at| at <= now);
    Ok(Lot {
        id: row.id.clone(),
        user_id: row.user_id.clone(),
        category,
        priority: row.priority,
        granted_amount: row.granted_amount,
        remaining: if expired { row.held } else { row.remaining },
        held: row.held,
        expire_time: row.expire_time,
        source_transaction_id: row.source_transaction_id.clone(),
        created_at: row.created_at,
    })
}

/// Stored allocations as the domain type.
pub fn to_allocations(rows: &[alloc::Model]) -> Vec<Allocation> {
    rows.iter()
        .map(|a| Allocation {
            lot_id: a.lot_id.clone(),
            amount: a.amount,
        })
        .collect()
}
