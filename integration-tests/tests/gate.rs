//! The gate in front of every `CreditService` call, through a real server
//! and real clients: each refusal carries its `google.rpc.ErrorInfo`, the
//! request id goes back on every answer, and the request rules the gate's
//! neighbours enforce (metadata depth, transaction id spellings, timestamp
//! bounds, refunds of refunded transactions) answer the same everywhere.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use credit_proto::v1 as pb;
use credit_server::app::{Limits, ServeOptions};
use credit_server::auth::{KeyRing, Role, key_line};
use integration_tests::api::with_key;
use integration_tests::{Client, TestDb, TestServer, api, ledger_tests};
use prost_types::{Struct, Timestamp, Value, value::Kind};
use sea_orm::{
    Database, DatabaseTransaction, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;
use tonic::{Code, Status};
use tonic_types::{ErrorDetail, StatusExt};

const READER: &str = "gate-reader-key-0123456789";
const SERVICE: &str = "gate-service-key-0123456789";
const ADMIN: &str = "gate-admin-key-0123456789";

fn keys() -> KeyRing {
    let lines = [
        key_line("dashboard", Role::Reader, READER),
        key_line("billing", Role::Service, SERVICE),
        key_line("ops", Role::Admin, ADMIN),
    ];
    KeyRing::parse(&lines.join("\n")).expect("valid key lines")
}

async fn start(options: ServeOptions) -> anyhow::Result<(TestDb, TestServer)> {
    let db = TestDb::sqlite().await?;
    let server = TestServer::start_with(&db.url, options).await?;
    Ok((db, server))
}

async fn stop(db: TestDb, server: TestServer) -> anyhow::Result<()> {
    server.stop().await;
    db.drop_database().await
}

/// Holds SQLite's write lock from another connection, so the server's
/// writes wait (as they would behind a stuck database).
async fn hold_write_lock(url: &str) -> anyhow::Result<DatabaseTransaction> {
    let other = Database::connect(url).await?;
    Ok(other
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?)
}

/// The error of `result`, checked: `code`, and exactly one ErrorInfo, of
/// domain `credit.v1` and reason `reason`.
fn refused<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    reason: &str,
) -> anyhow::Result<Status> {
    let status = match result {
        Ok(answer) => bail!("expected {code:?}/{reason}, got success: {answer:?}"),
        Err(status) => status,
    };
    ensure!(
        status.code() == code,
        "expected {code:?}/{reason}, got {status:?}"
    );
    let infos: Vec<_> = status
        .get_error_details_vec()
        .into_iter()
        .filter_map(|d| match d {
            ErrorDetail::ErrorInfo(info) => Some(info),
            _ => None,
        })
        .collect();
    ensure!(
        infos.len() == 1,
        "expected exactly one ErrorInfo, got {}: {status:?}",
        infos.len()
    );
    ensure!(
        infos[0].reason == reason && infos[0].domain == "credit.v1",
        "expected reason {reason} in domain credit.v1, got {:?}: {status:?}",
        infos[0]
    );
    Ok(status)
}

fn balance_of(user: &str) -> pb::GetBalanceRequest {
    pb::GetBalanceRequest {
        user_id: user.into(),
    }
}

fn top_up_of(user: &str, amount: i64, key: &str) -> pb::TopUpRequest {
    pb::TopUpRequest {
        user_id: user.into(),
        amount,
        idempotency_key: key.into(),
        metadata: None,
        ..Default::default()
    }
}

