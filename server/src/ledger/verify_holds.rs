//! The verifier's checks of a user's holds (`verify.rs` checks the rest):
//! `held` is the sum of the ACTIVE holds and `holds_expire_at` no later
//! than their earliest expiry; every hold's fields agree with its state; every
//! captured hold has exactly one USAGE transaction of its captured amount
//! and no transaction names a hold it did not capture (so no hold was
//! closed twice); and `available = balance - held >= 0` by the holds not
//! yet expired, unless a TOP_UP refund explains it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::model::HoldState;
use super::verify::{VerifyReport, ViolationKind as K};
use crate::entity::{credit_hold, credit_transaction as ctx, user_balance};

/// Holds read per query.
const PAGE: u64 = 1000;

pub async fn check(
    txn: &DatabaseTransaction,
    account: &user_balance::Model,
    top_up_refunded: bool,
    now: DateTime<Utc>,
    report: &mut VerifyReport,
) -> Result<(), DbErr> {
    let user = account.user_id.as_str();
    let mut holds = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut page = credit_hold::Entity::find()
            .filter(credit_hold::Column::UserId.eq(user))
            .order_by_asc(credit_hold::Column::Id)
            .limit(PAGE);
        if let Some(after) = &after {
            page = page.filter(credit_hold::Column::Id.gt(after.as_str()));
        }
        let rows = page.all(txn).await?;
        after = rows.last().map(|h| h.id.clone());
        let done = rows.len() < PAGE as usize;
        holds.extend(rows);
        if done {
            break;
        }
    }
    if holds.is_empty() && account.held == 0 && account.hold_count == 0 {
        return Ok(());
    }
    // Transactions that name a hold, by hold.
    let linked: Vec<(String, String, String, i64)> = ctx::Entity::find()
        .select_only()
        .column(ctx::Column::HoldId)
        .column(ctx::Column::Id)
        .column(ctx::Column::Type)
        .column(ctx::Column::Amount)
        .filter(ctx::Column::UserId.eq(user))
        .filter(ctx::Column::HoldId.is_not_null())
        .into_tuple::<(Option<String>, String, String, i64)>()
        .all(txn)
        .await?
        .into_iter()
        .filter_map(|(h, id, kind, amount)| Some((h?, id, kind, amount)))
        .collect();
    let mut by_hold: HashMap<&str, Vec<(&str, &str, i64)>> = HashMap::new();
    for (hold, id, kind, amount) in &linked {
        by_hold
            .entry(hold.as_str())
            .or_default()
            .push((id.as_str(), kind.as_str(), *amount));
    }

    let mut held = 0i64;
    let mut held_now = 0i64;
    let mut next_expiry: Option<DateTime<Utc>> = None;
    for h in &holds {
        let mut bad = |kind: K, detail: String| {
            report.push(user, None, kind, format!("hold {}: {detail}", h.id))
        };
        let Some(state) = HoldState::parse(&h.state) else {
            bad(K::HoldInvalid, format!("unknown state {:?}", h.state));
            continue;
        };
        if h.amount <= 0 {
            bad(
                K::HoldInvalid,
                format!("amount {} is not positive", h.amount),
            );
        }
        if (state == HoldState::Active) != h.closed_at.is_none() {
            bad(
                K::HoldInvalid,
                format!("{} with closed_at {:?}", h.state, h.closed_at),
            );
        }
        let closed_by_request = matches!(state, HoldState::Captured | HoldState::Released);
        if closed_by_request != h.close_key.is_some() {
            bad(
                K::HoldInvalid,
                format!("{} with close key {:?}", h.state, h.close_key),
            );
        }
        let txs = by_hold.remove(h.id.as_str()).unwrap_or_default();
        match state {
            HoldState::Active => {
                held = held.saturating_add(h.amount);
                next_expiry = Some(next_expiry.map_or(h.expire_time, |at| at.min(h.expire_time)));
                if h.expire_time > now {
                    held_now = held_now.saturating_add(h.amount);
                }
            }
            HoldState::Captured => {
                let expected = h.capture_transaction_id.as_deref();
                let ok = h.captured_amount > 0
                    && txs.len() == 1
                    && Some(txs[0].0) == expected
                    && txs[0].1 == "USAGE"
                    && txs[0].2 == -h.captured_amount;
                if !ok {
                    bad(
                        K::HoldCaptureMismatch,
                        format!(
                            "captured {} as {expected:?}, but its transactions are {txs:?}",
                            h.captured_amount
                        ),
                    );
                }
            }
            HoldState::Released | HoldState::Expired => {
                if h.captured_amount != 0 || h.capture_transaction_id.is_some() || !txs.is_empty() {
                    bad(
                        K::HoldCaptureMismatch,
                        format!("{} yet charged {} by {txs:?}", h.state, h.captured_amount),
                    );
                }
            }
        }
    }
    for (hold, txs) in by_hold {
        report.push(
            user,
            None,
            K::HoldCaptureMismatch,
            format!("transactions {txs:?} name hold {hold}, which is not this user's"),
        );
    }
    // `holds_expire_at` is a lower bound of the next expiry (exact after a
    // sweep; a close may leave it earlier): it must not be later than any
    // active hold's expire_time, or an expiry could go unnoticed.
    let bound_ok = match (account.holds_expire_at, next_expiry) {
        (_, None) => true,
        (Some(bound), Some(next)) => bound <= next,
        (None, Some(_)) => false,
    };
    if account.held != held || !bound_ok || account.hold_count != holds.len() as i64 {
        report.push(
            user,
            None,
            K::HeldMismatch,
            format!(
                "user_balance says held {}, next expiry {:?}, {} holds; the holds say {held}, {next_expiry:?}, {}",
                account.held,
                account.holds_expire_at,
                account.hold_count,
                holds.len()
            ),
        );
    }
    let available = account.balance.saturating_sub(held_now);
    if available < 0 && !top_up_refunded {
        report.push(
            user,
            None,
            K::NegativeAvailable,
            format!(
                "available {available} (balance {} - held {held_now}) with no TOP_UP refund to explain it",
                account.balance
            ),
        );
    }
    Ok(())
}
