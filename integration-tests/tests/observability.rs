//! What an operator sees, from the real `credit-server` binary: Prometheus
//! metrics after a known workload, the JSON access log, OTLP trace spans
//! received by a collector of our own, and a graceful shutdown that ends
//! open health watches instead of waiting out the grace period.
//!
//! Build the binary first: `cargo build -p credit-server`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use credit_proto::v1 as pb;
use credit_server::auth::{Role, key_line};
use integration_tests::api::with_key;
use integration_tests::process::ServerProcess;
use integration_tests::{Client, TestDb, api, database_tests};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost_types::{Struct, Value, value::Kind};
use sea_orm::TransactionTrait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

const ADMIN: &str = "obs-admin-key-9f8e7d6c5b4a";
const SERVICE: &str = "obs-service-key-1a2b3c4d5e6f";
const READER: &str = "obs-reader-key-0a9b8c7d6e5f";

/// `--api-keys` with the three keys above.
fn api_keys_arg() -> String {
    [
        key_line("ops", Role::Admin, ADMIN),
        key_line("billing", Role::Service, SERVICE),
        key_line("dashboard", Role::Reader, READER),
    ]
    .join(",")
}

/// A loopback address nothing listens on right now.
fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// `message` with `x-request-id: id` (and the key, when given).
fn request<T>(message: T, key: Option<&str>, id: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = match key {
        Some(key) => with_key(message, key),
        None => tonic::Request::new(message),
    };
    request
        .metadata_mut()
        .insert("x-request-id", MetadataValue::try_from(id)?);
    Ok(request)
}

// ---------------------------------------------------------------- metrics

/// One sample of a Prometheus text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// `GET /metrics` over a bare TCP connection (HTTP/1.0: the answer ends
/// with the connection).
async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        anyhow::Ok(String::from_utf8(answer)?)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .context("the metrics endpoint did not answer within 10 s")??;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .context("no end of the HTTP headers")?;
    ensure!(
        head.starts_with("HTTP/1.") && head.lines().next().is_some_and(|l| l.contains(" 200")),
        "metrics answered {head}"
    );
    Ok(body.to_owned())
}

fn parse_samples(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("no value in {line:?}"))?;
        let value: f64 = value
            .parse()
            .with_context(|| format!("bad value in {line:?}"))?;
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .with_context(|| format!("unclosed labels in {line:?}"))?;
                let mut labels = BTreeMap::new();
                for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                    let (key, value) = pair
                        .split_once("=\"")
                        .with_context(|| format!("bad label in {line:?}"))?;
                    labels.insert(key.to_owned(), value.trim_end_matches('"').to_owned());
                }
                (name.to_owned(), labels)
            }
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok(samples)
}