/// A method the service does not have: UNIMPLEMENTED / METHOD_NOT_FOUND,
/// with or without a key, before any key is checked.
#[tokio::test]
async fn unknown_methods_are_method_not_found() -> anyhow::Result<()> {
    let (db, server) = start(ServeOptions {
        keys: Some(keys()),
        ..Default::default()
    })
    .await?;
    let channel = Endpoint::from_shared(server.endpoint())?.connect().await?;
    for key in [None, Some(READER), Some(ADMIN)] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await?;
        let request = match key {
            Some(key) => with_key(balance_of("u"), key),
            None => tonic::Request::new(balance_of("u")),
        };
        let result: Result<tonic::Response<pb::GetBalanceResponse>, Status> = grpc
            .unary(
                request,
                "/credit.v1.CreditService/Nope".parse()?,
                tonic_prost::ProstCodec::default(),
            )
            .await;
        let status = refused(result, Code::Unimplemented, "METHOD_NOT_FOUND")
            .with_context(|| format!("key {key:?}"))?;
        ensure!(status.message().contains("Nope"), "{status:?}");
    }
    stop(db, server).await
}

/// No key, an unknown key, a role too low: each refusal has its reason; the
/// scheme `bearer` is accepted in any case.
#[tokio::test]
async fn key_and_role_refusals_carry_their_reasons() -> anyhow::Result<()> {
    let (db, server) = start(ServeOptions {
        keys: Some(keys()),
        ..Default::default()
    })
    .await?;
    let mut c: Client = server.client().await?;
    c.create_user(with_key(
        pb::CreateUserRequest {
            user_id: "u".into(),
            email: "u@example.com".into(),
            name: String::new(),
        },
        ADMIN,
    ))
    .await?;

    let none = c.get_balance(balance_of("u")).await;
    refused(none, Code::Unauthenticated, "UNAUTHENTICATED").context("no key")?;
    let wrong = c.get_balance(with_key(balance_of("u"), "guess")).await;
    refused(wrong, Code::Unauthenticated, "UNAUTHENTICATED").context("unknown key")?;
    let mut not_bearer = tonic::Request::new(balance_of("u"));
    not_bearer.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Basic {READER}"))?,
    );
    let basic = c.get_balance(not_bearer).await;
    refused(basic, Code::Unauthenticated, "UNAUTHENTICATED").context("Basic scheme")?;
    let low = c.top_up(with_key(top_up_of("u", 1, ""), READER)).await;
    refused(low, Code::PermissionDenied, "PERMISSION_DENIED").context("reader tops up")?;
    let low = c
        .grant(with_key(
            pb::GrantRequest {
                user_id: "u".into(),
                amount: 1,
                ..Default::default()
            },
            SERVICE,
        ))
        .await;
    refused(low, Code::PermissionDenied, "PERMISSION_DENIED").context("service grants")?;

    // The scheme is case-insensitive (RFC 7235).
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let mut request = tonic::Request::new(top_up_of("u", 1, ""));
        request.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("{scheme} {SERVICE}"))?,
        );
        c.top_up(request)
            .await
            .with_context(|| format!("`authorization: {scheme} KEY` was refused"))?;
    }
    let balance = c
        .get_balance(with_key(balance_of("u"), READER))
        .await?
        .into_inner()
        .balance;
    ensure!(balance == 3, "balance {balance}");
    stop(db, server).await
}

/// A call past the server's request timeout: DEADLINE_EXCEEDED /
/// DEADLINE_EXCEEDED, promptly.
#[tokio::test]
async fn server_deadline_is_deadline_exceeded() -> anyhow::Result<()> {
    let timeout = Duration::from_millis(300);
    let (db, server) = start(ServeOptions {
        limits: Limits {
            request_timeout: timeout,
            ..Default::default()
        },
        ..Default::default()
    })
    .await?;
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    let lock = hold_write_lock(&db.url).await?;
    for n in 0..3 {
        let started = Instant::now();
        let result = api::top_up_with_key(&mut c, "u", 5, &format!("slow-{n}")).await;
        let took = started.elapsed();
        refused(result, Code::DeadlineExceeded, "DEADLINE_EXCEEDED")
            .with_context(|| format!("attempt {n}"))?;
        ensure!(took < timeout * 10, "the server's deadline took {took:?}");
    }
    lock.rollback().await?;
    stop(db, server).await
}

