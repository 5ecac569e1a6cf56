//! Group commit: concurrent writes share database transactions.
//!
//! Writes queue in the process. A dispatcher hands queued writes to free
//! writer slots as batches, each applied in one database transaction with
//! one commit flush (`batch.rs`). A user whose batch is in flight gets no
//! second one: its new writes wait in the queue and go together in the next
//! batch, so a busy account is not split across slots that would only queue
//! on its row lock. With nothing in flight a write goes alone the moment it
//! arrives, so low load sees no added latency; while a batch is in flight a
//! second one starts only once enough writes wait to make it worth a
//! transaction (`MIN_PARALLEL_BATCH`), so under load the batches grow by
//! themselves instead of multiplying; held-back writes go anyway once the
//! running batch is unusually slow (`PARALLEL_PATIENCE`).
//!
//! What a failure does, and why nothing is lost or applied twice:
//! - A write is answered only after its batch committed.
//! - A user whose row another transaction holds is skipped by the batch
//!   (`LockMode::Skip`), its writes untouched; they go back to the front of
//!   the queue (keeping their order) and are tried again after a short
//!   backoff, and after `WAIT_AFTER_SKIPS` skips alone with a bounded lock
//!   wait (at most `max_waiting` such batches at once, so accounts locked
//!   elsewhere cannot take every slot). Other users never wait for them.
//! - A batch whose COMMIT failed may or may not have been applied: its
//!   writes are answered `OutcomeUnknown` and never sent again by the
//!   server. Only the caller can retry, with its key.
//! - A batch that failed before COMMIT was rolled back: nothing of it was
//!   applied. A conflict, an outage or overload is every write's answer
//!   (the caller retries with its key); any other failure (a bad row, a
//!   bug) sends the writes again one per transaction, so one bad write
//!   cannot fail its neighbours. Keys are fixed when a write enters the
//!   ledger (`write.rs`), so a resent write can never be applied twice.
//! - A batch task that panics is caught: its slot and users are freed, its
//!   callers answered `Internal` (their replies are dropped).
//! - The queue is bounded (`max_queued`): beyond it writes are shed with
//!   `Overloaded` at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::batch::{LockMode, Pending, Step, apply_batch};
use super::error::{Cause, LedgerError, Overload};
use super::faults::Fault;
use super::model::WriteOutcome;
use super::store::Store;
use crate::telemetry::metrics as m;

/// Most writes in one database transaction.
pub const MAX_BATCH: usize = 256;

/// Fewest queued writes worth a transaction beside one already running.
/// Each transaction costs the same handful of round trips and a commit
/// whatever its size, and on a busy database every extra one slows the
/// others: fewer writes wait for the running batch (one batch time at most)
/// and go together in the next. Measured on PostgreSQL, 32 clients spread
/// over 10,000 users: 4,228/s with a transaction per free slot, 7,564/s
/// with this floor at 8, 6,230/s at 32.
const MIN_PARALLEL_BATCH: usize = 8;

/// How long writes held back by `MIN_PARALLEL_BATCH` wait for the newest
/// running batch before they go beside it anyway: several times a batch's
/// usual time, so it only fires when that batch is stuck.
const PARALLEL_PATIENCE: Duration = Duration::from_millis(20);

/// Skips (row locked elsewhere) after which a user's writes go alone and
/// wait for the lock (bounded) instead of polling: under contention with
/// another process on one account, waiting in the database's lock queue is
/// fair where polling could starve.
const WAIT_AFTER_SKIPS: u32 = 3;

type Reply = oneshot::Sender<Result<WriteOutcome, LedgerError>>;

/// A queued write: the request, where to answer, and its place in the
/// queue's bound (freed when the job is dropped, answered or not).
struct Job {
    pending: Pending,
    reply: Reply,
    _ticket: Ticket,
}

/// One unit of the write queue's bound.
struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        let left = self.0.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!(m::WRITE_QUEUE).set(left as f64);
    }
}

