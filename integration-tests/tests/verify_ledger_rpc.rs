//! The admin `VerifyLedger` RPC over real traffic: clean after a storm of
//! writes, and it names what broke when the tables are tampered with.

use anyhow::ensure;
use credit_proto::v1 as pb;
use futures::future::join_all;
use integration_tests::{TestServer, api, ledger_tests};
use sea_orm::ConnectionTrait;

ledger_tests!(verify_ledger_reports_clean_then_tampering);

async fn verify(
    c: &mut integration_tests::Client,
    user: &str,
) -> anyhow::Result<pb::VerifyLedgerResponse> {
    Ok(c.verify_ledger(pb::VerifyLedgerRequest {
        user_id: user.into(),
    })
    .await?
    .into_inner())
}

async fn verify_ledger_reports_clean_then_tampering(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    for u in ["a", "b"] {
        api::create_user(&mut c, u).await?;
        api::top_up(&mut c, u, 1000).await?;
    }
    let clients = server.clients(10).await?;
    join_all(
        clients
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| async move {
                let user = if i % 2 == 0 { "a" } else { "b" };
                api::spend(&mut c, user, 10 + i as i64).await
            }),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;

    let all = verify(&mut c, "").await?;
    ensure!(all.clean && all.violations.is_empty(), "{}", all.report);
    ensure!(
        all.users_checked == 2 && all.transactions_checked == 12,
        "{}",
        all.report
    );

    // Tamper with a's balance behind the service's back.
    server
        .db
        .execute_unprepared("UPDATE user_balance SET balance = balance + 1 WHERE user_id = 'a'")
        .await?;
    let report = verify(&mut c, "").await?;
    ensure!(!report.clean, "tampering went unnoticed");
    ensure!(
        report
            .violations
            .iter()
            .any(|v| v.user_id == "a" && v.kind == "BALANCE_MISMATCH"),
        "{}",
        report.report
    );
    ensure!(
        report.violations.iter().all(|v| v.user_id == "a"),
        "b is fine: {}",
        report.report
    );
    ensure!(verify(&mut c, "b").await?.clean);
    let unknown = c
        .verify_ledger(pb::VerifyLedgerRequest {
            user_id: " bad".into(),
        })
        .await;
    api::assert_error(unknown, tonic::Code::InvalidArgument, "INVALID_ARGUMENT");
    Ok(())
}