/// One unary call on a bare HTTP/2 connection, with `headers` sent as
/// given: tonic's client enforces a `grpc-timeout` itself (and wins the
/// race), so this is how to see what the server answers to one. Returns
/// the call's status (from the headers of a trailers-only answer, else
/// from the trailers).
async fn raw_unary(
    addr: std::net::SocketAddr,
    method: &str,
    message: &impl prost::Message,
    headers: &[(&str, &str)],
) -> anyhow::Result<Status> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (client, connection) = h2::client::handshake(tcp).await?;
    let driver = tokio::spawn(connection);
    let result = async {
        let mut client = client.ready().await?;
        let mut request =
            http::Request::post(format!("http://{addr}/credit.v1.CreditService/{method}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (response, mut send) = client.send_request(request.body(())?, false)?;
        let body = message.encode_to_vec();
        let mut frame = Vec::with_capacity(5 + body.len());
        frame.push(0);
        frame.extend_from_slice(&u32::try_from(body.len())?.to_be_bytes());
        frame.extend_from_slice(&body);
        send.send_data(bytes::Bytes::from(frame), true)?;
        let (head, mut body) = response.await?.into_parts();
        if let Some(status) = Status::from_header_map(&head.headers) {
            return Ok(status);
        }
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            body.flow_control().release_capacity(chunk.len())?;
        }
        let trailers = body.trailers().await?.context("no trailers")?;
        Status::from_header_map(&trailers).context("no grpc-status in the trailers")
    }
    .await;
    driver.abort();
    result
}

/// A caller's `grpc-timeout` shorter than the server's request timeout is
/// the call's deadline: DEADLINE_EXCEEDED / DEADLINE_EXCEEDED with the
/// request id, long before the server's own 30 s. Twenty times: tonic's
/// own server-side grpc-timeout timer races the gate's, and when it wins
/// the answer is a bare CANCELLED "Timeout expired".
#[tokio::test]
async fn caller_deadline_is_deadline_exceeded() -> anyhow::Result<()> {
    let (db, server) = start(ServeOptions {
        limits: Limits {
            request_timeout: Duration::from_secs(30),
            ..Default::default()
        },
        ..Default::default()
    })
    .await?;
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    // The bare client works (a success has grpc-status 0 in the trailers).
    let fine = raw_unary(server.addr, "GetBalance", &balance_of("u"), &[]).await?;
    ensure!(fine.code() == Code::Ok, "{fine:?}");
    let lock = hold_write_lock(&db.url).await?;
    for n in 0..20 {
        let started = Instant::now();
        let id = format!("req-deadline-{n}");
        let status = raw_unary(
            server.addr,
            "TopUp",
            &top_up_of("u", 5, &format!("slow-client-{n}")),
            &[("grpc-timeout", "100m"), ("x-request-id", &id)],
        )
        .await?;
        let took = started.elapsed();
        let status = refused::<()>(Err(status), Code::DeadlineExceeded, "DEADLINE_EXCEEDED")
            .with_context(|| format!("grpc-timeout 100m, attempt {n}"))?;
        ensure!(
            status
                .metadata()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                == Some(id.as_str()),
            "attempt {n}: no request id: {status:?}"
        );
        ensure!(
            took < Duration::from_secs(10),
            "the caller's deadline took {took:?}"
        );
    }
    lock.rollback().await?;
    stop(db, server).await
}

