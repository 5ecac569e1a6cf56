//! Holds through the Rust client and the `credit` CLI, against the real
//! server on every configured database.

use std::time::Duration;

use anyhow::{Context, ensure};
use credit_client::{CreditClient, Error, HoldState, Usage};
use futures::TryStreamExt;
use integration_tests::{TestServer, ledger_tests};
use serde_json::{Value as Json, json};
use tokio::process::Command;

ledger_tests!(
    reserve_capture_release,
    hold_errors_are_typed,
    expired_holds_free_their_credits,
    list_holds_pages_and_filters,
    cli_holds_for_people_and_scripts,
);

async fn client(server: &TestServer) -> anyhow::Result<CreditClient> {
    Ok(CreditClient::connect(server.endpoint()).await?)
}

async fn user_with(client: &CreditClient, user: &str, credits: i64) -> anyhow::Result<()> {
    client
        .create_user(user, format!("{user}@example.com"))
        .await?;
    client.top_up(user, credits).await?;
    Ok(())
}

async fn reserve_capture_release(server: &TestServer) -> anyhow::Result<()> {
    let c = client(server).await?;
    user_with(&c, "alice", 100).await?;

    let usage = Usage::new().graph_exec_id("run-1").reason("estimate");
    let reserved = c
        .reserve("alice", 60)
        .ttl(Duration::from_secs(600))
        .idempotency_key("job-1")
        .usage(usage.clone())
        .meta("model", "small")
        .await?;
    let hold = &reserved.hold;
    ensure!(
        hold.state == HoldState::Active && hold.amount == 60,
        "{hold:?}"
    );
    ensure!(hold.idempotency_key == "job-1" && hold.usage.as_ref() == Some(&usage));
    ensure!(
        hold.metadata
            .as_ref()
            .is_some_and(|m| m["model"] == "small")
    );
    ensure!(hold.closed_at.is_none() && hold.capture_transaction_id.is_none());
    let ttl = (hold.expire_time - hold.created_at).num_seconds();
    ensure!((599..=601).contains(&ttl), "ttl {ttl}");
    ensure!(reserved.balance == 100 && reserved.available == 40);
    ensure!(reserved.transaction.is_none());

    // The same key again: the same hold, nothing held twice.
    let again = c
        .reserve("alice", 60)
        .ttl(Duration::from_secs(600))
        .idempotency_key("job-1")
        .usage(usage.clone())
        .meta("model", "small")
        .await?;
    ensure!(again.hold.hold_id == hold.hold_id);
    let balance = c.get_balance("alice").await?;
    ensure!(
        (balance.balance, balance.held, balance.available) == (100, 60, 40),
        "{balance:?}"
    );

    // What is held cannot be spent.
    let err = c.spend("alice", 50).await.expect_err("only 40 available");
    ensure!(
        matches!(err, Error::InsufficientBalance { available: 40, .. }),
        "{err:?}"
    );

    let captured = c.capture("alice", &hold.hold_id, 45).await?;
    let tx = captured
        .transaction
        .as_ref()
        .context("a usage transaction")?;
    ensure!(tx.amount == -45 && tx.hold_id.as_deref() == Some(hold.hold_id.as_str()));
    ensure!(
        tx.usage.as_ref() == Some(&usage),
        "the hold's usage: {tx:?}"
    );
    ensure!(captured.hold.state == HoldState::Captured && captured.hold.captured_amount == 45);
    ensure!(captured.hold.capture_transaction_id.as_deref() == Some(tx.transaction_id.as_str()));
    ensure!(captured.balance == 55 && captured.available == 55);
    let got = c.get_transaction("alice", &tx.transaction_id).await?;
    ensure!(got.hold_id == tx.hold_id);

    // Release, with a reason; a second hold captured for 0 is released too.
    let second = c.reserve("alice", 20).await?;
    let released = c
        .release("alice", &second.hold.hold_id)
        .reason("job cancelled")
        .await?;
    ensure!(released.hold.state == HoldState::Released);
    ensure!(released.hold.release_reason.as_deref() == Some("job cancelled"));
    ensure!(released.balance == 55 && released.available == 55);
    let third = c.reserve("alice", 10).await?;
    let zero = c.capture("alice", &third.hold.hold_id, 0).await?;
    ensure!(zero.transaction.is_none() && zero.hold.state == HoldState::Released);

    let fetched = c.get_hold("alice", &hold.hold_id).await?;
    ensure!(fetched == captured.hold, "{fetched:?}\n{:?}", captured.hold);
    Ok(())
}

