//! Retries with the same idempotency key are applied once and answer with
//! the original result; the same key with other parameters is refused.

use anyhow::ensure;
use credit_proto::v1 as pb;
use futures::future::join_all;
use integration_tests::{TestServer, api, invariants, ledger_tests};
use tonic::Code;

ledger_tests!(
    serial_retry_returns_the_original,
    concurrent_identical_requests_apply_once,
    key_reuse_with_other_parameters_is_refused,
    keys_are_per_user,
    a_failed_request_does_not_consume_its_key,
    server_makes_a_key_when_none_is_given,
);

async fn serial_retry_returns_the_original(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    let first = api::top_up_with_key(&mut c, "u", 1000, "pay-1").await?;
    let again = api::top_up_with_key(&mut c, "u", 1000, "pay-1").await?;
    ensure!(
        first == again,
        "retry answered differently:\n{first:?}\n{again:?}"
    );

    // Later changes do not alter the original answer.
    api::spend_with_key(&mut c, "u", 300, "spend-1").await?;
    let later = api::top_up_with_key(&mut c, "u", 1000, "pay-1").await?;
    ensure!(
        later.balance == 1000,
        "a retry answers with the balance right after the original"
    );
    ensure!(later.transaction == first.transaction);
    let spend_again = api::spend_with_key(&mut c, "u", 300, "spend-1").await?;
    ensure!(spend_again.balance == 700);

    ensure!(api::balance(&mut c, "u").await? == 700);
    ensure!(invariants::check_user(server, "u").await?.len() == 2);
    Ok(())
}

async fn concurrent_identical_requests_apply_once(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    api::top_up(&mut c, "u", 1000).await?;
    let clients = server.clients(20).await?;
    let results = join_all(
        clients
            .into_iter()
            .map(|mut c| async move { api::spend_with_key(&mut c, "u", 250, "same-spend").await }),
    )
    .await;
    let mut ids = std::collections::HashSet::new();
    for r in results {
        let r = r?;
        ensure!(
            r.balance == 750,
            "every answer is the original's balance, got {}",
            r.balance
        );
        ids.insert(r.transaction.unwrap_or_default().transaction_id);
    }
    ensure!(ids.len() == 1, "{} different transactions", ids.len());
    ensure!(api::balance(&mut c, "u").await? == 750);
    ensure!(invariants::check_user(server, "u").await?.len() == 2);
    Ok(())
}

async fn key_reuse_with_other_parameters_is_refused(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    api::top_up_with_key(&mut c, "u", 1000, "k").await?;

    let other_amount = api::top_up_with_key(&mut c, "u", 999, "k").await;
    let status = api::assert_error(other_amount, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    ensure!(api::info(&status, "idempotencyKey").as_deref() == Some("k"));
    let other_kind = api::spend_with_key(&mut c, "u", 1000, "k").await;
    api::assert_error(other_kind, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    let other_metadata = c
        .top_up(pb::TopUpRequest {
            user_id: "u".into(),
            amount: 1000,
            idempotency_key: "k".into(),
            metadata: Some(prost_types::Struct {
                fields: [(
                    "order".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue("A-1".into())),
                    },
                )]
                .into(),
            }),
            ..Default::default()
        })
        .await;
    api::assert_error(
        other_metadata,
        Code::AlreadyExists,
        "IDEMPOTENCY_KEY_REUSED",
    );

    ensure!(api::balance(&mut c, "u").await? == 1000);
    ensure!(invariants::check_user(server, "u").await?.len() == 1);
    Ok(())
}

async fn keys_are_per_user(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "a").await?;
    api::create_user(&mut c, "b").await?;
    let a = api::top_up_with_key(&mut c, "a", 10, "shared").await?;
    let b = api::top_up_with_key(&mut c, "b", 20, "shared").await?;
    ensure!(a.transaction != b.transaction);
    ensure!(api::balance(&mut c, "a").await? == 10 && api::balance(&mut c, "b").await? == 20);
    Ok(())
}

async fn a_failed_request_does_not_consume_its_key(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    let too_much = api::spend_with_key(&mut c, "u", 100, "job-7").await;
    api::assert_error(too_much, Code::FailedPrecondition, "INSUFFICIENT_BALANCE");
    ensure!(
        invariants::check_user(server, "u").await?.is_empty(),
        "a failed spend wrote something"
    );
    api::top_up(&mut c, "u", 100).await?;
    let retried = api::spend_with_key(&mut c, "u", 100, "job-7").await?;
    ensure!(retried.balance == 0);
    invariants::check_user(server, "u").await?;
    Ok(())
}

async fn server_makes_a_key_when_none_is_given(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    let a = api::top_up(&mut c, "u", 5)
        .await?
        .transaction
        .unwrap_or_default();
    let b = api::top_up(&mut c, "u", 5)
        .await?
        .transaction
        .unwrap_or_default();
    ensure!(!a.idempotency_key.is_empty() && a.idempotency_key != b.idempotency_key);
    ensure!(
        api::balance(&mut c, "u").await? == 10,
        "two keyless top-ups are two top-ups"
    );
    Ok(())
}
