//! Refunds: linked to their original, never more than it in total, and with
//! the direction and floor of the original's kind.

use anyhow::ensure;
use futures::future::join_all;
use integration_tests::{TestServer, api, invariants, ledger_tests};
use tonic::Code;

ledger_tests!(
    usage_refunds_give_credits_back_up_to_the_original,
    top_up_refund_may_go_below_zero,
    grant_refund_may_not_go_below_zero,
    refunds_of_refunds_and_unknown_transactions_fail,
    parallel_refunds_never_exceed_the_original,
);

async fn usage_refunds_give_credits_back_up_to_the_original(
    server: &TestServer,
) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    api::top_up(&mut c, "u", 1000).await?;
    let spend = api::spend(&mut c, "u", 300)
        .await?
        .transaction
        .unwrap_or_default();

    let part = api::refund(&mut c, "u", &spend.transaction_id, Some(100)).await?;
    ensure!(part.balance == 800);
    let refund_tx = part.transaction.unwrap_or_default();
    ensure!(refund_tx.amount == 100 && refund_tx.refunded_transaction_id == spend.transaction_id);

    let too_much = api::refund(&mut c, "u", &spend.transaction_id, Some(201)).await;
    let status = api::assert_error(
        too_much,
        Code::FailedPrecondition,
        "REFUND_EXCEEDS_ORIGINAL",
    );
    ensure!(api::info(&status, "refundableAmount").as_deref() == Some("200"));

    // No amount: everything not yet refunded.
    let rest = api::refund(&mut c, "u", &spend.transaction_id, None).await?;
    ensure!(rest.balance == 1000 && rest.transaction.unwrap_or_default().amount == 200);
    let again = api::refund(&mut c, "u", &spend.transaction_id, Some(1)).await;
    api::assert_error(again, Code::FailedPrecondition, "REFUND_EXCEEDS_ORIGINAL");

    let original = c
        .get_transaction(credit_proto::v1::GetTransactionRequest {
            user_id: "u".into(),
            transaction_id: spend.transaction_id.clone(),
        })
        .await?
        .into_inner()
        .transaction
        .unwrap_or_default();
    ensure!(original.refunded_amount == 300);
    invariants::check_user(server, "u").await?;
    Ok(())
}

async fn top_up_refund_may_go_below_zero(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    let top_up = api::top_up(&mut c, "u", 500)
        .await?
        .transaction
        .unwrap_or_default();
    api::spend(&mut c, "u", 400).await?;
    // The payer got the 500 back; the 400 already spent leaves a debt.
    let refund = api::refund(&mut c, "u", &top_up.transaction_id, None).await?;
    ensure!(refund.balance == -400, "balance {}", refund.balance);
    let spend = api::spend(&mut c, "u", 1).await;
    api::assert_error(spend, Code::FailedPrecondition, "INSUFFICIENT_BALANCE");
    // Credits smaller than the debt are welcome; the balance stays negative.
    ensure!(api::grant(&mut c, "u", 100).await?.balance == -300);
    ensure!(api::top_up(&mut c, "u", 50).await?.balance == -250);
    let spend = api::spend(&mut c, "u", 1).await;
    api::assert_error(spend, Code::FailedPrecondition, "INSUFFICIENT_BALANCE");
    invariants::check_user(server, "u").await?;
    Ok(())
}

async fn grant_refund_may_not_go_below_zero(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    let grant = api::grant(&mut c, "u", 500)
        .await?
        .transaction
        .unwrap_or_default();
    api::spend(&mut c, "u", 400).await?;
    let all = api::refund(&mut c, "u", &grant.transaction_id, None).await;
    api::assert_error(all, Code::FailedPrecondition, "INSUFFICIENT_BALANCE");
    let part = api::refund(&mut c, "u", &grant.transaction_id, Some(100)).await?;
    ensure!(part.balance == 0);
    invariants::check_user(server, "u").await?;
    Ok(())
}

async fn refunds_of_refunds_and_unknown_transactions_fail(
    server: &TestServer,
) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    api::create_user(&mut c, "other").await?;
    api::top_up(&mut c, "u", 100).await?;
    let spend = api::spend(&mut c, "u", 50)
        .await?
        .transaction
        .unwrap_or_default();
    let refund = api::refund(&mut c, "u", &spend.transaction_id, Some(10))
        .await?
        .transaction
        .unwrap_or_default();

    let of_refund = api::refund(&mut c, "u", &refund.transaction_id, None).await;
    api::assert_error(of_refund, Code::FailedPrecondition, "NOT_REFUNDABLE");
    let unknown = api::refund(&mut c, "u", &uuid::Uuid::now_v7().to_string(), None).await;
    api::assert_error(unknown, Code::NotFound, "TRANSACTION_NOT_FOUND");
    // Another user's transaction is not found, not refundable.
    let foreign = api::refund(&mut c, "other", &spend.transaction_id, None).await;
    api::assert_error(foreign, Code::NotFound, "TRANSACTION_NOT_FOUND");
    ensure!(api::balance(&mut c, "other").await? == 0);
    ensure!(api::balance(&mut c, "u").await? == 60);
    invariants::check_user(server, "u").await?;
    Ok(())
}

async fn parallel_refunds_never_exceed_the_original(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    api::top_up(&mut c, "u", 100).await?;
    let spend = api::spend(&mut c, "u", 100)
        .await?
        .transaction
        .unwrap_or_default();
    let clients = server.clients(10).await?;
    let id = spend.transaction_id.clone();
    let results = join_all(clients.into_iter().map(|mut c| {
        let id = id.clone();
        async move { api::refund(&mut c, "u", &id, Some(30)).await }
    }))
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    ensure!(ok == 3, "{ok} refunds of 30 out of 100 succeeded");
    for r in results.into_iter().filter_map(Result::err) {
        ensure!(
            api::reason(&r).as_deref() == Some("REFUND_EXCEEDS_ORIGINAL"),
            "{r:?}"
        );
    }
    ensure!(api::balance(&mut c, "u").await? == 90);
    invariants::check_user(server, "u").await?;
    Ok(())
}