async fn hold_errors_are_typed(server: &TestServer) -> anyhow::Result<()> {
    let c = client(server).await?;
    user_with(&c, "bob", 50).await?;
    let absent = credit_client::new_idempotency_key(); // a random UUID
    let err = c.get_hold("bob", &absent).await.expect_err("absent");
    ensure!(
        matches!(&err, Error::HoldNotFound { user_id, hold_id } if user_id == "bob" && *hold_id == absent),
        "{err:?}"
    );
    ensure!(err.reason() == Some("HOLD_NOT_FOUND"));

    let hold = c.reserve("bob", 30).await?.hold;
    c.capture("bob", &hold.hold_id, 30).await?;
    let err = c.release("bob", &hold.hold_id).await.expect_err("captured");
    ensure!(
        matches!(
            &err,
            Error::HoldNotActive { hold_id, state: HoldState::Captured } if *hold_id == hold.hold_id
        ),
        "{err:?}"
    );

    let err = c.reserve("bob", 21).await.expect_err("20 available");
    ensure!(matches!(err, Error::InsufficientBalance { .. }), "{err:?}");
    let err = c
        .reserve("bob", 1)
        .ttl(Duration::from_secs(30 * 86_400))
        .await
        .expect_err("beyond the maximum TTL");
    ensure!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    // The same key for another request.
    c.reserve("bob", 5).idempotency_key("k").await?;
    let err = c
        .reserve("bob", 6)
        .idempotency_key("k")
        .await
        .expect_err("reused");
    ensure!(matches!(err, Error::IdempotencyKeyReused { .. }), "{err:?}");
    Ok(())
}

async fn expired_holds_free_their_credits(server: &TestServer) -> anyhow::Result<()> {
    let c = client(server).await?;
    user_with(&c, "carol", 10).await?;
    let hold = c
        .reserve("carol", 10)
        .expire_time(chrono::Utc::now() + chrono::Duration::seconds(1))
        .await?
        .hold;
    ensure!(c.get_balance("carol").await?.available == 0);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let balance = c.get_balance("carol").await?;
    ensure!(balance.held == 0 && balance.available == 10, "{balance:?}");
    ensure!(c.get_hold("carol", &hold.hold_id).await?.state == HoldState::Expired);
    let err = c
        .capture("carol", &hold.hold_id, 5)
        .await
        .expect_err("expired");
    let Error::HoldExpired {
        hold_id,
        expire_time,
    } = &err
    else {
        anyhow::bail!("not HoldExpired: {err:?}");
    };
    ensure!(*hold_id == hold.hold_id);
    ensure!(
        (*expire_time - hold.expire_time).num_seconds().abs() <= 1,
        "{expire_time} vs {}",
        hold.expire_time
    );
    Ok(())
}

async fn list_holds_pages_and_filters(server: &TestServer) -> anyhow::Result<()> {
    let c = client(server).await?;
    user_with(&c, "dave", 100).await?;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(c.reserve("dave", 3).await?.hold.hold_id);
    }
    c.capture("dave", &ids[0], 2).await?;
    c.release("dave", &ids[1]).await?;

    let all: Vec<_> = c
        .list_holds("dave")
        .page_size(2)
        .stream()
        .try_collect()
        .await?;
    let listed: Vec<&str> = all.iter().map(|h| h.hold_id.as_str()).collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    ensure!(listed == newest_first, "{listed:?}");

    let page = c.list_holds("dave").page_size(2).page().await?;
    ensure!(page.holds.len() == 2 && page.next_page_token.is_some());

    let active = c
        .list_holds("dave")
        .state(HoldState::Active)
        .stream()
        .try_collect::<Vec<_>>()
        .await?;
    ensure!(active.len() == 3 && active.iter().all(|h| h.state == HoldState::Active));
    let closed = c
        .list_holds("dave")
        .states([HoldState::Captured, HoldState::Released])
        .page()
        .await?;
    ensure!(closed.holds.len() == 2 && closed.next_page_token.is_none());
    Ok(())
}

/// `credit --server <server> ARGS...`: its exit code, stdout and stderr.
async fn credit(server: &TestServer, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_credit"))
        .env_remove("CREDIT_TOKEN")
        .arg("--server")
        .arg(server.endpoint())
        .args(args)
        .output()
        .await?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout)?,
        String::from_utf8(output.stderr)?,
    ))
}

async fn ok(server: &TestServer, args: &[&str]) -> anyhow::Result<String> {
    let (code, stdout, stderr) = credit(server, args).await?;
    ensure!(code == 0, "credit {args:?} exited {code}: {stderr}");
    Ok(stdout)
}

async fn ok_json(server: &TestServer, args: &[&str]) -> anyhow::Result<Json> {
    let stdout = ok(server, &[&["--json"], args].concat()).await?;
    serde_json::from_str(&stdout).with_context(|| format!("not JSON: {stdout}"))
}

fn field<'a>(listing: &'a str, name: &str) -> anyhow::Result<&'a str> {
    listing
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            rest.starts_with("  ").then(|| rest.trim())
        })
        .with_context(|| format!("no {name:?} line in:\n{listing}"))
}

