//! Logs and traces: one subscriber with the level filter (`RUST_LOG`, default
//! `info`), human text or one JSON object per line (colour only on a
//! terminal), and optionally spans exported over OTLP/gRPC.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Keeps the log writer and the OTLP exporter alive;
/// [`Telemetry::shutdown`] flushes both.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    _log_writer: WorkerGuard,
}

impl Telemetry {
    /// Sends the spans still buffered; dropping the guard writes the log
    /// lines still queued.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("OTLP exporter shutdown: {err}");
        }
    }
}

/// Log lines queued for the writer thread before a logging call waits.
const LOG_QUEUE_LINES: usize = 64 * 1024;

/// Installs the global subscriber. With `otlp_endpoint`
/// (`http://HOST:4317`), spans are also exported there in batches (must be
/// called inside a tokio runtime then).
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    // Lines are written by a thread of their own, so a request never waits
    // on a write(2) of its access line; the queue is bounded and never
    // drops a line (a full queue makes the logging call wait instead).
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(false)
        .finish(std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        // One object per line, the event's fields at the top level and the
        // request's (its span's) fields beside them.
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let mut telemetry = Telemetry {
        provider: None,
        _log_writer: guard,
    };
    let otel = match otlp_endpoint {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    Resource::builder()
                        .with_service_name("credit-server")
                        .build(),
                )
                .build();
            let tracer = provider.tracer("credit-server");
            telemetry.provider = Some(provider);
            Some(tracing_opentelemetry::layer().with_tracer(tracer))
        }
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(telemetry)
}
