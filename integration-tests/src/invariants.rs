//! The ledger's money invariants, checked for one user through the API and
//! against the `user_balance` row itself.

use anyhow::{Context, ensure};
use credit_proto::v1 as pb;
use credit_server::entity::user_balance;
use sea_orm::EntityTrait;

use crate::{TestServer, api};

/// Checks, for `user_id`:
/// - sequences are 1..n without gaps;
/// - each running balance is the previous one (the opening balance for the
///   first) plus its amount, with no overflow;
/// - the balance (API and table) equals the last running balance, i.e. the
///   opening balance plus the sum of applied amounts;
/// - the balance never went below zero except through a TOP_UP refund;
/// - no transaction was refunded beyond its amount, and each original's
///   refunded total equals the sum of its refunds.
///
/// Returns the transactions, oldest first.
pub async fn check_user(
    server: &TestServer,
    user_id: &str,
) -> anyhow::Result<Vec<pb::Transaction>> {
    let mut client = server.client().await?;
    let txs = api::all_transactions(&mut client, user_id).await?;
    let balance = api::balance(&mut client, user_id).await?;
    let row = user_balance::Entity::find_by_id(user_id.to_owned())
        .one(&server.db)
        .await?
        .context("user_balance row missing")?;
    ensure!(
        row.balance == balance,
        "API balance {balance} != table {}",
        row.balance
    );
    ensure!(
        row.last_sequence == txs.len() as i64,
        "last_sequence {} != {} transactions",
        row.last_sequence,
        txs.len()
    );

    let by_id: std::collections::HashMap<&str, &pb::Transaction> =
        txs.iter().map(|t| (t.transaction_id.as_str(), t)).collect();
    let mut running = row.opening_balance;
    let mut refunded: std::collections::HashMap<&str, i64> = Default::default();
    for (i, tx) in txs.iter().enumerate() {
        ensure!(
            tx.sequence == i as i64 + 1,
            "sequence gap: position {i} has sequence {}",
            tx.sequence
        );
        running = running
            .checked_add(tx.amount)
            .context("running balance overflow")?;
        ensure!(
            tx.running_balance == running,
            "sequence {}: running balance {} != {running}",
            tx.sequence,
            tx.running_balance
        );
        let is_top_up_refund = tx.r#type == pb::TransactionType::Refund as i32
            && by_id
                .get(tx.refunded_transaction_id.as_str())
                .is_some_and(|o| o.r#type == pb::TransactionType::TopUp as i32);
        ensure!(
            running >= 0 || is_top_up_refund || (tx.amount > 0),
            "sequence {}: balance went to {running} by a {:?}",
            tx.sequence,
            tx.r#type
        );
        if tx.r#type == pb::TransactionType::Refund as i32 {
            *refunded
                .entry(tx.refunded_transaction_id.as_str())
                .or_default() += tx.amount.abs();
        }
    }
    ensure!(
        running == balance,
        "balance {balance} != opening + sum of amounts {running}"
    );
    for tx in &txs {
        let total = refunded
            .get(tx.transaction_id.as_str())
            .copied()
            .unwrap_or(0);
        ensure!(
            total == tx.refunded_amount,
            "{}: refunded_amount {} != sum of refunds {total}",
            tx.transaction_id,
            tx.refunded_amount
        );
        ensure!(
            total <= tx.amount.abs(),
            "{}: refunded {total} of {}",
            tx.transaction_id,
            tx.amount
        );
    }
    Ok(txs)
}
