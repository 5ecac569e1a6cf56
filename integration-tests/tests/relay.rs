//! The broker relay (`credit-server relay`) against the machine's real NATS
//! JetStream: writers on a real server, the relay killed (SIGKILL) mid-way
//! and restarted; afterwards the stream holds every transaction and alert
//! event of the ledger exactly once (message id = transaction or event id),
//! in feed order.
//!
//! Needs NATS with JetStream at `CREDIT_TEST_NATS_URL` (default
//! nats://127.0.0.1:4222); without one the test says so and is skipped.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use credit_proto::v1 as pb;
use credit_server::entity::{alert_event, credit_transaction as ctx};
use futures::future::join_all;
use integration_tests::process::{ServerProcess, binary};
use integration_tests::{TestDb, api, database_tests};
use prost::Message;
use sea_orm::{Database, EntityTrait};

database_tests!(the_relay_publishes_every_item_once_through_a_kill);

fn nats_url() -> String {
    std::env::var("CREDIT_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_relay(url: &str, stream: &str, prefix: &str) -> anyhow::Result<Relay> {
    let child = Command::new(binary()?)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .args(["--database-url", url, "relay"])
        .args(["--nats-url", &nats_url(), "--stream", stream])
        .args(["--subject-prefix", prefix, "--name", "test"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("start the relay")?;
    Ok(Relay(child))
}

async fn the_relay_publishes_every_item_once_through_a_kill(db: &TestDb) -> anyhow::Result<()> {
    let nats = match async_nats::connect(nats_url()).await {
        Ok(nats) => nats,
        Err(err) => {
            eprintln!(
                "SKIPPED: no NATS at {} ({err}); set CREDIT_TEST_NATS_URL",
                nats_url()
            );
            return Ok(());
        }
    };
    let js = async_nats::jetstream::new(nats);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let stream = format!("CREDIT_TEST_{}", &run[..12]);
    let prefix = format!("credit.test.{}", &run[..12]);

    let server = ServerProcess::start(&db.url, &[]).await?;
    let mut c = server.client().await?;
    let users: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
    for u in &users {
        api::create_user(&mut c, u).await?;
        api::top_up(&mut c, u, 10_000).await?;
        c.set_balance_alert(pb::SetBalanceAlertRequest {
            user_id: u.clone(),
            threshold: 9_500,
            idempotency_key: String::new(),
        })
        .await?;
    }
    let mut relay = start_relay(&db.url, &stream, &prefix)?;
    let writers = users.iter().map(|u| {
        let mut c = c.clone();
        let u = u.clone();
        async move {
            for _ in 0..80 {
                api::spend(&mut c, &u, 20).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        }
    });
    let kill = async {
        // Kill it once it has published something, while the writers go on.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let published = loop {
            let n = match js.get_stream(&stream).await {
                Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
                Err(_) => 0,
            };
            if n >= 50 || tokio::time::Instant::now() > deadline {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        ensure!(
            published >= 50,
            "the relay published {published} messages in 20 s"
        );
        relay.0.kill()?;
        relay.0.wait()?;
        eprintln!("relay killed (SIGKILL) after {published} messages");
        tokio::time::sleep(Duration::from_millis(300)).await;
        anyhow::Ok(start_relay(&db.url, &stream, &prefix)?)
    };
    let (written, restarted) = tokio::join!(join_all(writers), kill);
    for w in written {
        w?;
    }
    let _relay = restarted?;

    let check = Database::connect(&db.url).await?;
    let tx_ids: HashSet<String> = ctx::Entity::find()
        .all(&check)
        .await?
        .into_iter()
        .map(|t| t.id)
        .collect();
    let event_ids: HashSet<String> = alert_event::Entity::find()
        .all(&check)
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect();
    ensure!(
        event_ids.len() == users.len(),
        "one crossing per user: {event_ids:?}"
    );
    let expected = (tx_ids.len() + event_ids.len()) as u64;
    // Wait for the relay to catch up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut info_stream = loop {
        let mut s = js.get_stream(&stream).await?;
        let messages = s.info().await?.state.messages;
        if messages >= expected || tokio::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let state = info_stream.info().await?.state.clone();
    let mut ids = Vec::new();
    let mut last_cursor = 0i64;
    for sequence in state.first_sequence..=state.last_sequence {
        let m = info_stream.get_raw_message(sequence).await?;
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .context("every message has its id")?;
        let body = pb::WatchTransactionsResponse::decode(m.payload)?;
        let cursor: i64 = body
            .cursor
            .strip_prefix("f1.")
            .and_then(|n| n.parse().ok())
            .context("a feed cursor")?;
        ensure!(
            cursor > last_cursor,
            "feed order: {cursor} after {last_cursor}"
        );
        last_cursor = cursor;
        let body_id = match (&body.transaction, &body.alert_event) {
            (Some(t), None) => t.transaction_id.clone(),
            (None, Some(e)) => e.event_id.clone(),
            other => anyhow::bail!("a message with {other:?}"),
        };
        ensure!(body_id == id, "message id {id} carries {body_id}");
        ids.push(id);
    }
    let unique: HashSet<String> = ids.iter().cloned().collect();
    ensure!(
        unique.len() == ids.len(),
        "{} duplicates in the stream",
        ids.len() - unique.len()
    );
    let want: HashSet<String> = tx_ids.union(&event_ids).cloned().collect();
    ensure!(
        unique == want,
        "stream has {} items, ledger {}; missing {:?}",
        unique.len(),
        want.len(),
        want.difference(&unique).take(5).collect::<Vec<_>>()
    );
    eprintln!("{} messages, each once, in feed order", ids.len());
    js.delete_stream(&stream).await?;
    check.close().await?;
    Ok(())
}