/// The queue writes wait in.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Job>,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    stats: Arc<Counters>,
}

/// How much sharing group commit achieved so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Database transactions committed for writes.
    pub batches: u64,
    /// Writes answered from those transactions.
    pub writes: u64,
    /// Writes queued or in flight right now.
    pub queued: u64,
    /// Times a batch skipped a user whose row was locked elsewhere.
    pub skipped_users: u64,
    /// Batch tasks that panicked (their callers were answered INTERNAL).
    pub panics: u64,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    writes: AtomicU64,
    skipped_users: AtomicU64,
    panics: AtomicU64,
}

impl GroupCommit {
    /// Starts the dispatcher with `slots` concurrent writer transactions and
    /// at most `max_queued` writes waiting or in flight. It stops when the
    /// last `GroupCommit` clone is dropped.
    pub fn start(store: Store, slots: usize, max_queued: usize) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Counters::default());
        tokio::spawn(dispatch(store, rx, slots.max(1), stats.clone()));
        Self {
            queue,
            queued: Arc::new(AtomicUsize::new(0)),
            max_queued: max_queued.max(1),
            stats,
        }
    }

    pub fn stats(&self) -> WriteStats {
        WriteStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            writes: self.stats.writes.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed) as u64,
            skipped_users: self.stats.skipped_users.load(Ordering::Relaxed),
            panics: self.stats.panics.load(Ordering::Relaxed),
        }
    }

    /// Queues `pending` and waits for its answer; sheds it at once when the
    /// queue is full.
    pub async fn submit(&self, pending: Pending) -> Result<WriteOutcome, LedgerError> {
        let before = self.queued.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!(m::WRITE_QUEUE).set((before + 1) as f64);
        let ticket = Ticket(self.queued.clone());
        if before >= self.max_queued {
            return Err(LedgerError::Overloaded(Overload::WriteQueue {
                limit: self.max_queued,
            }));
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            pending,
            reply,
            _ticket: ticket,
        };
        self.queue
            .send(job)
            .map_err(|_| LedgerError::Internal("the writer has stopped".into()))?;
        answer.await.map_err(|_| {
            LedgerError::Internal(
                "the write was dropped by a failed batch; retry with the same idempotency key"
                    .into(),
            )
        })?
    }
}

/// A user skipped because its row was locked elsewhere.
struct Deferral {
    skips: u32,
    retry_at: Instant,
}

/// The dispatcher's state.
struct Dispatcher {
    store: Store,
    stats: Arc<Counters>,
    slots: usize,
    free: usize,
    /// Batches in `LockMode::Wait` now, and the most allowed at once.
    waiting: usize,
    max_waiting: usize,
    queued: VecDeque<Job>,
    busy_users: HashSet<String>,
    deferred: HashMap<String, Deferral>,
    /// When the newest running batch started.
    last_start: Instant,
    done_tx: mpsc::UnboundedSender<Done>,
}

/// The dispatcher's loop: take new writes, hand batches to free slots,
/// free the slot and its users when a batch is done.
async fn dispatch(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Job>,
    slots: usize,
    stats: Arc<Counters>,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut d = Dispatcher {
        store,
        stats,
        slots,
        free: slots,
        waiting: 0,
        max_waiting: (slots / 2).max(1),
        queued: VecDeque::new(),
        busy_users: HashSet::new(),
        deferred: HashMap::new(),
        last_start: Instant::now(),
        done_tx,
    };
    let mut open = true;
    loop {
        let held_back = d.start_batches();
        if !open && d.free == d.slots && d.queued.is_empty() {
            return;
        }
        let next_retry = d.next_retry();
        tokio::select! {
            // A running batch that takes this long is waiting (on another
            // process's row lock, say): the writes held back go beside it.
            () = tokio::time::sleep_until((d.last_start + PARALLEL_PATIENCE).into()), if held_back => {}
            () = tokio::time::sleep_until(next_retry.unwrap_or_else(Instant::now).into()), if next_retry.is_some() => {}
            job = rx.recv(), if open => match job {
                Some(job) => {
                    d.queued.push_back(job);
                    // Take whatever else has arrived meanwhile in one go.
                    while let Ok(job) = rx.try_recv() {
                        d.queued.push_back(job);
                    }
                }
                None => open = false,
            },
            Some(done) = done_rx.recv() => d.finish(done),
        }
    }
}

