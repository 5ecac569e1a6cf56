//! The change feed through the Rust client and the CLI, against the real
//! server on every configured database: the transaction feed in order,
//! resumed from a stored cursor, across a server restart without the
//! caller doing anything; the balance watch; errors that end a watch.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use credit_client::{CreditClient, Error, FeedMessage, TransactionType};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use integration_tests::process::ServerProcess;
use integration_tests::{TestDb, TestServer, database_tests, ledger_tests};

ledger_tests!(
    the_feed_gives_each_write_once_and_resumes_from_a_cursor,
    the_feed_filters_by_type,
    watch_balance_follows_every_change,
    errors_that_retrying_cannot_fix_end_the_watch,
    the_cli_follows_the_feed_and_the_balance,
);
mod restart {
    use super::*;
    database_tests!(a_watch_survives_a_server_restart_without_a_gap);
}

/// How long a test waits for a message it expects.
const PATIENCE: Duration = Duration::from_secs(15);

async fn user_with(client: &CreditClient, user: &str, credits: i64) -> anyhow::Result<()> {
    client
        .create_user(user, format!("{user}@example.com"))
        .await?;
    if credits > 0 {
        client.top_up(user, credits).await?;
    }
    Ok(())
}

async fn next<T>(stream: &mut BoxStream<'static, Result<T, Error>>) -> anyhow::Result<T> {
    match tokio::time::timeout(PATIENCE, stream.next()).await {
        Err(_) => bail!("no message within {PATIENCE:?}"),
        Ok(None) => bail!("the watch ended"),
        Ok(Some(item)) => Ok(item?),
    }
}

/// The next `n` transactions, skipping heartbeats, and the last cursor.
async fn transactions(
    feed: &mut BoxStream<'static, Result<FeedMessage, Error>>,
    n: usize,
) -> anyhow::Result<(Vec<credit_client::Transaction>, String)> {
    let mut got = Vec::new();
    let mut cursor = String::new();
    while got.len() < n {
        let m = next(feed).await?;
        ensure!(!m.cursor.is_empty(), "a message without a cursor: {m:?}");
        cursor = m.cursor;
        got.extend(m.transaction);
    }
    Ok((got, cursor))
}

async fn the_feed_gives_each_write_once_and_resumes_from_a_cursor(
    server: &TestServer,
) -> anyhow::Result<()> {
    let c = CreditClient::connect(server.endpoint()).await?;
    user_with(&c, "alice", 0).await?;
    // From now: the first message is a heartbeat with a cursor.
    let mut feed = c.watch_transactions("alice").stream();
    let first = next(&mut feed).await?;
    ensure!(first.transaction.is_none(), "{first:?}");

    c.top_up("alice", 100).await?;
    c.spend("alice", 30).await?;
    c.grant("alice", 5).await?;
    let (got, after_two) = {
        let (two, cursor) = transactions(&mut feed, 2).await?;
        let (third, _) = transactions(&mut feed, 1).await?;
        ([two, third].concat(), cursor)
    };
    let kinds: Vec<_> = got.iter().map(|t| (t.kind, t.amount, t.sequence)).collect();
    ensure!(
        kinds
            == [
                (TransactionType::TopUp, 100, 1),
                (TransactionType::Usage, -30, 2),
                (TransactionType::Grant, 5, 3),
            ],
        "{kinds:?}"
    );
    drop(feed);

    // A consumer that stored the second message's cursor gets the third
    // again, then what came later, each once.
    c.spend("alice", 1).await?;
    let mut resumed = c
        .watch_transactions("alice")
        .start_after(after_two)
        .stream();
    let (again, _) = transactions(&mut resumed, 2).await?;
    let seqs: Vec<i64> = again.iter().map(|t| t.sequence).collect();
    ensure!(seqs == [3, 4], "{seqs:?}");
    ensure!(again[0].transaction_id == got[2].transaction_id);
    Ok(())
}

async fn the_feed_filters_by_type(server: &TestServer) -> anyhow::Result<()> {
    let c = CreditClient::connect(server.endpoint()).await?;
    user_with(&c, "bob", 0).await?;
    let mut feed = c
        .watch_transactions("bob")
        .types([TransactionType::Usage])
        .stream();
    next(&mut feed).await?;
    c.top_up("bob", 50).await?;
    c.spend("bob", 7).await?;
    let (got, _) = transactions(&mut feed, 1).await?;
    ensure!(
        got[0].kind == TransactionType::Usage && got[0].amount == -7,
        "{got:?}"
    );
    Ok(())
}

async fn watch_balance_follows_every_change(server: &TestServer) -> anyhow::Result<()> {
    let c = CreditClient::connect(server.endpoint()).await?;
    user_with(&c, "carol", 100).await?;
    let mut balances = c.watch_balance("carol").stream();
    let now = next(&mut balances).await?;
    ensure!((now.balance, now.last_sequence) == (100, 1), "{now:?}");
    c.spend("carol", 40).await?;
    let after = next(&mut balances).await?;
    ensure!(
        (after.balance, after.available, after.last_sequence) == (60, 60, 2),
        "{after:?}"
    );
    // A hold changes what is available, not the balance.
    c.reserve("carol", 25).await?;
    let held = next(&mut balances).await?;
    ensure!(
        (held.balance, held.held, held.available) == (60, 25, 35),
        "{held:?}"
    );
    Ok(())
}

