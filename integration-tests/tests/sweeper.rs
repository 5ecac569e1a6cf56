//! The expiry sweeper on every database: it writes down the expiries of
//! users nobody writes to (EXPIRATION transactions dated the lot's
//! expire_time, EXPIRED holds), changes no balance that reads did not
//! already show, and writes each expiry once, however many sweeps race:
//! in one process (the ledger's clock moved forward), and across two real
//! server processes sweeping on their own (real time, generous margins).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use chrono::{DateTime, SubsecRound as _, Utc};
use credit_proto::v1 as pb;
use credit_server::entity::credit_hold;
use integration_tests::process::ServerProcess;
use integration_tests::{Client, TestDb, TestServer, api, ledger_tests};
use sea_orm::EntityTrait;

ledger_tests!(
    the_sweeper_writes_down_what_expired_on_quiet_accounts,
    racing_sweeps_write_each_expiry_once,
);

mod processes {
    use super::*;
    integration_tests::database_tests!(two_processes_sweep_on_their_own);
}

const HOUR: Duration = Duration::from_secs(3600);

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

async fn grant(
    c: &mut Client,
    user: &str,
    amount: i64,
    expire: DateTime<Utc>,
) -> anyhow::Result<pb::GrantResponse> {
    Ok(c.grant(pb::GrantRequest {
        user_id: user.into(),
        amount,
        expire_time: Some(ts(expire)),
        reason: "promo".into(),
        ..Default::default()
    })
    .await?
    .into_inner())
}

async fn balance(c: &mut Client, user: &str) -> anyhow::Result<pb::GetBalanceResponse> {
    Ok(c.get_balance(pb::GetBalanceRequest {
        user_id: user.into(),
    })
    .await?
    .into_inner())
}

async fn expirations(c: &mut Client, user: &str) -> anyhow::Result<Vec<pb::Transaction>> {
    Ok(api::all_transactions(c, user)
        .await?
        .into_iter()
        .filter(|t| t.r#type() == pb::TransactionType::Expiration)
        .collect())
}

async fn clean(server: &TestServer) -> anyhow::Result<()> {
    let report = server.ledger.verify(None).await?;
    ensure!(report.is_clean(), "the verifier found:\n{report}");
    Ok(())
}

async fn the_sweeper_writes_down_what_expired_on_quiet_accounts(
    server: &TestServer,
) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    for user in ["a", "b", "c"] {
        api::create_user(&mut c, user).await?;
    }
    let at = server.ledger.now() + chrono::TimeDelta::hours(1);
    // a: promotional credit that expires unspent; b: a hold nobody
    // settles; c: nothing that expires.
    api::top_up(&mut c, "a", 20).await?;
    grant(&mut c, "a", 50, at).await?;
    api::top_up(&mut c, "b", 100).await?;
    let hold = c
        .reserve(pb::ReserveRequest {
            user_id: "b".into(),
            amount: 10,
            expiry: Some(pb::reserve_request::Expiry::Ttl(prost_types::Duration {
                seconds: 1800,
                nanos: 0,
            })),
            ..Default::default()
        })
        .await?
        .into_inner()
        .hold
        .context("a hold")?;
    api::top_up(&mut c, "c", 10).await?;
    ensure!(
        server.ledger.due_users(10).await?.is_empty(),
        "nothing due yet"
    );
    ensure!(
        server.ledger.sweep().await? == 0,
        "a sweep with nothing due"
    );

    server.ledger.advance_clock(2 * HOUR);
    let due = server.ledger.due_users(10).await?;
    ensure!(due == ["a", "b"], "due: {due:?}");
    let before: Vec<pb::GetBalanceResponse> = {
        let mut all = Vec::new();
        for user in ["a", "b", "c"] {
            all.push(balance(&mut c, user).await?);
        }
        all
    };
    ensure!(
        (before[0].balance, before[1].held) == (20, 0),
        "reads leave expired credit out before any sweep: {before:?}"
    );
    ensure!(
        expirations(&mut c, "a").await?.is_empty(),
        "not written yet"
    );

    ensure!(server.ledger.sweep().await? == 2, "two users settled");
    let expired = expirations(&mut c, "a").await?;
    ensure!(
        expired.len() == 1 && expired[0].amount == -50 && expired[0].created_at == Some(ts(at)),
        "{expired:?}"
    );
    let row = credit_hold::Entity::find_by_id(hold.hold_id.clone())
        .one(server.ledger.db())
        .await?
        .context("the hold row")?;
    ensure!(
        row.state == "EXPIRED",
        "the sweep wrote the hold down: {row:?}"
    );
    for (user, was) in ["a", "b", "c"].into_iter().zip(&before) {
        let now = balance(&mut c, user).await?;
        ensure!(
            (now.balance, now.held, now.available) == (was.balance, was.held, was.available),
            "{user}: the sweep changed what reads showed: {was:?} -> {now:?}"
        );
        let sequence_step = if user == "a" { 1 } else { 0 };
        ensure!(
            now.last_sequence == was.last_sequence + sequence_step,
            "{user}: {was:?} -> {now:?}"
        );
    }
    ensure!(
        server.ledger.due_users(10).await?.is_empty(),
        "nothing due after"
    );
    ensure!(
        server.ledger.sweep().await? == 0,
        "a second sweep finds nothing"
    );
    // The next write of `a` finds nothing left to expire either.
    api::spend(&mut c, "a", 5).await?;
    ensure!(expirations(&mut c, "a").await?.len() == 1, "expired once");
    clean(server).await
}