impl Dispatcher {
    /// Starts batches on free slots; true when writes were held back for
    /// the running batch (`MIN_PARALLEL_BATCH`).
    fn start_batches(&mut self) -> bool {
        let now = Instant::now();
        while self.free > 0 {
            // A user skipped often enough goes alone and waits for its lock.
            if self.waiting < self.max_waiting
                && let Some(user) = self.due_to_wait(now)
            {
                let batch = self.take_user(&user);
                self.spawn(batch, LockMode::Wait);
                continue;
            }
            let in_flight = self.slots - self.free;
            if in_flight > 0
                && self.queued.len() < MIN_PARALLEL_BATCH
                && self.last_start.elapsed() < PARALLEL_PATIENCE
            {
                return self.queued.iter().any(|j| self.ready(j, now));
            }
            let batch = self.take_batch(now);
            if batch.is_empty() {
                break;
            }
            self.spawn(batch, LockMode::Skip);
        }
        false
    }

    /// Whether `job` may go in a skip-locked batch now.
    fn ready(&self, job: &Job, now: Instant) -> bool {
        let user = &job.pending.req.user_id;
        !self.busy_users.contains(user)
            && self
                .deferred
                .get(user)
                .is_none_or(|d| d.retry_at <= now && d.skips < WAIT_AFTER_SKIPS)
    }

    /// A user whose writes should now go alone with a lock wait.
    fn due_to_wait(&self, now: Instant) -> Option<String> {
        self.queued.iter().find_map(|j| {
            let user = &j.pending.req.user_id;
            let d = self.deferred.get(user)?;
            (d.skips >= WAIT_AFTER_SKIPS && d.retry_at <= now && !self.busy_users.contains(user))
                .then(|| user.clone())
        })
    }

    /// The earliest time a deferred user may be tried again.
    ///
    /// Only a time still ahead counts: a user already due that could not
    /// start (no free slot, its writes in flight, every waiting batch taken)
    /// starts when a batch finishes, which wakes the loop anyway. Counting
    /// it would make the loop spin on a deadline in the past.
    fn next_retry(&self) -> Option<Instant> {
        let now = Instant::now();
        self.deferred
            .values()
            .map(|d| d.retry_at)
            .filter(|at| *at > now)
            .min()
    }

