//! Many clients at once on one balance: no spend takes it below zero, no
//! write is lost, including the very first writes of a new user.

use std::time::Duration;

use anyhow::{Context, ensure};
use credit_server::entity::user_balance;
use futures::future::join_all;
use integration_tests::{Backend, TestServer, api, invariants, ledger_tests};
use sea_orm::{EntityTrait, QuerySelect, TransactionTrait};
use tonic::Code;

ledger_tests!(
    ten_parallel_spends_of_100_from_500,
    two_spends_of_100_from_100,
    first_writes_in_parallel_lose_nothing,
    users_do_not_interfere,
    a_busy_account_shares_transactions,
    balance_reads_share_queries_and_see_acknowledged_writes,
);

/// Runs `n` spends of `amount` on `user` from `n` separate clients and
/// returns (successes, insufficient-balance failures).
async fn parallel_spends(
    server: &TestServer,
    user: &str,
    n: usize,
    amount: i64,
) -> anyhow::Result<(usize, usize)> {
    let clients = server.clients(n).await?;
    let results = join_all(
        clients
            .into_iter()
            .map(|mut c| async move { api::spend(&mut c, user, amount).await }),
    )
    .await;
    let mut ok = 0;
    let mut insufficient = 0;
    for r in results {
        match r {
            Ok(_) => ok += 1,
            Err(status) => {
                ensure!(
                    status.code() == Code::FailedPrecondition,
                    "unexpected {status:?}"
                );
                ensure!(api::reason(&status).as_deref() == Some("INSUFFICIENT_BALANCE"));
                insufficient += 1;
            }
        }
    }
    Ok((ok, insufficient))
}

async fn ten_parallel_spends_of_100_from_500(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    api::top_up(&mut c, "u", 500).await?;
    let (ok, insufficient) = parallel_spends(server, "u", 10, 100).await?;
    ensure!(
        ok == 5 && insufficient == 5,
        "{ok} succeeded, {insufficient} insufficient"
    );
    ensure!(api::balance(&mut c, "u").await? == 0);
    let txs = invariants::check_user(server, "u").await?;
    ensure!(
        txs.len() == 6,
        "one top-up and five spends, got {}",
        txs.len()
    );
    Ok(())
}

async fn two_spends_of_100_from_100(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    api::top_up(&mut c, "u", 100).await?;
    let (ok, insufficient) = parallel_spends(server, "u", 2, 100).await?;
    ensure!(
        ok == 1 && insufficient == 1,
        "{ok} succeeded, {insufficient} insufficient"
    );
    ensure!(api::balance(&mut c, "u").await? == 0);
    invariants::check_user(server, "u").await?;
    Ok(())
}

/// The flaw of the system we started from: concurrent first writes upserted
/// over a missing balance row and overwrote each other's credit.
async fn first_writes_in_parallel_lose_nothing(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let users: Vec<String> = (0..5).map(|i| format!("fresh-{i}")).collect();
    for u in &users {
        api::create_user(&mut c, u).await?;
    }
    let clients = server.clients(40).await?;
    let writes = clients.into_iter().enumerate().map(|(i, mut c)| {
        let user = users[i % users.len()].clone();
        let amount = i as i64 + 1;
        async move {
            if i % 2 == 0 {
                api::top_up(&mut c, &user, amount).await.map(|_| ())
            } else {
                api::grant(&mut c, &user, amount).await.map(|_| ())
            }
        }
    });
    for r in join_all(writes).await {
        r?;
    }
    for (k, u) in users.iter().enumerate() {
        let expected: i64 = (0..40)
            .filter(|i| i % users.len() == k)
            .map(|i| i as i64 + 1)
            .sum();
        let got = api::balance(&mut c, u).await?;
        ensure!(got == expected, "{u}: balance {got}, expected {expected}");
        let txs = invariants::check_user(server, u).await?;
        ensure!(txs.len() == 8);
    }
    Ok(())
}

/// Group commit: 64 clients spending from one account at once share
/// database transactions, and every spend still gets its own row, sequence
/// and answer.
async fn a_busy_account_shares_transactions(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "hot").await?;
    api::top_up(&mut c, "hot", 10_000).await?;
    let before = server.ledger.write_stats();
    let clients = server.clients(64).await?;
    let spends = clients.into_iter().map(|mut c| async move {
        let mut balances = Vec::new();
        for _ in 0..10 {
            balances.push(api::spend(&mut c, "hot", 1).await?.balance);
        }
        Ok::<_, tonic::Status>(balances)
    });
    let mut answered: Vec<i64> = Vec::new();
    for r in join_all(spends).await {
        answered.extend(r?);
    }
    answered.sort_unstable();
    // Every spend saw its own balance: 9999 down to 9360, each exactly once.
    ensure!(
        answered == (9_360..10_000).collect::<Vec<i64>>(),
        "answers overlap or skip"
    );
    let after = server.ledger.write_stats();
    let (writes, batches) = (after.writes - before.writes, after.batches - before.batches);
    ensure!(writes == 640, "{writes} writes committed");
    ensure!(
        batches * 2 <= writes,
        "640 concurrent spends took {batches} transactions"
    );
    eprintln!("640 spends from 64 clients on one account: {batches} transactions");
    ensure!(invariants::check_user(server, "hot").await?.len() == 641);
    Ok(())
}

