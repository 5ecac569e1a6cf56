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
    history_pages_continue_with_a_token,
    json_errors_are_one_object,
    server_without_a_scheme_is_plain_text,
    lots_for_people_and_scripts,
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
        "CREDIT_TLS_CA",
        "CREDIT_TLS_CERT",
        "CREDIT_TLS_KEY",
        "CREDIT_TLS_SERVER_NAME",
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
    // The proto3 JSON mapping, as grpcurl prints it: lowerCamelCase names,
    // int64 as strings, enum names, RFC 3339 times, defaults included.
    let user = ok(
        server,
        &[
            "--json",
            "user",
            "create",
            "bob",
            "--email",
            "bob@example.com",
        ],
    )
    .await?
    .json()?;
    ensure!(user["userId"] == "bob" && user["name"] == "", "{user}");
    rfc3339(&user["createdAt"])?;
    let top_up = ok(
        server,
        &[
            "--json", "top-up", "bob", "70", "--meta", "n:=3", "--meta", "tag=x",
        ],
    )
    .await?
    .json()?;
    ensure!(top_up["balance"] == "70", "{top_up}");
    let tx = &top_up["transaction"];
    ensure!(tx["type"] == "TRANSACTION_TYPE_TOP_UP", "{tx}");
    ensure!(tx["amount"] == "70" && tx["runningBalance"] == "70" && tx["sequence"] == "1");
    ensure!(tx["userId"] == "bob" && tx["refundedAmount"] == "0");
    ensure!(tx["refundedTransactionId"] == "" && tx["reason"] == "");
    ensure!(
        tx["transactionId"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    ensure!(tx["idempotencyKey"].as_str().is_some_and(|k| !k.is_empty()));
    ensure!(
        tx.get("usage").is_none(),
        "unset messages are left out: {tx}"
    );
    ensure!(tx["metadata"] == serde_json::json!({"n": 3, "tag": "x"}));
    rfc3339(&tx["createdAt"])?;
    // No snake_case names anywhere.
    for object in [&top_up, tx] {
        let keys: Vec<&String> = object.as_object().context("an object")?.keys().collect();
        ensure!(keys.iter().all(|k| !k.contains('_')), "{keys:?}");
    }

    let spend = ok(
        server,
        &["spend", "bob", "20", "--json", "--graph-exec-id", "g1"],
    )
    .await?
    .json()?;
    ensure!(spend["transaction"]["amount"] == "-20" && spend["balance"] == "50");
    ensure!(spend["transaction"]["type"] == "TRANSACTION_TYPE_USAGE");
    ensure!(spend["transaction"]["usage"]["graphExecId"] == "g1");

    let balance = ok(server, &["balance", "bob", "--json"]).await?.json()?;
    ensure!(balance["balance"] == "50" && balance["userId"] == "bob");
    ensure!(balance["lastSequence"] == "2");
    rfc3339(&balance["updatedAt"])?;
    let history = ok(server, &["history", "bob", "--json"]).await?.json()?;
    let types: Vec<&str> = history["transactions"]
        .as_array()
        .context("an array")?
        .iter()
        .filter_map(|t| t["type"].as_str())
        .collect();
    ensure!(
        types == ["TRANSACTION_TYPE_USAGE", "TRANSACTION_TYPE_TOP_UP"],
        "{types:?}"
    );
    ensure!(history["nextPageToken"] == "", "{history}");
    let id = tx["transactionId"].as_str().context("id")?;
    let got = ok(server, &["--json", "transaction", "bob", id])
        .await?
        .json()?;
    ensure!(got["transactionId"] == id && got["amount"] == "70");
    Ok(())
}

/// An RFC 3339 time in UTC, as the proto3 JSON mapping writes timestamps.
fn rfc3339(value: &Json) -> anyhow::Result<()> {
    let text = value
        .as_str()
        .with_context(|| format!("not a string: {value}"))?;
    ensure!(text.ends_with('Z'), "not UTC with Z: {text}");
    chrono::DateTime::parse_from_rfc3339(text).with_context(|| format!("not RFC 3339: {text}"))?;
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
    let top_up_id = top_up["transaction"]["transactionId"]
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
    ensure!(balance["balance"] == "40");
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
    ensure!(balance["balance"] == "15");
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
        Ok(run.json()?["transactions"]
            .as_array()
            .context("an array")?
            .len())
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
    ensure!(
        one["clean"] == true && one["usersChecked"] == "1" && one["transactionsChecked"] == "1",
        "{one}"
    );
    ensure!(one["violations"] == serde_json::json!([]) && one["violationsOmitted"] == "0");

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

async fn history_pages_continue_with_a_token(server: &TestServer) -> anyhow::Result<()> {
    ok(
        server,
        &["user", "create", "ida", "--email", "ida@example.com"],
    )
    .await?;
    for amount in 1..=5 {
        ok(server, &["top-up", "ida", &amount.to_string()]).await?;
    }
    let amounts = |page: &Json| -> anyhow::Result<Vec<String>> {
        Ok(page["transactions"]
            .as_array()
            .context("an array")?
            .iter()
            .filter_map(|t| t["amount"].as_str().map(str::to_owned))
            .collect())
    };

    // Two pages of two, then the last one, newest first.
    let first = ok(server, &["--json", "history", "ida", "--limit", "2"])
        .await?
        .json()?;
    ensure!(amounts(&first)? == ["5", "4"], "{first}");
    let token = first["nextPageToken"].as_str().context("a token")?;
    ensure!(!token.is_empty(), "more exist, so a token: {first}");
    let second = ok(
        server,
        &[
            "--json",
            "history",
            "ida",
            "--limit",
            "2",
            "--page-token",
            token,
        ],
    )
    .await?
    .json()?;
    ensure!(amounts(&second)? == ["3", "2"], "{second}");
    let token = second["nextPageToken"].as_str().context("a token")?;
    let last = ok(server, &["--json", "history", "ida", "--page-token", token])
        .await?
        .json()?;
    ensure!(amounts(&last)? == ["1"], "{last}");
    ensure!(
        last["nextPageToken"] == "",
        "the last page has no token: {last}"
    );

    // The table says when more exist, with the token to continue with.
    let table = ok(server, &["history", "ida", "--limit", "3"]).await?;
    let more = table
        .stdout
        .lines()
        .last()
        .context("output")?
        .strip_prefix("(more transactions: continue with --page-token ")
        .and_then(|rest| rest.strip_suffix(')'))
        .with_context(|| format!("no continuation line:\n{}", table.stdout))?
        .to_owned();
    let rest = ok(server, &["--json", "history", "ida", "--page-token", &more])
        .await?
        .json()?;
    ensure!(amounts(&rest)? == ["2", "1"], "{rest}");
    let all = ok(server, &["history", "ida", "--limit", "0"]).await?;
    ensure!(
        !all.stdout.contains("--page-token") && all.stdout.lines().count() == 6,
        "everything, and no continuation:\n{}",
        all.stdout
    );

    // A token that is not one: the server refuses it as invalid.
    fails(server, &["history", "ida", "--page-token", "bogus"], 3).await?;
    Ok(())
}

async fn json_errors_are_one_object(server: &TestServer) -> anyhow::Result<()> {
    ok(
        server,
        &["user", "create", "jay", "--email", "jay@example.com"],
    )
    .await?;
    ok(server, &["top-up", "jay", "40"]).await?;
    let error = |run: &Run| -> anyhow::Result<Json> {
        ensure!(run.stdout.is_empty(), "nothing on stdout: {}", run.stdout);
        ensure!(
            run.stderr.lines().count() == 1,
            "one line: {:?}",
            run.stderr
        );
        serde_json::from_str(&run.stderr).with_context(|| format!("not JSON: {}", run.stderr))
    };

    let poor = credit(server, &["--json", "spend", "jay", "100"]).await?;
    ensure!(poor.code == 6, "exit {}: {}", poor.code, poor.stderr);
    ensure!(
        error(&poor)?
            == serde_json::json!({
                "code": "FAILED_PRECONDITION",
                "reason": "INSUFFICIENT_BALANCE",
                "message": "insufficient balance: 40 available, 100 requested",
                "metadata": {"availableBalance": "40", "requestedAmount": "100"},
            }),
        "{}",
        poor.stderr
    );
    let missing = credit(server, &["balance", "nobody", "--json"]).await?;
    let missing_json = error(&missing)?;
    ensure!(missing.code == 4);
    ensure!(missing_json["code"] == "NOT_FOUND" && missing_json["reason"] == "USER_NOT_FOUND");
    ensure!(
        missing_json["metadata"]["userId"] == "nobody",
        "{missing_json}"
    );
    let invalid = credit(server, &["--json", "top-up", "jay", "0"]).await?;
    let invalid_json = error(&invalid)?;
    ensure!(invalid.code == 3 && invalid_json["code"] == "INVALID_ARGUMENT");
    ensure!(
        invalid_json["fieldViolations"][0]["field"] == "amount",
        "{invalid_json}"
    );
    // Usage errors too, with clap's message.
    let usage = credit(
        server,
        &["--json", "top-up", "jay", "1", "--meta", "novalue"],
    )
    .await?;
    let usage_json = error(&usage)?;
    ensure!(usage.code == 2 && usage_json["code"] == "INVALID_ARGUMENT");
    ensure!(
        usage_json["message"]
            .as_str()
            .is_some_and(|m| m.contains("novalue")),
        "{usage_json}"
    );
    Ok(())
}

async fn server_without_a_scheme_is_plain_text(server: &TestServer) -> anyhow::Result<()> {
    let address = server.addr.to_string();
    let created = run(command().args([
        "--server",
        address.as_str(),
        "user",
        "create",
        "kim",
        "--email",
        "kim@example.com",
    ]))
    .await?;
    ensure!(
        created.code == 0,
        "--server {address}: exit {}: {}",
        created.code,
        created.stderr
    );
    let from_env = run(command()
        .env("CREDIT_SERVER", &address)
        .args(["balance", "kim"]))
    .await?;
    ensure!(from_env.code == 0, "{}", from_env.stderr);
    Ok(())
}

/// A server that accepts connections and reads, but never answers.
fn hung_server() -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buffer = [0; 4096];
                while matches!(std::io::Read::read(&mut stream, &mut buffer), Ok(n) if n > 0) {}
            });
        }
    });
    Ok(addr)
}

