//! The `credit` binary, run as a person or a script would run it, against
//! the real server on every configured database.

use std::process::Output;

use anyhow::{Context, bail, ensure};
use integration_tests::{TestServer, ledger_tests};
use sea_orm::ConnectionTrait;
use serde_json::Value as Json;
use tokio::process::Command;

ledger_tests!(
    tables_for_people,
    json_for_scripts,
    errors_are_one_line_with_a_code_per_kind,
    key_makes_a_rerun_safe,
    history_filters_and_limits,
    server_comes_from_the_environment,
    verify_exits_10_on_a_broken_ledger,
);

/// What one run printed and how it exited.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> anyhow::Result<Json> {
        serde_json::from_str(&self.stdout).with_context(|| format!("not JSON: {}", self.stdout))
    }
}

/// The binary with none of the caller's `CREDIT_*` settings.
fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_credit"));
    for var in [
        "CREDIT_SERVER",
        "CREDIT_TOKEN",
        "CREDIT_TIMEOUT",
        "CREDIT_CA_CERT",
    ] {
        command.env_remove(var);
    }
    command
}

async fn run(command: &mut Command) -> anyhow::Result<Run> {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().await?;
    Ok(Run {
        // A signal leaves no code; -1 fails every check below.
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8(stdout)?,
        stderr: String::from_utf8(stderr)?,
    })
}

/// `credit --server <server> ARGS...`
async fn credit(server: &TestServer, args: &[&str]) -> anyhow::Result<Run> {
    run(command().arg("--server").arg(server.endpoint()).args(args)).await
}

/// Runs and requires success.
async fn ok(server: &TestServer, args: &[&str]) -> anyhow::Result<Run> {
    let r = credit(server, args).await?;
    ensure!(
        r.code == 0 && r.stderr.is_empty(),
        "credit {args:?} exited {}: {}",
        r.code,
        r.stderr
    );
    Ok(r)
}

/// Runs and requires failure with `code` and a single `error:` line.
async fn fails(server: &TestServer, args: &[&str], code: i32) -> anyhow::Result<String> {
    let r = credit(server, args).await?;
    ensure!(
        r.code == code,
        "credit {args:?}: expected exit {code}, got {} ({})",
        r.code,
        r.stderr
    );
    ensure!(
        r.stdout.is_empty(),
        "nothing on stdout after an error: {}",
        r.stdout
    );
    ensure!(
        r.stderr.starts_with("error: ") && r.stderr.lines().count() == 1,
        "one error line, got {:?}",
        r.stderr
    );
    Ok(r.stderr.trim_end().to_owned())
}

/// The value on the `name  value` line of a field listing.
fn field<'a>(listing: &'a str, name: &str) -> anyhow::Result<&'a str> {
    listing
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            rest.starts_with("  ").then(|| rest.trim())
        })
        .with_context(|| format!("no {name:?} line in:\n{listing}"))
}

