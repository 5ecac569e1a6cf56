//! Holds: credits earmarked by Reserve until one Capture, Release or expiry
//! closes them. Everything here runs inside a write batch, under the same
//! per-user row lock as every other write (`batch.rs`), so the argument
//! there carries over:
//!
//! - `held` (on `user_balance`) is the sum of the user's ACTIVE holds; every
//!   change to it and to a hold is in the same transaction as the rest of
//!   the batch. A hold writes no balance change and takes no `sequence`; a
//!   capture writes one USAGE transaction, with the next sequence.
//! - Expiry needs no job: a hold is expired from the instant its
//!   `expire_time` is not after the ledger's clock. Every batch first writes
//!   down the expiry of the holds of its users whose earliest expiry has
//!   passed (`expire_due`), so no rule ever sees an expired hold as
//!   active; reads compute the same (`balance_reads.rs`, `as_of`).
//! - A hold is closed once: only an ACTIVE, unexpired hold can be captured
//!   or released; the closing request's key, fingerprint and answer are
//!   stored on the hold, so a retry replays it and any other close is
//!   refused (`HOLD_NOT_ACTIVE`, `HOLD_EXPIRED`).
//! - `available = balance - held >= 0`: a reserve takes only from the
//!   available balance; a capture of more than its hold takes the excess
//!   only from it (and then leaves `available` where the hold left it).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{CaseStatement, Expr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, ExprTrait, IntoActiveModel, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use super::batch::{BatchState, Pending};
use super::error::LedgerError;
use super::lots;
use super::model::{
    Expiry, Hold, HoldState, Metadata, Operation, Transaction, TxKind, Usage, WriteOutcome,
};
use super::rows::to_row;
use crate::entity::credit_hold as holds;

/// Inserts the batch's new holds and updates the ones it closed or expired.
pub async fn write<C: ConnectionTrait>(db: &C, state: &BatchState) -> Result<(), LedgerError> {
    let new: Vec<holds::ActiveModel> = state
        .new_holds
        .iter()
        .filter_map(|id| state.holds.get(id))
        .map(|h| h.clone().into_active_model())
        .collect();
    if !new.is_empty() {
        holds::Entity::insert_many(new)
            .exec_without_returning(db)
            .await?;
    }
    // Every hold the batch closed or expired, in one UPDATE (a CASE per
    // column, like the balance rows).
    let closed: Vec<&holds::Model> = state
        .changed_holds
        .difference(&state.new_holds)
        .filter_map(|id| state.holds.get(id))
        .collect();
    if closed.is_empty() {
        return Ok(());
    }
    use holds::Column as C;
    let case =
        |value: fn(&holds::Model) -> sea_orm::Value, column: C| -> sea_orm::sea_query::SimpleExpr {
            closed
                .iter()
                .fold(CaseStatement::new(), |case, h| {
                    case.case(C::Id.eq(h.id.as_str()), Expr::val(value(h)))
                })
                .finally(Expr::col(column))
                .into()
        };
    let result = holds::Entity::update_many()
        .col_expr(C::State, case(|h| h.state.clone().into(), C::State))
        .col_expr(
            C::CapturedAmount,
            case(|h| h.captured_amount.into(), C::CapturedAmount),
        )
        .col_expr(C::ClosedAt, case(|h| h.closed_at.into(), C::ClosedAt))
        .col_expr(
            C::CaptureTransactionId,
            case(
                |h| h.capture_transaction_id.clone().into(),
                C::CaptureTransactionId,
            ),
        )
        .col_expr(
            C::CloseKey,
            case(|h| h.close_key.clone().into(), C::CloseKey),
        )
        .col_expr(
            C::CloseFingerprint,
            case(|h| h.close_fingerprint.clone().into(), C::CloseFingerprint),
        )
        .col_expr(
            C::CloseBalance,
            case(|h| h.close_balance.into(), C::CloseBalance),
        )
        .col_expr(
            C::CloseAvailable,
            case(|h| h.close_available.into(), C::CloseAvailable),
        )
        .col_expr(
            C::ReleaseReason,
            case(|h| h.release_reason.clone().into(), C::ReleaseReason),
        )
        .filter(C::Id.is_in(closed.iter().map(|h| h.id.as_str())))
        .exec(db)
        .await?;
    if result.rows_affected != closed.len() as u64 {
        return Err(LedgerError::Internal(format!(
            "updated {} holds of {} closed",
            result.rows_affected,
            closed.len()
        )));
    }
    Ok(())
}

