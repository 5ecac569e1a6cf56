//! The write entry point. Why a write is correct is argued in `batch.rs`;
//! how concurrent writes share a transaction is in `group_commit.rs`.

use uuid::Uuid;

use super::batch::Pending;
use super::error::LedgerError;
use super::fingerprint::fingerprint;
use super::handle::Ledger;
use super::lots;
use super::model::{Operation, TxKind, WriteOutcome, WriteRequest};
use crate::entity::{credit_allocation, credit_lot};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

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
        // The sweeper's settles are not callers' writes.
        let internal = matches!(pending.req.operation, Operation::Settle);
        let result = self.writer.submit(pending).await;
        if !internal {
            count(&result);
        }
        match result {
            Ok(outcome) if outcome.replayed => self.as_answered(outcome).await,
            result => result,
        }
    }

    /// A replay from the stored original: its transaction's allocations
    /// and, for a TopUp or Grant, its lot as the original answer showed it
    /// (what the lot got then, nothing earmarked). Lots and allocations are
    /// never changed but by writes that add to them, so this is exact.
    async fn as_answered(&self, mut outcome: WriteOutcome) -> Result<WriteOutcome, LedgerError> {
        let Some(transaction) = outcome.transaction.as_mut() else {
            return Ok(outcome);
        };
        if !transaction.allocations.is_empty() {
            return Ok(outcome);
        }
        let _turn = self.store.direct_read().await?;
        let rows = credit_allocation::Entity::find()
            .filter(credit_allocation::Column::TransactionId.eq(transaction.id.as_str()))
            .order_by_asc(credit_allocation::Column::Position)
            .all(self.db())
            .await
            .map_err(|e| self.store.explain(e.into()))?;
        transaction.allocations = lots::to_allocations(&rows);
        if matches!(transaction.kind, TxKind::TopUp | TxKind::Grant) && outcome.lot.is_none() {
            let lot = credit_lot::Entity::find()
                .filter(credit_lot::Column::SourceTransactionId.eq(transaction.id.as_str()))
                .one(self.db())
                .await
                .map_err(|e| self.store.explain(e.into()))?;
            if let Some(row) = lot {
                let mut lot = lots::to_lot(&row, row.created_at)?;
                lot.remaining = rows
                    .iter()
                    .filter(|a| a.lot_id.as_deref() == Some(row.id.as_str()))
                    .map(|a| a.amount)
                    .sum();
                lot.held = 0;
                outcome.lot = Some(lot);
            }
        }
        Ok(outcome)
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