#[tokio::test]
async fn timeout_bounds_the_whole_command() -> anyhow::Result<()> {
    let addr = hung_server()?.to_string();
    // A read (retried on deadline expiry) and a write (retried with its
    // key), each in both output modes: all end at the timeout, exit 8.
    for args in [
        &["balance", "x"][..],
        &["--json", "balance", "x"],
        &["top-up", "x", "5", "--key", "k"],
        &["history", "x", "--limit", "0"],
    ] {
        let started = std::time::Instant::now();
        let r = run(command()
            .args(["--server", addr.as_str(), "--timeout", "1s"])
            .args(args))
        .await?;
        let took = started.elapsed();
        ensure!(
            took < std::time::Duration::from_millis(2000),
            "{args:?} took {took:?}"
        );
        ensure!(
            took >= std::time::Duration::from_millis(900),
            "{args:?} gave up early, after {took:?}: {}",
            r.stderr
        );
        ensure!(r.code == 8, "{args:?}: exit {}: {}", r.code, r.stderr);
        ensure!(r.stdout.is_empty() && r.stderr.lines().count() == 1);
        if args[0] == "--json" {
            let error: Json = serde_json::from_str(&r.stderr)?;
            ensure!(error["code"] == "DEADLINE_EXCEEDED", "{error}");
        } else {
            ensure!(
                r.stderr.starts_with("error: deadline exceeded"),
                "{}",
                r.stderr
            );
        }
    }
    // From the environment too.
    let started = std::time::Instant::now();
    let r = run(command().env("CREDIT_TIMEOUT", "500ms").args([
        "--server",
        addr.as_str(),
        "balance",
        "x",
    ]))
    .await?;
    ensure!(r.code == 8 && started.elapsed() < std::time::Duration::from_millis(1500));
    Ok(())
}