impl BatchState {
    /// `user`'s ACTIVE holds past their expire_time, in the order they
    /// expired; none unless the user's earliest expiry has passed (then
    /// `lookup` loaded all of the user's ACTIVE holds).
    pub(super) fn due_holds(&self, user: &str) -> Vec<(DateTime<Utc>, String)> {
        let now = self.now;
        let due = self
            .accounts
            .get(user)
            .is_some_and(|a| a.holds_expire_at.is_some_and(|at| at <= now));
        if !due {
            return Vec::new();
        }
        let mut holds: Vec<(DateTime<Utc>, String)> = self
            .holds
            .values()
            .filter(|h| {
                h.user_id == user && h.state == HoldState::Active.as_str() && h.expire_time <= now
            })
            .map(|h| (h.expire_time, h.id.clone()))
            .collect();
        holds.sort();
        holds
    }

    /// Writes down one hold's expiry: state EXPIRED, closed at its
    /// expire_time, its credits no longer held. Returns its earmarks, for
    /// the caller to give back to their lots.
    pub(super) fn expire_hold(&mut self, id: &str) -> Result<Vec<lots::Earmark>, LedgerError> {
        let hold = self
            .holds
            .get_mut(id)
            .ok_or_else(|| LedgerError::Internal(format!("hold {id} was not loaded")))?;
        hold.state = HoldState::Expired.as_str().to_owned();
        hold.closed_at = Some(hold.expire_time);
        self.changed_holds.insert(hold.id.clone());
        if let Some(account) = self.accounts.get_mut(&hold.user_id) {
            account.held -= hold.amount;
        }
        lots::earmarks_of(hold.earmarks.as_deref())
    }

    /// After `expire_due` ended a user's due holds: `holds_expire_at` made
    /// exact again (see `recompute_expiry`), for a user whose bound had
    /// passed.
    pub(super) fn recompute_hold_expiry_if_due(&mut self, user: &str) {
        let now = self.now;
        if self
            .accounts
            .get(user)
            .is_some_and(|a| a.holds_expire_at.is_some_and(|at| at <= now))
        {
            self.recompute_expiry(user);
        }
    }

    /// `holds_expire_at` after the sweep: the earliest expire_time among
    /// `user`'s ACTIVE holds, all of which `load` read for a user due one.
    /// A capture or release leaves it as it was: a lower bound of the next
    /// expiry is all correctness needs (a bound that passes early costs one
    /// sweep, which sets it exactly), and keeping it saves reading every
    /// active hold on every close.
    fn recompute_expiry(&mut self, user: &str) {
        let next = self
            .holds
            .values()
            .filter(|h| h.user_id == user && h.state == HoldState::Active.as_str())
            .map(|h| h.expire_time)
            .min();
        if let Some(account) = self.accounts.get_mut(user) {
            account.holds_expire_at = next;
        }
        self.changed_hold_accounts.insert(user.to_owned());
    }

    /// Places a hold: only from the available balance.
    pub fn reserve(&mut self, pending: &Pending) -> Result<WriteOutcome, LedgerError> {
        let req = &pending.req;
        let Operation::Reserve {
            amount,
            expiry,
            usage,
        } = &req.operation
        else {
            return Err(LedgerError::Internal("not a reserve".into()));
        };
        let expire_time = self.expire_time(*expiry)?;
        let now = self.now;
        let account = self
            .accounts
            .get_mut(&req.user_id)
            .ok_or_else(|| LedgerError::UserNotFound(req.user_id.clone()))?;
        if *amount > account.available() {
            return Err(LedgerError::InsufficientBalance {
                available: account.available(),
                requested: *amount,
            });
        }
        account.held = account
            .held
            .checked_add(*amount)
            .ok_or(LedgerError::BalanceOverflow {
                balance: account.held,
                delta: *amount,
            })?;
        account.hold_count += 1;
        let (balance, available) = (account.balance, account.available());
        account.holds_expire_at = Some(
            account
                .holds_expire_at
                .map_or(expire_time, |at| Ord::min(at, expire_time)),
        );
        let row = holds::Model {
            id: Uuid::now_v7().to_string(),
            user_id: req.user_id.clone(),
            amount: *amount,
            captured_amount: 0,
            state: HoldState::Active.as_str().to_owned(),
            usage: Some(usage_json(usage)),
            metadata: req
                .metadata
                .as_ref()
                .map(|m| serde_json::Value::Object(m.clone()).to_string()),
            created_at: now,
            expire_time,
            closed_at: None,
            capture_transaction_id: None,
            idempotency_key: pending.key.clone(),
            fingerprint: pending.fingerprint.clone(),
            reserve_balance: balance,
            reserve_available: available,
            close_key: None,
            close_fingerprint: None,
            close_balance: None,
            close_available: None,
            release_reason: None,
            created_by: Some(req.actor.name.clone()),
            earmarks: None,
        };
        let earmarks = self.earmark(&req.user_id, *amount);
        let row = holds::Model {
            earmarks: Some(lots::earmarks_json(&earmarks)),
            ..row
        };
        let hold = as_reserved(&row)?;
        self.new_holds.insert(row.id.clone());
        self.changed_hold_accounts.insert(req.user_id.clone());
        self.holds.insert(row.id.clone(), row);
        Ok(WriteOutcome {
            transaction: None,
            hold: Some(hold),
            lot: None,
            balance,
            available,
            replayed: false,
        })
    }

