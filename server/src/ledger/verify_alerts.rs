//! The verifier's checks of a user's balance alerts (`alerts.rs` argues the
//! rules): `alert_count` is the number of alerts in force; each alert was
//! armed when set exactly if the balance then was at or above its
//! threshold; and replaying the user's running balances from there (until
//! it was removed) gives exactly the events recorded (one per downward
//! crossing, each with the crossing transaction's balances) and the armed
//! state stored. An event of no alert, or naming a transaction that does
//! not cross, is a violation too.

use std::collections::{BTreeSet, HashMap};

use sea_orm::{
    ColumnTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::alerts::step;
use super::verify::{VerifyReport, ViolationKind as K};
use crate::entity::{alert_event, balance_alert, credit_transaction as ctx, user_balance};

pub async fn check(
    txn: &DatabaseTransaction,
    account: &user_balance::Model,
    report: &mut VerifyReport,
) -> Result<(), DbErr> {
    let user = account.user_id.as_str();
    let alerts = balance_alert::Entity::find()
        .filter(balance_alert::Column::UserId.eq(user))
        .order_by_asc(balance_alert::Column::Id)
        .all(txn)
        .await?;
    let events = alert_event::Entity::find()
        .filter(alert_event::Column::UserId.eq(user))
        .all(txn)
        .await?;
    if alerts.is_empty() && events.is_empty() && account.alert_count == 0 {
        return Ok(());
    }
    let in_force = alerts.iter().filter(|a| a.deleted_at.is_none()).count() as i64;
    if in_force != account.alert_count {
        report.push(
            user,
            None,
            K::AlertMismatch,
            format!(
                "alert_count is {} but {in_force} alerts are in force",
                account.alert_count
            ),
        );
    }
    // The running balance after each sequence (0: the opening balance).
    let since = alerts.iter().map(|a| a.created_sequence).min().unwrap_or(0);
    let mut balances: Vec<(i64, i64)> = ctx::Entity::find()
        .select_only()
        .column(ctx::Column::Sequence)
        .column(ctx::Column::RunningBalance)
        .filter(ctx::Column::UserId.eq(user))
        .filter(ctx::Column::Sequence.gte(since))
        .order_by_asc(ctx::Column::Sequence)
        .into_tuple()
        .all(txn)
        .await?;
    if since == 0 {
        balances.insert(0, (0, account.opening_balance));
    }
    let balance_at: HashMap<i64, i64> = balances.iter().copied().collect();
    let mut recorded: HashMap<&str, BTreeSet<i64>> = HashMap::new();
    for e in &events {
        recorded
            .entry(e.alert_id.as_str())
            .or_default()
            .insert(e.sequence);
        let after = balance_at.get(&e.sequence).copied();
        let before = balance_at.get(&(e.sequence - 1)).copied();
        if after != Some(e.balance_after)
            || before.is_some_and(|b| b != e.balance_before)
            || e.balance_before < e.threshold
            || e.balance_after >= e.threshold
        {
            report.push(
                user,
                Some(e.sequence),
                K::AlertMismatch,
                format!(
                    "event {} says {} -> {} across {}, but the log says {before:?} -> {after:?}",
                    e.id, e.balance_before, e.balance_after, e.threshold
                ),
            );
        }
    }
    for alert in &alerts {
        let Some(&start) = balance_at.get(&alert.created_sequence) else {
            report.push(
                user,
                None,
                K::AlertMismatch,
                format!(
                    "alert {} was set at sequence {}, which the log does not have",
                    alert.id, alert.created_sequence
                ),
            );
            continue;
        };
        if alert.created_armed != (start >= alert.threshold) {
            report.push(
                user,
                None,
                K::AlertMismatch,
                format!(
                    "alert {} of threshold {} was set {} at balance {start}",
                    alert.id,
                    alert.threshold,
                    if alert.created_armed {
                        "armed"
                    } else {
                        "disarmed"
                    }
                ),
            );
        }
        let end = alert.deleted_sequence.unwrap_or(i64::MAX);
        let mut armed = alert.created_armed;
        let mut crossings = BTreeSet::new();
        for &(sequence, balance) in &balances {
            if sequence <= alert.created_sequence || sequence > end {
                continue;
            }
            if step(&mut armed, alert.threshold, balance) {
                crossings.insert(sequence);
            }
        }
        let got = recorded.remove(alert.id.as_str()).unwrap_or_default();
        if got != crossings {
            report.push(
                user,
                None,
                K::AlertMismatch,
                format!(
                    "alert {} (threshold {}): the log crosses it at sequences {crossings:?}, the \
                     events recorded are at {got:?}",
                    alert.id, alert.threshold
                ),
            );
        }
        if alert.deleted_at.is_none() && armed != alert.armed {
            report.push(
                user,
                None,
                K::AlertMismatch,
                format!(
                    "alert {} is stored {} but the log leaves it {}",
                    alert.id,
                    if alert.armed { "armed" } else { "disarmed" },
                    if armed { "armed" } else { "disarmed" }
                ),
            );
        }
    }
    for (alert_id, sequences) in recorded {
        report.push(
            user,
            sequences.first().copied(),
            K::AlertMismatch,
            format!("events of alert {alert_id}, which this user does not have"),
        );
    }
    Ok(())
}
