//! The `feed` scenario's watchers: all-users WatchTransactions streams, each
//! on its own connection, that read every transaction the run writes and
//! time its delivery.
//!
//! Delivery latency is the arrival time minus the transaction's
//! `created_at`. The server stamps `created_at` when the write's batch
//! starts, before commit, so this is an upper bound on commit-to-delivery
//! (it includes the write's own transaction). Server and watchers share
//! this machine's clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use credit_proto::v1 as pb;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::grpc;

/// Latencies are kept in microseconds up to a minute.
const MAX_LATENCY_US: u64 = 60_000_000;
/// How long the watchers may take to catch up after the writers stopped.
const CATCH_UP: Duration = Duration::from_secs(15);

/// What the watchers of one run saw.
#[derive(Debug, Clone, Serialize)]
pub struct FeedStats {
    pub watchers: usize,
    /// Transactions delivered, all watchers together.
    pub delivered: u64,
    /// The fewest any one watcher received: each should see every write of
    /// the run.
    pub fewest_per_watcher: u64,
    /// Delivery latency percentiles, ms (see the module docs).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Streams that ended and were reopened from their last cursor.
    pub reopened: u64,
}

/// Running watchers.
pub struct Watchers {
    tasks: Vec<JoinHandle<anyhow::Result<Histogram<u64>>>>,
    counts: Vec<Arc<AtomicU64>>,
    reopened: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
}

impl Watchers {
    /// `n` watchers of every user's transactions from now, each on its own
    /// connection; returns once every stream has sent its first message
    /// (so it is reading before the run starts).
    pub async fn start(endpoint: &str, n: usize) -> anyhow::Result<Watchers> {
        let (stop, stopped) = watch::channel(false);
        let reopened = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::with_capacity(n);
        let mut counts = Vec::with_capacity(n);
        let mut ready = Vec::with_capacity(n);
        for _ in 0..n {
            let client = grpc::connect(endpoint, 1).await?.remove(0);
            let count = Arc::new(AtomicU64::new(0));
            let (is_ready, ready_rx) = tokio::sync::oneshot::channel();
            tasks.push(tokio::spawn(watch_all(
                client,
                count.clone(),
                reopened.clone(),
                stopped.clone(),
                is_ready,
            )));
            counts.push(count);
            ready.push(ready_rx);
        }
        for r in ready {
            tokio::time::timeout(CATCH_UP, r)
                .await
                .context("a watcher's stream did not open")?
                .context("a watcher failed to open its stream")?;
        }
        Ok(Watchers {
            tasks,
            counts,
            reopened,
            stop,
        })
    }

    /// Waits until every watcher has received `expected` transactions (or
    /// the catch-up time passed), stops them and merges what they measured.
    pub async fn finish(self, expected: u64) -> anyhow::Result<FeedStats> {
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        while self
            .counts
            .iter()
            .any(|c| c.load(Ordering::Relaxed) < expected)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.send_replace(true);
        let mut latency = histogram()?;
        for task in self.tasks {
            let h = task.await.context("a watcher panicked")??;
            latency.add(&h).context("merging latency histograms")?;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Ok(FeedStats {
            watchers: self.counts.len(),
            delivered: self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum(),
            fewest_per_watcher: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .min()
                .unwrap_or(0),
            p50_ms: ms(latency.value_at_quantile(0.50)),
            p99_ms: ms(latency.value_at_quantile(0.99)),
            max_ms: ms(latency.max()),
            reopened: self.reopened.load(Ordering::Relaxed),
        })
    }
}

/// One watcher: reads until told to stop, reopening from its last cursor
/// when the stream ends (e.g. cut off as a slow consumer).
async fn watch_all(
    mut client: grpc::Client,
    count: Arc<AtomicU64>,
    reopened: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = histogram()?;
    let mut cursor = String::new();
    let mut ready = Some(ready);
    loop {
        let request = pb::WatchTransactionsRequest {
            user_id: String::new(),
            start_after: cursor.clone(),
            ..Default::default()
        };
        let mut stream = client
            .watch_transactions(request)
            .await
            .context("WatchTransactions")?
            .into_inner();
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = stop.changed() => return Ok(latency),
            };
            let Ok(Some(message)) = message else {
                break;
            };
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
            cursor = message.cursor;
            if let Some(created) = message.transaction.and_then(|t| t.created_at) {
                let now = chrono::Utc::now();
                let created =
                    chrono::DateTime::from_timestamp(created.seconds, created.nanos as u32)
                        .unwrap_or(now);
                let us = (now - created).num_microseconds().unwrap_or(0);
                latency.saturating_record(us.clamp(1, MAX_LATENCY_US as i64) as u64);
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        reopened.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("creating a latency histogram")
}