    /// When a reserve's hold ends: the default TTL, or the caller's within
    /// the maximum.
    fn expire_time(&self, expiry: Expiry) -> Result<DateTime<Utc>, LedgerError> {
        let max = self.hold_rules.max_ttl;
        let (field, ttl) = match expiry {
            Expiry::Default => return Ok(self.now + self.hold_rules.default_ttl),
            Expiry::Ttl(ttl) => ("ttl", ttl),
            Expiry::At(at) => ("expire_time", at - self.now),
        };
        if ttl <= chrono::TimeDelta::zero() {
            return Err(LedgerError::invalid(field, "must be in the future"));
        }
        if ttl > max {
            return Err(LedgerError::invalid(
                field,
                format!(
                    "must be at most {} seconds from now (the server's maximum hold TTL)",
                    max.num_seconds()
                ),
            ));
        }
        Ok(self.now + ttl)
    }

    /// Captures (one USAGE transaction of the real cost; 0 releases) or
    /// releases an ACTIVE, unexpired hold, exactly once.
    pub fn close_hold(&mut self, pending: &Pending) -> Result<WriteOutcome, LedgerError> {
        let req = &pending.req;
        let (hold_id, amount, usage, reason) = match &req.operation {
            Operation::Capture {
                hold_id,
                amount,
                usage,
            } => (hold_id, *amount, usage.clone(), None),
            Operation::Release { hold_id, reason } => (hold_id, 0, None, reason.clone()),
            _ => return Err(LedgerError::Internal("not a capture or release".into())),
        };
        let now = self.now;
        let hold = self
            .holds
            .get(hold_id)
            .filter(|h| h.user_id == req.user_id)
            .ok_or_else(|| LedgerError::HoldNotFound {
                user_id: req.user_id.clone(),
                hold_id: hold_id.clone(),
            })?
            .clone();
        match state_as_of(&hold, now) {
            HoldState::Active => {}
            HoldState::Expired => {
                return Err(LedgerError::HoldExpired {
                    hold_id: hold.id,
                    expire_time: hold.expire_time,
                });
            }
            state => {
                return Err(LedgerError::HoldNotActive {
                    hold_id: hold.id,
                    state: state.as_str(),
                });
            }
        }
        let account = self
            .accounts
            .get_mut(&req.user_id)
            .ok_or_else(|| LedgerError::UserNotFound(req.user_id.clone()))?;
        // The hold covers its amount; any excess must come from what is
        // available beside it.
        let excess = amount - hold.amount;
        if excess > 0 && excess > account.available() {
            return Err(LedgerError::InsufficientBalance {
                available: account.available().saturating_add(hold.amount),
                requested: amount,
            });
        }
        let new_balance =
            account
                .balance
                .checked_sub(amount)
                .ok_or(LedgerError::BalanceOverflow {
                    balance: account.balance,
                    delta: -amount,
                })?;
        let mut transaction = if amount > 0 {
            account.last_sequence += 1;
            let usage = usage.unwrap_or_else(|| stored_usage(&hold));
            Some(Transaction {
                id: Uuid::now_v7().to_string(),
                user_id: req.user_id.clone(),
                kind: TxKind::Usage,
                amount: -amount,
                running_balance: new_balance,
                sequence: account.last_sequence,
                idempotency_key: pending.key.clone(),
                usage: Some(usage),
                reason: None,
                metadata: req.metadata.clone(),
                refunded_transaction_id: None,
                refunded_amount: 0,
                created_at: now,
                created_by: Some(req.actor.name.clone()),
                created_by_subject: req.actor.certificate_subject.clone(),
                hold_id: Some(hold.id.clone()),
                allocations: Vec::new(),
            })
        } else {
            None
        };
        account.balance = new_balance;
        account.held -= hold.amount;
        // The capture spends the hold's earmarks first; what they do not
        // cover (the excess, which the check above found available) is
        // drawn like a spend. The rest of the earmarks goes back.
        let earmarks = lots::earmarks_of(hold.earmarks.as_deref())?;
        let (mut allocations, uncovered) = self.end_earmarks(&req.user_id, &earmarks, amount)?;
        if uncovered > 0 {
            allocations.extend(self.draw(&req.user_id, uncovered, None, true)?);
        }
        if let Some(t) = &mut transaction {
            t.allocations = allocations;
            self.record_allocations(t, &t.allocations.clone());
        }
        self.expire_lots(&req.user_id)?;
        let account = &self.accounts[&req.user_id];
        let (balance, available) = (account.balance, account.available());
        if transaction.is_some() {
            self.changed_accounts.insert(req.user_id.clone());
        }
        let closed = self
            .holds
            .get_mut(hold_id)
            .ok_or_else(|| LedgerError::Internal("the hold vanished".into()))?;
        closed.state = match transaction {
            Some(_) => HoldState::Captured,
            None => HoldState::Released,
        }
        .as_str()
        .to_owned();
        closed.captured_amount = amount;
        closed.closed_at = Some(now);
        closed.capture_transaction_id = transaction.as_ref().map(|t| t.id.clone());
        closed.close_key = Some(pending.key.clone());
        closed.close_fingerprint = Some(pending.fingerprint.clone());
        closed.close_balance = Some(balance);
        closed.close_available = Some(available);
        closed.release_reason = reason;
        let answer = to_hold(closed, now)?;
        self.changed_holds.insert(hold_id.clone());
        if let Some(t) = &transaction {
            self.rows.push(to_row(t, pending.fingerprint.clone()));
        }
        // held changed; holds_expire_at stays a valid lower bound of the
        // next expiry (`recompute_expiry`).
        self.changed_hold_accounts.insert(req.user_id.clone());
        Ok(WriteOutcome {
            transaction,
            hold: Some(answer),
            lot: None,
            balance,
            available,
            replayed: false,
        })
    }
}