async fn cli_holds_for_people_and_scripts(server: &TestServer) -> anyhow::Result<()> {
    ok(
        server,
        &["user", "create", "erin", "--email", "erin@example.com"],
    )
    .await?;
    ok(server, &["top-up", "erin", "100"]).await?;

    let reserved = ok(
        server,
        &[
            "hold", "reserve", "erin", "60", "--ttl", "30m", "--key", "job-9", "--reason",
            "estimate",
        ],
    )
    .await?;
    ensure!(field(&reserved, "state")? == "active");
    ensure!(field(&reserved, "available")? == "40");
    ensure!(field(&reserved, "usage")?.contains("reason=estimate"));
    let hold_id = field(&reserved, "hold")?.to_owned();

    let balance = ok(server, &["balance", "erin"]).await?;
    ensure!(field(&balance, "held")? == "60" && field(&balance, "available")? == "40");
    let balance = ok_json(server, &["balance", "erin"]).await?;
    ensure!(
        balance["held"] == "60" && balance["available"] == "40",
        "{balance}"
    );

    // JSON: the proto3 mapping of ReserveResponse / Hold.
    let again = ok_json(
        server,
        &[
            "hold", "reserve", "erin", "60", "--ttl", "30m", "--key", "job-9", "--reason",
            "estimate",
        ],
    )
    .await?;
    ensure!(again["hold"]["holdId"] == hold_id.as_str(), "{again}");
    ensure!(again["hold"]["state"] == "HOLD_STATE_ACTIVE" && again["hold"]["amount"] == "60");
    ensure!(again["hold"]["capturedAmount"] == "0" && again["available"] == "40");
    ensure!(again["hold"].get("closedAt").is_none() && again.get("transaction").is_none());

    let captured = ok_json(server, &["hold", "capture", "erin", &hold_id, "45"]).await?;
    ensure!(captured["transaction"]["amount"] == "-45", "{captured}");
    ensure!(captured["transaction"]["holdId"] == hold_id.as_str());
    ensure!(captured["hold"]["state"] == "HOLD_STATE_CAPTURED" && captured["balance"] == "55");
    ensure!(captured["hold"]["closedAt"].is_string());

    let got = ok(server, &["hold", "get", "erin", &hold_id]).await?;
    ensure!(field(&got, "state")? == "captured" && field(&got, "captured")? == "45");

    let (code, _, stderr) = credit(server, &["hold", "release", "erin", &hold_id]).await?;
    ensure!(code == 7 && stderr.contains("captured"), "{code}: {stderr}");
    let absent = credit_client::new_idempotency_key(); // a random UUID
    let (code, _, stderr) = credit(server, &["--json", "hold", "get", "erin", &absent]).await?;
    let error: Json = serde_json::from_str(&stderr)?;
    ensure!(
        code == 4 && error["reason"] == "HOLD_NOT_FOUND",
        "{code}: {stderr}"
    );
    ensure!(error["metadata"] == json!({"userId": "erin", "holdId": absent}));

    let expires = (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339();
    let second = ok_json(
        server,
        &["hold", "reserve", "erin", "5", "--expires", &expires],
    )
    .await?;
    let second_id = second["hold"]["holdId"].as_str().context("id")?.to_owned();
    let released = ok(
        server,
        &[
            "hold",
            "release",
            "erin",
            &second_id,
            "--reason",
            "cancelled",
        ],
    )
    .await?;
    ensure!(field(&released, "state")? == "released");
    ensure!(field(&released, "release reason")? == "cancelled");

    let list = ok(server, &["hold", "list", "erin"]).await?;
    let lines: Vec<&str> = list.lines().collect();
    ensure!(
        lines.len() == 3 && lines[0].starts_with("CREATED"),
        "{list}"
    );
    let active = ok_json(server, &["hold", "list", "erin", "--state", "active"]).await?;
    ensure!(
        active == json!({"holds": [], "nextPageToken": ""}),
        "{active}"
    );
    let page = ok_json(server, &["hold", "list", "erin", "--limit", "1"]).await?;
    let token = page["nextPageToken"].as_str().context("token")?;
    ensure!(!token.is_empty() && page["holds"][0]["holdId"] == second_id.as_str());
    let rest = ok_json(server, &["hold", "list", "erin", "--page-token", token]).await?;
    ensure!(rest["holds"][0]["holdId"] == hold_id.as_str() && rest["nextPageToken"] == "");

    let (code, _, _) = credit(
        server,
        &[
            "hold",
            "reserve",
            "erin",
            "1",
            "--ttl",
            "1m",
            "--expires",
            &expires,
        ],
    )
    .await?;
    ensure!(
        code == 2,
        "--ttl and --expires together: usage error, got {code}"
    );
    Ok(())
}