async fn racing_sweeps_write_each_expiry_once(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let users: Vec<String> = (0..20).map(|i| format!("u{i:02}")).collect();
    let at = server.ledger.now() + chrono::TimeDelta::hours(1);
    for user in &users {
        api::create_user(&mut c, user).await?;
        api::top_up(&mut c, user, 7).await?;
        grant(&mut c, user, 30, at).await?;
        grant(&mut c, user, 3, at + chrono::TimeDelta::minutes(1)).await?;
    }
    server.ledger.advance_clock(2 * HOUR);
    // Sweeps and spends of the same users at once, in one process: each
    // goes through the write queue under the user's row lock.
    let sweeps = futures::future::join_all((0..4).map(|_| server.ledger.sweep()));
    let spends = futures::future::join_all(users.iter().map(|u| {
        let mut c = c.clone();
        async move { api::spend(&mut c, u, 2).await }
    }));
    let (sweeps, spends) = tokio::join!(sweeps, spends);
    let settled: usize = sweeps
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .sum();
    ensure!(settled >= 1, "the sweeps settled no one");
    for s in spends {
        s?;
    }
    for user in &users {
        let expired = expirations(&mut c, user).await?;
        let mut amounts: Vec<i64> = expired.iter().map(|t| t.amount).collect();
        amounts.sort_unstable();
        ensure!(amounts == [-30, -3], "{user}: {expired:?}");
        ensure!(balance(&mut c, user).await?.balance == 5, "{user}");
    }
    ensure!(
        server.ledger.due_users(100).await?.is_empty(),
        "nothing due after"
    );
    clean(server).await
}

/// Two real server processes, each sweeping every second on its own; the
/// users' credit expires and nobody writes to them. Every expiry is written
/// down once, within a few sweep intervals.
async fn two_processes_sweep_on_their_own(db: &TestDb) -> anyhow::Result<()> {
    let args = ["--expiry-sweep-secs", "1"];
    let a = ServerProcess::start(&db.url, &args).await?;
    let b = ServerProcess::start(&db.url, &args).await?;
    let result = async {
        let mut c = a.client().await?;
        let users: Vec<String> = (0..12).map(|i| format!("q{i:02}")).collect();
        // Whole milliseconds: every database stores them exactly.
        let at = (Utc::now() + chrono::TimeDelta::seconds(3)).trunc_subsecs(3);
        for user in &users {
            api::create_user(&mut c, user).await?;
            api::top_up(&mut c, user, 5).await?;
            grant(&mut c, user, 10, at).await?;
        }
        let mut read = b.client().await?;
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut pending = users.clone();
        while !pending.is_empty() {
            ensure!(
                Instant::now() < deadline,
                "expiries not written down 37 s after they were due: {pending:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
            let mut still = Vec::new();
            for user in pending {
                if expirations(&mut read, &user).await?.is_empty() {
                    still.push(user);
                }
            }
            pending = still;
        }
        let took = (Utc::now() - at).to_std().unwrap_or_default();
        for user in &users {
            let expired = expirations(&mut read, user).await?;
            ensure!(
                expired.len() == 1
                    && expired[0].amount == -10
                    && expired[0].created_at == Some(ts(at)),
                "{user}: {expired:?}"
            );
            ensure!(balance(&mut read, user).await?.balance == 5, "{user}");
        }
        let report = read
            .verify_ledger(pb::VerifyLedgerRequest::default())
            .await?
            .into_inner();
        ensure!(report.clean, "{}", report.report);
        eprintln!(
            "two sweeping processes on {:?}: {} expiries written down {took:?} after they were due",
            db.backend,
            users.len()
        );
        Ok(())
    }
    .await;
    a.explain(b.explain(result))
}