/// A request message over the limit: OUT_OF_RANGE / MESSAGE_TOO_LARGE with
/// the limit in `limitBytes`, and nothing written.
#[tokio::test]
async fn oversized_messages_are_message_too_large() -> anyhow::Result<()> {
    let (db, server) = start(ServeOptions {
        limits: Limits {
            max_message_bytes: 4 * 1024,
            ..Default::default()
        },
        ..Default::default()
    })
    .await?;
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    let blob = Value {
        kind: Some(Kind::StringValue("x".repeat(8 * 1024))),
    };
    let big = pb::TopUpRequest {
        metadata: Some(Struct {
            fields: [("blob".to_owned(), blob)].into(),
        }),
        ..top_up_of("u", 1, "")
    };
    let status = refused(c.top_up(big).await, Code::OutOfRange, "MESSAGE_TOO_LARGE")?;
    ensure!(
        api::info(&status, "limitBytes").as_deref() == Some("4096"),
        "{status:?}"
    );
    ensure!(
        api::balance(&mut c, "u").await? == 0,
        "the refused call wrote"
    );
    stop(db, server).await
}

/// Request headers over `max_header_bytes` (but within what HTTP/2 itself
/// accepts): INVALID_ARGUMENT / METADATA_TOO_LARGE, and the same connection
/// keeps working.
#[tokio::test]
async fn oversized_headers_are_metadata_too_large() -> anyhow::Result<()> {
    let (db, server) = start(ServeOptions::default()).await?;
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    let mut request = tonic::Request::new(balance_of("u"));
    request
        .metadata_mut()
        .insert("x-padding", MetadataValue::try_from("p".repeat(20 * 1024))?);
    let result = c.get_balance(request).await;
    let status = refused(result, Code::InvalidArgument, "METADATA_TOO_LARGE")?;
    ensure!(
        api::info(&status, "limitBytes").as_deref() == Some("16384"),
        "{status:?}"
    );
    // The same client, on the same connection, is still served.
    ensure!(api::balance(&mut c, "u").await? == 0);
    api::top_up(&mut c, "u", 7).await?;
    ensure!(api::balance(&mut c, "u").await? == 7);
    stop(db, server).await
}

/// Past the concurrency limit: RESOURCE_EXHAUSTED / OVERLOADED with
/// `resource=concurrentRequests`, at once; the held call still completes.
#[tokio::test]
async fn shed_calls_are_overloaded() -> anyhow::Result<()> {
    let (db, server) = start(ServeOptions {
        limits: Limits {
            max_concurrent_requests: 1,
            ..Default::default()
        },
        ..Default::default()
    })
    .await?;
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    let lock = hold_write_lock(&db.url).await?;
    let mut held = server.client().await?;
    let held_call =
        tokio::spawn(async move { api::top_up_with_key(&mut held, "u", 3, "held").await });

    // Poll until the held call has the only slot: then a read is shed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let shed = loop {
        match api::balance(&mut c, "u").await {
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(_) => bail!("no call was shed while one held the only slot"),
            Err(status) => break status,
        }
    };
    let started = Instant::now();
    let shed = refused::<()>(Err(shed), Code::ResourceExhausted, "OVERLOADED")?;
    ensure!(
        api::info(&shed, "resource").as_deref() == Some("concurrentRequests"),
        "{shed:?}"
    );
    let again = api::spend(&mut c, "u", 1).await;
    refused(again, Code::ResourceExhausted, "OVERLOADED").context("second shed call")?;
    ensure!(
        started.elapsed() < Duration::from_secs(2),
        "shedding waited {:?}",
        started.elapsed()
    );
    ensure!(
        !held_call.is_finished(),
        "the held call finished through the lock"
    );

    lock.rollback().await?;
    let applied = held_call.await??;
    ensure!(applied.balance == 3, "{applied:?}");
    ensure!(api::balance(&mut c, "u").await? == 3);
    stop(db, server).await
}