/// The samples named `name` whose labels include every pair of `labels`.
fn matching<'a>(
    samples: &'a [Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> impl Iterator<Item = &'a Sample> {
    samples.iter().filter(move |s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

/// The one sample named `name` with `labels`; an error if absent or
/// ambiguous.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
    let found: Vec<_> = matching(samples, name, labels).collect();
    match found.as_slice() {
        [one] => Ok(one.value),
        [] => bail!("no sample {name}{labels:?}"),
        many => bail!("{} samples {name}{labels:?}: {many:?}", many.len()),
    }
}

/// A known workload, then the scrape: every counter it moved has exactly
/// the value the workload implies.
async fn metrics_count_a_known_workload(db: &TestDb) -> anyhow::Result<()> {
    let metrics = free_addr()?;
    let listen = metrics.to_string();
    let server = ServerProcess::start(&db.url, &["--metrics-listen", &listen]).await?;
    let result = async {
        let mut c: Client = server.client().await?;
        api::create_user(&mut c, "alice").await?;
        api::create_user(&mut c, "bob").await?;
        api::top_up_with_key(&mut c, "alice", 100, "top-1").await?;
        api::top_up(&mut c, "alice", 50).await?;
        api::top_up(&mut c, "bob", 30).await?;
        let replay = api::top_up_with_key(&mut c, "alice", 100, "top-1").await?;
        ensure!(
            replay.balance == 100,
            "the retry is answered as the original: {replay:?}"
        );
        api::spend(&mut c, "alice", 20).await?;
        api::spend(&mut c, "bob", 10).await?;
        let short = api::spend(&mut c, "bob", 1_000).await;
        ensure!(
            short.as_ref().err().map(tonic::Status::code) == Some(Code::FailedPrecondition),
            "{short:?}"
        );
        ensure!(api::balance(&mut c, "alice").await? == 130);
        let verified = c
            .verify_ledger(pb::VerifyLedgerRequest::default())
            .await?
            .into_inner();
        ensure!(verified.clean, "{verified:?}");

        let text = scrape(metrics).await?;
        eprintln!(
            "--- scrape of {metrics} on {:?} (credit_ and handled lines):",
            db.backend
        );
        for line in text.lines() {
            let wanted =
                line.starts_with("credit_") || line.starts_with("grpc_server_handled_total");
            if wanted && !line.contains("_bucket{") {
                eprintln!("{line}");
            }
        }
        let samples = parse_samples(&text)?;

        // Calls, by method and code: exactly the workload's.
        let calls = [
            ("CreateUser", "Ok", 2.0),
            ("TopUp", "Ok", 4.0),
            ("Spend", "Ok", 2.0),
            ("Spend", "FailedPrecondition", 1.0),
            ("GetBalance", "Ok", 1.0),
            ("VerifyLedger", "Ok", 1.0),
        ];
        let handled: Vec<_> = matching(&samples, "grpc_server_handled_total", &[]).collect();
        ensure!(
            handled.len() == calls.len(),
            "handled series {handled:#?}, expected {calls:?}"
        );
        for (method, code, want) in calls {
            let labels = [
                ("grpc_service", "credit.v1.CreditService"),
                ("grpc_method", method),
                ("grpc_type", "unary"),
                ("grpc_code", code),
            ];
            let got = value(&samples, "grpc_server_handled_total", &labels)?;
            ensure!(
                got == want,
                "handled {method}/{code}: {got}, expected {want}"
            );
        }
        for (method, want) in [
            ("CreateUser", 2.0),
            ("TopUp", 4.0),
            ("Spend", 3.0),
            ("GetBalance", 1.0),
            ("VerifyLedger", 1.0),
        ] {
            let labels = [("grpc_method", method)];
            let started = value(&samples, "grpc_server_started_total", &labels)?;
            let timed = value(&samples, "grpc_server_handling_seconds_count", &labels)?;
            ensure!(
                started == want && timed == want,
                "{method}: started {started}, timed {timed}, expected {want}"
            );
        }

        // The ledger's own counters.
        let exact = [
            ("credit_idempotent_replays_total", vec![], 1.0),
            ("credit_insufficient_balance_total", vec![], 1.0),
            ("credit_writes_applied_total", vec![("type", "TOP_UP")], 3.0),
            ("credit_writes_applied_total", vec![("type", "USAGE")], 2.0),
            ("credit_ledger_verifications_total", vec![], 1.0),
            ("credit_ledger_violations", vec![], 0.0),
            ("credit_requests_in_flight", vec![], 0.0),
        ];
        for (name, labels, want) in exact {
            let got = value(&samples, name, &labels)?;
            ensure!(got == want, "{name}{labels:?} = {got}, expected {want}");
        }
        let applied: f64 = matching(&samples, "credit_writes_applied_total", &[])
            .map(|s| s.value)
            .sum();
        ensure!(applied == 5.0, "writes applied in all: {applied}");
        ensure!(
            matching(&samples, "credit_requests_shed_total", &[]).all(|s| s.value == 0.0),
            "calls were shed"
        );
        let reads = value(&samples, "credit_balance_reads_total", &[])?;
        let queries = value(&samples, "credit_balance_read_queries_total", &[])?;
        ensure!(
            reads >= 1.0 && queries >= 1.0 && queries <= reads,
            "balance reads {reads}, queries {queries}"
        );

        // Write batches: each committed one recorded its size once.
        let committed = value(
            &samples,
            "credit_write_batches_total",
            &[("outcome", "committed")],
        )?;
        let sized = value(&samples, "credit_write_batch_size_count", &[])?;
        let batched_writes = value(&samples, "credit_write_batch_size_sum", &[])?;
        let timed = value(&samples, "credit_write_batch_seconds_count", &[])?;
        ensure!(
            committed >= 1.0 && sized == committed && timed == committed,
            "committed batches {committed}, sized {sized}, timed {timed}"
        );
        ensure!(
            batched_writes >= 5.0,
            "{batched_writes} writes in committed batches, 5 were applied"
        );
        value(&samples, "credit_write_queue_depth", &[])?;

        // Build and pool.
        let build: Vec<_> = matching(&samples, "credit_build_info", &[]).collect();
        ensure!(
            build.len() == 1
                && build[0].value == 1.0
                && build[0]
                    .labels
                    .get("version")
                    .is_some_and(|v| !v.is_empty()),
            "{build:?}"
        );
        let idle = value(&samples, "credit_db_pool_connections", &[("state", "idle")])?;
        let in_use = value(
            &samples,
            "credit_db_pool_connections",
            &[("state", "in_use")],
        )?;
        let max = value(&samples, "credit_db_pool_max_connections", &[])?;
        ensure!(
            max >= 1.0 && idle >= 0.0 && in_use >= 0.0 && idle + in_use <= max,
            "pool idle {idle}, in use {in_use}, max {max}"
        );
        ensure!(
            text.contains("# TYPE grpc_server_handling_seconds histogram")
                && text.contains("# TYPE credit_write_batch_size histogram"),
            "histograms are not exposed as histograms"
        );
        Ok(())
    }
    .await;
    server.explain(result)
}

/// Polls the scrape until `credit_requests_in_flight` is `want` (10 s at
/// most); the last value seen otherwise.
async fn in_flight_becomes(metrics: SocketAddr, want: f64) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = parse_samples(&scrape(metrics).await?)?;
        let now = value(&samples, "credit_requests_in_flight", &[]).unwrap_or(f64::NAN);
        if now == want || Instant::now() > deadline {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A call its caller abandons while the server holds it (the client drops
/// it: HTTP/2 resets the stream) is no longer counted in flight once it is
/// gone. SQLite: the test holds the database's write lock itself.
#[tokio::test]
async fn abandoned_calls_leave_the_in_flight_gauge() -> anyhow::Result<()> {
    let db = TestDb::sqlite().await?;
    let metrics = free_addr()?;
    let listen = metrics.to_string();
    let server = ServerProcess::start(&db.url, &["--metrics-listen", &listen]).await?;
    let result = async {
        let mut c = server.client().await?;
        api::create_user(&mut c, "u").await?;
        let lock = sea_orm::Database::connect(&db.url)
            .await?
            .begin_with_options(sea_orm::TransactionOptions {
                sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?;
        let mut held = server.client().await?;
        let call =
            tokio::spawn(async move { api::top_up_with_key(&mut held, "u", 1, "abandoned").await });
        let holding = in_flight_becomes(metrics, 1.0).await?;
        ensure!(holding == 1.0, "the held call is not in flight: {holding}");
        call.abort(); // drops the call: the client resets its stream
        ensure!(call.await.is_err_and(|e| e.is_cancelled()), "the call was not abandoned");
        let after = in_flight_becomes(metrics, 0.0).await?;
        lock.rollback().await?;
        let text = scrape(metrics).await?;
        let top_ups: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("grpc_server_handled_total") && l.contains("\"TopUp\""))
            .collect();
        let access = server
            .stderr_text()
            .lines()
            .filter(|l| l.contains("credit::access") && l.contains("TopUp"))
            .count();
        eprintln!(
            "abandoned call: in flight {after} 10 s later; TopUp handled series {top_ups:?}; TopUp access lines {access}"
        );
        ensure!(
            after == 0.0,
            "credit_requests_in_flight is {after} 10 s after the only call in flight was abandoned"
        );
        // The server is fine: the abandoned write was queued before the
        // reset and is applied once the lock is gone.
        let retried = api::top_up_with_key(&mut c, "u", 1, "abandoned").await?;
        ensure!(retried.balance == 1, "{retried:?}");
        ensure!(in_flight_becomes(metrics, 0.0).await? == 0.0);
        Ok(())
    }
    .await;
    server.explain(result)?;
    drop(server);
    db.drop_database().await
}

// ------------------------------------------------------------- access log

/// `--log-format json`: every line of the server's output is one JSON
/// object; each finished call has an access line (target `credit::access`)
/// with its method, code, reason, request id and user; no colour codes; the
/// API keys never appear. `--access-log=false`: no access line.
async fn access_log_is_json_and_keeps_keys_out(db: &TestDb) -> anyhow::Result<()> {
    let keys = api_keys_arg();
    // NO_COLOR="" undoes the harness's NO_COLOR=1: colour is the server's
    // own choice here (its stderr is a file).
    let no_color = [("NO_COLOR", "")];
    let server = ServerProcess::start_with_env(
        &db.url,
        &["--log-format", "json", "--api-keys", &keys],
        &no_color,
    )
    .await?;
    let result = async {
        let mut c = server.client().await?;
        let create = pb::CreateUserRequest {
            user_id: "obs-user".into(),
            email: "obs-user@example.com".into(),
            name: String::new(),
        };
        c.create_user(request(create, Some(ADMIN), "req-obs-1")?)
            .await?;
        let mut top_up = request(
            pb::TopUpRequest {
                user_id: "obs-user".into(),
                amount: 5,
                ..Default::default()
            },
            None,
            "req-obs-1",
        )?;
        top_up.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("bearer {SERVICE}"))?,
        );
        c.top_up(top_up).await?;
        let missing = c
            .get_balance(request(
                pb::GetBalanceRequest {
                    user_id: "nobody".into(),
                },
                Some(READER),
                "req-obs-2",
            )?)
            .await;
        ensure!(
            missing.as_ref().err().map(tonic::Status::code) == Some(Code::NotFound),
            "{missing:?}"
        );
        let no_key = c
            .get_balance(request(
                pb::GetBalanceRequest {
                    user_id: "obs-user".into(),
                },
                None,
                "req-obs-3",
            )?)
            .await;
        ensure!(
            no_key.as_ref().err().map(tonic::Status::code) == Some(Code::Unauthenticated),
            "{no_key:?}"
        );

        // Log lines are written by a thread of their own: wait (bounded)
        // for the last call's access line before reading them all.
        let waited = Instant::now();
        while !server.stderr_text().contains("req-obs-3")
            && waited.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let text = server.stderr_text();
        ensure!(!text.contains("\x1b["), "ANSI escape codes in the log");
        for key in [ADMIN, SERVICE, READER] {
            ensure!(!text.contains(key), "an API key is in the log");
        }
        let mut access = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with("--- starting") {
                continue; // the harness's own line
            }
            let object: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("a log line is not JSON: {line:?}"))?;
            ensure!(object.is_object(), "a log line is not an object: {line:?}");
            if object["target"] == "credit::access" {
                access.push(object);
            }
        }
        let expected = [
            ("CreateUser", "Ok", "", "req-obs-1", "obs-user"),
            ("TopUp", "Ok", "", "req-obs-1", "obs-user"),
            (
                "GetBalance",
                "NotFound",
                "USER_NOT_FOUND",
                "req-obs-2",
                "nobody",
            ),
            (
                "GetBalance",
                "Unauthenticated",
                "UNAUTHENTICATED",
                "req-obs-3",
                "",
            ),
        ];
        ensure!(
            access.len() == expected.len(),
            "{} access lines for {} calls: {access:#?}",
            access.len(),
            expected.len()
        );
        for (line, (method, code, reason, request_id, user_id)) in access.iter().zip(expected) {
            let field = |name: &str| line[name].as_str().unwrap_or("<missing>").to_owned();
            ensure!(
                field("method") == method
                    && field("code") == code
                    && field("reason") == reason
                    && field("request_id") == request_id
                    && field("user_id") == user_id
                    && field("level") == "INFO"
                    && line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
                "expected {method} {code} {reason:?} {request_id} {user_id:?}, got {line}"
            );
        }
        Ok(())
    }
    .await;
    server.explain(result)?;
    drop(server);

    // The access log off (and the text format): the calls leave no line.
    let mut quiet =
        ServerProcess::start_with_env(&db.url, &["--access-log=false"], &no_color).await?;
    let result = async {
        let mut c = quiet.client().await?;
        ensure!(api::balance(&mut c, "obs-user").await? == 5);
        ensure!(api::balance(&mut c, "nobody").await.is_err());
        // Every line is written once the server has exited.
        quiet.terminate()?;
        quiet.wait_exit(Duration::from_secs(10)).await?;
        let text = quiet.stderr_text();
        ensure!(
            text.contains("credit-server ready"),
            "the server logged nothing: {text}"
        );
        ensure!(
            !text.contains("credit::access"),
            "an access line with --access-log=false: {text}"
        );
        ensure!(
            !text.contains("request finished"),
            "an access line with --access-log=false: {text}"
        );
        ensure!(!text.contains("\x1b["), "ANSI escape codes in the text log");
        Ok(())
    }
    .await;
    quiet.explain(result)
}

