//! The gRPC server: the credit service (behind the gate), health and
//! reflection on one port, with the limits and TLS of [`ServeOptions`].

use std::future::Future;
use std::time::Duration;

use credit_proto::v1::credit_service_server::CreditServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::KeyRing;
use crate::gate::{GateConfig, GateLayer};
use crate::ledger::Ledger;
use crate::service::CreditApi;

mod web;

/// Everything about serving that is not the ledger itself.
pub struct ServeOptions {
    /// `None`: no authentication (the binary allows that on loopback only).
    pub keys: Option<KeyRing>,
    pub tls: Option<ServerTlsConfig>,
    pub limits: Limits,
    /// How often to check the database for the health service.
    pub health_interval: Duration,
    /// `Some`: also speak gRPC-Web, for browsers.
    pub grpc_web: Option<GrpcWeb>,
    /// Log one line per finished call at `info`.
    pub access_log: bool,
    /// `Some`: write down due hold and lot expiries of users nobody writes
    /// to this often (`ledger/sweeper.rs`).
    pub sweep_interval: Option<Duration>,
}

/// gRPC-Web settings.
#[derive(Debug, Clone, Default)]
pub struct GrpcWeb {
    /// Origins whose pages may call across origins; `*` allows any.
    pub allowed_origins: Vec<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            keys: None,
            tls: None,
            limits: Limits::default(),
            health_interval: Duration::from_secs(2),
            grpc_web: None,
            access_log: true,
            sweep_interval: None,
        }
    }
}

/// Request limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request message.
    pub max_message_bytes: usize,
    /// Largest request metadata (HTTP/2 header list).
    pub max_header_bytes: u32,
    /// A call not finished by then is answered with an error (the client's
    /// own `grpc-timeout` applies when shorter).
    pub request_timeout: Duration,
    /// Calls in flight at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    pub streams: StreamLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            max_header_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(10),
            max_concurrent_requests: 1024,
            streams: StreamLimits::default(),
        }
    }
}

/// Limits of the Watch streams.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Open streams per server process.
    pub max_streams: usize,
    /// Open streams per API key.
    pub max_streams_per_key: usize,
    /// Longest quiet time between two messages of a transaction stream.
    pub heartbeat: Duration,
    /// How long a stream may stay unable to send before it is cut off.
    pub slow_consumer: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_streams: 1000,
            max_streams_per_key: 100,
            heartbeat: Duration::from_secs(3),
            slow_consumer: Duration::from_secs(10),
        }
    }
}