#[tokio::test]
async fn bad_server_addresses_are_usage_errors() -> anyhow::Result<()> {
    for (address, says) in [
        ("not a host::", "not a valid address"),
        ("ftp://example.com:21", "unsupported scheme \"ftp\""),
        ("http://:50051", "no host"),
        ("localhost:70000", "not a number from 1 to 65535"),
    ] {
        let r = run(command().args(["--server", address, "balance", "x"])).await?;
        ensure!(r.code == 2, "{address}: exit {}: {}", r.code, r.stderr);
        ensure!(
            r.stderr.contains("invalid server address") && r.stderr.contains(says),
            "{address}: {}",
            r.stderr
        );
        ensure!(!r.stderr.contains("unavailable"), "{}", r.stderr);
    }
    // TLS flags with a plain-text address: refused before connecting.
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not used")?;
    let r = run(command()
        .args(["--server", "http://127.0.0.1:1", "--tls-ca"])
        .arg(&ca)
        .args(["balance", "x"]))
    .await?;
    ensure!(r.code == 2 && r.stderr.contains("http://"), "{}", r.stderr);
    // A client certificate needs its key.
    let r = run(command()
        .args(["--tls-cert"])
        .arg(&ca)
        .args(["balance", "x"]))
    .await?;
    ensure!(
        r.code == 2 && r.stderr.contains("--tls-key"),
        "{}",
        r.stderr
    );
    Ok(())
}