// ------------------------------------------------------------------ OTLP

/// An OTLP/gRPC trace collector that keeps what it receives.
#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.received
            .lock()
            .map_err(|_| tonic::Status::internal("poisoned"))?
            .push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Serves on a loopback port; returns it.
    async fn serve(&self) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let service = TraceServiceServer::new(self.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        Ok((addr, task))
    }

    fn spans(&self) -> Vec<Span> {
        let received = self.received.lock().map(|r| r.clone()).unwrap_or_default();
        received
            .into_iter()
            .flat_map(|r| r.resource_spans)
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect()
    }

    fn everything(&self) -> String {
        format!(
            "{:?}",
            self.received.lock().map(|r| r.clone()).unwrap_or_default()
        )
    }
}

/// A span's string attribute.
fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            Some(other) => Some(format!("{other:?}")),
            None => None,
        })
}

/// `--otlp-endpoint`: a TopUp's span (named after the RPC, with its
/// request id, caller and code) and its `write_batch` child reach the
/// collector; neither the API key nor the request's metadata is in any of
/// it.
async fn otlp_exports_rpc_and_write_batch_spans(db: &TestDb) -> anyhow::Result<()> {
    let collector = Collector::default();
    let (collector_addr, collector_task) = collector.serve().await?;
    let endpoint = format!("http://{collector_addr}");
    let keys = api_keys_arg();
    let server = ServerProcess::start_with_env(
        &db.url,
        &["--otlp-endpoint", &endpoint, "--api-keys", &keys],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await?;
    const SECRET: &str = "metadata-secret-5e1d";
    let result = async {
        let mut c = server.client().await?;
        c.create_user(with_key(
            pb::CreateUserRequest {
                user_id: "traced".into(),
                email: "traced@example.com".into(),
                name: String::new(),
            },
            ADMIN,
        ))
        .await?;
        let top_up = pb::TopUpRequest {
            user_id: "traced".into(),
            amount: 42,
            idempotency_key: "traced-1".into(),
            metadata: Some(Struct {
                fields: [(
                    "note".to_owned(),
                    Value {
                        kind: Some(Kind::StringValue(SECRET.into())),
                    },
                )]
                .into(),
            }),
            ..Default::default()
        };
        let answer = c
            .top_up(request(top_up, Some(SERVICE), "req-otlp-1")?)
            .await?
            .into_inner();
        ensure!(answer.balance == 42, "{answer:?}");

        // Poll (the exporter sends batches every 100 ms here).
        let deadline = Instant::now() + Duration::from_secs(15);
        let (rpc, batch) = loop {
            let spans = collector.spans();
            let rpc = spans.iter().find(|s| {
                s.name == "credit.v1.CreditService/TopUp"
                    && attribute(s, "request_id").as_deref() == Some("req-otlp-1")
            });
            if let Some(rpc) = rpc
                && let Some(batch) = spans
                    .iter()
                    .find(|s| s.name == "write_batch" && s.parent_span_id == rpc.span_id)
            {
                break (rpc.clone(), batch.clone());
            }
            if Instant::now() > deadline {
                let names: Vec<_> = spans
                    .iter()
                    .map(|s| (s.name.clone(), hex(&s.span_id), hex(&s.parent_span_id)))
                    .collect();
                bail!(
                    "no TopUp span with a write_batch child within 15 s; spans (name, id, parent): {names:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        eprintln!(
            "on {:?}: span {:?} {} attributes {:?}; child {:?} {}",
            db.backend,
            rpc.name,
            hex(&rpc.span_id),
            rpc.attributes
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone().and_then(|v| v.value)))
                .collect::<Vec<_>>(),
            batch.name,
            hex(&batch.span_id)
        );
        ensure!(batch.trace_id == rpc.trace_id, "the batch is in another trace");
        ensure!(
            attribute(&rpc, "rpc.method").as_deref() == Some("TopUp"),
            "{rpc:?}"
        );
        ensure!(
            attribute(&rpc, "caller").as_deref() == Some("billing"),
            "{rpc:?}"
        );
        ensure!(
            attribute(&rpc, "grpc_code").as_deref() == Some("Ok"),
            "{rpc:?}"
        );
        ensure!(
            attribute(&rpc, "user_id").as_deref() == Some("traced"),
            "{rpc:?}"
        );
        let everything = collector.everything();
        for key in [ADMIN, SERVICE, READER] {
            ensure!(!everything.contains(key), "an API key was exported in a span");
        }
        ensure!(
            !everything.contains(SECRET),
            "request metadata was exported in a span"
        );
        ensure!(
            !everything.to_lowercase().contains("bearer"),
            "an authorization header was exported in a span"
        );
        Ok(())
    }
    .await;
    collector_task.abort();
    server.explain(result)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// --------------------------------------------------------------- shutdown

/// SIGTERM with a `Health/Watch` stream open: the watcher gets NOT_SERVING,
/// then the stream ends, and the process exits long before its 20 s grace
/// (an open watch used to hold the shutdown for all of it).
async fn sigterm_ends_open_health_watches(db: &TestDb) -> anyhow::Result<()> {
    let mut server = ServerProcess::start(&db.url, &["--shutdown-grace-secs", "20"]).await?;
    let result = async {
        let mut c = server.client().await?;
        api::create_user(&mut c, "u").await?;
        let mut watches = Vec::new();
        for service in ["", "credit.v1.CreditService"] {
            let mut watch = server
                .health_client()?
                .watch(HealthCheckRequest {
                    service: service.into(),
                })
                .await?
                .into_inner();
            let first = watch.message().await?.context("no first health status")?;
            ensure!(
                first.status == ServingStatus::Serving as i32,
                "{service:?}: {first:?}"
            );
            watches.push((service, watch));
        }

        let started = Instant::now();
        server.terminate()?;
        for (service, watch) in &mut watches {
            let turned = tokio::time::timeout(Duration::from_secs(10), watch.message())
                .await
                .with_context(|| format!("{service:?}: no health change within 10 s"))?
                .with_context(|| format!("{service:?}: the watch failed before NOT_SERVING"))?
                .with_context(|| format!("{service:?}: the watch ended without NOT_SERVING"))?;
            ensure!(
                turned.status == ServingStatus::NotServing as i32,
                "{service:?}: {turned:?}"
            );
            // Then the stream ends (a repeated NOT_SERVING is no news, but
            // allowed), with OK.
            let ended = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match watch.message().await {
                        Ok(Some(m)) if m.status == ServingStatus::NotServing as i32 => continue,
                        other => break other,
                    }
                }
            })
            .await
            .with_context(|| format!("{service:?}: the watch stayed open 10 s after SIGTERM"))?;
            ensure!(
                matches!(ended, Ok(None)),
                "{service:?}: the watch ended with {ended:?}, not OK"
            );
        }
        let status = server.wait_exit(Duration::from_secs(15)).await?;
        let took = started.elapsed();
        eprintln!(
            "on {:?}: SIGTERM to exit with open watches: {took:?} ({status})",
            db.backend
        );
        ensure!(status.success(), "exit {status}");
        ensure!(
            took < Duration::from_secs(10),
            "the shutdown took {took:?} of its 20 s grace"
        );
        ensure!(
            !server.stderr_text().contains("did not finish within"),
            "the server waited out its grace"
        );
        Ok(())
    }
    .await;
    server.explain(result)
}

database_tests!(
    metrics_count_a_known_workload,
    access_log_is_json_and_keeps_keys_out,
    otlp_exports_rpc_and_write_batch_spans,
    sigterm_ends_open_health_watches,
);