async fn tables_for_people(server: &TestServer) -> anyhow::Result<()> {
    let user = ok(
        server,
        &[
            "user",
            "create",
            "alice",
            "--email",
            "alice@example.com",
            "--name",
            "Alice",
        ],
    )
    .await?;
    ensure!(field(&user.stdout, "email")? == "alice@example.com");
    let got = ok(server, &["user", "get", "alice"]).await?;
    ensure!(field(&got.stdout, "name")? == "Alice");

    let top_up = ok(
        server,
        &[
            "top-up",
            "alice",
            "100",
            "--reason",
            "promo",
            "--meta",
            "order=A-1",
        ],
    )
    .await?;
    ensure!(field(&top_up.stdout, "type")? == "top-up");
    ensure!(field(&top_up.stdout, "amount")? == "+100");
    ensure!(field(&top_up.stdout, "balance")? == "100");
    ensure!(field(&top_up.stdout, "metadata")?.contains(r#""order":"A-1""#));
    let top_up_id = field(&top_up.stdout, "transaction")?.to_owned();

    let spend = ok(
        server,
        &[
            "spend",
            "alice",
            "40",
            "--reason",
            "LLM call",
            "--graph-exec-id",
            "g1",
        ],
    )
    .await?;
    ensure!(field(&spend.stdout, "amount")? == "-40");
    ensure!(field(&spend.stdout, "usage")?.contains("graph_exec=g1"));
    ok(server, &["grant", "alice", "5", "--reason", "welcome"]).await?;
    let refund = ok(server, &["refund", "alice", &top_up_id, "10"]).await?;
    ensure!(field(&refund.stdout, "refund of")? == top_up_id);
    ensure!(field(&refund.stdout, "balance")? == "55");

    let balance = ok(server, &["balance", "alice"]).await?;
    ensure!(field(&balance.stdout, "balance")? == "55");
    ensure!(field(&balance.stdout, "last sequence")? == "4");

    let history = ok(server, &["history", "alice"]).await?;
    let lines: Vec<&str> = history.stdout.lines().collect();
    ensure!(lines.len() == 5, "header and 4 rows:\n{}", history.stdout);
    ensure!(lines[0].starts_with("SEQ") && lines[0].contains("AMOUNT"));
    // Aligned: the AMOUNT column ends at the same place on every line.
    let end = lines[0].find("AMOUNT").context("AMOUNT column")? + "AMOUNT".len();
    let amounts: Vec<&str> = lines
        .iter()
        .map(|l| l[..end].rsplit(' ').next().unwrap_or(""))
        .collect();
    ensure!(
        amounts == ["AMOUNT", "-10", "+5", "-40", "+100"],
        "{amounts:?}\n{}",
        history.stdout
    );

    let tx = ok(server, &["transaction", "alice", &top_up_id]).await?;
    ensure!(field(&tx.stdout, "refunded")? == "10");
    Ok(())
}

async fn json_for_scripts(server: &TestServer) -> anyhow::Result<()> {
    ok(
        server,
        &["user", "create", "bob", "--email", "bob@example.com"],
    )
    .await?;
    let top_up = ok(
        server,
        &[
            "--json", "top-up", "bob", "70", "--meta", "n:=3", "--meta", "tag=x",
        ],
    )
    .await?
    .json()?;
    ensure!(top_up["balance"] == 70);
    ensure!(top_up["transaction"]["type"] == "top-up");
    ensure!(top_up["transaction"]["metadata"] == serde_json::json!({"n": 3, "tag": "x"}));
    let spend = ok(server, &["spend", "bob", "20", "--json"])
        .await?
        .json()?;
    ensure!(spend["transaction"]["amount"] == -20 && spend["balance"] == 50);

    let balance = ok(server, &["balance", "bob", "--json"]).await?.json()?;
    ensure!(balance["balance"] == 50 && balance["user_id"] == "bob");
    let history = ok(server, &["history", "bob", "--json"]).await?.json()?;
    let types: Vec<&str> = history
        .as_array()
        .context("an array")?
        .iter()
        .filter_map(|t| t["type"].as_str())
        .collect();
    ensure!(types == ["usage", "top-up"], "{types:?}");
    Ok(())
}

async fn errors_are_one_line_with_a_code_per_kind(server: &TestServer) -> anyhow::Result<()> {
    ok(
        server,
        &["user", "create", "carol", "--email", "carol@example.com"],
    )
    .await?;
    let top_up = ok(server, &["--json", "top-up", "carol", "40", "--key", "k1"])
        .await?
        .json()?;
    let top_up_id = top_up["transaction"]["transaction_id"]
        .as_str()
        .context("id")?
        .to_owned();

    let line = fails(server, &["spend", "carol", "100"], 6).await?;
    ensure!(
        line == "error: insufficient balance: 40 available, 100 requested",
        "{line}"
    );
    let line = fails(server, &["balance", "nobody"], 4).await?;
    ensure!(line == r#"error: user "nobody" not found"#, "{line}");
    let line = fails(server, &["top-up", "carol", "0"], 3).await?;
    ensure!(line.contains("amount"), "{line}");
    fails(server, &["top-up", "carol", "41", "--key", "k1"], 5).await?;
    fails(
        server,
        &["user", "create", "dave", "--email", "carol@example.com"],
        5,
    )
    .await?;
    fails(server, &["refund", "carol", &top_up_id, "41"], 7).await?;
    // Refused before sending: metadata that is not k=v is a usage error.
    let bad_flag = credit(server, &["top-up", "carol", "1", "--meta", "novalue"]).await?;
    ensure!(
        bad_flag.code == 2,
        "clap usage errors exit 2: {}",
        bad_flag.stderr
    );

    // Nothing listens on this port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let down = run(command().args([
        "--server",
        &format!("http://127.0.0.1:{port}"),
        "balance",
        "carol",
    ]))
    .await?;
    ensure!(
        down.code == 8,
        "unreachable server exits 8: {}",
        down.stderr
    );
    ensure!(down.stderr.starts_with("error: cannot connect") && down.stderr.lines().count() == 1);

    // Nothing above changed the balance.
    let balance = ok(server, &["--json", "balance", "carol"]).await?.json()?;
    ensure!(balance["balance"] == 40);
    Ok(())
}

