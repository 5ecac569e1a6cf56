//! Holds through the real server on every database: reserve against the
//! available balance, capture or release exactly once, exact expiry, the
//! verifier's hold checks, and bad input.

use std::time::Duration;

use anyhow::{Context, ensure};
use credit_proto::v1 as pb;
use futures::future::join_all;
use integration_tests::{Client, TestServer, api, ledger_tests};
use tonic::{Code, Status};

ledger_tests!(
    parallel_reserves_take_only_what_is_available,
    a_hold_is_closed_exactly_once_under_races,
    captures_settle_for_less_more_or_nothing,
    holds_expire_exactly_without_a_job,
    a_real_short_ttl_expires,
    retries_replay_and_keys_are_unique_across_kinds,
    bad_hold_requests_are_refused_cleanly,
    a_storm_of_hold_traffic_keeps_every_invariant,
    the_verifier_catches_broken_holds,
);

async fn reserve(
    c: &mut Client,
    user: &str,
    amount: i64,
    key: &str,
    ttl_secs: Option<i64>,
) -> Result<pb::ReserveResponse, Status> {
    let expiry = ttl_secs.map(|s| {
        pb::reserve_request::Expiry::Ttl(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    });
    Ok(c.reserve(pb::ReserveRequest {
        user_id: user.into(),
        amount,
        idempotency_key: key.into(),
        expiry,
        ..Default::default()
    })
    .await?
    .into_inner())
}

async fn capture(
    c: &mut Client,
    user: &str,
    hold: &str,
    amount: i64,
    key: &str,
) -> Result<pb::CaptureResponse, Status> {
    Ok(c.capture(pb::CaptureRequest {
        user_id: user.into(),
        hold_id: hold.into(),
        amount,
        idempotency_key: key.into(),
        ..Default::default()
    })
    .await?
    .into_inner())
}

async fn release(c: &mut Client, user: &str, hold: &str) -> Result<pb::ReleaseResponse, Status> {
    Ok(c.release(pb::ReleaseRequest {
        user_id: user.into(),
        hold_id: hold.into(),
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

fn hold_id(r: &pb::ReserveResponse) -> String {
    r.hold.clone().unwrap_or_default().hold_id
}

async fn funded(server: &TestServer, user: &str, amount: i64) -> anyhow::Result<Client> {
    let mut c = server.client().await?;
    api::create_user(&mut c, user).await?;
    api::top_up(&mut c, user, amount).await?;
    Ok(c)
}

async fn clean(server: &TestServer) -> anyhow::Result<()> {
    let report = server.ledger.verify(None).await?;
    ensure!(report.is_clean(), "the verifier found:\n{report}");
    Ok(())
}

async fn parallel_reserves_take_only_what_is_available(server: &TestServer) -> anyhow::Result<()> {
    let mut c = funded(server, "u", 500).await?;
    let clients = server.clients(10).await?;
    let tries =
        clients
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| async move {
                reserve(&mut c, "u", 100, &format!("r{i}"), Some(600)).await
            });
    let mut placed = Vec::new();
    for result in join_all(tries).await {
        match result {
            Ok(r) => placed.push(hold_id(&r)),
            Err(s) => ensure!(
                s.code() == Code::FailedPrecondition
                    && api::reason(&s).as_deref() == Some("INSUFFICIENT_BALANCE"),
                "{s:?}"
            ),
        }
    }
    ensure!(
        placed.len() == 5,
        "{} of 10 reserves of 100 from 500",
        placed.len()
    );
    let b = balance(&mut c, "u").await?;
    ensure!((b.balance, b.held, b.available) == (500, 500, 0), "{b:?}");
    let refused = api::spend(&mut c, "u", 1)
        .await
        .expect_err("nothing is available");
    ensure!(api::info(&refused, "availableBalance").as_deref() == Some("0"));
    release(&mut c, "u", &placed[0]).await?;
    api::spend(&mut c, "u", 1).await?;
    let b = balance(&mut c, "u").await?;
    ensure!((b.balance, b.held, b.available) == (499, 400, 99), "{b:?}");
    clean(server).await
}

async fn a_hold_is_closed_exactly_once_under_races(server: &TestServer) -> anyhow::Result<()> {
    let mut c = funded(server, "u", 1000).await?;
    let hold = hold_id(&reserve(&mut c, "u", 100, "", Some(600)).await?);
    let clients = server.clients(20).await?;
    let races = clients.into_iter().enumerate().map(|(i, mut c)| {
        let hold = hold.clone();
        async move { capture(&mut c, "u", &hold, 50 + i as i64, &format!("c{i}")).await }
    });
    let results = join_all(races).await;
    let won: Vec<&pb::CaptureResponse> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    ensure!(
        won.len() == 1,
        "{} captures of one hold succeeded",
        won.len()
    );
    for r in &results {
        if let Err(s) = r {
            ensure!(
                api::reason(s).as_deref() == Some("HOLD_NOT_ACTIVE"),
                "{s:?}"
            );
        }
    }
    let charged = -won[0].transaction.clone().unwrap_or_default().amount;
    let b = balance(&mut c, "u").await?;
    ensure!((b.balance, b.held) == (1000 - charged, 0), "{b:?}");

    // Capture racing release: one of them wins, the other is refused.
    let hold = hold_id(&reserve(&mut c, "u", 100, "", Some(600)).await?);
    let (mut c1, mut c2) = (server.client().await?, server.client().await?);
    let (captured, released) = tokio::join!(
        capture(&mut c1, "u", &hold, 60, ""),
        release(&mut c2, "u", &hold)
    );
    ensure!(
        captured.is_ok() != released.is_ok(),
        "capture {captured:?} and release {released:?}"
    );
    let b = balance(&mut c, "u").await?;
    let want = 1000 - charged - if captured.is_ok() { 60 } else { 0 };
    ensure!((b.balance, b.held) == (want, 0), "{b:?}");
    clean(server).await
}

async fn captures_settle_for_less_more_or_nothing(server: &TestServer) -> anyhow::Result<()> {
    let mut c = funded(server, "u", 300).await?;
    let less = hold_id(&reserve(&mut c, "u", 100, "", None).await?);
    let r = capture(&mut c, "u", &less, 40, "").await?;
    let tx = r.transaction.clone().context("a USAGE transaction")?;
    ensure!(tx.amount == -40 && tx.hold_id == less && tx.r#type() == pb::TransactionType::Usage);
    let hold = r.hold.clone().unwrap_or_default();
    ensure!(hold.state() == pb::HoldState::Captured && hold.captured_amount == 40);
    ensure!(hold.capture_transaction_id == tx.transaction_id);
    ensure!((r.balance, r.available) == (260, 260), "{r:?}");
    // More than held: the excess from what is available.
    let more = hold_id(&reserve(&mut c, "u", 100, "", None).await?);
    let r = capture(&mut c, "u", &more, 150, "").await?;
    ensure!((r.balance, r.available) == (110, 110), "{r:?}");
    // More than held + available: refused, the hold stays active.
    let short = hold_id(&reserve(&mut c, "u", 100, "", None).await?);
    let s = capture(&mut c, "u", &short, 111, "")
        .await
        .expect_err("too much");
    ensure!(
        api::reason(&s).as_deref() == Some("INSUFFICIENT_BALANCE"),
        "{s:?}"
    );
    let b = balance(&mut c, "u").await?;
    ensure!((b.balance, b.held, b.available) == (110, 100, 10), "{b:?}");
    // Zero releases: no transaction.
    let r = capture(&mut c, "u", &short, 0, "").await?;
    ensure!(r.transaction.is_none());
    ensure!(r.hold.unwrap_or_default().state() == pb::HoldState::Released);
    let history = api::all_transactions(&mut c, "u").await?;
    ensure!(history.len() == 3, "top-up and two captures: {history:?}");
    ensure!(
        history
            .windows(2)
            .all(|w| w[1].sequence == w[0].sequence + 1)
    );
    clean(server).await
}

async fn holds_expire_exactly_without_a_job(server: &TestServer) -> anyhow::Result<()> {
    let mut c = funded(server, "u", 100).await?;
    let hold = hold_id(&reserve(&mut c, "u", 80, "", Some(60)).await?);
    let b = balance(&mut c, "u").await?;
    ensure!((b.held, b.available) == (80, 20), "{b:?}");
    server.ledger.advance_clock(Duration::from_secs(59));
    ensure!(
        balance(&mut c, "u").await?.held == 80,
        "one second before expiry"
    );
    server.ledger.advance_clock(Duration::from_secs(1));
    // Exactly at expire_time: no longer held, on the read path, before any
    // write noticed it.
    let b = balance(&mut c, "u").await?;
    ensure!((b.held, b.available) == (0, 100), "at expiry: {b:?}");
    let got = c
        .get_hold(pb::GetHoldRequest {
            user_id: "u".into(),
            hold_id: hold.clone(),
        })
        .await?
        .into_inner()
        .hold
        .unwrap_or_default();
    ensure!(got.state() == pb::HoldState::Expired && got.closed_at == got.expire_time);
    let s = capture(&mut c, "u", &hold, 10, "")
        .await
        .expect_err("expired");
    ensure!(api::reason(&s).as_deref() == Some("HOLD_EXPIRED"), "{s:?}");
    // The next write wrote the expiry down; the credits are spendable.
    api::spend(&mut c, "u", 100).await?;
    let listed = c
        .list_holds(pb::ListHoldsRequest {
            user_id: "u".into(),
            states: vec![pb::HoldState::Expired.into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(listed.holds.len() == 1 && listed.holds[0].hold_id == hold);
    clean(server).await
}

async fn a_real_short_ttl_expires(server: &TestServer) -> anyhow::Result<()> {
    let mut c = funded(server, "u", 10).await?;
    let hold = hold_id(&reserve(&mut c, "u", 10, "", Some(1)).await?);
    ensure!(balance(&mut c, "u").await?.available == 0);
    // Generous margins: a one-second TTL, checked after three.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(balance(&mut c, "u").await?.available == 10);
    let s = release(&mut c, "u", &hold).await.expect_err("expired");
    ensure!(api::reason(&s).as_deref() == Some("HOLD_EXPIRED"), "{s:?}");
    clean(server).await
}

async fn retries_replay_and_keys_are_unique_across_kinds(
    server: &TestServer,
) -> anyhow::Result<()> {
    let mut c = funded(server, "u", 100).await?;
    let first = reserve(&mut c, "u", 30, "k-reserve", Some(600)).await?;
    let again = reserve(&mut c, "u", 30, "k-reserve", Some(600)).await?;
    ensure!(hold_id(&first) == hold_id(&again) && again.available == 70);
    let hold = hold_id(&first);
    let captured = capture(&mut c, "u", &hold, 20, "k-capture").await?;
    let replayed = capture(&mut c, "u", &hold, 20, "k-capture").await?;
    ensure!(captured.transaction == replayed.transaction && replayed.balance == 80);
    // The reserve's replay still shows the hold as it was placed.
    let again = reserve(&mut c, "u", 30, "k-reserve", Some(600)).await?;
    ensure!(again.hold.unwrap_or_default().state() == pb::HoldState::Active);
    for reuse in [
        api::top_up_with_key(&mut c, "u", 30, "k-reserve")
            .await
            .err(),
        api::spend_with_key(&mut c, "u", 20, "k-capture")
            .await
            .err(),
        reserve(&mut c, "u", 31, "k-reserve", Some(600)).await.err(),
        capture(&mut c, "u", &hold, 21, "k-capture").await.err(),
    ] {
        let s = reuse.context("a reused key was accepted")?;
        ensure!(
            api::reason(&s).as_deref() == Some("IDEMPOTENCY_KEY_REUSED"),
            "{s:?}"
        );
    }
    ensure!(api::all_transactions(&mut c, "u").await?.len() == 2);
    clean(server).await
}

async fn bad_hold_requests_are_refused_cleanly(server: &TestServer) -> anyhow::Result<()> {
    let mut c = funded(server, "u", 100).await?;
    api::create_user(&mut c, "other").await?;
    api::top_up(&mut c, "other", 100).await?;
    let theirs = hold_id(&reserve(&mut c, "other", 10, "", None).await?);
    let unknown = uuid::Uuid::now_v7().to_string();
    for (what, result, code, reason) in [
        (
            "unknown hold",
            capture(&mut c, "u", &unknown, 1, "").await.err(),
            Code::NotFound,
            "HOLD_NOT_FOUND",
        ),
        (
            "another user's hold",
            capture(&mut c, "u", &theirs, 1, "").await.err(),
            Code::NotFound,
            "HOLD_NOT_FOUND",
        ),
        (
            "release of another's",
            release(&mut c, "u", &theirs).await.err(),
            Code::NotFound,
            "HOLD_NOT_FOUND",
        ),
        (
            "zero reserve",
            reserve(&mut c, "u", 0, "", None).await.err(),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            "negative reserve",
            reserve(&mut c, "u", -5, "", None).await.err(),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            "overflowing reserve",
            reserve(&mut c, "u", i64::MAX, "", None).await.err(),
            Code::FailedPrecondition,
            "INSUFFICIENT_BALANCE",
        ),
        (
            "TTL over the maximum",
            reserve(&mut c, "u", 1, "", Some(8 * 24 * 3600)).await.err(),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            "negative TTL",
            reserve(&mut c, "u", 1, "", Some(-1)).await.err(),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            "negative capture",
            capture(&mut c, "u", &theirs, -1, "").await.err(),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            "garbage hold id",
            capture(&mut c, "u", "nope", 1, "").await.err(),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        ),
        (
            "unknown user",
            reserve(&mut c, "nobody", 1, "", None).await.err(),
            Code::NotFound,
            "USER_NOT_FOUND",
        ),
    ] {
        let s = result.with_context(|| format!("{what} was accepted"))?;
        ensure!(
            s.code() == code && api::reason(&s).as_deref() == Some(reason),
            "{what}: {s:?}"
        );
    }
    let mine = hold_id(&reserve(&mut c, "u", 50, "", None).await?);
    let s = capture(&mut c, "u", &mine, i64::MAX, "")
        .await
        .expect_err("overflow");
    ensure!(
        api::reason(&s).as_deref() == Some("INSUFFICIENT_BALANCE"),
        "{s:?}"
    );
    let b = balance(&mut c, "u").await?;
    ensure!(
        (b.balance, b.held) == (100, 50),
        "refusals changed nothing: {b:?}"
    );
    clean(server).await
}

async fn a_storm_of_hold_traffic_keeps_every_invariant(server: &TestServer) -> anyhow::Result<()> {
    let users = ["s0", "s1", "s2"];
    let mut c = server.client().await?;
    for u in users {
        api::create_user(&mut c, u).await?;
        api::top_up(&mut c, u, 5_000).await?;
    }
    let clients = server.clients(50).await?;
    let workers = clients
        .into_iter()
        .enumerate()
        .map(|(w, mut c)| async move {
            let mut captured = Vec::new();
            for i in 0..12 {
                let user = users[(w + i) % users.len()];
                let key = format!("w{w}-{i}");
                let step: Result<(), Status> = async {
                    match (w + i) % 6 {
                        0 => drop(api::top_up_with_key(&mut c, user, 50, &key).await?),
                        1 => drop(api::spend_with_key(&mut c, user, 30, &key).await?),
                        _ => {
                            let r = reserve(&mut c, user, 100, &key, Some(600)).await?;
                            let hold = hold_id(&r);
                            match i % 4 {
                                0 => drop(release(&mut c, user, &hold).await?),
                                1 => {
                                    let r = capture(&mut c, user, &hold, 60, &format!("{key}-c"))
                                        .await?;
                                    captured.push(r.transaction.unwrap_or_default().transaction_id);
                                }
                                2 => {
                                    let r = capture(&mut c, user, &hold, 120, &format!("{key}-c"))
                                        .await?;
                                    captured.push(r.transaction.unwrap_or_default().transaction_id);
                                }
                                _ => {} // left to expire
                            }
                        }
                    }
                    Ok(())
                }
                .await;
                if let Err(s) = step {
                    ensure!(
                        api::reason(&s).as_deref() == Some("INSUFFICIENT_BALANCE"),
                        "worker {w} step {i}: {s:?}"
                    );
                }
            }
            Ok::<_, anyhow::Error>(captured)
        });
    let mut acknowledged = Vec::new();
    for result in join_all(workers).await {
        acknowledged.extend(result?);
    }
    // Let the unreleased holds expire, then write it down with a write.
    server.ledger.advance_clock(Duration::from_secs(601));
    for u in users {
        api::top_up(&mut c, u, 1).await?;
        let b = balance(&mut c, u).await?;
        ensure!(b.held == 0 && b.available == b.balance, "{b:?}");
    }
    let mut logged = std::collections::HashMap::new();
    for u in users {
        for tx in api::all_transactions(&mut c, u).await? {
            if !tx.hold_id.is_empty() {
                *logged.entry(tx.transaction_id).or_insert(0) += 1;
            }
        }
    }
    for id in &acknowledged {
        ensure!(
            logged.get(id) == Some(&1),
            "capture {id} is not in the log exactly once"
        );
    }
    ensure!(
        logged.len() == acknowledged.len(),
        "captures in the log that nobody acknowledged"
    );
    eprintln!(
        "{} acknowledged captures, each in the log once",
        acknowledged.len()
    );
    clean(server).await
}

/// The verifier's hold checks fire on a corrupted ledger (changed behind
/// the server's back, as a bug or a bad manual fix would).
async fn the_verifier_catches_broken_holds(server: &TestServer) -> anyhow::Result<()> {
    use sea_orm::{ConnectionTrait, Statement};
    let mut c = funded(server, "u", 100).await?;
    let active = hold_id(&reserve(&mut c, "u", 30, "", Some(600)).await?);
    let captured = hold_id(&reserve(&mut c, "u", 20, "", Some(600)).await?);
    capture(&mut c, "u", &captured, 20, "").await?;
    clean(server).await?;
    let backend = server.db.get_database_backend();
    let run = |sql: String| {
        let db = server.db.clone();
        async move { db.execute_raw(Statement::from_string(backend, sql)).await }
    };
    let kinds = async || -> anyhow::Result<Vec<String>> {
        let report = server.ledger.verify(Some("u")).await?;
        Ok(report
            .violations
            .iter()
            .map(|v| v.kind.as_str().to_owned())
            .collect())
    };
    // held no longer the sum of the active holds.
    run("UPDATE user_balance SET held = held + 1 WHERE user_id = 'u'".into()).await?;
    ensure!(kinds().await?.contains(&"HELD_MISMATCH".to_owned()));
    run("UPDATE user_balance SET held = held - 1 WHERE user_id = 'u'".into()).await?;
    // A hold closed twice: a second capture transaction names it.
    run(format!(
        "UPDATE credit_transaction SET hold_id = '{captured}' WHERE user_id = 'u' AND sequence = 1"
    ))
    .await?;
    ensure!(kinds().await?.contains(&"HOLD_CAPTURE_MISMATCH".to_owned()));
    run("UPDATE credit_transaction SET hold_id = NULL WHERE user_id = 'u' AND sequence = 1".into())
        .await?;
    // An active hold with a close time.
    run(format!(
        "UPDATE credit_hold SET closed_at = expire_time WHERE id = '{active}'"
    ))
    .await?;
    ensure!(kinds().await?.contains(&"HOLD_INVALID".to_owned()));
    run(format!(
        "UPDATE credit_hold SET closed_at = NULL WHERE id = '{active}'"
    ))
    .await?;
    // More held than the balance, with no TOP_UP refund to explain it.
    run(format!(
        "UPDATE credit_hold SET amount = 500 WHERE id = '{active}'"
    ))
    .await?;
    run("UPDATE user_balance SET held = 500 WHERE user_id = 'u'".into()).await?;
    ensure!(kinds().await?.contains(&"NEGATIVE_AVAILABLE".to_owned()));
    Ok(())
}

/// kill -9 of the server between Reserve and Capture: the hold survives
/// the restart and can be captured; another survives and expires as
/// stated (the real binary, its own database file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_survive_kill_9_and_expire_as_stated() -> anyhow::Result<()> {
    use integration_tests::TestDb;
    use integration_tests::process::ServerProcess;
    let db = TestDb::sqlite().await?;
    let mut server = ServerProcess::start(&db.url, &[]).await?;
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    api::top_up(&mut c, "u", 100).await?;
    let kept = hold_id(&reserve(&mut c, "u", 40, "kept", Some(600)).await?);
    let short = hold_id(&reserve(&mut c, "u", 30, "short", Some(2)).await?);
    server.kill()?;
    server.restart().await?;
    let mut c = server.client().await?;
    let b = balance(&mut c, "u").await?;
    ensure!(b.balance == 100 && b.held >= 40, "after the restart: {b:?}");
    let captured = capture(&mut c, "u", &kept, 25, "kept-capture").await?;
    ensure!(captured.balance == 75, "{captured:?}");
    // The short one expires at its expire_time (with margin), restart or not.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = capture(&mut c, "u", &short, 1, "")
        .await
        .expect_err("expired");
    ensure!(api::reason(&s).as_deref() == Some("HOLD_EXPIRED"), "{s:?}");
    let b = balance(&mut c, "u").await?;
    ensure!((b.balance, b.held, b.available) == (75, 0, 75), "{b:?}");
    let report = c
        .verify_ledger(pb::VerifyLedgerRequest::default())
        .await?
        .into_inner();
    ensure!(report.clean, "{}", report.report);
    drop(server);
    db.drop_database().await
}

/// Two server processes over one database: holds are serialised by the
/// row lock in the database, not by memory in one process. Reserves from
/// both take only what is available; captures of one hold from both
/// succeed exactly once.
async fn holds_across_processes(db: &integration_tests::TestDb) -> anyhow::Result<()> {
    use integration_tests::process::ServerProcess;
    let a = ServerProcess::start(&db.url, &[]).await?;
    let b = ServerProcess::start(&db.url, &[]).await?;
    let mut c = a.client().await?;
    api::create_user(&mut c, "u").await?;
    api::top_up(&mut c, "u", 500).await?;
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(if i % 2 == 0 {
            a.client().await?
        } else {
            b.client().await?
        });
    }
    let reserves =
        clients
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, mut c)| async move {
                reserve(&mut c, "u", 100, &format!("x{i}"), Some(600)).await
            });
    let placed: Vec<String> = join_all(reserves)
        .await
        .into_iter()
        .filter_map(|r| r.ok().map(|r| hold_id(&r)))
        .collect();
    ensure!(
        placed.len() == 5,
        "{} of 10 reserves across two processes",
        placed.len()
    );
    let hold = placed[0].clone();
    let captures = clients.iter().cloned().enumerate().map(|(i, mut c)| {
        let hold = hold.clone();
        async move { capture(&mut c, "u", &hold, 10 + i as i64, &format!("xc{i}")).await }
    });
    let won = join_all(captures)
        .await
        .into_iter()
        .filter(Result::is_ok)
        .count();
    ensure!(won == 1, "{won} captures of one hold across two processes");
    let b_balance = balance(&mut c, "u").await?;
    ensure!(b_balance.held == 400, "{b_balance:?}");
    let report = c
        .verify_ledger(pb::VerifyLedgerRequest::default())
        .await?
        .into_inner();
    ensure!(report.clean, "{}", report.report);
    drop((a, b));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_holds_across_processes() {
    integration_tests::run_on_database(
        "holds_across_processes",
        integration_tests::Backend::Postgres,
        holds_across_processes,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_holds_across_processes() {
    integration_tests::run_on_database(
        "holds_across_processes",
        integration_tests::Backend::MySql,
        holds_across_processes,
    )
    .await
}
