//! Request limits: each one refuses cleanly and fast, and the server keeps
//! serving afterwards.

use std::time::{Duration, Instant};

use anyhow::ensure;
use credit_proto::v1 as pb;
use credit_server::app::{Limits, ServeOptions};
use futures::future::join_all;
use integration_tests::{TestDb, TestServer, api};
use prost_types::{Struct, Value, value::Kind};
use sea_orm::{
    Database, DatabaseTransaction, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use tonic::Code;
use tonic::metadata::MetadataValue;

async fn start(limits: Limits) -> anyhow::Result<(TestDb, TestServer)> {
    let db = TestDb::sqlite().await?;
    let server = TestServer::start_with(
        &db.url,
        ServeOptions {
            limits,
            ..Default::default()
        },
    )
    .await?;
    Ok((db, server))
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

#[tokio::test]
async fn oversized_messages_are_refused() -> anyhow::Result<()> {
    let (db, server) = start(Limits {
        max_message_bytes: 4 * 1024,
        ..Default::default()
    })
    .await?;
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    // 8 KiB of metadata is within the ledger's 16 KiB rule but over this
    // server's 4 KiB message limit: the transport refuses it first.
    let blob = Value {
        kind: Some(Kind::StringValue("x".repeat(8 * 1024))),
    };
    let big = pb::TopUpRequest {
        user_id: "u".into(),
        amount: 1,
        metadata: Some(Struct {
            fields: [("blob".to_owned(), blob)].into(),
        }),
        ..Default::default()
    };
    let status = c
        .top_up(big)
        .await
        .expect_err("an 8 KiB message passed a 4 KiB limit");
    // tonic answers OUT_OF_RANGE here (grpc-go says RESOURCE_EXHAUSTED).
    ensure!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    ensure!(status.message().contains("too large"), "{status:?}");
    ensure!(
        api::balance(&mut c, "u").await? == 0,
        "the refused request wrote nothing"
    );
    server.stop().await;
    db.drop_database().await
}

#[tokio::test]
async fn oversized_metadata_is_refused() -> anyhow::Result<()> {
    let (db, server) = start(Limits::default()).await?;
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    let mut request = tonic::Request::new(pb::GetBalanceRequest {
        user_id: "u".into(),
    });
    request
        .metadata_mut()
        .insert("x-padding", MetadataValue::try_from("p".repeat(20 * 1024))?);
    let result = c.get_balance(request).await;
    ensure!(result.is_err(), "20 KiB of headers passed a 16 KiB limit");
    // The server is fine, and so is a fresh connection.
    let mut fresh = server.client().await?;
    ensure!(api::balance(&mut fresh, "u").await? == 0);
    server.stop().await;
    db.drop_database().await
}

#[tokio::test]
async fn slow_calls_hit_the_server_deadline() -> anyhow::Result<()> {
    let timeout = Duration::from_millis(300);
    let (db, server) = start(Limits {
        request_timeout: timeout,
        ..Default::default()
    })
    .await?;
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    let lock = hold_write_lock(&db.url).await?;
    let started = Instant::now();
    let status = api::top_up_with_key(&mut c, "u", 5, "slow")
        .await
        .expect_err("the write could not commit");
    let took = started.elapsed();
    ensure!(took < timeout * 5, "the deadline took {took:?}");
    ensure!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    lock.rollback().await?;
    // The write was queued before the deadline and is applied once the lock
    // is free; a retry with its key returns it, never a second one.
    let retried = api::top_up_with_key(&mut c, "u", 5, "slow").await?;
    ensure!(retried.balance == 5 && api::balance(&mut c, "u").await? == 5);
    server.stop().await;
    db.drop_database().await
}

#[tokio::test]
async fn overload_is_shed_not_queued() -> anyhow::Result<()> {
    let (db, server) = start(Limits {
        max_concurrent_requests: 2,
        ..Default::default()
    })
    .await?;
    let mut c = server.client().await?;
    api::create_user(&mut c, "u").await?;
    let lock = hold_write_lock(&db.url).await?;
    let clients = server.clients(10).await?;
    let started = Instant::now();
    let calls = join_all(
        clients
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| async move {
                let r = api::top_up_with_key(&mut c, "u", 1, &format!("k{i}")).await;
                (r, Instant::now())
            }),
    );
    let release = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        lock.rollback().await
    };
    let (results, released) = tokio::join!(calls, release);
    released?;
    let mut shed = 0;
    let mut ok = 0;
    for (r, at) in &results {
        match r {
            Ok(_) => ok += 1,
            Err(s) => {
                ensure!(s.code() == Code::ResourceExhausted, "{s:?}");
                ensure!(
                    at.duration_since(started) < Duration::from_millis(400),
                    "shedding waited"
                );
                shed += 1;
            }
        }
    }
    ensure!(ok == 2 && shed == 8, "{ok} served, {shed} shed");
    ensure!(api::balance(&mut c, "u").await? == 2);
    server.stop().await;
    db.drop_database().await
}
