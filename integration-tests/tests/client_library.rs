//! The `credit-client` library against the real server: typed calls, typed
//! errors, the pager, and retries that never apply a write twice (through
//! a proxy that loses answers on purpose).

#[path = "client_library/proxy.rs"]
mod proxy;

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use credit_client::TlsConfig;
use credit_client::{
    CreditClient, Error, FieldViolation, RetryPolicy, Subject, TransactionType, Usage,
};
use credit_server::app::ServeOptions;
use credit_server::auth::{KeyRing, Role, key_line};
use futures::TryStreamExt;
use integration_tests::{Backend, TestDb, TestServer, invariants, ledger_tests};
use proxy::{Fault, Proxy};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::json;
use tonic::Code;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

ledger_tests!(
    typed_calls_round_trip,
    errors_are_typed_from_error_details,
    lost_answer_is_retried_with_the_same_key_and_charged_once,
    deadline_expiry_is_retried_and_charged_once,
    transient_failures_before_applying_are_retried,
    business_errors_are_not_retried,
    retries_stop_after_max_attempts,
    caller_key_replays_the_original,
    bearer_token_is_sent_on_every_attempt,
    pager_follows_next_page_token,
    pager_applies_filters,
);

/// Retries that do not slow the tests down.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        multiplier: 2.0,
    }
}

async fn client_via(proxy: &Proxy) -> anyhow::Result<CreditClient> {
    Ok(CreditClient::builder(proxy.endpoint())
        .retry_policy(quick_retries())
        .connect()
        .await?)
}

async fn typed_calls_round_trip(server: &TestServer) -> anyhow::Result<()> {
    let client = CreditClient::connect(server.endpoint()).await?;
    let user = client
        .create_user("alice", "Alice@Example.com")
        .name("Alice")
        .await?;
    ensure!(user.user_id == "alice" && user.email == "alice@example.com" && user.name == "Alice");
    ensure!(client.get_user("alice").await? == user);

    let top_up = client
        .top_up("alice", 100)
        .metadata(json!({"order": "A-1", "lines": [1, 2]}))
        .meta("n", 3)
        .await?;
    ensure!(top_up.balance == 100);
    ensure!(top_up.transaction.kind == TransactionType::TopUp && top_up.transaction.amount == 100);
    ensure!(
        top_up.transaction.metadata
            == json!({"order": "A-1", "lines": [1, 2], "n": 3})
                .as_object()
                .cloned(),
        "metadata came back as {:?}",
        top_up.transaction.metadata
    );
    // The client made a key, and it is a UUID.
    uuid::Uuid::parse_str(&top_up.transaction.idempotency_key)?;

    let usage = Usage::new()
        .graph_exec_id("run-7")
        .node_id("n1")
        .reason("LLM call");
    let spend = client
        .spend("alice", 40)
        .usage(usage.clone())
        .send()
        .await?;
    ensure!(spend.balance == 60 && spend.transaction.amount == -40);
    ensure!(spend.transaction.usage == Some(usage));

    let grant = client.grant("alice", 5).reason("welcome").await?;
    ensure!(grant.balance == 65 && grant.transaction.reason.as_deref() == Some("welcome"));

    let refund = client
        .refund("alice", &spend.transaction.transaction_id)
        .amount(15)
        .reason("slow answer")
        .await?;
    ensure!(refund.balance == 80 && refund.transaction.kind == TransactionType::Refund);
    ensure!(
        refund.transaction.refunded_transaction_id.as_deref()
            == Some(spend.transaction.transaction_id.as_str())
    );

    let spent = client
        .get_transaction("alice", &spend.transaction.transaction_id)
        .await?;
    ensure!(
        spent.refunded_amount == 15,
        "refunded_amount {}",
        spent.refunded_amount
    );

    let balance = client.get_balance("alice").await?;
    ensure!(balance.balance == 80 && balance.last_sequence == 4);
    invariants::check_user(server, "alice").await?;
    Ok(())
}