/// `x-request-id` comes back in the response headers of every call: the
/// caller's when sane, a new one otherwise; on success, on a handler's
/// error and on a gate refusal.
#[tokio::test]
async fn request_ids_are_echoed_or_made() -> anyhow::Result<()> {
    let (db, server) = start(ServeOptions {
        keys: Some(keys()),
        ..Default::default()
    })
    .await?;
    let mut c = server.client().await?;
    let with_id = |message: pb::GetBalanceRequest, key: Option<&str>, id: Option<&str>| {
        let mut request = match key {
            Some(key) => with_key(message, key),
            None => tonic::Request::new(message),
        };
        if let Some(id) = id {
            request
                .metadata_mut()
                .insert("x-request-id", MetadataValue::try_from(id).expect("ascii"));
        }
        request
    };
    let id_of = |metadata: &tonic::metadata::MetadataMap| -> anyhow::Result<String> {
        Ok(metadata
            .get("x-request-id")
            .context("no x-request-id in the response headers")?
            .to_str()?
            .to_owned())
    };
    c.create_user(with_key(
        pb::CreateUserRequest {
            user_id: "u".into(),
            email: "u@example.com".into(),
            name: String::new(),
        },
        ADMIN,
    ))
    .await?;

    // Success.
    let ok = c
        .get_balance(with_id(balance_of("u"), Some(READER), Some("req-gate-1")))
        .await?;
    ensure!(id_of(ok.metadata())? == "req-gate-1");
    let made = c
        .get_balance(with_id(balance_of("u"), Some(READER), None))
        .await?;
    let made_ok = id_of(made.metadata())?;
    ensure!(!made_ok.is_empty() && made_ok.len() <= 128, "{made_ok:?}");
    // A handler's error (no such user).
    let missing = c
        .get_balance(with_id(
            balance_of("nobody"),
            Some(READER),
            Some("req-gate-2"),
        ))
        .await;
    let missing = refused(missing, Code::NotFound, "USER_NOT_FOUND")?;
    ensure!(id_of(missing.metadata())? == "req-gate-2", "{missing:?}");
    let missing = c
        .get_balance(with_id(balance_of("nobody"), Some(READER), None))
        .await;
    let made_err = id_of(refused(missing, Code::NotFound, "USER_NOT_FOUND")?.metadata())?;
    ensure!(!made_err.is_empty() && made_err != made_ok, "{made_err:?}");
    // A gate refusal (no key).
    let gate = c
        .get_balance(with_id(balance_of("u"), None, Some("req-gate-3")))
        .await;
    let gate = refused(gate, Code::Unauthenticated, "UNAUTHENTICATED")?;
    ensure!(id_of(gate.metadata())? == "req-gate-3", "{gate:?}");
    let gate = c.get_balance(with_id(balance_of("u"), None, None)).await;
    let made_gate = id_of(refused(gate, Code::Unauthenticated, "UNAUTHENTICATED")?.metadata())?;
    ensure!(!made_gate.is_empty(), "{made_gate:?}");
    // An id that is not 1-128 visible ASCII characters is replaced.
    for insane in ["has space", &"x".repeat(129)] {
        let answer = c
            .get_balance(with_id(balance_of("u"), Some(READER), Some(insane)))
            .await?;
        let id = id_of(answer.metadata())?;
        ensure!(
            id != insane && !id.is_empty(),
            "{insane:?} was kept as {id:?}"
        );
    }
    stop(db, server).await
}

/// `{"a": {"a": ... 1}}` nested `levels` deep (the top-level object is
/// level 1).
fn nested(levels: usize) -> Struct {
    let mut deep = Struct {
        fields: [(
            "a".to_owned(),
            Value {
                kind: Some(Kind::NumberValue(1.0)),
            },
        )]
        .into(),
    };
    for _ in 1..levels {
        deep = Struct {
            fields: [(
                "a".to_owned(),
                Value {
                    kind: Some(Kind::StructValue(deep)),
                },
            )]
            .into(),
        };
    }
    deep
}