#[tokio::test]
async fn completions_for_each_shell() -> anyhow::Result<()> {
    for (shell, marker) in [
        ("bash", "complete -F _credit"),
        ("zsh", "#compdef credit"),
        ("fish", "complete -c credit"),
    ] {
        let r = run(command().args(["completions", shell])).await?;
        ensure!(r.code == 0 && r.stderr.is_empty(), "{shell}: {}", r.stderr);
        ensure!(r.stdout.contains(marker), "{shell}: no {marker:?}");
        // fish names long flags without their dashes.
        for word in ["top-up", "history", "page-token", "tls-cert"] {
            ensure!(r.stdout.contains(word), "{shell}: no {word}");
        }
    }
    let r = run(command().args(["completions", "tcsh"])).await?;
    ensure!(r.code == 2, "{}", r.stderr);
    Ok(())
}

#[tokio::test]
async fn client_certificates_for_mutual_tls() -> anyhow::Result<()> {
    use credit_server::app::ServeOptions;
    use integration_tests::TestDb;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let leaf = |name: &str| -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec![name.to_owned()])?.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf("localhost")?;
    let (client_cert, client_key) = leaf("billing-client")?;
    let dir = tempfile::tempdir()?;
    let file = |name: &str, text: &str| -> anyhow::Result<String> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.to_string_lossy().into_owned())
    };
    let ca_file = file("ca.pem", &ca.pem())?;
    let cert_file = file("client.pem", &client_cert)?;
    let key_file = file("client.key", &client_key)?;

    let db = TestDb::sqlite().await?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&server_cert, &server_key))
        .client_ca_root(Certificate::from_pem(ca.pem()));
    let server = TestServer::start_with(
        &db.url,
        ServeOptions {
            tls: Some(tls),
            ..Default::default()
        },
    )
    .await?;
    let address = format!("localhost:{}", server.addr.port());

    // Flags: host:port means TLS once a --tls-* flag is given.
    let created = run(command().args([
        "--server",
        address.as_str(),
        "--tls-ca",
        &ca_file,
        "--tls-cert",
        &cert_file,
        "--tls-key",
        &key_file,
        "user",
        "create",
        "lee",
        "--email",
        "lee@example.com",
    ]))
    .await?;
    ensure!(
        created.code == 0,
        "exit {}: {}",
        created.code,
        created.stderr
    );

    // The environment, with an https:// address; the write records that a
    // certificate was presented (rcgen's default subject).
    let top_up = run(command()
        .env("CREDIT_SERVER", format!("https://{address}"))
        .env("CREDIT_TLS_CA", &ca_file)
        .env("CREDIT_TLS_CERT", &cert_file)
        .env("CREDIT_TLS_KEY", &key_file)
        .args(["--json", "top-up", "lee", "5"]))
    .await?;
    ensure!(top_up.code == 0, "exit {}: {}", top_up.code, top_up.stderr);
    let receipt = top_up.json()?;
    ensure!(
        receipt["transaction"]["createdByCertificateSubject"]
            .as_str()
            .is_some_and(|s| s.starts_with("CN=")),
        "{receipt}"
    );

    // Without the client certificate: refused.
    let refused = run(command().args([
        "--server",
        address.as_str(),
        "--tls-ca",
        &ca_file,
        "--timeout",
        "3s",
        "balance",
        "lee",
    ]))
    .await?;
    ensure!(
        refused.code != 0 && refused.code != 2,
        "served without a client certificate: {} {}",
        refused.stdout,
        refused.stderr
    );

    server.stop().await;
    db.drop_database().await
}

