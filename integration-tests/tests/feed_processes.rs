//! The change feed's exactly-once resume across real server processes
//! (build the binary first: `cargo build -p credit-server`): 30 writers
//! spread over the processes commit concurrently while one consumer of
//! every user's feed disconnects at random points and resumes from its
//! stored cursor, each time on a random process; mid-way one process is
//! killed with SIGKILL and started again, and the stream that ends with it
//! is resumed elsewhere. Afterwards the consumer's record is the ledger's
//! log exactly: every transaction once, each user's in sequence order.
//! Also: SIGTERM ends open streams with UNAVAILABLE at once, the stream
//! limits refuse with RESOURCE_EXHAUSTED, and a consumer that stops
//! reading is cut off while writes go on.
//!
//! PostgreSQL and MariaDB run 3 processes, SQLite 1 (killed and
//! restarted too). A backend whose URL is unset says so and passes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use credit_proto::v1 as pb;
use credit_server::config::PoolSettings;
use credit_server::entity::credit_transaction as ctx;
use futures::future::join_all;
use integration_tests::process::ServerProcess;
use integration_tests::{Backend, Client, TestDb, api, run_on_database};
use rand::{Rng, SeedableRng, rngs::StdRng};
use sea_orm::EntityTrait;
use tokio::sync::RwLock;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_feed_resumes_exactly_across_three_processes() {
    run_on_database(
        "postgres_feed_three_processes",
        Backend::Postgres,
        async |db| exactly_once(db, 3).await,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_feed_resumes_exactly_across_three_processes() {
    run_on_database("mysql_feed_three_processes", Backend::MySql, async |db| {
        exactly_once(db, 3).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_feed_resumes_exactly_through_a_kill() {
    run_on_database("sqlite_feed_one_process", Backend::Sqlite, async |db| {
        exactly_once(db, 1).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_streams_end_unavailable_on_shutdown_and_respect_limits() {
    run_on_database("postgres_stream_limits", Backend::Postgres, limits).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_streams_end_unavailable_on_shutdown_and_respect_limits() {
    run_on_database("sqlite_stream_limits", Backend::Sqlite, limits).await
}

const WRITERS: usize = 30;
const OPS_PER_WRITER: usize = 40;
const USERS: usize = 8;

/// What the consumer recorded: (transaction id, user, sequence), in
/// delivery order.
type Record = Vec<(String, String, i64)>;

async fn exactly_once(test_db: &TestDb, processes: usize) -> anyhow::Result<()> {
    let mut servers = vec![ServerProcess::start(&test_db.url, &[]).await?];
    for _ in 1..processes {
        servers.push(ServerProcess::start(&test_db.url, &[]).await?);
    }
    let endpoints: Vec<String> = servers.iter().map(ServerProcess::endpoint).collect();
    let servers = Arc::new(RwLock::new(servers));
    let result = run(test_db, servers.clone(), &endpoints).await;
    let servers = servers.read().await;
    servers
        .iter()
        .fold(result, |result, server| server.explain(result))
}

async fn run(
    test_db: &TestDb,
    servers: Arc<RwLock<Vec<ServerProcess>>>,
    endpoints: &[String],
) -> anyhow::Result<()> {
    let seed: u64 = rand::rng().random();
    eprintln!("feed seed {seed}");
    let clients: Vec<Client> = {
        let servers = servers.read().await;
        servers
            .iter()
            .map(ServerProcess::lazy_client)
            .collect::<anyhow::Result<_>>()?
    };
    let users: Vec<String> = (0..USERS).map(|i| format!("f{i}")).collect();
    let mut c = clients[0].clone();
    for u in &users {
        api::create_user(&mut c, u).await?;
    }
    // The consumer's first cursor: "from now", before any transaction.
    let mut hello = c
        .watch_transactions(pb::WatchTransactionsRequest::default())
        .await?
        .into_inner();
    let start = hello.message().await?.context("no first message")?.cursor;
    drop(hello);

    let done = Arc::new(AtomicBool::new(false));
    let expected = Arc::new(AtomicUsize::new(usize::MAX));
    let consumer = tokio::spawn(consume(
        clients.clone(),
        start,
        seed,
        done.clone(),
        expected.clone(),
    ));

    let progress = Arc::new(AtomicUsize::new(0));
    let writers = (0..WRITERS).map(|w| {
        let clients = clients.clone();
        let users = users.clone();
        let progress = progress.clone();
        async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(w as u64));
            for _ in 0..OPS_PER_WRITER {
                let mut c = clients[rng.random_range(0..clients.len())].clone();
                let user = &users[rng.random_range(0..users.len())];
                // Failures (a refused spend, a killed process) are fine:
                // the ledger's log is the truth the record is held to.
                let _ = match rng.random_range(0..3) {
                    0 => api::top_up(&mut c, user, rng.random_range(1..50))
                        .await
                        .map(|_| ()),
                    _ => api::spend(&mut c, user, rng.random_range(1..30))
                        .await
                        .map(|_| ()),
                };
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let killer = {
        let servers = servers.clone();
        let progress = progress.clone();
        async move {
            while progress.load(Ordering::Relaxed) < WRITERS * OPS_PER_WRITER / 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut servers = servers.write().await;
            let victim = servers.len() - 1;
            servers[victim].kill()?;
            eprintln!("killed {} mid-stream (SIGKILL)", servers[victim].addr);
            tokio::time::sleep(Duration::from_millis(300)).await;
            servers[victim].restart().await?;
            anyhow::Ok(())
        }
    };
    let (_, killed) = tokio::join!(join_all(writers), killer);
    killed?;

    let db = credit_server::db::connect(&test_db.url, &PoolSettings::default()).await?;
    let log = ctx::Entity::find().all(&db).await?;
    db.close().await?;
    expected.store(log.len(), Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    let (record, resumes) = tokio::time::timeout(Duration::from_secs(60), consumer)
        .await
        .with_context(|| {
            format!(
                "the consumer did not reach the ledger's {} transactions within 60 s; seed {seed}",
                log.len()
            )
        })???;

    let mut seen = HashSet::new();
    for (id, _, _) in &record {
        ensure!(seen.insert(id.clone()), "{id} delivered twice; seed {seed}");
    }
    let in_ledger: HashSet<String> = log.iter().map(|t| t.id.clone()).collect();
    ensure!(
        seen == in_ledger,
        "the consumer's record ({} transactions) is not the ledger's log ({}); seed {seed}",
        seen.len(),
        in_ledger.len()
    );
    let mut next_sequence: HashMap<&str, i64> = HashMap::new();
    for (id, user, sequence) in &record {
        let want = next_sequence.entry(user).or_insert(1);
        ensure!(
            *sequence == *want,
            "{user}: {id} (sequence {sequence}) came when {want} was due; seed {seed}"
        );
        *want += 1;
    }
    ensure!(
        log.len() > WRITERS * OPS_PER_WRITER / 3,
        "too few writes ({}) for a meaningful test",
        log.len()
    );
    eprintln!(
        "{} processes ({endpoints:?}): {} transactions delivered exactly once over {resumes} resumes",
        endpoints.len(),
        record.len()
    );
    Ok(())
}

/// Reads every user's feed from `start`, dropping the stream after a random
/// number of messages and resuming on a random process, until told how
/// many transactions the ledger holds and having recorded as many.
async fn consume(
    clients: Vec<Client>,
    start: String,
    seed: u64,
    done: Arc<AtomicBool>,
    expected: Arc<AtomicUsize>,
) -> anyhow::Result<(Record, usize)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xfeed);
    let mut record: Record = Vec::new();
    let mut cursor = start;
    let mut resumes = 0;
    loop {
        if done.load(Ordering::Relaxed) && record.len() >= expected.load(Ordering::Relaxed) {
            return Ok((record, resumes));
        }
        let mut c = clients[rng.random_range(0..clients.len())].clone();
        let stream = c
            .watch_transactions(pb::WatchTransactionsRequest {
                user_id: String::new(),
                start_after: cursor.clone(),
                types: vec![],
                ..Default::default()
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            // The process is down (killed), or its connection was reset
            // as it died (a transport error reads as UNKNOWN or CANCELLED):
            // go elsewhere.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(status) => bail!("WatchTransactions refused: {status:?}"),
        };
        resumes += 1;
        let take = rng.random_range(1..120);
        for _ in 0..take {
            let message = match tokio::time::timeout(Duration::from_secs(5), stream.message()).await
            {
                Err(_) => bail!("no message, not even a heartbeat, for 5 s"),
                Ok(Ok(Some(m))) => m,
                // The process went away (killed): resume elsewhere.
                Ok(Ok(None)) => break,
                Ok(Err(status))
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::Unknown
                            | tonic::Code::Internal
                            | tonic::Code::Cancelled
                    ) =>
                {
                    break;
                }
                Ok(Err(status)) => bail!("the stream failed: {status:?}"),
            };
            if let Some(tx) = message.transaction {
                record.push((tx.transaction_id, tx.user_id, tx.sequence));
            }
            cursor = message.cursor;
            if done.load(Ordering::Relaxed) && record.len() >= expected.load(Ordering::Relaxed) {
                break;
            }
        }
    }
}

async fn limits(test_db: &TestDb) -> anyhow::Result<()> {
    let mut server = ServerProcess::start(
        &test_db.url,
        &[
            "--max-streams-per-key",
            "2",
            "--slow-consumer-secs",
            "1",
            "--shutdown-grace-secs",
            "20",
        ],
    )
    .await?;
    let result = limits_on(&mut server).await;
    server.explain(result)
}

async fn limits_on(server: &mut ServerProcess) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    api::create_user(&mut c, "l1").await?;
    api::top_up(&mut c, "l1", 1_000_000).await?;
    let watch = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            c.watch_transactions(pb::WatchTransactionsRequest {
                user_id: "l1".into(),
                start_after: "f1.0".into(),
                types: vec![],
                ..Default::default()
            })
            .await
        }
    };
    // Two streams per key: a third is refused until one closes. The one
    // that is never read has small HTTP/2 windows, so little of the feed
    // fits in the transport before its server-side buffer is full.
    let small_windows = tonic::transport::Endpoint::from_shared(server.endpoint())?
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await?;
    let mut slow = watch(&mut Client::new(small_windows)).await?.into_inner();
    let open = watch(&mut c).await?.into_inner();
    let refused = watch(&mut c).await;
    let status = api::assert_error(
        refused.map(|_| ()),
        tonic::Code::ResourceExhausted,
        "TOO_MANY_STREAMS",
    );
    ensure!(api::info(&status, "resource").as_deref() == Some("streamsPerKey"));
    drop(open);
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok(s) = watch(&mut c).await {
            reopened = Some(s.into_inner());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut live = reopened.context("the freed stream slot was never given back")?;

    // 4,000 writes (far more than the unread stream's buffers hold), then
    // past the 1 s slow-consumer limit: the unread stream ends cut off,
    // and the writes were never held up by it.
    let started = Instant::now();
    let writers = (0..16).map(|_| {
        let mut c = c.clone();
        async move {
            for _ in 0..250 {
                api::spend(&mut c, "l1", 1).await?;
            }
            anyhow::Ok(())
        }
    });
    for result in join_all(writers).await {
        result?;
    }
    let writing = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cut = drain(&mut slow).await?;
    ensure!(
        cut.code() == tonic::Code::ResourceExhausted
            && api::reason(&cut).as_deref() == Some("SLOW_CONSUMER"),
        "the unread stream ended with {cut:?}"
    );
    eprintln!("unread stream cut off; 4,000 writes took {writing:?} meanwhile");

    // SIGTERM: the open stream ends with UNAVAILABLE at once, well before
    // the 20 s grace period, and the process exits.
    while live
        .message()
        .await?
        .is_some_and(|m| m.transaction.is_some())
    {}
    let signalled = Instant::now();
    server.terminate()?;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), live.message()).await {
            Err(_) => bail!("the stream was still open 10 s after SIGTERM"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => bail!("the stream ended without a status"),
            Ok(Err(status)) => break status,
        }
    };
    ensure!(
        ended.code() == tonic::Code::Unavailable
            && api::reason(&ended).as_deref() == Some("SHUTTING_DOWN"),
        "after SIGTERM the stream ended with {ended:?}"
    );
    let status = server.wait_exit(Duration::from_secs(10)).await?;
    eprintln!(
        "SIGTERM: stream ended UNAVAILABLE, process exited ({status}) after {:?}",
        signalled.elapsed()
    );
    Ok(())
}

/// Reads a stream to its end; its final status.
async fn drain(
    stream: &mut tonic::Streaming<pb::WatchTransactionsResponse>,
) -> anyhow::Result<tonic::Status> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.message()).await {
            Err(_) => bail!("the unread stream neither ended nor was cut off"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => bail!("the unread stream ended without a status"),
            Ok(Err(status)) => return Ok(status),
        }
    }
}