/// Metadata nested 30 levels deep is accepted; 31 (refused by the
/// validator) and 40 (refused by the wire decoder) are INVALID_ARGUMENT
/// naming the field `metadata` and the limit 30.
#[tokio::test]
async fn metadata_depth_limit_is_thirty() -> anyhow::Result<()> {
    let (db, server) = start(ServeOptions::default()).await?;
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    let with_metadata = |levels: usize| pb::TopUpRequest {
        metadata: Some(nested(levels)),
        ..top_up_of("u", 1, "")
    };
    let ok = c.top_up(with_metadata(30)).await;
    ensure!(ok.is_ok(), "30 levels were refused: {ok:?}");
    for levels in [31, 34, 40] {
        let result = c.top_up(with_metadata(levels)).await;
        let status = refused(result, Code::InvalidArgument, "INVALID_ARGUMENT")
            .with_context(|| format!("{levels} levels"))?;
        let violations = status
            .get_details_bad_request()
            .context("no BadRequest")?
            .field_violations;
        ensure!(
            violations.len() == 1
                && violations[0].field == "metadata"
                && violations[0].description.contains("at most 30 levels"),
            "{levels} levels: {violations:?}"
        );
    }
    ensure!(
        api::balance(&mut c, "u").await? == 1,
        "a refused call wrote"
    );
    stop(db, server).await
}

/// A transaction id in another spelling of the same UUID (upper case, no
/// hyphens, braced, URN) finds the same transaction in GetTransaction and
/// Refund; garbage is INVALID_ARGUMENT naming `transaction_id`.
async fn transaction_ids_in_any_uuid_spelling(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    let top_up = api::top_up(&mut c, "u", 100).await?;
    let id = top_up.transaction.context("no transaction")?.transaction_id;
    let uuid = uuid::Uuid::parse_str(&id)?;
    ensure!(id == uuid.hyphenated().to_string(), "issued id {id}");
    let spellings = [
        id.to_uppercase(),
        uuid.simple().to_string(),
        uuid.simple().to_string().to_uppercase(),
        uuid.braced().to_string(),
        uuid.urn().to_string(),
    ];
    for spelling in &spellings {
        let got = c
            .get_transaction(pb::GetTransactionRequest {
                user_id: "u".into(),
                transaction_id: spelling.clone(),
            })
            .await
            .with_context(|| format!("GetTransaction {spelling}"))?
            .into_inner()
            .transaction
            .context("no transaction")?;
        ensure!(got.transaction_id == id, "{spelling} found {got:?}");
    }
    // Refunds by three spellings: all of the same original.
    for spelling in &spellings[..3] {
        let refund = api::refund(&mut c, "u", spelling, Some(10))
            .await
            .with_context(|| format!("Refund {spelling}"))?;
        ensure!(
            refund
                .transaction
                .as_ref()
                .map(|t| t.refunded_transaction_id.as_str())
                == Some(id.as_str()),
            "{spelling}: {refund:?}"
        );
    }
    ensure!(api::balance(&mut c, "u").await? == 70);
    // The refundable amount is shared by all spellings.
    let over = api::refund(&mut c, "u", &spellings[3], Some(71)).await;
    let over = refused(over, Code::FailedPrecondition, "REFUND_EXCEEDS_ORIGINAL")?;
    ensure!(
        api::info(&over, "refundableAmount").as_deref() == Some("70"),
        "{over:?}"
    );

    for garbage in ["not-a-uuid", "1234", &format!("{id}x"), "{}"] {
        let get = c
            .get_transaction(pb::GetTransactionRequest {
                user_id: "u".into(),
                transaction_id: garbage.to_owned(),
            })
            .await;
        let get = refused(get, Code::InvalidArgument, "INVALID_ARGUMENT")
            .with_context(|| format!("GetTransaction {garbage:?}"))?;
        ensure!(api::bad_fields(&get) == ["transaction_id"], "{get:?}");
        let refund = api::refund(&mut c, "u", garbage, Some(1)).await;
        let refund = refused(refund, Code::InvalidArgument, "INVALID_ARGUMENT")
            .with_context(|| format!("Refund {garbage:?}"))?;
        ensure!(api::bad_fields(&refund) == ["transaction_id"], "{refund:?}");
    }
    ensure!(api::balance(&mut c, "u").await? == 70);
    Ok(())
}

