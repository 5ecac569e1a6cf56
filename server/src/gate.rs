//! The gate every `CreditService` call passes before its handler:
//! authentication, the caller's role, and a global concurrency limit that
//! sheds load (`RESOURCE_EXHAUSTED`) instead of queueing without bound.
//! Health and reflection stay open and unlimited, so probes work under load.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::auth::{Caller, KeyRing, required_role};
use crate::error::{FieldViolation, LedgerError};

const SERVICE_PREFIX: &str = "/credit.v1.CreditService/";

/// Shared state of the gate.
pub struct GateConfig {
    /// `None`: no keys configured, every caller is [`Caller::open`].
    pub keys: Option<KeyRing>,
    /// Calls allowed in flight at once across all connections.
    pub max_concurrent: usize,
}

/// The tower layer that puts the gate in front of the services.
#[derive(Clone)]
pub struct GateLayer {
    keys: Arc<Option<KeyRing>>,
    in_flight: Arc<Semaphore>,
}

impl GateLayer {
    pub fn new(config: GateConfig) -> Self {
        Self {
            keys: Arc::new(config.keys),
            in_flight: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
        }
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            layer: self.clone(),
        }
    }
}

/// The gate around one service stack.
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    layer: GateLayer,
}

impl<S, B> Service<http::Request<B>> for Gate<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The ready inner service must serve this call; keep a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(method) = request.uri().path().strip_prefix(SERVICE_PREFIX) else {
            return Box::pin(inner.call(request));
        };
        let caller = match self.admit(method, request.headers()) {
            Ok(caller) => caller,
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
        };
        let Ok(permit) = self.layer.in_flight.clone().try_acquire_owned() else {
            return Box::pin(async move {
                Ok(Status::resource_exhausted(
                    "the server is at its concurrency limit; retry with backoff",
                )
                .into_http())
            });
        };
        if let Some(caller) = caller {
            request.extensions_mut().insert(caller);
        }
        Box::pin(async move {
            let response = inner.call(request).await?;
            drop(permit);
            Ok(undecodable_as_invalid(response))
        })
    }
}

/// tonic answers a request it cannot decode with INTERNAL, as if the
/// server were at fault. The caller is: the only way our messages fail to
/// decode, beyond corruption, is metadata nested past the decoder's depth
/// limit. Answer INVALID_ARGUMENT with the usual details instead.
fn undecodable_as_invalid(response: http::Response<Body>) -> http::Response<Body> {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .replace("%20", " ")
    };
    if header("grpc-status") != "13" || !header("grpc-message").starts_with("failed to decode") {
        return response;
    }
    let violation = if header("grpc-message").contains("recursion limit") {
        FieldViolation::new("metadata", "is nested too deeply (at most 30 levels)")
    } else {
        FieldViolation::new("", "is not a valid credit.v1 request message")
    };
    Status::from(LedgerError::InvalidArgument(vec![violation])).into_http()
}

impl<S> Gate<S> {
    /// Authenticates and authorises a call. The answers never depend on the
    /// request's content, so they cannot tell whether a user exists.
    fn admit(&self, method: &str, headers: &http::HeaderMap) -> Result<Option<Caller>, Status> {
        let Some(keys) = self.layer.keys.as_ref() else {
            return Ok(Some(Caller::open()));
        };
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("missing API key: send `authorization: Bearer <key>`")
            })?;
        let caller = keys
            .authenticate(token.trim())
            .ok_or_else(|| Status::unauthenticated("unknown API key"))?;
        match required_role(method) {
            // Unknown methods fall through to tonic's UNIMPLEMENTED.
            None => Ok(Some(caller)),
            Some(needed) if caller.role >= needed => Ok(Some(caller)),
            Some(needed) => Err(Status::permission_denied(format!(
                "{method} needs the {needed} role; this key ({}) has {}",
                caller.name, caller.role
            ))),
        }
    }
}
