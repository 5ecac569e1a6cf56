//! A gRPC proxy in front of the real server that can lose answers on
//! purpose: the shape of a network failure that retries must survive.
//!
//! It forwards each call to the server unchanged and records what it saw;
//! a queued fault for a method then decides what the caller gets back.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use credit_proto::v1::{
    self as pb,
    credit_service_server::{CreditService, CreditServiceServer},
};
use integration_tests::{Client, TestServer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

/// What happens to one call.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Fail with `code` without forwarding: the server never sees the call.
    Before(Code),
    /// Forward (the server applies the call), then fail with `code`: the
    /// answer is lost on the way back.
    After(Code),
    /// Forward, then hold the answer this long (past the caller's deadline).
    Delay(Duration),
}

/// One call as the proxy received it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: &'static str,
    pub authorization: Option<String>,
    /// The idempotency key of a write; empty for reads.
    pub idempotency_key: String,
}

#[derive(Default)]
struct State {
    faults: HashMap<&'static str, VecDeque<Fault>>,
    calls: Vec<Call>,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _stop: oneshot::Sender<()>,
}

impl Proxy {
    /// A proxy on `127.0.0.1:0` in front of `server`.
    pub async fn start(server: &TestServer) -> anyhow::Result<Proxy> {
        let state = Arc::new(Mutex::new(State::default()));
        let service = Forward {
            upstream: server.client().await?,
            state: state.clone(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            Server::builder()
                .add_service(CreditServiceServer::new(service))
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                }),
        );
        Ok(Proxy {
            addr,
            state,
            _stop: stop,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next call of `method` (e.g. `"Spend"`) meets `fault`; faults
    /// queued for one method apply in order, one call each.
    pub fn inject(&self, method: &'static str, fault: Fault) {
        lock(&self.state)
            .faults
            .entry(method)
            .or_default()
            .push_back(fault);
    }

    /// Every call of `method` so far, in order.
    pub fn calls(&self, method: &str) -> Vec<Call> {
        lock(&self.state)
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking test thread poisons the lock; the state is still usable.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Forward {
    upstream: Client,
    state: Arc<Mutex<State>>,
}

impl Forward {
    async fn forward<M, R, F, Fut>(
        &self,
        method: &'static str,
        request: Request<M>,
        idempotency_key: impl Fn(&M) -> String,
        send: F,
    ) -> Result<Response<R>, Status>
    where
        F: FnOnce(Client, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let message = request.into_inner();
        let fault = {
            let mut state = lock(&self.state);
            state.calls.push(Call {
                method,
                authorization,
                idempotency_key: idempotency_key(&message),
            });
            state.faults.get_mut(method).and_then(VecDeque::pop_front)
        };
        if let Some(Fault::Before(code)) = fault {
            return Err(Status::new(code, "injected before forwarding"));
        }
        let response = send(self.upstream.clone(), Request::new(message)).await;
        match fault {
            Some(Fault::After(code)) => Err(Status::new(code, "injected: applied, answer lost")),
            Some(Fault::Delay(hold)) => {
                tokio::time::sleep(hold).await;
                response
            }
            _ => response,
        }
    }
}

fn no_key<M>(_: &M) -> String {
    String::new()
}

/// A forwarded server stream.
type Forwarded<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Forwards a stream's messages as they come (and its final status).
fn forwarded<T: Send + 'static>(
    response: Result<Response<tonic::Streaming<T>>, Status>,
) -> Result<Response<Forwarded<T>>, Status> {
    response.map(|r| Response::new(Box::pin(r.into_inner()) as Forwarded<T>))
}

#[tonic::async_trait]
impl CreditService for Forward {
    type WatchTransactionsStream = Forwarded<pb::WatchTransactionsResponse>;
    type WatchBalanceStream = Forwarded<pb::WatchBalanceResponse>;

    async fn watch_transactions(
        &self,
        r: Request<pb::WatchTransactionsRequest>,
    ) -> Result<Response<Self::WatchTransactionsStream>, Status> {
        let cursor = |m: &pb::WatchTransactionsRequest| m.start_after.clone();
        self.forward("WatchTransactions", r, cursor, |mut c, r| async move {
            forwarded(c.watch_transactions(r).await)
        })
        .await
    }

    async fn watch_balance(
        &self,
        r: Request<pb::WatchBalanceRequest>,
    ) -> Result<Response<Self::WatchBalanceStream>, Status> {
        self.forward("WatchBalance", r, no_key, |mut c, r| async move {
            forwarded(c.watch_balance(r).await)
        })
        .await
    }

    async fn create_user(
        &self,
        r: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        self.forward("CreateUser", r, no_key, |mut c, r| async move {
            c.create_user(r).await
        })
        .await
    }

    async fn get_user(
        &self,
        r: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        self.forward("GetUser", r, no_key, |mut c, r| async move {
            c.get_user(r).await
        })
        .await
    }

    async fn get_balance(
        &self,
        r: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        self.forward("GetBalance", r, no_key, |mut c, r| async move {
            c.get_balance(r).await
        })
        .await
    }

    async fn top_up(
        &self,
        r: Request<pb::TopUpRequest>,
    ) -> Result<Response<pb::TopUpResponse>, Status> {
        let key = |m: &pb::TopUpRequest| m.idempotency_key.clone();
        self.forward("TopUp", r, key, |mut c, r| async move { c.top_up(r).await })
            .await
    }

    async fn spend(
        &self,
        r: Request<pb::SpendRequest>,
    ) -> Result<Response<pb::SpendResponse>, Status> {
        let key = |m: &pb::SpendRequest| m.idempotency_key.clone();
        self.forward("Spend", r, key, |mut c, r| async move { c.spend(r).await })
            .await
    }

    async fn grant(
        &self,
        r: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let key = |m: &pb::GrantRequest| m.idempotency_key.clone();
        self.forward("Grant", r, key, |mut c, r| async move { c.grant(r).await })
            .await
    }

    async fn refund(
        &self,
        r: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        let key = |m: &pb::RefundRequest| m.idempotency_key.clone();
        self.forward(
            "Refund",
            r,
            key,
            |mut c, r| async move { c.refund(r).await },
        )
        .await
    }

    async fn get_transaction(
        &self,
        r: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        self.forward("GetTransaction", r, no_key, |mut c, r| async move {
            c.get_transaction(r).await
        })
        .await
    }

    async fn list_transactions(
        &self,
        r: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        self.forward("ListTransactions", r, no_key, |mut c, r| async move {
            c.list_transactions(r).await
        })
        .await
    }

    async fn verify_ledger(
        &self,
        r: Request<pb::VerifyLedgerRequest>,
    ) -> Result<Response<pb::VerifyLedgerResponse>, Status> {
        self.forward("VerifyLedger", r, no_key, |mut c, r| async move {
            c.verify_ledger(r).await
        })
        .await
    }

    async fn reserve(
        &self,
        r: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let key = |m: &pb::ReserveRequest| m.idempotency_key.clone();
        self.forward(
            "Reserve",
            r,
            key,
            |mut c, r| async move { c.reserve(r).await },
        )
        .await
    }

    async fn capture(
        &self,
        r: Request<pb::CaptureRequest>,
    ) -> Result<Response<pb::CaptureResponse>, Status> {
        let key = |m: &pb::CaptureRequest| m.idempotency_key.clone();
        self.forward(
            "Capture",
            r,
            key,
            |mut c, r| async move { c.capture(r).await },
        )
        .await
    }

    async fn release(
        &self,
        r: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let key = |m: &pb::ReleaseRequest| m.idempotency_key.clone();
        self.forward(
            "Release",
            r,
            key,
            |mut c, r| async move { c.release(r).await },
        )
        .await
    }

    async fn get_hold(
        &self,
        r: Request<pb::GetHoldRequest>,
    ) -> Result<Response<pb::GetHoldResponse>, Status> {
        self.forward("GetHold", r, no_key, |mut c, r| async move {
            c.get_hold(r).await
        })
        .await
    }

    async fn list_holds(
        &self,
        r: Request<pb::ListHoldsRequest>,
    ) -> Result<Response<pb::ListHoldsResponse>, Status> {
        self.forward("ListHolds", r, no_key, |mut c, r| async move {
            c.list_holds(r).await
        })
        .await
    }

    async fn list_lots(
        &self,
        r: Request<pb::ListLotsRequest>,
    ) -> Result<Response<pb::ListLotsResponse>, Status> {
        self.forward("ListLots", r, no_key, |mut c, r| async move {
            c.list_lots(r).await
        })
        .await
    }

    async fn set_balance_alert(
        &self,
        r: Request<pb::SetBalanceAlertRequest>,
    ) -> Result<Response<pb::SetBalanceAlertResponse>, Status> {
        self.forward(
            "SetBalanceAlert",
            r,
            |m| m.idempotency_key.clone(),
            |mut c, r| async move { c.set_balance_alert(r).await },
        )
        .await
    }

    async fn delete_balance_alert(
        &self,
        r: Request<pb::DeleteBalanceAlertRequest>,
    ) -> Result<Response<pb::DeleteBalanceAlertResponse>, Status> {
        self.forward("DeleteBalanceAlert", r, no_key, |mut c, r| async move {
            c.delete_balance_alert(r).await
        })
        .await
    }

    async fn list_alert_events(
        &self,
        r: Request<pb::ListAlertEventsRequest>,
    ) -> Result<Response<pb::ListAlertEventsResponse>, Status> {
        self.forward("ListAlertEvents", r, no_key, |mut c, r| async move {
            c.list_alert_events(r).await
        })
        .await
    }
}