async fn key_makes_a_rerun_safe(server: &TestServer) -> anyhow::Result<()> {
    ok(
        server,
        &["user", "create", "erin", "--email", "erin@example.com"],
    )
    .await?;
    let first = ok(
        server,
        &["--json", "grant", "erin", "15", "--key", "bonus-1"],
    )
    .await?
    .json()?;
    let again = ok(
        server,
        &["--json", "grant", "erin", "15", "--key", "bonus-1"],
    )
    .await?
    .json()?;
    ensure!(first == again, "{first}\n{again}");
    let balance = ok(server, &["--json", "balance", "erin"]).await?.json()?;
    ensure!(balance["balance"] == 15);
    Ok(())
}

async fn history_filters_and_limits(server: &TestServer) -> anyhow::Result<()> {
    ok(
        server,
        &["user", "create", "fay", "--email", "fay@example.com"],
    )
    .await?;
    ok(server, &["top-up", "fay", "100"]).await?;
    for _ in 0..3 {
        ok(server, &["spend", "fay", "1"]).await?;
    }
    let count = |run: Run| -> anyhow::Result<usize> {
        Ok(run.json()?.as_array().context("an array")?.len())
    };
    ensure!(count(ok(server, &["--json", "history", "fay", "--type", "usage"]).await?)? == 3);
    ensure!(count(ok(server, &["--json", "history", "fay", "--type", "top_up"]).await?)? == 1);
    ensure!(count(ok(server, &["--json", "history", "fay", "--limit", "2"]).await?)? == 2);
    ensure!(count(ok(server, &["--json", "history", "fay", "--since", "1h"]).await?)? == 4);
    ensure!(count(ok(server, &["--json", "history", "fay", "--until", "1h"]).await?)? == 0);
    let empty = ok(server, &["history", "fay", "--since", "2999-01-01"]).await?;
    ensure!(
        empty.stdout.contains("(no transactions)"),
        "{}",
        empty.stdout
    );
    let bad = credit(server, &["history", "fay", "--type", "bogus"]).await?;
    ensure!(bad.code == 2, "{}", bad.stderr);
    Ok(())
}

async fn server_comes_from_the_environment(server: &TestServer) -> anyhow::Result<()> {
    let created = run(command().env("CREDIT_SERVER", server.endpoint()).args([
        "user",
        "create",
        "gus",
        "--email",
        "gus@example.com",
    ]))
    .await?;
    if created.code != 0 {
        bail!("CREDIT_SERVER was not used: {}", created.stderr);
    }
    Ok(())
}

async fn verify_exits_10_on_a_broken_ledger(server: &TestServer) -> anyhow::Result<()> {
    ok(
        server,
        &["user", "create", "hal", "--email", "hal@example.com"],
    )
    .await?;
    ok(server, &["top-up", "hal", "10"]).await?;
    let clean = ok(server, &["verify"]).await?;
    ensure!(field(&clean.stdout, "clean")? == "yes", "{}", clean.stdout);
    let one = ok(server, &["--json", "verify", "hal"]).await?.json()?;
    ensure!(one["clean"] == true && one["users_checked"] == 1 && one["transactions_checked"] == 1);

    // Money appears from nowhere, behind the ledger's back.
    server
        .db
        .execute_unprepared("UPDATE user_balance SET balance = balance + 1 WHERE user_id = 'hal'")
        .await?;
    let broken = credit(server, &["verify"]).await?;
    ensure!(
        broken.code == 10,
        "exit {}: {}{}",
        broken.code,
        broken.stdout,
        broken.stderr
    );
    ensure!(field(&broken.stdout, "clean")? == "NO");
    ensure!(
        broken.stdout.lines().any(|l| l.starts_with("hal ")),
        "{}",
        broken.stdout
    );
    Ok(())
}

#[tokio::test]
async fn help_documents_the_exit_codes() -> anyhow::Result<()> {
    let help = run(command().arg("--help")).await?;
    ensure!(help.code == 0);
    ensure!(help.stdout.contains("Exit codes:"));
    for code in 0..=10 {
        ensure!(
            help.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{code}  "))),
            "exit code {code} undocumented:\n{}",
            help.stdout
        );
    }
    ensure!(
        help.stdout.contains("CREDIT_SERVER") && help.stdout.contains("http://127.0.0.1:50051")
    );
    Ok(())
}
