//! The acceptance tests of the system we started from, through the public
//! gRPC API: `user_balance` is the single source of truth and `user` keeps
//! no balance.

use anyhow::ensure;
use credit_server::entity::{credit_lot, user_balance};
use futures::future::join_all;
use integration_tests::{TestServer, api, invariants, ledger_tests};
use migration::SchemaManager;
use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, Set};

ledger_tests!(
    top_up_then_spend_lands_in_user_balance_only,
    preseeded_user_balance_plus_top_up,
    three_parallel_spends_from_separate_clients,
);

async fn balance_row(server: &TestServer, user_id: &str) -> anyhow::Result<i64> {
    let row = user_balance::Entity::find_by_id(user_id.to_owned())
        .one(&server.db)
        .await?;
    Ok(row.map(|r| r.balance).unwrap_or(i64::MIN))
}

async fn top_up_then_spend_lands_in_user_balance_only(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "migration-test").await?;
    // The balance column is gone from `user`, so nothing can read or write
    // a stale balance there.
    ensure!(
        !SchemaManager::new(&server.db)
            .has_column("user", "balance")
            .await?
    );

    let top_up = api::top_up(&mut c, "migration-test", 1000).await?;
    ensure!(top_up.balance == 1000);
    ensure!(api::balance(&mut c, "migration-test").await? == 1000);

    let spend = api::spend(&mut c, "migration-test", 300).await?;
    ensure!(spend.balance == 700);
    let tx = spend.transaction.unwrap_or_default();
    ensure!(tx.amount == -300 && tx.running_balance == 700 && tx.sequence == 2);
    ensure!(api::balance(&mut c, "migration-test").await? == 700);
    ensure!(balance_row(server, "migration-test").await? == 700);
    ensure!(
        !SchemaManager::new(&server.db)
            .has_column("user", "balance")
            .await?
    );
    invariants::check_user(server, "migration-test").await?;
    Ok(())
}

async fn preseeded_user_balance_plus_top_up(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "stale-query-test").await?;
    // Seed the row directly, as the backfill migration does for a legacy
    // balance (the opening balance is the part no ledger row explains).
    let mut row = user_balance::Entity::find_by_id("stale-query-test".to_owned())
        .one(&server.db)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no user_balance row"))?
        .into_active_model();
    row.balance = Set(5000);
    row.opening_balance = Set(5000);
    row.update(&server.db).await?;
    // ... and as step 6 then makes it a lot: one PAID, never-expiring lot
    // with no source transaction.
    credit_lot::Entity::insert(
        credit_lot::Model {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: "stale-query-test".into(),
            category: "PAID".into(),
            priority: 100,
            granted_amount: 5000,
            remaining: 5000,
            held: 0,
            returned_amount: 0,
            expired_amount: 0,
            expire_time: None,
            source_transaction_id: None,
            created_at: chrono::Utc::now(),
        }
        .into_active_model(),
    )
    .exec_without_returning(&server.db)
    .await?;

    ensure!(api::balance(&mut c, "stale-query-test").await? == 5000);
    let top_up = api::top_up(&mut c, "stale-query-test", 1000).await?;
    ensure!(top_up.balance == 6000, "top-up answered {}", top_up.balance);
    ensure!(top_up.transaction.unwrap_or_default().running_balance == 6000);
    ensure!(api::balance(&mut c, "stale-query-test").await? == 6000);
    ensure!(balance_row(server, "stale-query-test").await? == 6000);
    invariants::check_user(server, "stale-query-test").await?;
    Ok(())
}

async fn three_parallel_spends_from_separate_clients(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "concurrent-userbalance-test").await?;
    api::top_up(&mut c, "concurrent-userbalance-test", 1000).await?;

    let clients = server.clients(3).await?;
    let spends = clients
        .into_iter()
        .zip([100, 200, 300])
        .map(|(mut c, amount)| async move {
            api::spend(&mut c, "concurrent-userbalance-test", amount).await
        });
    let results = join_all(spends).await;
    for r in &results {
        ensure!(r.is_ok(), "a spend failed: {r:?}");
    }
    ensure!(api::balance(&mut c, "concurrent-userbalance-test").await? == 400);
    ensure!(balance_row(server, "concurrent-userbalance-test").await? == 400);
    invariants::check_user(server, "concurrent-userbalance-test").await?;
    Ok(())
}
