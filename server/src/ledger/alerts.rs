//! Low-balance alerts: a threshold per alert; an event each time a write
//! takes the balance from at least the threshold to below it.
//!
//! # Why each crossing gives exactly one event
//!
//! An alert is a small state machine over the user's running balances:
//! *armed* while the balance is at or above the threshold since the last
//! event (or since the alert was set), *fired* after an event until a
//! balance at or above the threshold re-arms it.
//!
//! 1. Alerts are evaluated in the write batch itself (`apply_batch`), after
//!    every request of the batch was applied and before anything is
//!    written, over the batch's new transactions of each user in sequence
//!    order: an armed alert whose transaction's running balance is below
//!    the threshold records one event (its balance before is at or above
//!    the threshold, since the alert is armed) and is disarmed; a disarmed
//!    one whose running balance is at or above it is re-armed. The events
//!    and the new armed states are written in the same database transaction
//!    as the transactions, so either all of it commits or none does.
//! 2. That runs under the user's row lock (`batch.rs`, point 1), like every
//!    write of the user on every server process; setting and removing an
//!    alert take the same lock. So the state the batch starts from is the
//!    state the last committed batch left, and no two batches evaluate the
//!    same transactions. A unique index on (user, sequence, alert) makes a
//!    second event for the same crossing impossible anyway.
//! 3. An alert is armed when set if the balance then is at or above its
//!    threshold. The alert stores the user's last sequence and that state,
//!    so the verifier replays every running balance since and checks that
//!    the events recorded are exactly the crossings (`verify_alerts`).
//!
//! The balance is the ledger's balance (what transactions change): holds
//! change what is available, not the balance, and write no transaction;
//! credit that expires crosses a threshold when its EXPIRATION transaction
//! is written (by the user's next write or the sweeper).
//!
//! A user's alert count lives on its `user_balance` row, so a write of a
//! user without alerts reads nothing more.

use std::collections::{HashMap, HashSet};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::LedgerError;
use super::handle::Ledger;
use crate::entity::{alert_event, balance_alert, credit_transaction as ctx, user_balance};

/// Alerts in force per user.
pub const MAX_ALERTS: usize = 20;

/// A balance alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub alert_id: String,
    pub user_id: String,
    pub threshold: i64,
    pub armed: bool,
    pub created_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl From<balance_alert::Model> for Alert {
    fn from(m: balance_alert::Model) -> Self {
        Self {
            alert_id: m.id,
            user_id: m.user_id,
            threshold: m.threshold,
            armed: m.armed,
            created_at: m.created_at,
            deleted_at: m.deleted_at,
        }
    }
}

/// One downward crossing of an alert's threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertEvent {
    pub event_id: String,
    pub alert_id: String,
    pub user_id: String,
    pub threshold: i64,
    pub balance_before: i64,
    pub balance_after: i64,
    pub transaction_id: String,
    pub sequence: i64,
    pub created_at: DateTime<Utc>,
}

impl From<alert_event::Model> for AlertEvent {
    fn from(m: alert_event::Model) -> Self {
        Self {
            event_id: m.id,
            alert_id: m.alert_id,
            user_id: m.user_id,
            threshold: m.threshold,
            balance_before: m.balance_before,
            balance_after: m.balance_after,
            transaction_id: m.transaction_id,
            sequence: m.sequence,
            created_at: m.created_at,
        }
    }
}

/// One page of a user's alert events, newest first.
#[derive(Debug, Clone)]
pub struct AlertEventPage {
    pub events: Vec<AlertEvent>,
    pub next_page_token: Option<String>,
}

/// What a batch's alerts did: events to insert, alerts whose armed state
/// changed.
#[derive(Debug, Default)]
pub(super) struct AlertWrites {
    events: Vec<alert_event::Model>,
    armed: Vec<(String, bool)>,
}

