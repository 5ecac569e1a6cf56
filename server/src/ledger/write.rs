//! The write entry point. Why a write is correct is argued in `batch.rs`;
//! how concurrent writes share a transaction is in `group_commit.rs`.

use super::Ledger;
use super::batch::Pending;
use super::fingerprint::fingerprint;
use super::model::{WriteOutcome, WriteRequest};
use crate::error::LedgerError;

impl Ledger {
    /// Applies one write, or answers a retry of it from the stored original.
    /// Returns after the write's transaction committed.
    pub async fn write(&self, req: WriteRequest) -> Result<WriteOutcome, LedgerError> {
        let pending = Pending {
            fingerprint: fingerprint(&req),
            req,
        };
        self.writer().submit(pending).await
    }
}