async fn errors_are_typed_from_error_details(server: &TestServer) -> anyhow::Result<()> {
    let client = CreditClient::connect(server.endpoint()).await?;
    client.create_user("bob", "bob@example.com").await?;
    let top_up = client.top_up("bob", 40).idempotency_key("pay-1").await?;

    match client.spend("bob", 100).await {
        Err(Error::InsufficientBalance {
            available: 40,
            requested: 100,
        }) => {}
        other => bail!("expected InsufficientBalance, got {other:?}"),
    }
    match client.get_balance("nobody").await {
        Err(Error::NotFound {
            subject: Subject::User,
            id,
        }) if id == "nobody" => {}
        other => bail!("expected NotFound(user), got {other:?}"),
    }
    let missing = uuid::Uuid::new_v4().to_string();
    match client.get_transaction("bob", &missing).await {
        Err(Error::NotFound {
            subject: Subject::Transaction,
            id,
        }) if id == missing => {}
        other => bail!("expected NotFound(transaction), got {other:?}"),
    }
    match client.top_up("bob", 0).await {
        Err(Error::InvalidArgument { violations, .. }) => ensure!(
            violations
                .iter()
                .any(|v: &FieldViolation| v.field == "amount"),
            "violations: {violations:?}"
        ),
        other => bail!("expected InvalidArgument, got {other:?}"),
    }
    match client.top_up("bob", 41).idempotency_key("pay-1").await {
        Err(Error::IdempotencyKeyReused { key }) if key == "pay-1" => {}
        other => bail!("expected IdempotencyKeyReused, got {other:?}"),
    }
    match client.create_user("carol", "BOB@example.com").await {
        Err(Error::AlreadyExists {
            subject: Subject::Email,
            ..
        }) => {}
        other => bail!("expected AlreadyExists(email), got {other:?}"),
    }
    match client.create_user("bob", "other@example.com").await {
        Err(Error::AlreadyExists {
            subject: Subject::User,
            id,
        }) if id == "bob" => {}
        other => bail!("expected AlreadyExists(user), got {other:?}"),
    }
    let tx = top_up.transaction.transaction_id;
    match client.refund("bob", &tx).amount(41).await {
        Err(Error::RefundExceedsOriginal {
            refundable: 40,
            requested: 41,
        }) => {}
        other => bail!("expected RefundExceedsOriginal, got {other:?}"),
    }
    let refund = client.refund("bob", &tx).amount(1).await?;
    match client
        .refund("bob", &refund.transaction.transaction_id)
        .await
    {
        Err(Error::NotRefundable {
            transaction_type, ..
        }) => {
            ensure!(!transaction_type.is_empty())
        }
        other => bail!("expected NotRefundable, got {other:?}"),
    }
    match client.top_up("bob", i64::MAX).await {
        Err(Error::BalanceOverflow { balance: 39, .. }) => {}
        other => bail!("expected BalanceOverflow, got {other:?}"),
    }
    match client
        .top_up("bob", 1)
        .metadata(json!("not an object"))
        .await
    {
        Err(Error::InvalidInput(_)) => {}
        other => bail!("expected InvalidInput, got {other:?}"),
    }
    // Display reads as one clear sentence.
    let err = client
        .spend("bob", 100)
        .await
        .err()
        .context("spend should fail")?;
    ensure!(
        err.to_string() == "insufficient balance: 39 available, 100 requested",
        "{err}"
    );
    ensure!(err.code() == Code::FailedPrecondition && !err.is_retryable());
    Ok(())
}