/// The alerts in force of `users`, lowest threshold first (under the
/// batch's locks).
pub(super) async fn load<C: ConnectionTrait>(
    db: &C,
    users: &[&str],
) -> Result<HashMap<String, Vec<balance_alert::Model>>, sea_orm::DbErr> {
    let mut by_user: HashMap<String, Vec<balance_alert::Model>> = HashMap::new();
    if users.is_empty() {
        return Ok(by_user);
    }
    let rows = balance_alert::Entity::find()
        .filter(balance_alert::Column::UserId.is_in(users.iter().copied()))
        .filter(balance_alert::Column::DeletedAt.is_null())
        .order_by_asc(balance_alert::Column::UserId)
        .order_by_asc(balance_alert::Column::Threshold)
        .all(db)
        .await?;
    for row in rows {
        by_user.entry(row.user_id.clone()).or_default().push(row);
    }
    Ok(by_user)
}

/// One step of an alert's state machine (module docs): the balance after a
/// transaction, and whether that transaction records an event.
pub fn step(armed: &mut bool, threshold: i64, balance_after: i64) -> bool {
    match (*armed, balance_after >= threshold) {
        (true, false) => {
            *armed = false;
            true
        }
        (false, true) => {
            *armed = true;
            false
        }
        _ => false,
    }
}

/// Runs `alerts` over the batch's new transactions `rows` (each user's in
/// sequence order, as the batch made them).
pub(super) fn evaluate(
    alerts: &mut HashMap<String, Vec<balance_alert::Model>>,
    rows: &[ctx::Model],
) -> AlertWrites {
    let mut writes = AlertWrites::default();
    let mut changed: HashSet<String> = HashSet::new();
    for row in rows {
        let Some(user_alerts) = alerts.get_mut(&row.user_id) else {
            continue;
        };
        for alert in user_alerts.iter_mut() {
            let was = alert.armed;
            if step(&mut alert.armed, alert.threshold, row.running_balance) {
                writes.events.push(alert_event::Model {
                    id: Uuid::now_v7().to_string(),
                    alert_id: alert.id.clone(),
                    user_id: row.user_id.clone(),
                    threshold: alert.threshold,
                    balance_before: row.running_balance - row.amount,
                    balance_after: row.running_balance,
                    transaction_id: row.id.clone(),
                    sequence: row.sequence,
                    created_at: row.created_at,
                    feed_position: None,
                });
            }
            if alert.armed != was {
                changed.insert(alert.id.clone());
            }
        }
    }
    for user_alerts in alerts.values() {
        for alert in user_alerts {
            if changed.contains(&alert.id) {
                writes.armed.push((alert.id.clone(), alert.armed));
            }
        }
    }
    writes
}

impl AlertWrites {
    /// Writes the events and armed states in the batch's transaction.
    pub(super) async fn write<C: ConnectionTrait>(self, db: &C) -> Result<(), LedgerError> {
        if !self.events.is_empty() {
            let models = self
                .events
                .into_iter()
                .map(IntoActiveModel::into_active_model);
            alert_event::Entity::insert_many(models).exec(db).await?;
        }
        for (id, armed) in self.armed {
            balance_alert::Entity::update_many()
                .col_expr(balance_alert::Column::Armed, Expr::value(armed))
                .filter(balance_alert::Column::Id.eq(id))
                .exec(db)
                .await?;
        }
        Ok(())
    }
}

/// Locks the user's row for an alert change, in `txn` (SQLite: BEGIN
/// IMMEDIATE already holds the database's write lock).
async fn lock_user<C: ConnectionTrait>(
    db: &C,
    user_id: &str,
) -> Result<user_balance::Model, LedgerError> {
    let select = user_balance::Entity::find_by_id(user_id);
    let row = match db.get_database_backend() {
        DbBackend::Sqlite => select.one(db).await?,
        _ => select.lock_exclusive().one(db).await?,
    };
    row.ok_or_else(|| LedgerError::UserNotFound(user_id.to_owned()))
}

impl Ledger {
    /// Sets an alert (module docs), or returns the one the key or the
    /// threshold already names.
    pub async fn set_alert(
        &self,
        user_id: &str,
        threshold: i64,
        key: Option<String>,
    ) -> Result<Alert, LedgerError> {
        let txn = self.store.begin_write().await?;
        let result = self.set_alert_in(&txn.txn, user_id, threshold, key).await;
        match result {
            Ok((alert, true)) => {
                txn.commit().await?;
                // Balance watchers show the alerts too.
                self.store.feed.committed();
                Ok(alert)
            }
            Ok((alert, false)) => {
                txn.rollback().await;
                Ok(alert)
            }
            Err(err) => {
                txn.rollback().await;
                Err(self.store.explain(err))
            }
        }
    }