/// Serves on `listener` until `shutdown` resolves, then turns health to
/// NOT_SERVING, refuses new calls and lets in-flight calls finish.
///
/// The ledger's database must be reachable and migrated; afterwards health
/// follows the database (NOT_SERVING while it cannot be reached).
pub async fn serve(
    listener: TcpListener,
    ledger: Ledger,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = options.limits;
    let db = ledger.db().clone();
    let ledger_for_pool = ledger.clone();
    let feed = ledger.feed_signals().clone();
    let api = CreditServiceServer::new(CreditApi::new(ledger, limits.streams.clone()))
        .max_decoding_message_size(limits.max_message_bytes);

    let (mut health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::Serving).await;
    let watcher = tokio::spawn(watch_database(db, health.clone(), options.health_interval));
    let sweeper = options
        .sweep_interval
        .map(|every| tokio::spawn(crate::ledger::sweeper::run(ledger_for_pool.clone(), every)));
    let pool_gauges = tokio::spawn(report_pool(ledger_for_pool));

    // v1 and v1alpha: older grpcurl releases speak only v1alpha.
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let shutdown = async move {
        shutdown.await;
        tracing::info!(
            "shutting down: health NOT_SERVING, ending streams, finishing in-flight calls"
        );
        // Streams never end by themselves; they end with UNAVAILABLE so
        // their consumers resume elsewhere from their last cursor.
        feed.close();
        watcher.abort();
        pool_gauges.abort();
        if let Some(sweeper) = &sweeper {
            sweeper.abort();
        }
        end_health_watches(&mut health).await;
    };

    // The gate refuses metadata over the limit with a clear answer; HTTP/2
    // itself refuses only far larger header lists.
    let h2_header_limit = limits.max_header_bytes.saturating_mul(4).max(64 * 1024);
    let mut builder = Server::builder()
        .http2_max_header_list_size(h2_header_limit)
        // A client that abandons a burst of calls (deadlines, cancellations)
        // resets many streams at once; h2's default of 20 would then close
        // the whole connection. Still bounded against rapid-reset floods.
        .http2_max_pending_accept_reset_streams(Some(200));
    if let Some(tls) = options.tls {
        builder = builder.tls_config(tls)?;
    }
    let grpc_web = options.grpc_web.as_ref();
    // CORS outermost (it answers preflights), then gRPC-Web turns a web
    // call into a plain gRPC one, so the gate sees every call the same way.
    builder
        .accept_http1(grpc_web.is_some())
        .layer(tower::util::option_layer(grpc_web.map(web::cors)))
        .layer(tower::util::option_layer(
            grpc_web.map(|_| tonic_web::GrpcWebLayer::new()),
        ))
        .layer(GateLayer::new(GateConfig {
            keys: options.keys,
            max_concurrent: limits.max_concurrent_requests,
            request_timeout: limits.request_timeout,
            max_header_bytes: limits.max_header_bytes as usize,
            max_message_bytes: limits.max_message_bytes,
            access_log: options.access_log,
        }))
        .add_service(api)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await?;
    Ok(())
}

/// Accepted connections with Nagle's algorithm off: a unary answer goes out
/// as several small HTTP/2 frames, and waiting to coalesce them stalls every
/// call by a delayed-ACK round (about 40 ms). tonic sets this only on
/// listeners it binds itself.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health
        .set_service_status("credit.v1.CreditService", status)
        .await;
    health.set_service_status("", status).await;
}

/// Turns health NOT_SERVING and ends open `Health/Watch` streams once they
/// have sent it: a watch never ends by itself, and the server's graceful
/// shutdown would otherwise wait out the whole grace period for it. Its
/// watchers see NOT_SERVING, then the stream's end, and reconnect
/// elsewhere; `Check` keeps answering NOT_SERVING.
async fn end_health_watches(health: &mut HealthReporter) {
    set_health(health, ServingStatus::NotServing).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for service in ["credit.v1.CreditService", ""] {
        // Dropping a service's status channel ends the streams that watch it.
        health.clear_service_status(service).await;
    }
    set_health(health, ServingStatus::NotServing).await;
}

/// Publishes the connection pool's state every second.
async fn report_pool(ledger: Ledger) {
    use crate::telemetry::metrics as m;
    loop {
        let pool = ledger.pool_state();
        ::metrics::gauge!(m::POOL_CONNECTIONS, "state" => "idle").set(f64::from(pool.idle));
        ::metrics::gauge!(m::POOL_CONNECTIONS, "state" => "in_use")
            .set(f64::from(pool.size.saturating_sub(pool.idle)));
        ::metrics::gauge!(m::POOL_MAX).set(f64::from(pool.max));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Keeps health in step with the database: NOT_SERVING while a ping fails,
/// SERVING again once it answers.
async fn watch_database(
    db: sea_orm::DatabaseConnection,
    health: HealthReporter,
    interval: Duration,
) {
    let mut serving = true;
    loop {
        tokio::time::sleep(interval).await;
        let up = tokio::time::timeout(interval, db.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        if up != serving {
            serving = up;
            if up {
                tracing::info!("database reachable again: SERVING");
                set_health(&health, ServingStatus::Serving).await;
            } else {
                tracing::warn!("database unreachable: NOT_SERVING");
                set_health(&health, ServingStatus::NotServing).await;
            }
        }
    }
}

/// Reflection over our API, the google.rpc error details (so clients can
/// decode them) and the health service.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(credit_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(credit_proto::GOOGLE_RPC_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
