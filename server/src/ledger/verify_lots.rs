//! The verifier's checks of a user's lots (`verify.rs` checks the rest):
//! the balance is what the lots hold less the deficit, and the promotional
//! part what the promotional lots hold; every lot's remaining credits are
//! explained by its allocations, within `0 <= held <= remaining <=
//! granted + returned`; the lots' earmarks are the ACTIVE holds'; every
//! transaction since lots began has allocations adding up to its amount;
//! and a lot that expired before the user's last write has no unearmarked
//! credit left (its EXPIRATION was written).

use std::collections::HashMap;

use sea_orm::{
    ColumnTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::lots::earmarks_of;
use super::model::{HoldState, LotCategory, TxKind};
use super::verify::{VerifyReport, ViolationKind as K};
use crate::entity::{
    credit_allocation as alloc, credit_hold, credit_lot, credit_transaction as ctx, user_balance,
};

pub async fn check(
    txn: &DatabaseTransaction,
    account: &user_balance::Model,
    report: &mut VerifyReport,
) -> Result<(), DbErr> {
    let user = account.user_id.as_str();
    let lots = credit_lot::Entity::find()
        .filter(credit_lot::Column::UserId.eq(user))
        .all(txn)
        .await?;
    let allocations: Vec<(String, Option<String>, i64)> = alloc::Entity::find()
        .select_only()
        .column(alloc::Column::TransactionId)
        .column(alloc::Column::LotId)
        .column(alloc::Column::Amount)
        .filter(alloc::Column::UserId.eq(user))
        .into_tuple()
        .all(txn)
        .await?;
    let mut push = |kind: K, detail: String| report.push(user, None, kind, detail);

    // The balance and its promotional part.
    let remaining: i64 = lots.iter().map(|l| l.remaining).sum();
    if account.balance != remaining - account.deficit {
        push(
            K::LotMismatch,
            format!(
                "balance {} but the lots hold {remaining} and the deficit is {}",
                account.balance, account.deficit
            ),
        );
    }
    let promotional: i64 = lots
        .iter()
        .filter(|l| l.category == LotCategory::Promotional.as_str())
        .map(|l| l.remaining)
        .sum();
    if account.promotional != promotional {
        push(
            K::LotMismatch,
            format!(
                "promotional {} but the promotional lots hold {promotional}",
                account.promotional
            ),
        );
    }

    // Each lot against its bounds and its allocations.
    let mut by_lot: HashMap<&str, i64> = HashMap::new();
    let mut by_transaction: HashMap<&str, i64> = HashMap::new();
    // What each transaction did to the deficit (allocations without a lot).
    let mut to_deficit: HashMap<&str, i64> = HashMap::new();
    for (transaction, lot, amount) in &allocations {
        match lot {
            Some(lot) => *by_lot.entry(lot.as_str()).or_default() += amount,
            None => *to_deficit.entry(transaction.as_str()).or_default() += amount,
        }
        *by_transaction.entry(transaction.as_str()).or_default() += amount;
    }
    for lot in &lots {
        let opening = match lot.source_transaction_id {
            None => lot.granted_amount,
            Some(_) => 0,
        };
        let explained = opening + by_lot.get(lot.id.as_str()).copied().unwrap_or(0);
        if lot.remaining != explained {
            push(
                K::LotMismatch,
                format!(
                    "lot {} has {} left but its allocations explain {explained}",
                    lot.id, lot.remaining
                ),
            );
        }
        if lot.held < 0 || lot.held > lot.remaining {
            push(
                K::LotMismatch,
                format!(
                    "lot {} has {} earmarked of {} left",
                    lot.id, lot.held, lot.remaining
                ),
            );
        }
        if lot.remaining > lot.granted_amount.saturating_add(lot.returned_amount) {
            push(
                K::LotMismatch,
                format!(
                    "lot {} has {} left, more than granted {} + returned {}",
                    lot.id, lot.remaining, lot.granted_amount, lot.returned_amount
                ),
            );
        }
        if lot
            .expire_time
            .is_some_and(|at| at <= account.updated_at && lot.remaining > lot.held)
        {
            push(
                K::ExpirationMissing,
                format!(
                    "lot {} expired before the user's last write but still has {} unearmarked",
                    lot.id,
                    lot.remaining - lot.held
                ),
            );
        }
    }

    // Earmarks: what the lots say is held is what the ACTIVE holds say.
    let holds = credit_hold::Entity::find()
        .filter(credit_hold::Column::UserId.eq(user))
        .filter(credit_hold::Column::State.eq(HoldState::Active.as_str()))
        .all(txn)
        .await?;
    let mut earmarked: HashMap<String, i64> = HashMap::new();
    for hold in &holds {
        match earmarks_of(hold.earmarks.as_deref()) {
            Ok(earmarks) => {
                for e in earmarks {
                    *earmarked.entry(e.lot_id).or_default() += e.amount;
                }
            }
            Err(e) => push(K::LotMismatch, format!("hold {}: {e}", hold.id)),
        }
    }
    for lot in &lots {
        let want = earmarked.get(&lot.id).copied().unwrap_or(0);
        if lot.held != want {
            push(
                K::LotMismatch,
                format!(
                    "lot {} has {} earmarked but its active holds earmark {want}",
                    lot.id, lot.held
                ),
            );
        }
    }

    // Every transaction since lots began is explained by its allocations.
    let since: Vec<(String, i64, i64, String, i64)> = ctx::Entity::find()
        .select_only()
        .column(ctx::Column::Id)
        .column(ctx::Column::Sequence)
        .column(ctx::Column::Amount)
        .column(ctx::Column::Type)
        .column(ctx::Column::RunningBalance)
        .filter(ctx::Column::UserId.eq(user))
        .filter(ctx::Column::Sequence.gt(account.lots_since_sequence))
        .order_by_asc(ctx::Column::Sequence)
        .into_tuple()
        .all(txn)
        .await?;
    // The deficit when lots began: today's, with every change since undone.
    let mut deficit = account.deficit + to_deficit.values().sum::<i64>();
    for (id, sequence, amount, kind, running_balance) in since {
        let allocated = by_transaction.get(id.as_str()).copied().unwrap_or(0);
        if allocated != amount {
            report.push(
                user,
                Some(sequence),
                K::AllocationMismatch,
                format!("transaction {id} of {amount} has allocations of {allocated}"),
            );
        }
        deficit -= to_deficit.get(id.as_str()).copied().unwrap_or(0);
        // An EXPIRATION takes credit from a lot, never from the deficit: it
        // may leave the balance below zero only as far as the deficit (what
        // a TOP_UP refund took beyond the lots) explains (`verify.rs` leaves
        // EXPIRATIONs to this check).
        if kind == TxKind::Expiration.as_str() && running_balance < -deficit.max(0) {
            report.push(
                user,
                Some(sequence),
                K::NegativeBalance,
                format!(
                    "an EXPIRATION of {amount} took the balance to {running_balance}, below \
                     the deficit of {deficit}"
                ),
            );
        }
    }
    Ok(())
}
