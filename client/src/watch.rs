//! The change feed: [`CreditClient::watch_transactions`] and
//! [`CreditClient::watch_balance`] as streams that outlive a connection.
//!
//! A Watch stream ends whenever its server process stops, the connection
//! drops, or the consumer reads too slowly (`SLOW_CONSUMER`). Resuming is
//! exact because the server's cursor is: reopening with `start_after` =
//! the cursor of the last message handed out gives every later transaction
//! once. So the stream here reopens by itself (the same backoff as a
//! retried call; the count of attempts starts again with every message
//! that arrives) and the caller sees one unbroken sequence. An error the
//! caller must act on (a bad cursor, a missing role, the stream limit)
//! ends the stream at once.

use std::future::Future;

use credit_proto::v1 as pb;
use credit_proto::v1::credit_service_client::CreditServiceClient;
use futures::stream::{self, BoxStream, StreamExt};
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::{AlertEvent, Balance, CreditClient, Error, RetryPolicy, Transaction, TransactionType};

/// One message of the transaction feed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedMessage {
    /// The committed transaction; `None` in a heartbeat, which only moves
    /// the cursor (the server sends one every few seconds when nothing
    /// matching was committed, and one first of all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction: Option<Transaction>,
    /// A low-balance alert event (only with [`WatchTransactions::content`]
    /// asking for them); it follows the transaction that crossed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_event: Option<AlertEvent>,
    /// Where this message is in the feed: store it after processing the
    /// message, and pass it to [`WatchTransactions::start_after`] to go on
    /// from there (after a restart, on any server process).
    pub cursor: String,
}

/// What a transaction feed carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeedContent {
    /// Transactions (and heartbeats).
    #[default]
    Transactions,
    /// Transactions and low-balance alert events.
    TransactionsAndAlertEvents,
    /// Alert events only.
    AlertEvents,
}

/// A watch of committed transactions, to configure and then
/// [`stream`](WatchTransactions::stream).
#[must_use = "a watch does nothing until .stream() is read"]
pub struct WatchTransactions<'a> {
    client: &'a CreditClient,
    message: pb::WatchTransactionsRequest,
    resume: bool,
}

impl WatchTransactions<'_> {
    /// Start right after `cursor` (one a message of this feed carried);
    /// without it the feed starts from now.
    pub fn start_after(mut self, cursor: impl Into<String>) -> Self {
        self.message.start_after = cursor.into();
        self
    }

    /// Only transactions of these types (heartbeats still come, and their
    /// cursors move past the others).
    pub fn types(mut self, types: impl IntoIterator<Item = TransactionType>) -> Self {
        self.message.types = types.into_iter().map(TransactionType::to_proto).collect();
        self
    }

    /// What the feed carries (default: transactions only).
    pub fn content(mut self, content: FeedContent) -> Self {
        self.message.content = match content {
            FeedContent::Transactions => pb::FeedContent::Unspecified,
            FeedContent::TransactionsAndAlertEvents => pb::FeedContent::TransactionsAndAlertEvents,
            FeedContent::AlertEvents => pb::FeedContent::AlertEvents,
        } as i32;
        self
    }

    /// Whether to reopen the stream after it ends or fails transiently
    /// (default: yes). With `false` the stream ends where the server's does.
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// The feed as a stream: every committed transaction once, in commit
    /// order (per user: `sequence` order), and heartbeats. It reopens by
    /// itself after a lost connection, a server shutting down or a slow
    /// read, from the last cursor it handed out; it ends with an error
    /// that retrying would not fix, or when reopening fails on every
    /// attempt of the client's retry policy.
    pub fn stream(self) -> BoxStream<'static, Result<FeedMessage, Error>> {
        resuming(
            self.client.clone(),
            self.message,
            self.resume,
            |mut grpc, request| async move { grpc.watch_transactions(request).await },
            |request, message| request.start_after.clone_from(&message.cursor),
            |message| {
                Ok(FeedMessage {
                    transaction: message.transaction.map(Transaction::try_from).transpose()?,
                    alert_event: message.alert_event.map(AlertEvent::try_from).transpose()?,
                    cursor: message.cursor,
                })
            },
        )
    }
}

/// A watch of one user's balance, to configure and then
/// [`stream`](WatchBalance::stream).
#[must_use = "a watch does nothing until .stream() is read"]
pub struct WatchBalance<'a> {
    client: &'a CreditClient,
    message: pb::WatchBalanceRequest,
    resume: bool,
}

impl WatchBalance<'_> {
    /// Whether to reopen the stream after it ends or fails transiently
    /// (default: yes).
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// The balance now, then after every change (changes close together
    /// may come as one message; the last message is always the latest
    /// committed balance). After a reopen the first message is the
    /// balance at that moment, which may equal the last one seen.
    pub fn stream(self) -> BoxStream<'static, Result<Balance, Error>> {
        resuming(
            self.client.clone(),
            self.message,
            self.resume,
            |mut grpc, request| async move { grpc.watch_balance(request).await },
            |_, _| {},
            |message| {
                message
                    .balance
                    .ok_or_else(|| {
                        Error::InvalidResponse("a balance message without a balance".into())
                    })?
                    .try_into()
            },
        )
    }
}