    /// The alert, and whether it is new (to commit).
    async fn set_alert_in<C: ConnectionTrait>(
        &self,
        db: &C,
        user_id: &str,
        threshold: i64,
        key: Option<String>,
    ) -> Result<(Alert, bool), LedgerError> {
        let account = lock_user(db, user_id).await?;
        let mine = balance_alert::Entity::find().filter(balance_alert::Column::UserId.eq(user_id));
        if let Some(key) = &key
            && let Some(existing) = mine
                .clone()
                .filter(balance_alert::Column::IdempotencyKey.eq(key.as_str()))
                .one(db)
                .await?
        {
            if existing.threshold != threshold {
                return Err(LedgerError::IdempotencyKeyReused(key.clone()));
            }
            return Ok((existing.into(), false));
        }
        let in_force = mine
            .filter(balance_alert::Column::DeletedAt.is_null())
            .all(db)
            .await?;
        if let Some(same) = in_force.iter().find(|a| a.threshold == threshold) {
            return Ok((same.clone().into(), false));
        }
        if in_force.len() >= MAX_ALERTS {
            return Err(LedgerError::TooManyAlerts { limit: MAX_ALERTS });
        }
        let armed = account.balance >= threshold;
        let alert = balance_alert::Model {
            id: Uuid::now_v7().to_string(),
            user_id: user_id.to_owned(),
            threshold,
            armed,
            idempotency_key: key,
            created_at: self.store.clock.now(),
            created_sequence: account.last_sequence,
            created_armed: armed,
            deleted_at: None,
            deleted_sequence: None,
        };
        alert.clone().into_active_model().insert(db).await?;
        set_alert_count(db, user_id, in_force.len() as i64 + 1).await?;
        Ok((alert.into(), true))
    }

    /// Removes an alert; again: the same answer.
    pub async fn delete_alert(&self, user_id: &str, alert_id: &str) -> Result<Alert, LedgerError> {
        let txn = self.store.begin_write().await?;
        let result = async {
            let account = lock_user(&txn.txn, user_id).await?;
            let not_found = || LedgerError::AlertNotFound {
                user_id: user_id.to_owned(),
                alert_id: alert_id.to_owned(),
            };
            let Ok(id) = Uuid::parse_str(alert_id) else {
                return Err(not_found());
            };
            let mut alert = balance_alert::Entity::find_by_id(id.to_string())
                .filter(balance_alert::Column::UserId.eq(user_id))
                .one(&txn.txn)
                .await?
                .ok_or_else(not_found)?;
            if alert.deleted_at.is_some() {
                return Ok((alert, false));
            }
            alert.deleted_at = Some(self.store.clock.now());
            alert.deleted_sequence = Some(account.last_sequence);
            balance_alert::Entity::update_many()
                .col_expr(
                    balance_alert::Column::DeletedAt,
                    Expr::value(alert.deleted_at),
                )
                .col_expr(
                    balance_alert::Column::DeletedSequence,
                    Expr::value(alert.deleted_sequence),
                )
                .filter(balance_alert::Column::Id.eq(alert.id.as_str()))
                .exec(&txn.txn)
                .await?;
            set_alert_count(&txn.txn, user_id, (account.alert_count - 1).max(0)).await?;
            Ok((alert, true))
        }
        .await;
        match result {
            Ok((alert, true)) => {
                txn.commit().await?;
                // Balance watchers show the alerts too.
                self.store.feed.committed();
                Ok(alert.into())
            }
            Ok((alert, false)) => {
                txn.rollback().await;
                Ok(alert.into())
            }
            Err(err) => {
                txn.rollback().await;
                Err(self.store.explain(err))
            }
        }
    }