async fn errors_that_retrying_cannot_fix_end_the_watch(server: &TestServer) -> anyhow::Result<()> {
    let c = CreditClient::connect(server.endpoint()).await?;
    user_with(&c, "dave", 0).await?;
    let mut bad = c
        .watch_transactions("dave")
        .start_after("not-a-cursor")
        .stream();
    match tokio::time::timeout(PATIENCE, bad.next()).await? {
        Some(Err(Error::InvalidArgument { violations, .. })) => ensure!(
            violations.iter().any(|v| v.field == "start_after"),
            "{violations:?}"
        ),
        other => bail!("a bad cursor is INVALID_ARGUMENT, got {other:?}"),
    }
    ensure!(bad.next().await.is_none(), "the watch ends after the error");

    let mut unknown = c.watch_balance("nobody").stream();
    match tokio::time::timeout(PATIENCE, unknown.next()).await? {
        Some(Err(Error::NotFound { id, .. })) => ensure!(id == "nobody"),
        other => bail!("an unknown user is NOT_FOUND, got {other:?}"),
    }
    Ok(())
}

/// `credit watch --json` prints JSON lines with cursors (heartbeats too)
/// and stops at --limit; `credit watch-balance` prints one line per value.
async fn the_cli_follows_the_feed_and_the_balance(server: &TestServer) -> anyhow::Result<()> {
    let c = CreditClient::connect(server.endpoint()).await?;
    user_with(&c, "erin", 10).await?;
    let credit = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_credit"));
        command
            .env_clear()
            .arg("--server")
            .arg(server.endpoint())
            .args(args)
            .kill_on_drop(true);
        command.output()
    };
    // Everything from the start of erin's history: a cursor-less start
    // would begin after the top-up, so resume from the feed's first cursor
    // of an earlier watch instead.
    let mut feed = c.watch_transactions("erin").stream();
    let start = next(&mut feed).await?.cursor;
    drop(feed);
    c.spend("erin", 3).await?;
    c.spend("erin", 4).await?;
    let out = tokio::time::timeout(
        PATIENCE,
        credit(&[
            "watch",
            "erin",
            "--start-after",
            &start,
            "--limit",
            "2",
            "--json",
        ]),
    )
    .await??;
    let stdout = String::from_utf8(out.stdout)?;
    ensure!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| stdout.clone())?;
    let amounts: Vec<_> = lines
        .iter()
        .filter_map(|l| l["transaction"]["amount"].as_str())
        .collect();
    ensure!(amounts == ["-3", "-4"], "{stdout}");
    ensure!(
        lines.iter().all(|l| l["cursor"].as_str().is_some()),
        "{stdout}"
    );

    let out = tokio::time::timeout(PATIENCE, credit(&["watch-balance", "erin", "--limit", "1"]))
        .await??;
    let stdout = String::from_utf8(out.stdout)?;
    ensure!(
        out.status.success() && stdout.contains("balance 3") && stdout.contains("seq 3"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A watch reads on while its server stops and starts again on the same
/// port: the client reopens from the last cursor by itself, and every
/// transaction written before, during and after the restart arrives once,
/// in order.
async fn a_watch_survives_a_server_restart_without_a_gap(db: &TestDb) -> anyhow::Result<()> {
    let mut server = ServerProcess::start(&db.url, &["--stream-heartbeat-secs", "1"]).await?;
    let c = CreditClient::builder(server.endpoint())
        .retry_policy(credit_client::RetryPolicy {
            max_attempts: 30,
            max_backoff: Duration::from_millis(500),
            ..Default::default()
        })
        .connect()
        .await?;
    user_with(&c, "frank", 0).await?;
    let mut feed = c.watch_transactions("frank").stream();
    next(&mut feed).await?;
    let consumer = tokio::spawn(async move {
        let (got, _) = transactions(&mut feed, 30).await?;
        anyhow::Ok(got)
    });

    for _ in 0..10 {
        c.top_up("frank", 1).await?;
    }
    server.terminate()?;
    server.wait_exit(Duration::from_secs(20)).await?;
    // Written while no server runs: the writes wait for it (retries), the
    // feed picks them up after the restart.
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            for _ in 0..10 {
                c.top_up("frank", 1).await?;
            }
            anyhow::Ok(())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart().await?;
    writer.await??;
    for _ in 0..10 {
        c.top_up("frank", 1).await?;
    }
    let got = server.explain(
        tokio::time::timeout(PATIENCE, consumer)
            .await
            .context("the consumer did not get all 30")??,
    )?;
    let seqs: Vec<i64> = got.iter().map(|t| t.sequence).collect();
    ensure!(seqs == (1..=30).collect::<Vec<_>>(), "{seqs:?}");
    let balance = c.get_balance("frank").await?;
    ensure!(balance.balance == 30, "{balance:?}");
    Ok(())
}

#[tokio::test]
async fn watch_streams_need_no_server_to_be_built() -> anyhow::Result<()> {
    // Building a watch sends nothing: it only connects when read.
    let c = CreditClient::builder("http://127.0.0.1:9")
        .retry_policy(credit_client::RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        })
        .connect_lazy()?;
    let watch = c.watch_balance("x");
    let mut stream = watch.resume(false).stream();
    let first = tokio::time::timeout(PATIENCE, stream.try_next()).await?;
    ensure!(
        matches!(first, Err(Error::Unavailable { .. })),
        "a watch of a server that is not there fails UNAVAILABLE: {first:?}"
    );
    Ok(())
}