impl CreditClient {
    /// Every transaction as it commits: of `user_id`, or of every user
    /// when it is empty (which needs the admin role). Read it with
    /// [`WatchTransactions::stream`].
    pub fn watch_transactions(&self, user_id: impl Into<String>) -> WatchTransactions<'_> {
        WatchTransactions {
            client: self,
            message: pb::WatchTransactionsRequest {
                user_id: user_id.into(),
                ..Default::default()
            },
            resume: true,
        }
    }

    /// A user's balance, now and after every change. Read it with
    /// [`WatchBalance::stream`].
    pub fn watch_balance(&self, user_id: impl Into<String>) -> WatchBalance<'_> {
        WatchBalance {
            client: self,
            message: pb::WatchBalanceRequest {
                user_id: user_id.into(),
            },
            resume: true,
        }
    }
}

/// Whether a stream that ended with `status` may be reopened where it
/// left off: the connection or the server went away (UNAVAILABLE; a reset
/// stream reads as CANCELLED or UNKNOWN), or the server cut a slow reader.
fn resumable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Cancelled | Code::Unknown => true,
        Code::ResourceExhausted => {
            Error::from_status(status.clone()).reason() == Some("SLOW_CONSUMER")
        }
        _ => false,
    }
}

/// What a resuming stream keeps between messages.
struct State<M, R, Open> {
    client: CreditClient,
    request: M,
    resume: bool,
    open: Open,
    stream: Option<Streaming<R>>,
    /// Failed opens and broken streams since the last message.
    failures: u32,
    done: bool,
}

impl<M, R, Open, Fut> State<M, R, Open>
where
    M: Clone,
    Open: Fn(CreditServiceClient<Channel>, Request<M>) -> Fut,
    Fut: Future<Output = Result<Response<Streaming<R>>, Status>>,
{
    /// The call that opens the stream: bounded by the client's deadline
    /// (only the answer's headers; the stream itself has no deadline).
    /// Owns what it needs, so no borrow of the state lives across its wait.
    fn open(&self) -> impl Future<Output = Result<Streaming<R>, Status>> + use<M, R, Open, Fut> {
        let deadline = self.client.deadline();
        let call = (self.open)(
            self.client.grpc(),
            self.client.request(self.request.clone()),
        );
        async move {
            match tokio::time::timeout(deadline, call).await {
                Ok(result) => result.map(Response::into_inner),
                Err(_) => Err(Status::unavailable(format!(
                    "the stream did not open within {} ms",
                    deadline.as_millis()
                ))),
            }
        }
    }

    /// After the stream failed with `status`: waits and returns `None` to
    /// reopen, or returns the error that ends it.
    async fn failed(&mut self, status: Status) -> Option<Error> {
        self.stream = None;
        let policy: RetryPolicy = self.client.retry_policy();
        self.failures += 1;
        if !self.resume || !resumable(&status) || self.failures >= policy.max_attempts {
            self.done = true;
            return Some(Error::from_status(status));
        }
        tokio::time::sleep(policy.backoff(self.failures)).await;
        None
    }
}

/// A server stream opened by `open`, reopened after transient ends with
/// the request moved on by `advance` past every message handed out, each
/// message turned into the caller's type by `convert`.
fn resuming<M, R, T, Open, Fut>(
    client: CreditClient,
    request: M,
    resume: bool,
    open: Open,
    advance: fn(&mut M, &R),
    convert: fn(R) -> Result<T, Error>,
) -> BoxStream<'static, Result<T, Error>>
where
    M: Clone + Send + 'static,
    R: Send + 'static,
    T: Send + 'static,
    Open: Fn(CreditServiceClient<Channel>, Request<M>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Streaming<R>>, Status>> + Send,
{
    let state = State {
        client,
        request,
        resume,
        open,
        stream: None,
        failures: 0,
        done: false,
    };
    stream::unfold(state, move |mut state| async move {
        loop {
            if state.done {
                return None;
            }
            let stream = match state.stream.as_mut() {
                Some(stream) => stream,
                None => match state.open().await {
                    Ok(stream) => state.stream.insert(stream),
                    Err(status) => match state.failed(status).await {
                        Some(err) => return Some((Err(err), state)),
                        None => continue,
                    },
                },
            };
            let status = match stream.message().await {
                Ok(Some(message)) => {
                    state.failures = 0;
                    advance(&mut state.request, &message);
                    let item = convert(message);
                    if item.is_err() {
                        state.done = true;
                    }
                    return Some((item, state));
                }
                // A server ends a Watch stream only with a status; a bare
                // end is a proxy or a server going away.
                Ok(None) => Status::unavailable("the server ended the stream"),
                Err(status) => status,
            };
            if let Some(err) = state.failed(status).await {
                return Some((Err(err), state));
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    fn with_reason(code: Code, reason: &str) -> Status {
        Status::with_error_details(
            code,
            "m",
            ErrorDetails::with_error_info(reason, crate::ERROR_DOMAIN, []),
        )
    }

    #[test]
    fn only_transient_ends_are_resumed() {
        assert!(resumable(&Status::unavailable("gone")));
        assert!(resumable(&with_reason(Code::Unavailable, "SHUTTING_DOWN")));
        assert!(resumable(&with_reason(
            Code::ResourceExhausted,
            "SLOW_CONSUMER"
        )));
        assert!(!resumable(&with_reason(
            Code::ResourceExhausted,
            "TOO_MANY_STREAMS"
        )));
        assert!(!resumable(&with_reason(
            Code::InvalidArgument,
            "INVALID_ARGUMENT"
        )));
        assert!(!resumable(&Status::permission_denied("admin only")));
    }
}
