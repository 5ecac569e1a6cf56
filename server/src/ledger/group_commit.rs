//! Group commit: concurrent writes share database transactions.
//!
//! Writes queue in the process. A dispatcher waits for a free writer slot,
//! then takes everything queued (up to `MAX_BATCH`) as one batch, applied in
//! one database transaction with one commit flush (`batch.rs`). With nothing
//! queued a write goes alone the moment it arrives, so low load sees no added
//! latency; under load the batches grow by themselves while the slots are
//! busy committing. This lifts the cap of one commit flush per write on a
//! busy account, while the database's row locks still order the batches of
//! different slots and of other server processes.
//!
//! A write is answered only after its batch committed. If a batch fails as a
//! whole (a database error), its writes are retried one per transaction, so
//! one bad write cannot fail its neighbours.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Store;
use super::batch::{Pending, apply_batch};
use super::model::WriteOutcome;
use crate::error::LedgerError;

/// Most writes in one database transaction.
pub const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<WriteOutcome, LedgerError>>;

/// The queue writes wait in.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<(Pending, Reply)>,
}

impl GroupCommit {
    /// Starts the dispatcher with `slots` concurrent writer transactions.
    /// It stops when the last `GroupCommit` clone is dropped.
    pub fn start(store: Store, slots: usize) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(store, rx, Arc::new(Semaphore::new(slots.max(1)))));
        Self { queue }
    }

    /// Queues `pending` and waits for its answer.
    pub async fn submit(&self, pending: Pending) -> Result<WriteOutcome, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((pending, reply))
            .map_err(|_| LedgerError::Internal("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| LedgerError::Internal("the writer dropped a request".into()))?
    }
}

async fn dispatch(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<(Pending, Reply)>,
    slots: Arc<Semaphore>,
) {
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            run(&store, jobs).await;
            drop(slot);
        });
    }
}

/// Applies `jobs` as one batch, or one by one if the batch fails.
async fn run(store: &Store, jobs: Vec<(Pending, Reply)>) {
    let (batch, replies): (Vec<Pending>, Vec<Reply>) = jobs.into_iter().unzip();
    match store.commit_batch(&batch).await {
        Ok(results) => answer(replies, results),
        Err(err) if batch.len() == 1 => answer(replies, vec![Err(err)]),
        Err(err) => {
            tracing::debug!(%err, size = batch.len(), "batch failed; applying its writes one by one");
            for (pending, reply) in batch.into_iter().zip(replies) {
                let one = std::slice::from_ref(&pending);
                let result = match store.commit_batch(one).await {
                    Ok(mut results) => results.pop().unwrap_or_else(|| {
                        Err(LedgerError::Internal(
                            "a batch of one gave no answer".into(),
                        ))
                    }),
                    Err(err) => Err(err),
                };
                let _ = reply.send(result);
            }
        }
    }
}

/// Sends each write its own answer; a caller that went away is skipped.
fn answer(replies: Vec<Reply>, results: Vec<Result<WriteOutcome, LedgerError>>) {
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

impl Store {
    /// Applies `batch` in one write transaction and commits it.
    async fn commit_batch(
        &self,
        batch: &[Pending],
    ) -> Result<Vec<Result<WriteOutcome, LedgerError>>, LedgerError> {
        let txn = self.begin_write().await?;
        match apply_batch(&txn.txn, batch).await {
            Ok(results) => {
                txn.commit().await?;
                Ok(results)
            }
            Err(err) => {
                txn.rollback().await;
                Err(err)
            }
        }
    }
}