    /// Takes up to `MAX_BATCH` ready writes, oldest first; the others keep
    /// their place in the queue.
    fn take_batch(&mut self, now: Instant) -> Vec<Job> {
        let mut batch = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queued.len());
        while let Some(job) = self.queued.pop_front() {
            if batch.len() < MAX_BATCH && self.ready(&job, now) {
                batch.push(job);
            } else {
                kept.push_back(job);
            }
        }
        self.queued = kept;
        batch
    }

    /// Takes every queued write of `user` (up to `MAX_BATCH`), in order.
    fn take_user(&mut self, user: &str) -> Vec<Job> {
        let mut batch = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queued.len());
        while let Some(job) = self.queued.pop_front() {
            if batch.len() < MAX_BATCH && job.pending.req.user_id == user {
                batch.push(job);
            } else {
                kept.push_back(job);
            }
        }
        self.queued = kept;
        batch
    }

    /// Runs `batch` on a slot. The batch runs in a task of its own, awaited
    /// by a second one, so a panic inside it still frees the slot.
    fn spawn(&mut self, batch: Vec<Job>, mode: LockMode) {
        self.free -= 1;
        if mode == LockMode::Wait {
            self.waiting += 1;
        }
        self.last_start = Instant::now();
        let users: Vec<String> = batch
            .iter()
            .map(|j| j.pending.req.user_id.clone())
            .collect();
        self.busy_users.extend(users.iter().cloned());
        let (store, done, stats) = (self.store.clone(), self.done_tx.clone(), self.stats.clone());
        // The batch's span is a child of its first request's (a batch of one,
        // the usual case at low load, is simply part of its request's
        // trace) and follows from the others'.
        let span = tracing::info_span!(
            parent: batch.first().and_then(|j| j.pending.span.id()),
            "write_batch",
            size = batch.len(),
            lock_mode = ?mode,
        );
        for job in batch.iter().skip(1) {
            span.follows_from(job.pending.span.id());
        }
        tokio::spawn(async move {
            let work = tokio::spawn(run(store, batch, mode, stats.clone()).instrument(span));
            let (outcome, skipped) = match work.await {
                Ok(result) => result,
                Err(err) => {
                    if err.is_panic() {
                        stats.panics.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(m::BATCHES, "outcome" => "panicked").increment(1);
                        tracing::error!(
                            "a write batch panicked; its callers were answered INTERNAL"
                        );
                    }
                    (Outcome::Failed, Vec::new())
                }
            };
            let _ = done.send(Done {
                users,
                mode,
                outcome,
                skipped,
            });
        });
    }

    /// A batch finished: free its slot and users, requeue what it skipped.
    fn finish(&mut self, done: Done) {
        self.free += 1;
        if done.mode == LockMode::Wait {
            self.waiting -= 1;
        }
        let skipped: HashSet<&str> = done
            .skipped
            .iter()
            .map(|j| j.pending.req.user_id.as_str())
            .collect();
        for user in &done.users {
            self.busy_users.remove(user);
            if !skipped.contains(user.as_str()) {
                self.deferred.remove(user);
            }
        }
        let now = Instant::now();
        for user in skipped {
            self.stats.skipped_users.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(m::SKIPPED_USERS).increment(1);
            let d = self.deferred.entry(user.to_owned()).or_insert(Deferral {
                skips: 0,
                retry_at: now,
            });
            d.skips += 1;
            // 1, 2, 4 ms, ... at most 50 ms.
            d.retry_at = now + Duration::from_millis((1u64 << d.skips.min(6)).min(50));
        }
        // Skipped writes are older than any queued write of their users:
        // they go back to the front, in their order.
        for job in done.skipped.into_iter().rev() {
            self.queued.push_front(job);
        }
        // The database just proved unreachable: the writes queued behind
        // that batch would only wait out the same timeout.
        if let Outcome::Unavailable(err) = done.outcome {
            for job in self.queued.drain(..) {
                let _ = job.reply.send(Err(err.clone()));
            }
        }
    }
}

/// A batch that finished: its users are free again.
struct Done {
    users: Vec<String>,
    mode: LockMode,
    outcome: Outcome,
    /// Writes of users whose row was locked elsewhere, unanswered.
    skipped: Vec<Job>,
}

/// How a batch ended.
#[derive(Debug)]
enum Outcome {
    /// Committed as one transaction.
    Committed,
    /// The database could not be reached.
    Unavailable(LedgerError),
    /// Failed otherwise (each write got its own answer).
    Failed,
}

