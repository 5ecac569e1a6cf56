//! A write's fingerprint: a hash of everything that makes it what it is, so a
//! retry (same key, same fingerprint) can be told from a reuse of the key
//! for something else (same key, other fingerprint).

use serde_json::json;
use sha2::{Digest, Sha256};

use super::model::{Operation, WriteRequest};

/// SHA-256 (hex) of the request's canonical JSON form, without the user and
/// the key (they are the lookup, not the content).
pub fn fingerprint(req: &WriteRequest) -> String {
    let op = match &req.operation {
        Operation::TopUp { amount } => json!({"op": "TOP_UP", "amount": amount}),
        Operation::Spend { amount, usage } => json!({
            "op": "USAGE",
            "amount": amount,
            "usage": [
                usage.graph_exec_id, usage.graph_id, usage.node_id,
                usage.node_exec_id, usage.block_id, usage.reason,
            ],
        }),
        Operation::Grant { amount, reason } => {
            json!({"op": "GRANT", "amount": amount, "reason": reason})
        }
        Operation::Refund {
            transaction_id,
            amount,
            reason,
            // Who may refund is not part of what the request is.
            usage_only: _,
        } => json!({
            "op": "REFUND",
            "target": transaction_id,
            "amount": amount,
            "reason": reason,
        }),
    };
    // serde_json maps are ordered (sorted, or insertion order which is fixed
    // here and sorted for metadata built from a protobuf Struct), so equal
    // requests serialise equally.
    let canonical = json!({"v": 1, "operation": op, "metadata": req.metadata}).to_string();
    hex::encode(Sha256::digest(canonical.as_bytes()))
}
