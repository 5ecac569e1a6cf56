//! The change feed through the real server: WatchTransactions delivers
//! every committed transaction once, in each user's sequence order, and
//! resumes exactly from a cursor; WatchBalance sends the current balance
//! and then every change; bad requests get clear errors; limits hold.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use credit_proto::v1 as pb;
use integration_tests::{Client, TestServer, api, ledger_tests};
use tonic::{Code, Streaming};

ledger_tests!(
    a_user_feed_delivers_each_write_once_and_resumes_exactly,
    the_all_users_feed_filters_by_type_and_starts_from_now,
    watch_balance_sends_the_balance_then_every_change,
    bad_watch_requests_are_refused_clearly,
);

/// How long a test waits for a message it expects.
const PATIENCE: Duration = Duration::from_secs(10);

async fn watch(
    c: &mut Client,
    user_id: &str,
    start_after: &str,
) -> anyhow::Result<Streaming<pb::WatchTransactionsResponse>> {
    Ok(c.watch_transactions(pb::WatchTransactionsRequest {
        user_id: user_id.into(),
        start_after: start_after.into(),
        types: vec![],
        ..Default::default()
    })
    .await?
    .into_inner())
}

/// The next message (transaction or heartbeat).
async fn next<T>(stream: &mut Streaming<T>) -> anyhow::Result<T> {
    match tokio::time::timeout(PATIENCE, stream.message()).await {
        Err(_) => bail!("no message within {PATIENCE:?}"),
        Ok(Err(status)) => bail!("the stream ended with {status:?}"),
        Ok(Ok(None)) => bail!("the stream ended"),
        Ok(Ok(Some(m))) => Ok(m),
    }
}

/// The next `n` transactions, skipping heartbeats; with the last cursor.
async fn transactions(
    stream: &mut Streaming<pb::WatchTransactionsResponse>,
    n: usize,
) -> anyhow::Result<(Vec<pb::Transaction>, String)> {
    let mut got = Vec::new();
    let mut cursor = String::new();
    while got.len() < n {
        let m = next(stream).await?;
        ensure!(!m.cursor.is_empty(), "a message without a cursor");
        cursor = m.cursor;
        got.extend(m.transaction);
    }
    Ok((got, cursor))
}

async fn a_user_feed_delivers_each_write_once_and_resumes_exactly(
    server: &TestServer,
) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "w1").await?;
    api::create_user(&mut c, "other").await?;
    // Written before the watch: from the beginning of the feed they are
    // there; "from now" they are not.
    api::top_up(&mut c, "w1", 1000).await?;
    let mut from_start = watch(&mut c, "w1", "f1.0").await?;
    let (first, _) = transactions(&mut from_start, 1).await?;
    ensure!(first[0].amount == 1000 && first[0].sequence == 1);

    let mut live = watch(&mut c, "w1", "").await?;
    let hello = next(&mut live).await?;
    ensure!(
        hello.transaction.is_none() && !hello.cursor.is_empty(),
        "a stream from now starts with a heartbeat that gives its cursor: {hello:?}"
    );
    let mut written = Vec::new();
    for i in 0..20 {
        api::top_up(&mut c, "other", 1).await?;
        let tx = api::spend(&mut c, "w1", 10 + i).await?;
        written.push(tx.transaction.context("spend answer")?.transaction_id);
    }
    let (got, _) = transactions(&mut live, 20).await?;
    let ids: Vec<String> = got.iter().map(|t| t.transaction_id.clone()).collect();
    ensure!(
        ids == written,
        "the feed gave {ids:?}, the writes were {written:?}"
    );
    ensure!(
        got.iter().all(|t| t.user_id == "w1"),
        "another user's transaction in w1's feed"
    );
    let sequences: Vec<i64> = got.iter().map(|t| t.sequence).collect();
    ensure!(sequences == (2..=21).collect::<Vec<_>>(), "{sequences:?}");

    // Resume after the 10th: exactly the 11th..20th again, then nothing.
    let mut again = watch(&mut c, "w1", "").await?;
    drop(again);
    let mut resumed_from = String::new();
    let mut replay = watch(&mut c, "w1", &hello.cursor).await?;
    let (first_ten, cursor) = transactions(&mut replay, 10).await?;
    ensure!(
        first_ten
            .iter()
            .map(|t| &t.transaction_id)
            .eq(written[..10].iter())
    );
    resumed_from.push_str(&cursor);
    drop(replay);
    again = watch(&mut c, "w1", &resumed_from).await?;
    let (rest, _) = transactions(&mut again, 10).await?;
    ensure!(
        rest.iter()
            .map(|t| &t.transaction_id)
            .eq(written[10..].iter()),
        "resuming after the 10th gave {:?}",
        rest.iter().map(|t| &t.transaction_id).collect::<Vec<_>>()
    );
    // Then only heartbeats, whose cursor is past everything delivered.
    let beat = next(&mut again).await?;
    ensure!(
        beat.transaction.is_none(),
        "a transaction nobody wrote: {beat:?}"
    );
    let mut after_beat = watch(&mut c, "w1", &beat.cursor).await?;
    api::spend(&mut c, "w1", 1).await?;
    let (last, _) = transactions(&mut after_beat, 1).await?;
    ensure!(last[0].sequence == 22, "after the heartbeat came {last:?}");
    Ok(())
}

