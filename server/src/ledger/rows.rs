//! Conversions between table rows and domain types.

use super::error::LedgerError;
use crate::entity::{credit_transaction, user};

use super::model::{Metadata, Transaction, TxKind, Usage, User};

impl From<user::Model> for User {
    fn from(row: user::Model) -> Self {
        Self {
            id: row.id,
            email: row.email,
            name: row.name,
            created_at: row.created_at,
        }
    }
}

impl TryFrom<credit_transaction::Model> for Transaction {
    type Error = LedgerError;

    fn try_from(row: credit_transaction::Model) -> Result<Self, LedgerError> {
        let kind = TxKind::parse(&row.r#type).ok_or_else(|| {
            LedgerError::Internal(format!(
                "transaction {} has unknown type {:?}",
                row.id, row.r#type
            ))
        })?;
        let metadata = row
            .metadata
            .as_deref()
            .map(serde_json::from_str::<Metadata>)
            .transpose()
            .map_err(|e| LedgerError::Internal(format!("transaction {} metadata: {e}", row.id)))?;
        let (usage, reason) = if kind == TxKind::Usage {
            let usage = Usage {
                graph_exec_id: row.graph_exec_id,
                graph_id: row.graph_id,
                node_id: row.node_id,
                node_exec_id: row.node_exec_id,
                block_id: row.block_id,
                reason: row.reason,
            };
            (Some(usage), None)
        } else {
            (None, row.reason)
        };
        Ok(Self {
            id: row.id,
            user_id: row.user_id,
            kind,
            amount: row.amount,
            running_balance: row.running_balance,
            sequence: row.sequence,
            idempotency_key: row.idempotency_key,
            usage,
            reason,
            metadata,
            refunded_transaction_id: row.refunded_transaction_id,
            refunded_amount: row.refunded_amount,
            created_at: row.created_at,
            created_by: row.created_by,
            created_by_subject: row.created_by_subject,
            hold_id: row.hold_id,
            allocations: Vec::new(),
        })
    }
}

/// The row that stores `tx` with its request fingerprint.
pub fn to_row(tx: &Transaction, fingerprint: String) -> credit_transaction::Model {
    let usage = tx.usage.clone().unwrap_or_default();
    let reason = if tx.kind == TxKind::Usage {
        usage.reason
    } else {
        tx.reason.clone()
    };
    credit_transaction::Model {
        id: tx.id.clone(),
        user_id: tx.user_id.clone(),
        sequence: tx.sequence,
        r#type: tx.kind.as_str().to_owned(),
        amount: tx.amount,
        running_balance: tx.running_balance,
        idempotency_key: tx.idempotency_key.clone(),
        fingerprint,
        refunded_transaction_id: tx.refunded_transaction_id.clone(),
        refunded_amount: tx.refunded_amount,
        graph_exec_id: usage.graph_exec_id,
        graph_id: usage.graph_id,
        node_id: usage.node_id,
        node_exec_id: usage.node_exec_id,
        block_id: usage.block_id,
        reason,
        metadata: tx
            .metadata
            .as_ref()
            .map(|m| serde_json::Value::Object(m.clone()).to_string()),
        created_at: tx.created_at,
        created_by: tx.created_by.clone(),
        created_by_subject: tx.created_by_subject.clone(),
        hold_id: tx.hold_id.clone(),
        feed_position: None,
    }
}
