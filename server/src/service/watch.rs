//! The Watch streams: each is a task that reads the ledger and sends into
//! a small bounded buffer, so a slow consumer costs its own buffer and one
//! waiting task, never a writer's time or unbounded memory. The task ends
//! the stream with a status when the consumer stays too slow, when the
//! server shuts down, or when a read fails; the consumer then resumes from
//! the last cursor it processed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use credit_proto::v1 as pb;
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tonic::Status;

use super::status;
use crate::app::StreamLimits;
use crate::ledger::Ledger;
use crate::ledger::feed::{Cursor, FeedFilter, FeedItem};

/// A Watch response stream.
pub type WatchStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Messages a stream buffers for its consumer.
const BUFFER: usize = 64;
/// Transactions read per feed query.
const PAGE: u64 = 256;
/// Shortest time between two balance reads of one WatchBalance stream
/// (changes in between are coalesced into the next read).
const BALANCE_MIN_GAP: Duration = Duration::from_millis(10);
/// A balance stream re-reads at least this often, for changes no feed
/// position announces (another process's reserve, an expiry).
const BALANCE_RECHECK: Duration = Duration::from_secs(1);

/// Counts open streams, per server and per API key.
pub struct Streams {
    limits: StreamLimits,
    total: Arc<Semaphore>,
    per_key: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream, released when the stream's task ends.
pub struct StreamSlot {
    _total: OwnedSemaphorePermit,
    key: String,
    per_key: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.per_key.lock()
            && let Some(n) = map.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl Streams {
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            total: Arc::new(Semaphore::new(limits.max_streams)),
            per_key: Arc::default(),
            limits,
        }
    }

    pub fn limits(&self) -> &StreamLimits {
        &self.limits
    }

    /// A slot for a new stream of `key`, or the refusal.
    pub fn open(&self, key: &str) -> Result<StreamSlot, Status> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| status::too_many_streams(self.limits.max_streams, "streams"))?;
        let mut map = self
            .per_key
            .lock()
            .map_err(|_| Status::internal("stream table poisoned"))?;
        let n = map.entry(key.to_owned()).or_default();
        if *n >= self.limits.max_streams_per_key {
            return Err(status::too_many_streams(
                self.limits.max_streams_per_key,
                "streamsPerKey",
            ));
        }
        *n += 1;
        Ok(StreamSlot {
            _total: total,
            key: key.to_owned(),
            per_key: self.per_key.clone(),
        })
    }
}

/// The sending half of a stream: a bounded buffer, and the status that
/// ends the stream after the buffered messages.
struct Sender<T> {
    messages: mpsc::Sender<T>,
    end: Option<oneshot::Sender<Status>>,
    slow_consumer: Duration,
}

/// Why a stream's task stopped sending.
enum Stop {
    /// The consumer went away: nothing to say.
    Gone,
    /// End the stream with this status.
    End(Status),
}

impl<T: Send + 'static> Sender<T> {
    /// A stream fed by `self`.
    fn pair(slow_consumer: Duration) -> (Self, WatchStream<T>) {
        let (messages, rx) = mpsc::channel(BUFFER);
        let (end, end_rx) = oneshot::channel::<Status>();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(Ok)
            .chain(
                futures::stream::once(end_rx).filter_map(|end| async move { end.ok().map(Err) }),
            );
        let sender = Self {
            messages,
            end: Some(end),
            slow_consumer,
        };
        (sender, Box::pin(stream))
    }

    async fn send(&self, message: T) -> Result<(), Stop> {
        match tokio::time::timeout(self.slow_consumer, self.messages.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::Gone),
            Err(_) => Err(Stop::End(status::slow_consumer(self.slow_consumer))),
        }
    }

    /// Ends the stream with `status` after what is buffered.
    fn finish(mut self, stop: Stop) {
        if let (Stop::End(status), Some(end)) = (stop, self.end.take()) {
            let _ = end.send(status);
        }
    }
}

