//! The gate every `CreditService` call passes before its handler, and on its
//! way back: the method must exist and have a role (fail closed), the
//! caller's key must allow it, request metadata must fit, a global
//! concurrency limit sheds load (`RESOURCE_EXHAUSTED`) instead of queueing,
//! and the call gets its deadline, request id, span, metrics and access-log
//! line. Every refusal carries a `google.rpc.ErrorInfo`. Health and
//! reflection stay open and unlimited, so probes work under load.

mod deadline;
mod methods;
mod rewrite;

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http::HeaderValue;
use tokio::sync::Semaphore;
use tonic::Status;
use tonic::body::Body;
use tonic_types::StatusExt;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::auth::{Caller, KeyRing, required_role};
use crate::service::status;
use crate::telemetry::metrics as m;

const SERVICE: &str = "credit.v1.CreditService";
const SERVICE_PREFIX: &str = "/credit.v1.CreditService/";
/// The request id header, taken from the caller or made, and answered.
pub const REQUEST_ID: &str = "x-request-id";

/// Shared state of the gate.
pub struct GateConfig {
    /// `None`: no keys configured, every caller is [`Caller::open`].
    pub keys: Option<KeyRing>,
    /// Calls allowed in flight at once across all connections.
    pub max_concurrent: usize,
    /// A call not finished by then is answered DEADLINE_EXCEEDED (the
    /// caller's `grpc-timeout` applies when shorter).
    pub request_timeout: Duration,
    /// Largest request metadata (all headers), in bytes.
    pub max_header_bytes: usize,
    /// Largest request message, for the answer that refuses a larger one.
    pub max_message_bytes: usize,
    /// Log one line per finished call at `info`.
    pub access_log: bool,
}

/// What a handler learns about the call it serves, and tells the gate back
/// (the user it concerned, for the access line).
#[derive(Debug, Clone, Default)]
pub struct CallInfo {
    pub request_id: String,
    user_id: Arc<Mutex<Option<String>>>,
}

impl CallInfo {
    /// Notes the user the call concerns (bounded, for logs).
    pub fn note_user(&self, user_id: &str) {
        let user: String = user_id.chars().take(128).collect();
        tracing::Span::current().record("user_id", user.as_str());
        if let Ok(mut slot) = self.user_id.lock() {
            *slot = Some(user);
        }
    }

    fn user(&self) -> String {
        self.user_id
            .lock()
            .ok()
            .and_then(|u| u.clone())
            .unwrap_or_default()
    }
}

/// The tower layer that puts the gate in front of the services.
#[derive(Clone)]
pub struct GateLayer {
    config: Arc<GateConfig>,
    in_flight: Arc<Semaphore>,
}

impl GateLayer {
    pub fn new(config: GateConfig) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            config: Arc::new(config),
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
        let method = method.to_owned();
        let grpc_type = grpc_type(&method);
        let started = Instant::now();
        // Counted when it starts, so started - handled is what is in flight.
        ::metrics::counter!(m::STARTED,
            "grpc_service" => SERVICE, "grpc_method" => method.clone(), "grpc_type" => grpc_type)
        .increment(1);
        let config = self.layer.config.clone();
        let info = CallInfo {
            request_id: request_id(request.headers()),
            ..CallInfo::default()
        };
        let span = tracing::info_span!(
            "rpc",
            otel.name = %format!("{SERVICE}/{method}"),
            rpc.method = %method,
            request_id = %info.request_id,
            caller = tracing::field::Empty,
            user_id = tracing::field::Empty,
            grpc_code = tracing::field::Empty,
        );
        let finish = Finish {
            method: method.clone(),
            grpc_type,
            started,
            info: info.clone(),
            span: span.clone(),
            access_log: config.access_log,
            done: false,
        };
        let admitted = span.in_scope(|| self.admit(&method, request.headers()));
        let (caller, permit) = match admitted {
            Ok(admitted) => admitted,
            Err(status) => {
                return Box::pin(async move { Ok(finish.answer(status.into_http())) });
            }
        };
        span.record("caller", caller.name.as_str());
        // The deadline starts now, before tonic starts its own timer on the
        // same `grpc-timeout` (it does so after this call returns), so ours
        // always fires first and the caller gets an answer with ErrorInfo.
        let deadline =
            tokio::time::Instant::now() + deadline::of(request.headers(), config.request_timeout);
        request.extensions_mut().insert(caller);
        request.extensions_mut().insert(info);
        Box::pin(
            async move {
                // Dropped with the future too: a call its client abandons
                // leaves the gauge as it found it.
                let in_flight = InFlight::start();
                let response = tokio::time::timeout_at(deadline, inner.call(request)).await;
                drop(in_flight);
                drop(permit);
                let response = match response {
                    Ok(response) => rewrite::transport_errors(response?, config.max_message_bytes),
                    Err(_) => status::deadline_exceeded().into_http(),
                };
                Ok(finish.answer(response))
            }
            .instrument(span),
        )
    }
}