async fn lost_answer_is_retried_with_the_same_key_and_charged_once(
    server: &TestServer,
) -> anyhow::Result<()> {
    let proxy = Proxy::start(server).await?;
    let client = client_via(&proxy).await?;
    client.create_user("u", "u@example.com").await?;
    client.top_up("u", 100).await?;

    // The server applies the spend; its answer is replaced by UNAVAILABLE.
    proxy.inject("Spend", Fault::After(Code::Unavailable));
    let receipt = client.spend("u", 30).await?;

    let calls = proxy.calls("Spend");
    ensure!(
        calls.len() == 2,
        "expected one retry, saw {} calls",
        calls.len()
    );
    ensure!(
        calls[0].idempotency_key == calls[1].idempotency_key
            && !calls[0].idempotency_key.is_empty(),
        "the retry must carry the first attempt's key: {calls:?}"
    );
    ensure!(receipt.transaction.idempotency_key == calls[0].idempotency_key);
    ensure!(
        receipt.balance == 70,
        "one charge: balance {}",
        receipt.balance
    );
    ensure!(client.get_balance("u").await?.balance == 70);

    // The retry got the transaction the first attempt created.
    let usage: Vec<_> = client
        .list_transactions("u")
        .kind(TransactionType::Usage)
        .stream()
        .try_collect()
        .await?;
    ensure!(
        usage.len() == 1,
        "expected one usage transaction, found {}",
        usage.len()
    );
    // History pages carry no allocations; the write's answer does.
    ensure!(!receipt.transaction.allocations.is_empty());
    let answered = credit_client::Transaction {
        allocations: Vec::new(),
        ..receipt.transaction.clone()
    };
    ensure!(usage[0] == answered, "{:?} vs {answered:?}", usage[0]);
    invariants::check_user(server, "u").await?;
    let report = client.verify_user("u").await?;
    ensure!(
        report.clean && report.transactions_checked == 2,
        "{report:?}"
    );
    Ok(())
}

async fn deadline_expiry_is_retried_and_charged_once(server: &TestServer) -> anyhow::Result<()> {
    let proxy = Proxy::start(server).await?;
    let client = client_via(&proxy)
        .await?
        .with_deadline(Duration::from_millis(500));
    client.create_user("u", "u@example.com").await?;
    client.top_up("u", 100).await?;

    // Applied, but the answer arrives long after the caller gave up.
    proxy.inject("Spend", Fault::Delay(Duration::from_secs(3)));
    let receipt = client.spend("u", 30).idempotency_key("slow-1").await?;
    ensure!(proxy.calls("Spend").len() == 2);
    ensure!(receipt.balance == 70 && receipt.transaction.idempotency_key == "slow-1");
    ensure!(invariants::check_user(server, "u").await?.len() == 2);
    Ok(())
}

async fn transient_failures_before_applying_are_retried(server: &TestServer) -> anyhow::Result<()> {
    let proxy = Proxy::start(server).await?;
    let client = client_via(&proxy).await?;
    client.create_user("u", "u@example.com").await?;

    proxy.inject("TopUp", Fault::Before(Code::Aborted));
    proxy.inject("TopUp", Fault::Before(Code::Unavailable));
    // What the server's load shedding answers at its concurrency limit.
    proxy.inject("TopUp", Fault::Before(Code::ResourceExhausted));
    let receipt = client.top_up("u", 10).await?;
    ensure!(proxy.calls("TopUp").len() == 4);
    ensure!(receipt.balance == 10);
    // Reads retry too.
    proxy.inject("GetBalance", Fault::After(Code::Unavailable));
    ensure!(client.get_balance("u").await?.balance == 10);
    ensure!(proxy.calls("GetBalance").len() == 2);
    Ok(())
}

async fn business_errors_are_not_retried(server: &TestServer) -> anyhow::Result<()> {
    let proxy = Proxy::start(server).await?;
    let client = client_via(&proxy).await?;
    client.create_user("u", "u@example.com").await?;
    let result = client.spend("u", 1).await;
    ensure!(
        matches!(result, Err(Error::InsufficientBalance { .. })),
        "{result:?}"
    );
    ensure!(
        proxy.calls("Spend").len() == 1,
        "a refusal is final: no retry"
    );

    proxy.inject("Grant", Fault::Before(Code::Internal));
    let result = client.grant("u", 1).await;
    ensure!(matches!(result, Err(Error::Internal { .. })), "{result:?}");
    ensure!(proxy.calls("Grant").len() == 1);
    Ok(())
}

async fn retries_stop_after_max_attempts(server: &TestServer) -> anyhow::Result<()> {
    let proxy = Proxy::start(server).await?;
    let client = client_via(&proxy).await?;
    client.create_user("u", "u@example.com").await?;
    for _ in 0..10 {
        proxy.inject("TopUp", Fault::Before(Code::Unavailable));
    }
    let started = std::time::Instant::now();
    let result = client.top_up("u", 10).await;
    ensure!(
        matches!(&result, Err(e @ Error::Unavailable { .. }) if e.is_retryable()),
        "{result:?}"
    );
    ensure!(proxy.calls("TopUp").len() == 4, "max_attempts is 4");
    ensure!(
        started.elapsed() < Duration::from_secs(2),
        "backoff is bounded"
    );
    ensure!(client.get_balance("u").await?.balance == 0);
    Ok(())
}

