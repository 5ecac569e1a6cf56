//! The write entry point. Why a write is correct is argued in `batch.rs`;
//! how concurrent writes share a transaction is in `group_commit.rs`.

use uuid::Uuid;

use super::batch::Pending;
use super::error::LedgerError;
use super::fingerprint::fingerprint;
use super::handle::Ledger;
use super::model::{WriteOutcome, WriteRequest};

impl Ledger {
    /// Applies one write, or answers a retry of it from the stored original.
    /// Returns after the write's transaction committed.
    ///
    /// A write without a caller key gets its key here, once: every attempt
    /// the server makes carries the same key, so no attempt can apply it a
    /// second time.
    pub async fn write(&self, req: WriteRequest) -> Result<WriteOutcome, LedgerError> {
        let caller_key = req.idempotency_key.is_some();
        let key = req
            .idempotency_key
            .clone()
            .unwrap_or_else(|| format!("server-{}", Uuid::new_v4()));
        let pending = Pending {
            fingerprint: fingerprint(&req),
            key,
            caller_key,
            req,
            span: tracing::Span::current(),
        };
        let result = self.writer.submit(pending).await;
        count(&result);
        result
    }
}

/// Counts what a write did, for the metrics.
fn count(result: &Result<WriteOutcome, LedgerError>) {
    use crate::telemetry::metrics as m;
    match result {
        Ok(outcome) if outcome.replayed => metrics::counter!(m::REPLAYS).increment(1),
        Ok(outcome) => {
            let kind = match (&outcome.transaction, &outcome.hold) {
                (Some(t), _) => t.kind.as_str(),
                (None, Some(_)) => "HOLD",
                (None, None) => "NONE",
            };
            metrics::counter!(m::APPLIED, "type" => kind).increment(1);
        }
        Err(LedgerError::InsufficientBalance { .. }) => {
            metrics::counter!(m::INSUFFICIENT).increment(1);
        }
        Err(_) => {}
    }
}
