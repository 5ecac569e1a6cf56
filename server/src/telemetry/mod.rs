//! What an operator sees: Prometheus metrics (`metrics.rs`), logs and
//! traces (`logging.rs`: text or JSON lines, optional OTLP export).

pub mod logging;
pub mod metrics;