/// The largest and smallest Timestamps protobuf allows.
const MAX_TIMESTAMP: Timestamp = Timestamp {
    seconds: 253_402_300_799,
    nanos: 999_999_999,
};
const MIN_TIMESTAMP: Timestamp = Timestamp {
    seconds: -62_135_596_800,
    nanos: 0,
};

/// `created_before` / `created_after` at the ends of the Timestamp range
/// answer the same on every backend: before the maximum is everything,
/// after it nothing; after the minimum everything, before it nothing.
async fn timestamp_filters_at_the_ends_of_time(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    api::top_up(&mut c, "u", 10).await?;
    api::spend(&mut c, "u", 3).await?;
    api::grant(&mut c, "u", 1).await?;
    let all = api::all_transactions(&mut c, "u").await?;
    ensure!(all.len() == 3, "{all:?}");
    let list = |after: Option<Timestamp>, before: Option<Timestamp>| {
        let mut c = c.clone();
        async move {
            c.list_transactions(pb::ListTransactionsRequest {
                user_id: "u".into(),
                page_size: 100,
                created_after: after,
                created_before: before,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().transactions.len())
        }
    };
    let cases = [
        ("created_before=max", None, Some(MAX_TIMESTAMP), 3),
        (
            "created_before=max rounded down to the microsecond",
            None,
            Some(Timestamp {
                seconds: MAX_TIMESTAMP.seconds,
                nanos: 999_999_000,
            }),
            3,
        ),
        ("created_after=max", Some(MAX_TIMESTAMP), None, 0),
        ("created_after=min", Some(MIN_TIMESTAMP), None, 3),
        (
            "created_before=min+1s",
            None,
            Some(Timestamp {
                seconds: MIN_TIMESTAMP.seconds + 1,
                nanos: 0,
            }),
            0,
        ),
        (
            "created_after=min, created_before=max",
            Some(MIN_TIMESTAMP),
            Some(MAX_TIMESTAMP),
            3,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, after, before, want) in cases {
        match list(after, before).await {
            Ok(got) if got == want => {}
            other => wrong.push(format!("{what}: want {want}, got {other:?}")),
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

/// A second refund of a fully refunded transaction: FAILED_PRECONDITION /
/// REFUND_EXCEEDS_ORIGINAL, refundableAmount "0", and a message that says
/// so (not "exceeds the 0 credits").
async fn refunding_a_fully_refunded_transaction(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    api::top_up(&mut c, "u", 100).await?;
    let spend = api::spend(&mut c, "u", 40).await?;
    let id = spend.transaction.context("no transaction")?.transaction_id;
    api::refund(&mut c, "u", &id, Some(15)).await?;
    api::refund(&mut c, "u", &id, None).await?; // the remaining 25
    ensure!(api::balance(&mut c, "u").await? == 100);
    for amount in [None, Some(1), Some(40)] {
        let again = api::refund(&mut c, "u", &id, amount).await;
        let status = refused(again, Code::FailedPrecondition, "REFUND_EXCEEDS_ORIGINAL")
            .with_context(|| format!("amount {amount:?}"))?;
        ensure!(
            api::info(&status, "refundableAmount").as_deref() == Some("0"),
            "{status:?}"
        );
        ensure!(
            api::info(&status, "transactionId").as_deref() == Some(id.as_str()),
            "{status:?}"
        );
        ensure!(
            status.message().contains("already fully refunded"),
            "amount {amount:?}: {:?}",
            status.message()
        );
    }
    ensure!(api::balance(&mut c, "u").await? == 100);
    Ok(())
}

ledger_tests!(
    transaction_ids_in_any_uuid_spelling,
    timestamp_filters_at_the_ends_of_time,
    refunding_a_fully_refunded_transaction,
);
