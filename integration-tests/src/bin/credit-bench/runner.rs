//! One measured run: N client tasks issue calls back to back (a closed
//! loop: each waits for its answer before the next call) for the run's
//! duration. (The uncounted warm-up before it is a run of its own:
//! `session.rs`.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::grpc::{self, Client};
use crate::progress::Progress;
use crate::raw::{SqlTarget, Style};
use crate::workload::{Op, Workload};

/// Latencies are kept in microseconds up to a minute.
const MAX_LATENCY_US: u64 = 60_000_000;

/// What the clients call.
#[derive(Clone)]
pub enum Target {
    /// The service over gRPC; client task `i` uses connection `i % len`.
    Service(Vec<Client>),
    /// SQL against the database directly.
    Sql(SqlTarget, Style),
}

/// How long and how wide a run is.
#[derive(Debug, Clone, Copy)]
pub struct RunSpec {
    pub clients: usize,
    pub duration: Duration,
    pub op_timeout: Duration,
}

/// What a run measured.
pub struct Measurement {
    /// Successful calls.
    pub ok: u64,
    /// From the end of the warm-up to the last counted answer.
    pub elapsed: Duration,
    /// Latency of successful calls, in microseconds.
    pub latency: Histogram<u64>,
    /// The same per operation (indexed like `Op::ALL`), for mixes.
    pub by_op: Vec<Histogram<u64>>,
    /// Failed calls by code.
    pub errors: BTreeMap<String, u64>,
}

/// One client task's tally.
struct Tally {
    ok: u64,
    by_op: Vec<Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    last_done: Instant,
}

pub async fn measure(
    target: &Target,
    workload: Arc<Workload>,
    spec: RunSpec,
    progress: &Progress,
) -> anyhow::Result<Measurement> {
    let started = Instant::now();
    let until = started + spec.duration;
    let counted = Arc::new(AtomicU64::new(0));

    let mut tasks = Vec::with_capacity(spec.clients);
    for i in 0..spec.clients {
        let caller = Caller::new(target, i);
        let workload = workload.clone();
        let counted = counted.clone();
        let by_op = per_op_histograms()?;
        tasks.push(tokio::spawn(client_loop(
            caller,
            workload,
            StdRng::seed_from_u64(i as u64),
            Window {
                from: started,
                until,
                op_timeout: spec.op_timeout,
            },
            counted,
            by_op,
        )));
    }

    let total = spec.duration;
    // A reserve-capture operation is a pair of calls: say so in the line.
    let unit = workload.scenario.unit();
    let ticker = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = Instant::now();
            let ops = counted.load(Ordering::Relaxed);
            let secs = (now - started).as_secs_f64().max(1e-3);
            let message = format!("{ops} {unit}, {:.0}/s", ops as f64 / secs);
            let position = (now - started).min(total).as_millis() as u64;
            progress.set(position, message);
        }
    };
    let joined = tokio::select! {
        joined = futures::future::join_all(tasks) => joined,
        _ = ticker => unreachable!("the ticker never ends"),
    };
    progress.finish();

    let mut result = Measurement {
        ok: 0,
        elapsed: Duration::ZERO,
        latency: new_histogram()?,
        by_op: per_op_histograms()?,
        errors: BTreeMap::new(),
    };
    let mut last_done = started;
    for tally in joined {
        let tally = tally.context("a client task panicked")?;
        result.ok += tally.ok;
        for (all, one) in result.by_op.iter_mut().zip(&tally.by_op) {
            all.add(one).context("merging latency histograms")?;
            result
                .latency
                .add(one)
                .context("merging latency histograms")?;
        }
        for (code, n) in tally.errors {
            *result.errors.entry(code).or_default() += n;
        }
        last_done = last_done.max(tally.last_done);
    }
    result.elapsed = last_done.saturating_duration_since(started);
    Ok(result)
}

/// When the run started and when it stops.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    until: Instant,
    op_timeout: Duration,
}

async fn client_loop(
    mut caller: Caller,
    workload: Arc<Workload>,
    mut rng: StdRng,
    window: Window,
    counted: Arc<AtomicU64>,
    by_op: Vec<Histogram<u64>>,
) -> Tally {
    let mut tally = Tally {
        ok: 0,
        by_op,
        errors: BTreeMap::new(),
        last_done: window.from,
    };
    loop {
        let start = Instant::now();
        if start >= window.until {
            return tally;
        }
        let (op, user) = workload.next(&mut rng);
        let result = tokio::time::timeout(window.op_timeout, caller.call(op, user)).await;
        let done = Instant::now();
        tally.last_done = done;
        match result {
            Ok(Ok(())) => {
                tally.ok += 1;
                let us = (done - start)
                    .as_micros()
                    .clamp(1, u128::from(MAX_LATENCY_US));
                tally.by_op[op.index()].saturating_record(us as u64);
                counted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(code)) => *tally.errors.entry(code).or_default() += 1,
            Err(_) => *tally.errors.entry("DEADLINE_EXCEEDED".into()).or_default() += 1,
        }
    }
}

/// One client task's handle on the target.
enum Caller {
    Service(Client),
    Sql(SqlTarget, Style),
}

impl Caller {
    fn new(target: &Target, index: usize) -> Caller {
        match target {
            Target::Service(clients) => Caller::Service(clients[index % clients.len()].clone()),
            Target::Sql(sql, style) => Caller::Sql(sql.clone(), *style),
        }
    }

    async fn call(&mut self, op: Op, user: &str) -> Result<(), String> {
        match self {
            Caller::Service(client) => grpc::call(client, op, user).await,
            Caller::Sql(sql, style) => sql.call(*style, op, user).await,
        }
    }
}

fn per_op_histograms() -> anyhow::Result<Vec<Histogram<u64>>> {
    Op::ALL.iter().map(|_| new_histogram()).collect()
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("creating a latency histogram")
}