/// Balance reads that arrive together share queries, yet each sees every
/// write acknowledged before it was asked: a client that spent and then
/// reads never gets a balance from before its spend.
async fn balance_reads_share_queries_and_see_acknowledged_writes(
    server: &TestServer,
) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "reader").await?;
    api::top_up(&mut c, "reader", 100_000).await?;
    let before = server.ledger.read_stats();
    let clients = server.clients(64).await?;
    let calls = clients.into_iter().map(|mut c| async move {
        for _ in 0..5 {
            let acknowledged = api::spend(&mut c, "reader", 1).await?.balance;
            // Only spends run here, so a balance can only go down.
            let seen = join_all((0..4).map(|_| {
                let mut c = c.clone();
                async move { api::balance(&mut c, "reader").await }
            }))
            .await;
            for balance in seen {
                let balance = balance?;
                ensure!(
                    balance <= acknowledged,
                    "read {balance} after a spend acknowledged at {acknowledged}"
                );
            }
        }
        Ok(())
    });
    for r in join_all(calls).await {
        r?;
    }
    let after = server.ledger.read_stats();
    let (reads, queries) = (after.reads - before.reads, after.queries - before.queries);
    ensure!(reads == 64 * 5 * 4, "{reads} reads answered");
    ensure!(
        queries < reads,
        "{reads} concurrent reads took {queries} queries"
    );
    eprintln!("{reads} balance reads from 64 clients: {queries} queries");
    ensure!(api::balance(&mut c, "reader").await? == 100_000 - 64 * 5);
    Ok(())
}

/// A write held up by a row lock taken outside this server (another
/// process, an operator's session) must not hold up other users' writes.
/// SQLite has one writer for the whole file, so there it would, by design.
mod a_write_waiting_on_a_row_lock {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn does_not_hold_up_other_users_postgres() {
        integration_tests::run("row_lock", Backend::Postgres, scenario).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn does_not_hold_up_other_users_mysql() {
        integration_tests::run("row_lock", Backend::MySql, scenario).await
    }

    async fn scenario(server: &TestServer) -> anyhow::Result<()> {
        let mut c = server.client().await?;
        for user in ["locked", "free"] {
            api::create_user(&mut c, user).await?;
            api::top_up(&mut c, user, 100).await?;
        }
        let elsewhere = server.db.begin().await?;
        user_balance::Entity::find_by_id("locked".to_owned())
            .lock_exclusive()
            .one(&elsewhere)
            .await?
            .context("the locked user's balance row")?;
        let mut waiting_client = server.client().await?;
        let waiting =
            tokio::spawn(async move { api::spend(&mut waiting_client, "locked", 1).await });
        // Let that spend's batch start and block on the lock.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let free = tokio::time::timeout(Duration::from_secs(10), api::spend(&mut c, "free", 1))
            .await
            .context("a spend on another user waited for the locked row")??;
        ensure!(free.balance == 99);
        ensure!(
            !waiting.is_finished(),
            "the spend on the locked row finished while it was locked"
        );
        elsewhere.rollback().await?;
        let locked = waiting.await??;
        ensure!(locked.balance == 99, "balance {}", locked.balance);
        Ok(())
    }
}

/// Spends on one user's empty balance fail without touching another's.
async fn users_do_not_interfere(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "rich").await?;
    api::create_user(&mut c, "poor").await?;
    api::top_up(&mut c, "rich", 1000).await?;
    let clients = server.clients(20).await?;
    let calls = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| async move {
            let user = if i % 2 == 0 { "rich" } else { "poor" };
            (user, api::spend(&mut c, user, 10).await)
        });
    for (user, r) in join_all(calls).await {
        match user {
            "rich" => ensure!(r.is_ok(), "rich spend failed: {r:?}"),
            _ => ensure!(r.is_err(), "poor spend succeeded"),
        }
    }
    ensure!(api::balance(&mut c, "rich").await? == 900);
    ensure!(api::balance(&mut c, "poor").await? == 0);
    invariants::check_user(server, "rich").await?;
    invariants::check_user(server, "poor").await?;
    Ok(())
}