async fn caller_key_replays_the_original(server: &TestServer) -> anyhow::Result<()> {
    let client = CreditClient::connect(server.endpoint()).await?;
    client.create_user("u", "u@example.com").await?;
    let first = client.top_up("u", 25).idempotency_key("order-9").await?;
    let again = client.top_up("u", 25).idempotency_key("order-9").await?;
    ensure!(first == again, "{first:?}\n{again:?}");
    ensure!(client.get_balance("u").await?.balance == 25);
    Ok(())
}

async fn bearer_token_is_sent_on_every_attempt(server: &TestServer) -> anyhow::Result<()> {
    let proxy = Proxy::start(server).await?;
    let client = CreditClient::builder(proxy.endpoint())
        .retry_policy(quick_retries())
        .bearer_token("s3cret")
        .connect()
        .await?;
    proxy.inject("CreateUser", Fault::After(Code::Unavailable));
    client.create_user("u", "u@example.com").await?;
    let calls = proxy.calls("CreateUser");
    ensure!(calls.len() == 2);
    for call in calls {
        ensure!(
            call.authorization.as_deref() == Some("Bearer s3cret"),
            "{call:?}"
        );
    }
    ensure!(
        !format!("{client:?}").contains("s3cret"),
        "Debug must not show the token"
    );
    Ok(())
}

async fn pager_follows_next_page_token(server: &TestServer) -> anyhow::Result<()> {
    let proxy = Proxy::start(server).await?;
    let client = client_via(&proxy).await?;
    client.create_user("u", "u@example.com").await?;
    for i in 1..=25 {
        client.top_up("u", i).await?;
    }
    let all: Vec<_> = client
        .list_transactions("u")
        .page_size(7)
        .stream()
        .try_collect()
        .await?;
    let sequences: Vec<i64> = all.iter().map(|t| t.sequence).collect();
    ensure!(
        sequences == (1..=25).rev().collect::<Vec<_>>(),
        "{sequences:?}"
    );
    ensure!(
        proxy.calls("ListTransactions").len() == 4,
        "25 in pages of 7"
    );

    let first = client.list_transactions("u").page_size(10).page().await?;
    ensure!(first.transactions.len() == 10);
    let token = first.next_page_token.context("a next page exists")?;
    let second = client
        .list_transactions("u")
        .page_size(10)
        .page_token(token)
        .page()
        .await?;
    ensure!(second.transactions.first().map(|t| t.sequence) == Some(15));

    let last = client.list_transactions("u").page_size(100).page().await?;
    ensure!(last.transactions.len() == 25 && last.next_page_token.is_none());
    Ok(())
}

async fn pager_applies_filters(server: &TestServer) -> anyhow::Result<()> {
    let client = CreditClient::connect(server.endpoint()).await?;
    client.create_user("u", "u@example.com").await?;
    client.top_up("u", 100).await?;
    for run in ["a", "b", "a"] {
        client
            .spend("u", 1)
            .usage(Usage::new().graph_exec_id(run))
            .await?;
    }
    client.grant("u", 1).await?;
    let usage: Vec<_> = client
        .list_transactions("u")
        .kind(TransactionType::Usage)
        .graph_exec_id("a")
        .page_size(1)
        .stream()
        .try_collect()
        .await?;
    ensure!(usage.len() == 2 && usage.iter().all(|t| t.kind == TransactionType::Usage));
    let grants_and_top_ups: Vec<_> = client
        .list_transactions("u")
        .kinds([TransactionType::Grant, TransactionType::TopUp])
        .stream()
        .try_collect()
        .await?;
    ensure!(grants_and_top_ups.len() == 2);
    let future: Vec<_> = client
        .list_transactions("u")
        .created_after(chrono::Utc::now() + chrono::Duration::hours(1))
        .stream()
        .try_collect()
        .await?;
    ensure!(future.is_empty());
    Ok(())
}

