//! CORS for gRPC-Web callers: which origins may call, and which headers a
//! page may send and read.

use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::GrpcWeb;

/// Headers a web client sends: the gRPC-Web ones, the API key, deadlines
/// and the request id.
const ALLOWED_HEADERS: [&str; 7] = [
    "authorization",
    "content-type",
    "grpc-timeout",
    "x-grpc-web",
    "x-user-agent",
    "x-request-id",
    "connect-protocol-version",
];

/// Headers a page may read: the status and its details (trailers travel
/// in the body for gRPC-Web, but some answers carry them as headers).
const EXPOSED_HEADERS: [&str; 4] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-request-id",
];

/// The CORS layer for `settings`: no cross-origin caller unless named.
pub fn cors(settings: &GrpcWeb) -> CorsLayer {
    let origins = &settings.allowed_origins;
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
        .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(std::time::Duration::from_secs(600))
}