/// A hold's state at `now`: an ACTIVE hold past its expire_time is expired.
pub fn state_as_of(row: &holds::Model, now: DateTime<Utc>) -> HoldState {
    match HoldState::parse(&row.state) {
        Some(HoldState::Active) if row.expire_time <= now => HoldState::Expired,
        Some(state) => state,
        None => HoldState::Active,
    }
}

/// The hold as its reserve answered (a replay of the reserve shows this,
/// whatever happened to the hold since).
pub fn as_reserved(row: &holds::Model) -> Result<Hold, LedgerError> {
    let mut hold = to_hold(row, row.created_at)?;
    hold.state = HoldState::Active;
    hold.captured_amount = 0;
    hold.closed_at = None;
    hold.capture_transaction_id = None;
    hold.release_reason = None;
    Ok(hold)
}

/// A stored hold as the domain type, its state as of `now`.
pub fn to_hold(row: &holds::Model, now: DateTime<Utc>) -> Result<Hold, LedgerError> {
    let state = state_as_of(row, now);
    let metadata = row
        .metadata
        .as_deref()
        .map(serde_json::from_str::<Metadata>)
        .transpose()
        .map_err(|e| LedgerError::Internal(format!("hold {} metadata: {e}", row.id)))?;
    Ok(Hold {
        id: row.id.clone(),
        user_id: row.user_id.clone(),
        amount: row.amount,
        captured_amount: row.captured_amount,
        state,
        usage: stored_usage(row),
        metadata,
        created_at: row.created_at,
        expire_time: row.expire_time,
        closed_at: match state {
            // Expired but not yet written down: closed at its expiry.
            HoldState::Expired => Some(row.closed_at.unwrap_or(row.expire_time)),
            _ => row.closed_at,
        },
        capture_transaction_id: row.capture_transaction_id.clone(),
        idempotency_key: row.idempotency_key.clone(),
        release_reason: row.release_reason.clone(),
    })
}

fn usage_json(usage: &Usage) -> String {
    serde_json::json!({
        "graph_exec_id": usage.graph_exec_id,
        "graph_id": usage.graph_id,
        "node_id": usage.node_id,
        "node_exec_id": usage.node_exec_id,
        "block_id": usage.block_id,
        "reason": usage.reason,
    })
    .to_string()
}

fn stored_usage(row: &holds::Model) -> Usage {
    let json: serde_json::Value = row
        .usage
        .as_deref()
        .and_then(|u| serde_json::from_str(u).ok())
        .unwrap_or_default();
    let field = |name: &str| json.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    Usage {
        graph_exec_id: field("graph_exec_id"),
        graph_id: field("graph_id"),
        node_id: field("node_id"),
        node_exec_id: field("node_exec_id"),
        block_id: field("block_id"),
        reason: field("reason"),
    }
}