impl<S> Gate<S> {
    /// Admits a call, or answers why not. The answers never depend on the
    /// request's content, so they cannot tell whether a user exists.
    fn admit(
        &self,
        method: &str,
        headers: &http::HeaderMap,
    ) -> Result<(Caller, tokio::sync::OwnedSemaphorePermit), Status> {
        let config = &self.layer.config;
        if !methods::exists(method) {
            return Err(status::unimplemented(method));
        }
        let size = header_bytes(headers);
        if size > config.max_header_bytes {
            return Err(status::metadata_too_large(size, config.max_header_bytes));
        }
        let caller = match config.keys.as_ref() {
            None => Caller::open(),
            Some(keys) => {
                let token = bearer_token(headers).ok_or_else(|| {
                    status::unauthenticated("missing API key: send `authorization: Bearer <key>`")
                })?;
                keys.authenticate(token)
                    .ok_or_else(|| status::unauthenticated("unknown API key"))?
            }
        };
        // Fail closed: a method the role table does not name is refused,
        // whoever calls (a test walks the descriptor so none is forgotten).
        let Some(needed) = required_role(method) else {
            return Err(status::permission_denied(format!(
                "{method} has no role in this server's role table; nobody may call it"
            )));
        };
        if caller.role < needed {
            return Err(status::permission_denied(format!(
                "{method} needs the {needed} role; this key ({}) has {}",
                caller.name, caller.role
            )));
        }
        let Ok(permit) = self.layer.in_flight.clone().try_acquire_owned() else {
            ::metrics::counter!(m::SHED, "resource" => "concurrentRequests").increment(1);
            return Err(status::shed());
        };
        Ok((caller, permit))
    }
}

/// The key of an `authorization: Bearer <key>` header; the scheme is
/// case-insensitive (RFC 7235).
fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The size of the request's headers as HTTP/2 counts it (RFC 7540 6.5.2).
fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

/// The kind of call, for metrics. A stream counts as handled when its
/// response starts (its messages follow); its length is not a latency.
fn grpc_type(method: &str) -> &'static str {
    if method.starts_with("Watch") {
        "server_stream"
    } else {
        "unary"
    }
}

/// The caller's request id when it is a sane one (1 to 128 visible ASCII
/// characters), else a new one.
fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

/// One call in the in-flight gauge, for as long as it lives.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        ::metrics::gauge!(m::IN_FLIGHT).increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        ::metrics::gauge!(m::IN_FLIGHT).decrement(1.0);
    }
}

/// What the gate does with every answer: request id header, metrics and
/// the access line. A call whose client went away before the answer (its
/// future dropped) is still counted, as CANCELLED.
struct Finish {
    method: String,
    grpc_type: &'static str,
    started: Instant,
    info: CallInfo,
    span: tracing::Span,
    access_log: bool,
    done: bool,
}

impl Drop for Finish {
    fn drop(&mut self) {
        if !self.done {
            self.record(tonic::Code::Cancelled, "");
        }
    }
}

impl Finish {
    fn answer(mut self, mut response: http::Response<Body>) -> http::Response<Body> {
        if let Ok(value) = HeaderValue::from_str(&self.info.request_id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        // An error answered before any message carries its status in the
        // headers (a trailers-only response); success puts grpc-status 0 in
        // the trailers.
        let status = Status::from_header_map(response.headers());
        let (code, reason) = match &status {
            Some(s) => (
                s.code(),
                s.get_error_details()
                    .error_info()
                    .map(|i| i.reason.clone())
                    .unwrap_or_default(),
            ),
            None => (tonic::Code::Ok, String::new()),
        };
        self.record(code, &reason);
        self.done = true;
        response
    }

    /// Metrics, the span's code and the access line of a finished call.
    fn record(&self, code: tonic::Code, reason: &str) {
        let elapsed = self.started.elapsed();
        let code_name = format!("{code:?}");
        let method = self.method.clone();
        ::metrics::counter!(m::HANDLED,
            "grpc_service" => SERVICE, "grpc_method" => method.clone(),
            "grpc_type" => self.grpc_type, "grpc_code" => code_name.clone())
        .increment(1);
        ::metrics::histogram!(m::HANDLING_SECONDS,
            "grpc_service" => SERVICE, "grpc_method" => method, "grpc_type" => self.grpc_type)
        .record(elapsed.as_secs_f64());
        self.span.record("grpc_code", code_name.as_str());
        if self.access_log {
            let _entered = self.span.enter();
            tracing::info!(
                target: "credit::access",
                method = %self.method,
                code = %code_name,
                reason = %reason,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                request_id = %self.info.request_id,
                user_id = %self.info.user(),
                "request finished"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for (value, want) in [
            ("Bearer k1", Some("k1")),
            ("bearer k1", Some("k1")),
            ("BEARER  k1 ", Some("k1")),
            ("Basic k1", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("k1", None),
        ] {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer_token(&headers), want, "{value:?}");
        }
    }

    #[test]
    fn request_ids_are_kept_when_sane() {
        let mut headers = http::HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&headers).len(), 32);
    }
}