/// The lot lines of a `credit lots` table (the header and continuation
/// lines left out), split into cells.
fn lot_rows(table: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let mut lines = table.lines();
    let header = lines.next().context("a header")?;
    ensure!(
        header.split_whitespace().collect::<Vec<_>>()
            == [
                "PRIORITY",
                "CATEGORY",
                "REMAINING",
                "HELD",
                "GRANTED",
                "EXPIRES",
                "CREATED",
                "LOT",
                "SOURCE"
            ],
        "{table}"
    );
    Ok(lines
        .filter(|l| !l.starts_with('('))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect())
}

/// The `allocations` of a transaction listing: the line named so and the
/// unnamed lines right after it.
fn allocation_lines(listing: &str) -> Vec<String> {
    let mut lines = listing
        .lines()
        .skip_while(|l| !l.starts_with("allocations  "));
    let Some(first) = lines.next() else {
        return Vec::new();
    };
    let mut found = vec![first["allocations".len()..].trim().to_owned()];
    found.extend(
        lines
            .take_while(|l| l.starts_with(' '))
            .map(|l| l.trim().to_owned()),
    );
    found
}

async fn lots_for_people_and_scripts(server: &TestServer) -> anyhow::Result<()> {
    ok(
        server,
        &["user", "create", "lou", "--email", "lou@example.com"],
    )
    .await?;

    // A top-up's lot, with a priority: paid, never expiring.
    let top_up = ok(server, &["top-up", "lou", "100", "--priority", "90"]).await?;
    let paid_lot = field(&top_up.stdout, "lot")?.to_owned();
    ensure!(field(&top_up.stdout, "category")? == "paid");
    ensure!(field(&top_up.stdout, "priority")? == "90");
    ensure!(field(&top_up.stdout, "lot expires")? == "never");
    ensure!(
        allocation_lines(&top_up.stdout) == [format!("+100 lot {paid_lot}")],
        "{}",
        top_up.stdout
    );
    let top_up_id = field(&top_up.stdout, "transaction")?.to_owned();

    // A grant expiring in 24h (a duration from now), in JSON.
    let asked = chrono::Utc::now() + chrono::TimeDelta::hours(24);
    let grant = ok(
        server,
        &[
            "--json",
            "grant",
            "lou",
            "50",
            "--expires",
            "24h",
            "--reason",
            "promo",
        ],
    )
    .await?
    .json()?;
    let lot = &grant["lot"];
    ensure!(lot["category"] == "CREDIT_CATEGORY_PROMOTIONAL", "{grant}");
    ensure!(lot["priority"] == 50 && lot["grantedAmount"] == "50" && lot["remaining"] == "50");
    ensure!(lot["held"] == "0" && lot["userId"] == "lou", "{lot}");
    ensure!(lot["sourceTransactionId"] == grant["transaction"]["transactionId"]);
    rfc3339(&lot["expireTime"])?;
    let expires: chrono::DateTime<chrono::Utc> =
        lot["expireTime"].as_str().context("expireTime")?.parse()?;
    ensure!(
        (expires - asked).num_seconds().abs() < 60,
        "--expires 24h: {expires}, asked about {asked}"
    );
    let promo_lot = lot["lotId"].as_str().context("lotId")?.to_owned();
    ensure!(
        grant["transaction"]["allocations"]
            == serde_json::json!([{"lotId": promo_lot, "amount": "50"}]),
        "{grant}"
    );

    // A paid grant at an RFC 3339 time, later in the draw order.
    let at = (chrono::Utc::now() + chrono::TimeDelta::days(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let sold = ok(
        server,
        &[
            "grant",
            "lou",
            "20",
            "--category",
            "paid",
            "--priority",
            "95",
            "--expires",
            &at,
        ],
    )
    .await?;
    ensure!(field(&sold.stdout, "category")? == "paid");
    ensure!(field(&sold.stdout, "priority")? == "95");
    ensure!(field(&sold.stdout, "lot expires")? == at, "{}", sold.stdout);
    let sold_lot = field(&sold.stdout, "lot")?.to_owned();

    let balance = ok(server, &["balance", "lou"]).await?;
    ensure!(field(&balance.stdout, "balance")? == "170");
    ensure!(field(&balance.stdout, "paid")? == "120");
    ensure!(field(&balance.stdout, "promotional")? == "50");
    ensure!(field(&balance.stdout, "expiring")? == "50");
    let next: chrono::DateTime<chrono::Utc> = field(&balance.stdout, "next expiry")?.parse()?;
    ensure!(
        (next - expires).num_seconds().abs() <= 1,
        "{}",
        balance.stdout
    );

    // A spend takes the promotional credits first, then the top-up's.
    let spend = ok(server, &["--json", "spend", "lou", "70"])
        .await?
        .json()?;
    let want = serde_json::json!([
        {"lotId": promo_lot, "amount": "-50"},
        {"lotId": paid_lot, "amount": "-20"},
    ]);
    ensure!(spend["transaction"]["allocations"] == want, "{spend}");
    ensure!(spend.get("lot").is_none(), "a spend makes no lot: {spend}");
    let spend_id = spend["transaction"]["transactionId"]
        .as_str()
        .context("id")?
        .to_owned();
    let tx = ok(server, &["transaction", "lou", &spend_id]).await?;
    ensure!(
        allocation_lines(&tx.stdout)
            == [
                format!("-50 lot {promo_lot}"),
                format!("-20 lot {paid_lot}")
            ],
        "{}",
        tx.stdout
    );
    let tx = ok(server, &["--json", "tx", "lou", &spend_id])
        .await?
        .json()?;
    ensure!(tx["allocations"] == want, "{tx}");
    let tx = ok(server, &["transaction", "lou", &top_up_id]).await?;
    ensure!(
        allocation_lines(&tx.stdout) == [format!("+100 lot {paid_lot}")],
        "{}",
        tx.stdout
    );
    let balance = ok(server, &["--json", "balance", "lou"]).await?.json()?;
    ensure!(
        balance["paid"] == "100" && balance["promotional"] == "0",
        "{balance}"
    );
    // The promotional credits are spent: the paid grant expires next.
    ensure!(
        balance["nextExpireTime"] == at.as_str() && balance["nextExpiringAmount"] == "20",
        "{balance}"
    );

    // `credit lots`: what is left, in draw order.
    let lots = ok(server, &["lots", "lou"]).await?;
    let rows = lot_rows(&lots.stdout)?;
    ensure!(rows.len() == 2, "{}", lots.stdout);
    ensure!(
        rows[0][..5] == ["90", "paid", "80", "0", "100"]
            && rows[0][5] == "never"
            && rows[0][7] == paid_lot
            && rows[0][8] == top_up_id,
        "{}",
        lots.stdout
    );
    ensure!(
        rows[1][..5] == ["95", "paid", "20", "0", "20"]
            && rows[1][5] == at
            && rows[1][7] == sold_lot,
        "{}",
        lots.stdout
    );
    let all = ok(server, &["lots", "lou", "--include-empty"]).await?;
    let rows = lot_rows(&all.stdout)?;
    ensure!(rows.len() == 3, "{}", all.stdout);
    ensure!(
        rows[0][..5] == ["50", "promotional", "0", "0", "50"] && rows[0][7] == promo_lot,
        "{}",
        all.stdout
    );

    // Pages: --limit (or --page-size) and --page-token, --all for every lot.
    let first = ok(server, &["--json", "lots", "lou", "--limit", "1"])
        .await?
        .json()?;
    ensure!(
        first["lots"].as_array().map(Vec::len) == Some(1) && first["lots"][0]["lotId"] == paid_lot,
        "{first}"
    );
    ensure!(first["lots"][0]["category"] == "CREDIT_CATEGORY_PAID");
    ensure!(first["lots"][0].get("expireTime").is_none(), "{first}");
    let token = first["nextPageToken"].as_str().context("a token")?;
    ensure!(!token.is_empty(), "more exist: {first}");
    let rest = ok(server, &["--json", "lots", "lou", "--page-token", token])
        .await?
        .json()?;
    ensure!(
        rest["lots"].as_array().map(Vec::len) == Some(1)
            && rest["lots"][0]["lotId"] == sold_lot
            && rest["nextPageToken"] == "",
        "{rest}"
    );
    let table = ok(
        server,
        &["lots", "lou", "--page-size", "1", "--include-empty"],
    )
    .await?;
    let rows = lot_rows(&table.stdout)?;
    ensure!(
        rows.len() == 1 && rows[0][7] == promo_lot,
        "{}",
        table.stdout
    );
    ensure!(
        table
            .stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("(more lots: continue with --page-token ")),
        "{}",
        table.stdout
    );
    let every = ok(
        server,
        &["--json", "lots", "lou", "--all", "--include-empty"],
    )
    .await?
    .json()?;
    ensure!(
        every["lots"].as_array().map(Vec::len) == Some(3) && every["nextPageToken"] == "",
        "{every}"
    );
    let both = credit(server, &["lots", "lou", "--all", "--limit", "1"]).await?;
    ensure!(both.code == 2, "--all with --limit: {}", both.stderr);
    ok(
        server,
        &["user", "create", "nil", "--email", "nil@example.com"],
    )
    .await?;
    let empty = ok(server, &["lots", "nil"]).await?;
    ensure!(empty.stdout.contains("(no lots)"), "{}", empty.stdout);
    let empty = ok(server, &["--json", "lots", "nil"]).await?.json()?;
    ensure!(
        empty == serde_json::json!({"lots": [], "nextPageToken": ""}),
        "{empty}"
    );

    // Bad terms: the server refuses them (exit 3); flags that do not parse
    // are usage errors (exit 2).
    let line = fails(server, &["top-up", "lou", "1", "--priority", "101"], 3).await?;
    ensure!(line.contains("priority"), "{line}");
    let line = fails(server, &["grant", "lou", "1", "--priority", "-1"], 3).await?;
    ensure!(line.contains("priority"), "{line}");
    let line = fails(
        server,
        &["top-up", "lou", "1", "--expires", "2000-01-01T00:00:00Z"],
        3,
    )
    .await?;
    ensure!(line.contains("expire_time"), "{line}");
    for args in [
        &["top-up", "lou", "1", "--expires", "soon"][..],
        &["grant", "lou", "1", "--category", "free"],
        &["top-up", "lou", "1", "--category", "paid"],
        &["spend", "lou", "1", "--priority", "1"],
    ] {
        let r = credit(server, args).await?;
        ensure!(r.code == 2, "{args:?}: exit {}: {}", r.code, r.stderr);
    }
    let balance = ok(server, &["--json", "balance", "lou"]).await?.json()?;
    ensure!(
        balance["balance"] == "100",
        "nothing else applied: {balance}"
    );
    Ok(())
}