/// Applies `jobs` as one batch (or one by one if the batch fails for a
/// reason that may be one write's), answering every write it applied.
async fn run(
    store: Store,
    jobs: Vec<Job>,
    mode: LockMode,
    stats: Arc<Counters>,
) -> (Outcome, Vec<Job>) {
    let batch: Vec<Pending> = jobs.iter().map(|j| j.pending.clone()).collect();
    let started = Instant::now();
    match store.commit_batch(&batch, mode).await {
        Ok(steps) => {
            let took = started.elapsed();
            tracing::debug!(size = batch.len(), ?took, "batch committed");
            metrics::histogram!(m::BATCH_SIZE).record(batch.len() as f64);
            metrics::histogram!(m::BATCH_SECONDS).record(took.as_secs_f64());
            metrics::counter!(m::BATCHES, "outcome" => "committed").increment(1);
            let mut skipped = Vec::new();
            let mut answered = 0;
            for (job, step) in jobs.into_iter().zip(steps) {
                match step {
                    Step::Done(result) => {
                        answered += 1;
                        let _ = job.reply.send(result);
                    }
                    Step::Skipped => skipped.push(job),
                }
            }
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.writes.fetch_add(answered, Ordering::Relaxed);
            (Outcome::Committed, skipped)
        }
        Err(err @ LedgerError::Unavailable(_)) => {
            metrics::counter!(m::BATCHES, "outcome" => "unavailable").increment(1);
            answer_all(jobs, &err);
            (Outcome::Unavailable(err), Vec::new())
        }
        // Applied or not, retrying in here could apply it twice; a
        // conflict or overload is the caller's to retry with its key.
        Err(
            err @ (LedgerError::OutcomeUnknown(_)
            | LedgerError::Conflict(_)
            | LedgerError::Overloaded(_)),
        ) => {
            metrics::counter!(m::BATCHES, "outcome" => "failed").increment(1);
            answer_all(jobs, &err);
            (Outcome::Failed, Vec::new())
        }
        Err(err) if jobs.len() == 1 => {
            answer_all(jobs, &err);
            (Outcome::Failed, Vec::new())
        }
        Err(err) => {
            tracing::warn!(%err, size = jobs.len(), "batch failed before commit; applying its writes one by one");
            let mut skipped = Vec::new();
            for job in jobs {
                let one = std::slice::from_ref(&job.pending);
                match store.commit_batch(one, mode).await {
                    Ok(mut steps) => match steps.pop() {
                        Some(Step::Done(result)) => {
                            let _ = job.reply.send(result);
                        }
                        Some(Step::Skipped) => skipped.push(job),
                        None => {
                            let _ = job.reply.send(Err(LedgerError::Internal(
                                "a batch of one gave no answer".into(),
                            )));
                        }
                    },
                    Err(err) => {
                        let _ = job.reply.send(Err(err));
                    }
                }
            }
            (Outcome::Failed, skipped)
        }
    }
}

/// Sends every write of a failed batch the batch's error.
fn answer_all(jobs: Vec<Job>, err: &LedgerError) {
    for job in jobs {
        let _ = job.reply.send(Err(err.clone()));
    }
}

impl Store {
    /// Applies `batch` in one write transaction and commits it.
    async fn commit_batch(
        &self,
        batch: &[Pending],
        mode: LockMode,
    ) -> Result<Vec<Step>, LedgerError> {
        let users = || batch.iter().map(|p| p.req.user_id.as_str());
        if self.faults.fires(Fault::PanicInBatch, users()) {
            panic!("fault injected: panic in a write batch");
        }
        let txn = self.begin_write().await?;
        let applied = match self.faults.fires(Fault::FailBeforeCommit, users()) {
            true => Err(LedgerError::Internal(
                "fault injected: fail before commit".into(),
            )),
            false => apply_batch(&txn.txn, batch, mode, self.clock.now(), self.holds).await,
        };
        match applied {
            Ok(steps) => {
                txn.commit().await?;
                self.feed.committed();
                if self.faults.fires(Fault::LoseCommitAnswer, users()) {
                    return Err(LedgerError::OutcomeUnknown(Cause::msg(
                        "fault injected: the commit's answer was lost",
                    )));
                }
                Ok(steps)
            }
            Err(err) => {
                txn.rollback().await;
                Err(self.explain(err))
            }
        }
    }
}