/// Starts a WatchTransactions stream after `start`.
pub fn transactions(
    ledger: Ledger,
    filter: FeedFilter,
    start: Cursor,
    slot: StreamSlot,
    limits: &StreamLimits,
) -> WatchStream<pb::WatchTransactionsResponse> {
    let (sender, stream) = Sender::pair(limits.slow_consumer);
    let heartbeat = limits.heartbeat;
    tokio::spawn(async move {
        let stop = send_transactions(&ledger, &filter, start, &sender, heartbeat).await;
        drop(slot);
        sender.finish(stop);
    });
    stream
}

async fn send_transactions(
    ledger: &Ledger,
    filter: &FeedFilter,
    mut after: Cursor,
    sender: &Sender<pb::WatchTransactionsResponse>,
    heartbeat: Duration,
) -> Stop {
    let signals = ledger.feed_signals();
    let mut head = signals.head();
    let mut closing = signals.closing();
    // The first message says where the stream starts, so a consumer that
    // began "from now" holds a cursor before anything happens.
    let mut beat_due = Instant::now();
    loop {
        if *closing.borrow() {
            return Stop::End(status::shutting_down());
        }
        let page = match ledger.feed_read(filter, after, PAGE).await {
            Ok(page) => page,
            Err(err) => return Stop::End(err.into()),
        };
        let full = page.more;
        for (cursor, item) in page.entries {
            let (transaction, alert_event) = match item {
                FeedItem::Transaction(tx) => (Some(tx.into()), None),
                FeedItem::AlertEvent(event) => (None, Some(event.into())),
            };
            let message = pb::WatchTransactionsResponse {
                transaction,
                alert_event,
                cursor: cursor.token(),
            };
            if let Err(stop) = sender.send(message).await {
                return stop;
            }
            after = cursor;
            beat_due = Instant::now() + heartbeat;
        }
        if page.scanned_to > after {
            after = page.scanned_to;
        }
        if full {
            continue;
        }
        if Instant::now() >= beat_due {
            let beat = pb::WatchTransactionsResponse {
                transaction: None,
                alert_event: None,
                cursor: after.token(),
            };
            if let Err(stop) = sender.send(beat).await {
                return stop;
            }
            beat_due = Instant::now() + heartbeat;
        }
        let known = after.0;
        tokio::select! {
            changed = head.wait_for(|h| *h > known) => {
                if changed.is_err() {
                    return Stop::End(status::shutting_down());
                }
            }
            _ = closing.changed() => {}
            () = tokio::time::sleep_until(beat_due) => {}
            () = sender.messages.closed() => return Stop::Gone,
        }
    }
}

/// Starts a WatchBalance stream of `user_id`.
pub fn balance(
    ledger: Ledger,
    user_id: String,
    slot: StreamSlot,
    limits: &StreamLimits,
) -> WatchStream<pb::WatchBalanceResponse> {
    let (sender, stream) = Sender::pair(limits.slow_consumer);
    tokio::spawn(async move {
        let stop = send_balances(&ledger, &user_id, &sender).await;
        drop(slot);
        sender.finish(stop);
    });
    stream
}

async fn send_balances(
    ledger: &Ledger,
    user_id: &str,
    sender: &Sender<pb::WatchBalanceResponse>,
) -> Stop {
    let signals = ledger.feed_signals();
    let mut changes = signals.changes();
    let mut closing = signals.closing();
    let mut last = None;
    loop {
        if *closing.borrow() {
            return Stop::End(status::shutting_down());
        }
        // Marked seen before the read: a change during the read wakes the
        // next one, so the last message is never older than the last change.
        changes.borrow_and_update();
        let balance = match ledger.balance(user_id).await {
            Ok(balance) => balance,
            Err(err) => return Stop::End(err.into()),
        };
        if last.as_ref() != Some(&balance) {
            last = Some(balance.clone());
            let message = pb::WatchBalanceResponse {
                balance: Some(balance.into()),
            };
            if let Err(stop) = sender.send(message).await {
                return stop;
            }
        }
        let read_at = Instant::now();
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Stop::End(status::shutting_down());
                }
            }
            _ = closing.changed() => {}
            () = tokio::time::sleep(BALANCE_RECHECK) => {}
            () = sender.messages.closed() => return Stop::Gone,
        }
        tokio::time::sleep_until(read_at + BALANCE_MIN_GAP).await;
    }
}