    /// One page of a user's alert events, newest first.
    pub async fn alert_events(
        &self,
        user_id: &str,
        page_size: u64,
        page_token: Option<&str>,
    ) -> Result<AlertEventPage, LedgerError> {
        let after = page_token.map(|t| token::decode(t, user_id)).transpose()?;
        self.ensure_user(user_id).await?;
        let _turn = self.store.direct_read().await?;
        let mut select =
            alert_event::Entity::find().filter(alert_event::Column::UserId.eq(user_id));
        if let Some((sequence, id)) = after {
            select = select.filter(
                sea_orm::Condition::any()
                    .add(alert_event::Column::Sequence.lt(sequence))
                    .add(
                        sea_orm::Condition::all()
                            .add(alert_event::Column::Sequence.eq(sequence))
                            .add(alert_event::Column::Id.lt(id)),
                    ),
            );
        }
        let rows = select
            .order_by_desc(alert_event::Column::Sequence)
            .order_by_desc(alert_event::Column::Id)
            .limit(page_size + 1)
            .all(self.db())
            .await
            .map_err(|e| self.store.explain(e.into()))?;
        let more = rows.len() as u64 > page_size;
        let rows: Vec<_> = rows.into_iter().take(page_size as usize).collect();
        let next_page_token = match rows.last() {
            Some(last) if more => Some(token::encode(user_id, last.sequence, &last.id)),
            _ => None,
        };
        Ok(AlertEventPage {
            events: rows.into_iter().map(AlertEvent::from).collect(),
            next_page_token,
        })
    }
}

/// The alerts in force of `users` (for balance reads).
pub(super) async fn in_force<C: ConnectionTrait>(
    db: &C,
    users: &[&str],
) -> Result<HashMap<String, Vec<Alert>>, sea_orm::DbErr> {
    Ok(load(db, users)
        .await?
        .into_iter()
        .map(|(user, alerts)| (user, alerts.into_iter().map(Alert::from).collect()))
        .collect())
}

async fn set_alert_count<C: ConnectionTrait>(
    db: &C,
    user_id: &str,
    count: i64,
) -> Result<(), LedgerError> {
    user_balance::Entity::update_many()
        .col_expr(user_balance::Column::AlertCount, Expr::value(count))
        .filter(user_balance::Column::UserId.eq(user_id))
        .exec(db)
        .await?;
    Ok(())
}

/// Opaque ListAlertEvents page tokens: the user and the last event listed.
mod token {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Token {
        /// Marks an alert-event token (history tokens have no `k`).
        k: String,
        u: String,
        s: i64,
        i: String,
    }

    pub fn encode(user_id: &str, sequence: i64, id: &str) -> String {
        let token = Token {
            k: "alert-events".into(),
            u: user_id.to_owned(),
            s: sequence,
            i: id.to_owned(),
        };
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
    }

    pub fn decode(token: &str, user_id: &str) -> Result<(i64, String), LedgerError> {
        let invalid = |why: &str| LedgerError::invalid("page_token", why);
        let token: Token = URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .filter(|t: &Token| t.k == "alert-events")
            .ok_or_else(|| invalid("not a page token issued by ListAlertEvents"))?;
        if token.u != user_id {
            return Err(invalid("the page token belongs to another user"));
        }
        Ok((token.s, token.i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_fires_once_per_downward_crossing_and_rearms_at_the_threshold() {
        let mut armed = true;
        // 150 -> 120 -> 90 (fires) -> 80 -> 100 (re-arms at exactly 100) -> 99 (fires)
        let fired: Vec<bool> = [120, 90, 80, 100, 99]
            .into_iter()
            .map(|b| step(&mut armed, 100, b))
            .collect();
        assert_eq!(fired, [false, true, false, false, true]);
        assert!(!armed);
        // Set while below: nothing until the balance is back up.
        let mut armed = false;
        assert!(!step(&mut armed, 100, 50));
        assert!(!step(&mut armed, 100, 150));
        assert!(step(&mut armed, 100, 10));
    }

    #[test]
    fn page_tokens_round_trip_and_are_bound_to_the_user() {
        let t = token::encode("u", 7, "id");
        assert_eq!(token::decode(&t, "u").ok(), Some((7, "id".to_owned())));
        assert!(token::decode(&t, "v").is_err());
        assert!(token::decode("garbage", "u").is_err());
    }
}