/// A CA, a server certificate for `localhost` and a client certificate, as
/// PEM: (ca, (server cert, key), (client cert, key)).
type Pki = (String, (String, String), (String, String));

fn pki() -> anyhow::Result<Pki> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let leaf = |name: &str| -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec![name.to_owned()])?.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    Ok((ca.pem(), leaf("localhost")?, leaf("billing-client")?))
}

/// The client's bearer token and TLS settings against a server that
/// requires API keys, TLS and client certificates.
#[tokio::test]
async fn keys_and_tls_reach_a_secured_server() -> anyhow::Result<()> {
    const ADMIN: &str = "admin-key-0123456789";
    const READER: &str = "reader-key-0123456789";
    let keys = KeyRing::parse(&format!(
        "{}\n{}",
        key_line("ops", Role::Admin, ADMIN),
        key_line("dashboard", Role::Reader, READER)
    ))
    .map_err(anyhow::Error::msg)?;
    let (ca, (server_cert, server_key), (client_cert, client_key)) = pki()?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&server_cert, &server_key))
        .client_ca_root(Certificate::from_pem(&ca));
    let db = TestDb::create(Backend::Sqlite)
        .await?
        .context("sqlite is always there")?;
    let options = ServeOptions {
        keys: Some(keys),
        tls: Some(tls),
        ..Default::default()
    };
    let server = TestServer::start_with(&db.url, options).await?;
    // By address, so the certificate's name must come from `domain_name`.
    let endpoint = format!("https://127.0.0.1:{}", server.addr.port());
    let trust = TlsConfig::new()
        .ca_certificate_pem(ca.as_bytes())
        .domain_name("localhost")
        .client_identity_pem(client_cert.as_bytes(), client_key.as_bytes());
    let connect = |token: Option<&str>| {
        let mut builder = CreditClient::builder(endpoint.clone())
            .tls(trust.clone())
            .retry_policy(quick_retries());
        if let Some(token) = token {
            builder = builder.bearer_token(token);
        }
        builder.connect()
    };

    let admin = connect(Some(ADMIN)).await?;
    admin.create_user("u", "u@example.com").await?;
    ensure!(admin.top_up("u", 10).await?.balance == 10);

    match connect(None).await?.get_balance("u").await {
        Err(Error::Unauthenticated { .. }) => {}
        other => bail!("expected Unauthenticated, got {other:?}"),
    }
    let reader = connect(Some(READER)).await?;
    ensure!(reader.get_balance("u").await?.balance == 10);
    match reader.top_up("u", 1).await {
        Err(e @ Error::PermissionDenied { .. }) => ensure!(!e.is_retryable()),
        other => bail!("expected PermissionDenied, got {other:?}"),
    }
    // Without a client certificate the server refuses the connection.
    let anonymous = CreditClient::builder(endpoint.clone())
        .tls(
            TlsConfig::new()
                .ca_certificate_pem(ca.as_bytes())
                .domain_name("localhost"),
        )
        .bearer_token(ADMIN)
        .retry_policy(RetryPolicy::none())
        .connect()
        .await;
    let refused = match anonymous {
        Ok(client) => client.get_balance("u").await.err(),
        Err(err) => Some(err),
    };
    ensure!(refused.is_some(), "served without a client certificate");

    server.stop().await;
    db.drop_database().await
}

#[tokio::test]
async fn connect_failure_is_typed() -> anyhow::Result<()> {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    match CreditClient::connect(format!("http://127.0.0.1:{port}")).await {
        Err(e @ Error::Connect { .. }) => {
            ensure!(e.is_retryable() && e.code() == Code::Unavailable)
        }
        other => bail!("expected Connect, got {other:?}"),
    }
    match CreditClient::connect("not a url").await {
        Err(Error::InvalidInput(_)) => {}
        other => bail!("expected InvalidInput, got {other:?}"),
    }
    // A lazy client reports the same failure as Unavailable from its call,
    // after retrying.
    let lazy = CreditClient::builder(format!("http://127.0.0.1:{port}"))
        .retry_policy(quick_retries())
        .connect_lazy()?;
    match lazy.get_balance("u").await {
        Err(Error::Unavailable { .. }) => Ok(()),
        other => bail!("expected Unavailable, got {other:?}"),
    }
}
