//! [`CreditClient`]: the connection, the per-call settings, the retry loop
//! every call goes through, and the read-only calls.

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use credit_proto::v1 as pb;
use credit_proto::v1::credit_service_client::CreditServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::config::{DEFAULT_DEADLINE, bearer_header};
use crate::model::required;
use crate::retry::is_retryable;
use crate::{Balance, ClientBuilder, Error, RetryPolicy, Transaction, User};

/// A typed client of `credit.v1.CreditService`.
///
/// Cheap to clone: clones share one connection (HTTP/2 multiplexes their
/// calls), so make one per server and clone it where needed.
#[derive(Clone)]
pub struct CreditClient {
    grpc: CreditServiceClient<Channel>,
    deadline: Duration,
    call_timeout: Option<Duration>,
    retry: RetryPolicy,
    authorization: Option<MetadataValue<Ascii>>,
}

impl CreditClient {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:50051`) with the
    /// default settings; see [`CreditClient::builder`] for the others.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self, Error> {
        ClientBuilder::new(endpoint).connect().await
    }

    /// Settings for a connection to `endpoint`, to change before connecting.
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(endpoint)
    }

    /// A client over an existing channel (its TLS and timeouts are the
    /// channel's), with the default deadline and retries and no token.
    pub fn from_channel(channel: Channel) -> Self {
        Self {
            grpc: CreditServiceClient::new(channel),
            deadline: DEFAULT_DEADLINE,
            call_timeout: None,
            retry: RetryPolicy::default(),
            authorization: None,
        }
    }

    /// The same client with another per-attempt deadline.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The same client with a limit on each call as a whole, retries and
    /// the waits between them included (see [`ClientBuilder::call_timeout`]).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    /// The limit on each call as a whole, if any.
    pub fn call_timeout(&self) -> Option<Duration> {
        self.call_timeout
    }

    /// The same client with another retry policy.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The same client sending `authorization: Bearer <token>` with every
    /// call. Fails if the token cannot be a header value.
    pub fn with_bearer_token(mut self, token: &str) -> Result<Self, Error> {
        self.authorization = Some(bearer_header(token)?);
        Ok(self)
    }

    /// The per-attempt deadline.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The generated client underneath, for calls this type does not wrap.
    /// It applies no deadline, token or retries of its own.
    pub fn grpc(&self) -> CreditServiceClient<Channel> {
        self.grpc.clone()
    }

    /// Returns one user.
    pub async fn get_user(&self, user_id: impl Into<String>) -> Result<User, Error> {
        let message = pb::GetUserRequest {
            user_id: user_id.into(),
        };
        let response = self
            .call(message, |mut grpc, request| async move {
                grpc.get_user(request).await
            })
            .await?;
        required(response.user, "user")?.try_into()
    }

    /// Returns a user's current balance.
    pub async fn get_balance(&self, user_id: impl Into<String>) -> Result<Balance, Error> {
        let message = pb::GetBalanceRequest {
            user_id: user_id.into(),
        };
        self.call(message, |mut grpc, request| async move {
            grpc.get_balance(request).await
        })
        .await?
        .try_into()
    }

    /// Returns one transaction of a user.
    pub async fn get_transaction(
        &self,
        user_id: impl Into<String>,
        transaction_id: impl Into<String>,
    ) -> Result<Transaction, Error> {
        let message = pb::GetTransactionRequest {
            user_id: user_id.into(),
            transaction_id: transaction_id.into(),
        };
        let response = self
            .call(message, |mut grpc, request| async move {
                grpc.get_transaction(request).await
            })
            .await?;
        required(response.transaction, "transaction")?.try_into()
    }

    /// Sends `message` through `send`, retrying per the policy, within the
    /// call timeout if there is one.
    ///
    /// Every attempt sends the same message, so a write keeps its
    /// idempotency key across attempts and is applied at most once.
    pub(crate) async fn call<M, R, F, Fut>(&self, message: M, send: F) -> Result<R, Error>
    where
        M: Clone,
        F: Fn(CreditServiceClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let give_up_at = self.call_timeout.map(|limit| Instant::now() + limit);
        let mut attempt = 1;
        loop {
            // The attempt's deadline, cut to what is left of the call's.
            let deadline = match give_up_at {
                Some(at) => self
                    .deadline
                    .min(at.saturating_duration_since(Instant::now())),
                None => self.deadline,
            };
            if deadline.is_zero() {
                return Err(Error::from_status(self.call_timed_out()));
            }
            let status = match self.attempt(message.clone(), &send, deadline).await {
                Ok(response) => return Ok(response),
                // Out of time for the call as a whole, not just this attempt.
                Err(status)
                    if status.code() == Code::DeadlineExceeded && deadline < self.deadline =>
                {
                    self.call_timed_out()
                }
                Err(status) => status,
            };
            if attempt >= self.retry.max_attempts || !is_retryable(&status) {
                return Err(Error::from_status(status));
            }
            let wait = self.retry.backoff(attempt);
            // No retry that could not even start in time: report this
            // attempt's failure now rather than at the deadline.
            if give_up_at.is_some_and(|at| Instant::now() + wait >= at) {
                return Err(Error::from_status(status));
            }
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn attempt<M, R, F, Fut>(
        &self,
        message: M,
        send: &F,
        deadline: Duration,
    ) -> Result<R, Status>
    where
        F: Fn(CreditServiceClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let mut request = self.request(message);
        // Tells the server when to give up too, so it does not keep working
        // for a caller that has gone.
        request.set_timeout(deadline);
        let started = Instant::now();
        // Enforced here as well: a channel the caller built may not enforce
        // `grpc-timeout` itself.
        match tokio::time::timeout(deadline, send(self.grpc.clone(), request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            // tonic's channel enforces `grpc-timeout` too, but reports its
            // expiry as CANCELLED. A CANCELLED for any other cause arrives
            // before the deadline and is passed on as it is.
            Ok(Err(status))
                if status.code() == Code::Cancelled && started.elapsed() >= deadline =>
            {
                Err(deadline_exceeded(deadline))
            }
            Ok(Err(status)) => Err(status),
            Err(_) => Err(deadline_exceeded(deadline)),
        }
    }

    /// A request carrying the client's credentials and no deadline: for
    /// streams, which live as long as their reader wants.
    pub(crate) fn request<M>(&self, message: M) -> Request<M> {
        let mut request = Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    fn call_timed_out(&self) -> Status {
        let limit = self.call_timeout.unwrap_or(self.deadline);
        Status::deadline_exceeded(format!(
            "no answer within {} ms (the call's time limit, retries included)",
            limit.as_millis()
        ))
    }
}

fn deadline_exceeded(deadline: Duration) -> Status {
    Status::deadline_exceeded(format!("no answer within {} ms", deadline.as_millis()))
}

impl fmt::Debug for CreditClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditClient")
            .field("deadline", &self.deadline)
            .field("call_timeout", &self.call_timeout)
            .field("retry", &self.retry)
            .field(
                "bearer_token",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts connections and reads, never answers.
    fn hung_server() -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buffer = [0; 4096];
                    while matches!(std::io::Read::read(&mut stream, &mut buffer), Ok(n) if n > 0) {}
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn call_timeout_bounds_every_attempt_and_wait() -> Result<(), Error> {
        let client = CreditClient::builder(hung_server().to_string())
            .deadline(Duration::from_secs(10))
            .call_timeout(Duration::from_millis(400))
            .retry_policy(RetryPolicy {
                max_attempts: 10,
                ..RetryPolicy::default()
            })
            .connect()
            .await?;
        let started = Instant::now();
        let err = client.get_balance("u").await.expect_err("no answer");
        let took = started.elapsed();
        assert!(matches!(err, Error::DeadlineExceeded { .. }), "{err:?}");
        assert!(
            took >= Duration::from_millis(380) && took < Duration::from_millis(900),
            "{took:?}"
        );
        Ok(())
    }
}
