//! The ledger's money invariants for one user: the server's own verifier
//! (`Ledger::verify`, the same code as `credit-server verify` and the
//! `VerifyLedger` RPC) on the tables, plus the check that the API shows what
//! the tables hold.

use anyhow::{Context, ensure};
use credit_proto::v1 as pb;
use credit_server::entity::user_balance;
use sea_orm::EntityTrait;

use crate::{TestServer, api};

/// Checks `user_id` with the verifier (balance = opening balance + sum of
/// amounts, sequences 1..n, running balances chain, refunds within their
/// originals, no unexplained negative balance), and that the API's balance
/// and history are the table's. Returns the transactions, oldest first.
pub async fn check_user(
    server: &TestServer,
    user_id: &str,
) -> anyhow::Result<Vec<pb::Transaction>> {
    let report = server.ledger.verify(Some(user_id)).await?;
    ensure!(report.is_clean(), "the verifier found:\n{report}");

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
        "last_sequence {} != {} transactions in the API's history",
        row.last_sequence,
        txs.len()
    );
    let last = txs
        .last()
        .map_or(row.opening_balance, |t| t.running_balance);
    ensure!(
        last == balance,
        "the API's last running balance {last} != balance {balance}"
    );
    Ok(txs)
}