async fn the_all_users_feed_filters_by_type_and_starts_from_now(
    server: &TestServer,
) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    for u in ["a1", "a2"] {
        api::create_user(&mut c, u).await?;
        api::top_up(&mut c, u, 100).await?;
    }
    let mut usage = c
        .watch_transactions(pb::WatchTransactionsRequest {
            user_id: String::new(),
            start_after: String::new(),
            types: vec![pb::TransactionType::Usage as i32],
            ..Default::default()
        })
        .await?
        .into_inner();
    let hello = next(&mut usage).await?;
    ensure!(hello.transaction.is_none());
    let mut spends = Vec::new();
    for u in ["a1", "a2", "a1"] {
        api::top_up(&mut c, u, 5).await?;
        let s = api::spend(&mut c, u, 7).await?;
        spends.push(s.transaction.context("spend")?.transaction_id);
    }
    let (got, _) = transactions(&mut usage, 3).await?;
    ensure!(
        got.iter().map(|t| &t.transaction_id).eq(spends.iter()),
        "the USAGE feed of every user gave {got:?}"
    );
    ensure!(got.iter().all(|t| t.r#type() == pb::TransactionType::Usage));
    Ok(())
}

async fn watch_balance_sends_the_balance_then_every_change(
    server: &TestServer,
) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "b1").await?;
    api::top_up(&mut c, "b1", 500).await?;
    let mut stream = c
        .watch_balance(pb::WatchBalanceRequest {
            user_id: "b1".into(),
        })
        .await?
        .into_inner();
    let first = next(&mut stream).await?.balance.context("balance")?;
    ensure!(
        first.balance == 500 && first.last_sequence == 1,
        "{first:?}"
    );
    api::spend(&mut c, "b1", 200).await?;
    let second = next(&mut stream).await?.balance.context("balance")?;
    ensure!(
        second.balance == 300 && second.last_sequence == 2,
        "{second:?}"
    );
    // A hold changes what is available, with no transaction.
    c.reserve(pb::ReserveRequest {
        user_id: "b1".into(),
        amount: 50,
        ..Default::default()
    })
    .await?;
    let held = next(&mut stream).await?.balance.context("balance")?;
    ensure!(
        held.held == 50 && held.available == 250 && held.balance == 300,
        "{held:?}"
    );
    // A burst may be coalesced, but the last message is the latest balance.
    for _ in 0..30 {
        api::spend(&mut c, "b1", 1).await?;
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let b = next(&mut stream).await?.balance.context("balance")?;
        if b.balance == 270 && b.last_sequence == 32 {
            break;
        }
        ensure!(
            b.balance > 270 && tokio::time::Instant::now() < deadline,
            "the balance stream passed or missed 270: {b:?}"
        );
    }
    Ok(())
}

async fn bad_watch_requests_are_refused_clearly(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "x1").await?;
    for (cursor, why) in [("42", "not a cursor"), ("f1.999999", "ahead of the feed")] {
        let result = c
            .watch_transactions(pb::WatchTransactionsRequest {
                user_id: "x1".into(),
                start_after: cursor.into(),
                types: vec![],
                ..Default::default()
            })
            .await;
        let status = api::assert_error(
            result.map(|_| ()),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        ensure!(
            api::bad_fields(&status) == ["start_after"],
            "{why}: {status:?}"
        );
    }
    let result = c
        .watch_transactions(pb::WatchTransactionsRequest {
            user_id: "x1".into(),
            start_after: String::new(),
            types: vec![0],
            ..Default::default()
        })
        .await;
    let status = api::assert_error(
        result.map(|_| ()),
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    ensure!(api::bad_fields(&status) == ["types[0]"], "{status:?}");
    let result = c
        .watch_balance(pb::WatchBalanceRequest {
            user_id: "nobody".into(),
        })
        .await;
    api::assert_error(result.map(|_| ()), Code::NotFound, "USER_NOT_FOUND");
    let result = c
        .watch_balance(pb::WatchBalanceRequest {
            user_id: String::new(),
        })
        .await;
    let status = api::assert_error(
        result.map(|_| ()),
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    ensure!(api::bad_fields(&status) == ["user_id"], "{status:?}");
    Ok(())
}