/// Reads of holds (they never lock).
pub mod reads {
    use super::*;
    use crate::ledger::handle::Ledger;
    use crate::ledger::model::{HoldPage, HoldQuery};
    use crate::ledger::store::time_value;

    impl Ledger {
        /// One hold of one user.
        pub async fn hold(&self, user_id: &str, hold_id: &str) -> Result<Hold, LedgerError> {
            let row = {
                let _turn = self.store.direct_read().await?;
                holds::Entity::find_by_id(hold_id.to_owned())
                    .filter(holds::Column::UserId.eq(user_id))
                    .one(self.db())
                    .await
                    .map_err(|e| self.store.explain(e.into()))?
            };
            match row {
                Some(row) => to_hold(&row, self.store.clock.now()),
                None => {
                    self.balance(user_id).await?;
                    Err(LedgerError::HoldNotFound {
                        user_id: user_id.to_owned(),
                        hold_id: hold_id.to_owned(),
                    })
                }
            }
        }

        /// One page of a user's holds, newest first. The state filter is as
        /// of now (an ACTIVE hold past its expiry counts as EXPIRED).
        pub async fn holds(&self, query: HoldQuery) -> Result<HoldPage, LedgerError> {
            let after = query
                .page_token
                .as_deref()
                .map(|t| token::decode(t, &query.user_id, &query.states))
                .transpose()?;
            self.balance(&query.user_id).await?;
            let now = self.store.clock.now();
            let at = time_value(self.store.backend(), now);
            let mut select = holds::Entity::find().filter(holds::Column::UserId.eq(&query.user_id));
            if let Some(after) = &after {
                select = select.filter(holds::Column::Id.lt(after.as_str()));
            }
            if !query.states.is_empty() {
                let mut cond = sea_orm::Condition::any();
                for state in &query.states {
                    cond = cond.add(match state {
                        HoldState::Active => holds::Column::State
                            .eq(HoldState::Active.as_str())
                            .and(holds::Column::ExpireTime.gt(at.clone())),
                        HoldState::Expired => holds::Column::State
                            .eq(HoldState::Expired.as_str())
                            .or(holds::Column::State
                                .eq(HoldState::Active.as_str())
                                .and(holds::Column::ExpireTime.lte(at.clone()))),
                        other => holds::Column::State.eq(other.as_str()),
                    });
                }
                select = select.filter(cond);
            }
            let mut rows = {
                let _turn = self.store.direct_read().await?;
                select
                    .order_by_desc(holds::Column::Id)
                    .limit(query.page_size + 1)
                    .all(self.db())
                    .await
                    .map_err(|e| self.store.explain(e.into()))?
            };
            let more = rows.len() as u64 > query.page_size;
            rows.truncate(query.page_size as usize);
            let next_page_token = match rows.last() {
                Some(last) if more => Some(token::encode(&query.user_id, &query.states, &last.id)),
                _ => None,
            };
            let holds = rows
                .iter()
                .map(|r| to_hold(r, now))
                .collect::<Result<_, _>>()?;
            Ok(HoldPage {
                holds,
                next_page_token,
            })
        }
    }

    /// Page tokens of ListHolds: the last hold id seen (hold ids are UUIDv7,
    /// ordered by creation), bound to the user and the state filter.
    mod token {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use sha2::{Digest, Sha256};

        use crate::ledger::error::LedgerError;
        use crate::ledger::model::HoldState;

        fn binding(user_id: &str, states: &[HoldState]) -> String {
            let mut names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            let text = format!("{user_id}\\u{0}{}", names.join(","));
            hex::encode(&Sha256::digest(text.as_bytes())[..8])
        }

        pub fn encode(user_id: &str, states: &[HoldState], last_id: &str) -> String {
            URL_SAFE_NO_PAD.encode(format!("h1.{}.{last_id}", binding(user_id, states)))
        }

        pub fn decode(
            token: &str,
            user_id: &str,
            states: &[HoldState],
        ) -> Result<String, LedgerError> {
            let invalid = |why: &str| LedgerError::invalid("page_token", why);
            let text = URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| invalid("not a page token issued by this service"))?;
            let mut parts = text.splitn(3, '.');
            let (Some("h1"), Some(bound), Some(last)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(invalid("not a page token issued by this service"));
            };
            if bound != binding(user_id, states) {
                return Err(invalid(
                    "the page token was issued for another user or other filters",
                ));
            }
            Ok(last.to_owned())
        }
    }
}
