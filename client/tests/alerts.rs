//! Low-balance alerts through the Rust client, the CLI and the auto-top-up
//! example, against the real server on every configured database.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use credit_client::{CreditClient, Error, FeedContent, TransactionType};
use futures::{StreamExt, TryStreamExt};
use integration_tests::{TestServer, ledger_tests};

ledger_tests!(
    alerts_through_the_client,
    alerts_through_the_cli,
    the_auto_top_up_example_tops_up_once_per_crossing,
);

const PATIENCE: Duration = Duration::from_secs(15);

async fn alerts_through_the_client(server: &TestServer) -> anyhow::Result<()> {
    let c = CreditClient::connect(server.endpoint()).await?;
    c.create_user("alice", "alice@example.com").await?;
    c.top_up("alice", 100).await?;
    let alert = c
        .set_balance_alert("alice", 50)
        .idempotency_key("a1")
        .await?;
    ensure!(alert.armed && alert.threshold == 50, "{alert:?}");
    let again = c.set_balance_alert("alice", 50).await?;
    ensure!(again.alert_id == alert.alert_id);
    match c.set_balance_alert("alice", 60).idempotency_key("a1").await {
        Err(Error::IdempotencyKeyReused { .. }) => {}
        other => bail!("key reuse: {other:?}"),
    }
    let mut feed = c
        .watch_transactions("alice")
        .content(FeedContent::TransactionsAndAlertEvents)
        .stream();
    tokio::time::timeout(PATIENCE, feed.next()).await?;
    c.spend("alice", 60).await?;
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let m = tokio::time::timeout(PATIENCE, feed.try_next())
            .await??
            .context("the feed ended")?;
        if let Some(t) = m.transaction {
            kinds.push(format!("{}", t.kind));
        }
        if let Some(e) = m.alert_event {
            ensure!((e.balance_before, e.balance_after) == (100, 40), "{e:?}");
            kinds.push("alert".into());
        }
    }
    ensure!(kinds == ["usage", "alert"], "{kinds:?}");
    let events: Vec<_> = c.list_alert_events("alice").stream().try_collect().await?;
    ensure!(
        events.len() == 1 && events[0].alert_id == alert.alert_id,
        "{events:?}"
    );
    let balance = c.get_balance("alice").await?;
    ensure!(
        balance.alerts.len() == 1 && !balance.alerts[0].armed,
        "{balance:?}"
    );
    let gone = c.delete_balance_alert("alice", &alert.alert_id).await?;
    ensure!(gone.deleted_at.is_some());
    match c
        .delete_balance_alert("alice", "0190a000-0000-7000-8000-000000000000")
        .await
    {
        Err(err) if err.reason() == Some("ALERT_NOT_FOUND") => {}
        other => bail!("unknown alert: {other:?}"),
    }
    ensure!(c.get_balance("alice").await?.alerts.is_empty());
    Ok(())
}

async fn credit(server: &TestServer, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_credit"))
        .env_clear()
        .arg("--server")
        .arg(server.endpoint())
        .args(args)
        .output()
        .await?;
    let stdout = String::from_utf8(out.stdout)?;
    ensure!(
        out.status.success(),
        "credit {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

async fn alerts_through_the_cli(server: &TestServer) -> anyhow::Result<()> {
    let c = CreditClient::connect(server.endpoint()).await?;
    c.create_user("bob", "bob@example.com").await?;
    c.top_up("bob", 100).await?;
    let set = credit(server, &["alert", "set", "bob", "30", "--json"]).await?;
    let alert: serde_json::Value = serde_json::from_str(&set)?;
    ensure!(
        alert["threshold"] == "30" && alert["armed"] == true,
        "{set}"
    );
    c.spend("bob", 80).await?;
    let listed = credit(server, &["alert", "events", "bob"]).await?;
    ensure!(
        listed.contains("THRESHOLD") && listed.contains(" 100 "),
        "{listed}"
    );
    let balance = credit(server, &["balance", "bob"]).await?;
    ensure!(balance.contains("below 30 (fired)"), "{balance}");
    let id = alert["alertId"].as_str().context("alertId")?;
    let deleted = credit(server, &["alert", "delete", "bob", id]).await?;
    ensure!(deleted.contains("deleted"), "{deleted}");
    Ok(())
}

/// The example binary beside the test binary (`target/debug/examples`).
fn example(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("target directory")?;
    let path = dir.join("examples").join(name);
    ensure!(
        path.exists(),
        "{} not built (cargo test builds the examples)",
        path.display()
    );
    Ok(path)
}

/// Two copies of the example on one user (one restarted from a stored
/// cursor that is behind) top up once per crossing.
async fn the_auto_top_up_example_tops_up_once_per_crossing(
    server: &TestServer,
) -> anyhow::Result<()> {
    let c = CreditClient::connect(server.endpoint()).await?;
    c.create_user("carol", "carol@example.com").await?;
    c.top_up("carol", 150).await?;
    let dir = tempfile::tempdir()?;
    let run = |cursor: &str, events: usize| {
        let mut command = tokio::process::Command::new(example("auto_topup")?);
        command
            .args(["--server", &server.endpoint(), "--user", "carol"])
            .args(["--threshold", "100", "--amount", "200"])
            .args(["--max-events", &events.to_string()])
            .arg("--cursor-file")
            .arg(dir.path().join(cursor))
            .kill_on_drop(true);
        anyhow::Ok(command.output())
    };
    // The alert exists before the writes (the examples set the same
    // threshold: they get this alert).
    c.set_balance_alert("carol", 100).await?;
    // Both read carol's feed from its start, so neither can miss an event
    // however late it starts (their alert is the same one).
    for cursor in ["a", "b"] {
        std::fs::write(dir.path().join(cursor), "f1.0")?;
    }
    let a = tokio::spawn(run("a", 2)?);
    let b = tokio::spawn(run("b", 2)?);
    // 150 -> 90 crosses; the consumers top up 200 -> 290; -> 60 crosses again.
    c.spend("carol", 60).await?;
    // The second crossing needs the first top-up (else 90 - 230 fails).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while c.get_balance("carol").await?.balance < 290 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no top-up after the first crossing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.spend("carol", 230).await?;
    for out in [a, b] {
        let out = tokio::time::timeout(PATIENCE, out).await???;
        ensure!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A restart from the start replays both events: no new top-up.
    std::fs::write(dir.path().join("a"), "f1.0")?;
    let replay = tokio::time::timeout(PATIENCE, run("a", 2)?).await??;
    ensure!(replay.status.success(), "{replay:?}");
    let events: Vec<_> = c.list_alert_events("carol").stream().try_collect().await?;
    let top_ups: Vec<_> = c
        .list_transactions("carol")
        .kinds([TransactionType::TopUp])
        .stream()
        .try_collect()
        .await?;
    ensure!(events.len() == 2, "{events:?}");
    ensure!(
        top_ups.len() == 3,
        "the seed and one per event: {top_ups:?}"
    );
    for e in &events {
        ensure!(
            top_ups
                .iter()
                .filter(|t| t.idempotency_key == e.event_id)
                .count()
                == 1,
            "event {} topped up once",
            e.event_id
        );
    }
    ensure!(c.get_balance("carol").await?.balance == 150 - 60 + 200 - 230 + 200);
    Ok(())
}
