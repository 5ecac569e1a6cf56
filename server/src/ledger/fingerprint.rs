//! A write's fingerprint: a hash of everything that makes it what it is, so a
//! retry (same key, same fingerprint) can be told from a reuse of the key
//! for something else (same key, other fingerprint).

use serde_json::json;
use sha2::{Digest, Sha256};

use super::model::{Expiry, LotTerms, Operation, Usage, WriteRequest};

fn usage_parts(usage: &Usage) -> serde_json::Value {
    json!([
        usage.graph_exec_id,
        usage.graph_id,
        usage.node_id,
        usage.node_exec_id,
        usage.block_id,
        usage.reason,
    ])
}

/// Adds a lot's terms to a TopUp or Grant's form, only those given: a
/// request without any keeps the fingerprint it had before lots existed.
fn with_lot(mut op: serde_json::Value, lot: &LotTerms) -> serde_json::Value {
    if let Some(category) = lot.category {
        op["category"] = json!(category.as_str());
    }
    if let Some(priority) = lot.priority {
        op["priority"] = json!(priority);
    }
    if let Some(at) = lot.expire_time {
        op["expire_micros"] = json!(at.timestamp_micros());
    }
    op
}

/// SHA-256 (hex) of the request's canonical JSON form, without the user and
/// the key (they are the lookup, not the content).
pub fn fingerprint(req: &WriteRequest) -> String {
    let op = match &req.operation {
        Operation::TopUp { amount, lot } => {
            with_lot(json!({"op": "TOP_UP", "amount": amount}), lot)
        }
        Operation::Spend { amount, usage } => json!({
            "op": "USAGE",
            "amount": amount,
            "usage": [
                usage.graph_exec_id, usage.graph_id, usage.node_id,
                usage.node_exec_id, usage.block_id, usage.reason,
            ],
        }),
        Operation::Grant {
            amount,
            reason,
            lot,
        } => with_lot(
            json!({"op": "GRANT", "amount": amount, "reason": reason}),
            lot,
        ),
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
        Operation::Reserve {
            amount,
            expiry,
            usage,
        } => json!({
            "op": "RESERVE",
            "amount": amount,
            "expiry": match expiry {
                Expiry::Default => json!(null),
                Expiry::Ttl(ttl) => json!({"ttl_micros": ttl.num_microseconds()}),
                Expiry::At(at) => json!({"at_micros": at.timestamp_micros()}),
            },
            "usage": usage_parts(usage),
        }),
        Operation::Capture {
            hold_id,
            amount,
            usage,
        } => json!({
            "op": "CAPTURE",
            "hold": hold_id,
            "amount": amount,
            "usage": usage.as_ref().map(usage_parts),
        }),
        Operation::Release { hold_id, reason } => {
            json!({"op": "RELEASE", "hold": hold_id, "reason": reason})
        }
        Operation::Settle => json!({"op": "SETTLE"}),
    };
    // serde_json maps are ordered (sorted, or insertion order which is fixed
    // here and sorted for metadata built from a protobuf Struct), so equal
    // requests serialise equally.
    let canonical = json!({"v": 1, "operation": op, "metadata": req.metadata}).to_string();
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::model::{Actor, Usage};

    fn write(operation: Operation) -> WriteRequest {
        WriteRequest {
            user_id: "alice".into(),
            idempotency_key: Some("k".into()),
            operation,
            metadata: None,
            actor: Actor::default(),
        }
    }

    /// Stored fingerprints must never change meaning: a retry after an
    /// upgrade has to match the original. These are golden values.
    #[test]
    fn fingerprints_are_stable() {
        let spend = write(Operation::Spend {
            amount: 30,
            usage: Usage {
                graph_exec_id: Some("run-7".into()),
                ..Usage::default()
            },
        });
        assert_eq!(
            fingerprint(&spend),
            "74642c6bccd814ec086f2a799363723f8d2393ef03bb1c4d0f5d5918a52d8a0c",
        );
        let refund = write(Operation::Refund {
            transaction_id: "t".into(),
            amount: Some(5),
            reason: Some("r".into()),
            usage_only: true,
        });
        assert_eq!(
            fingerprint(&refund),
            "2bce5ce71cfdf1f477d5fc2a02e8d53b8537de10cea684c80c5e1f64e5504baf"
        );
    }

    #[test]
    fn what_is_not_the_request_is_not_in_the_fingerprint() {
        let a = write(Operation::TopUp {
            amount: 1,
            lot: LotTerms::default(),
        });
        let mut b = a.clone();
        b.user_id = "bob".into();
        b.idempotency_key = None;
        b.actor = Actor {
            name: "billing".into(),
            certificate_subject: Some("CN=x".into()),
        };
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let mut c = a.clone();
        c.operation = Operation::TopUp {
            amount: 2,
            lot: LotTerms::default(),
        };
        assert_ne!(fingerprint(&a), fingerprint(&c));
        let mut d = a.clone();
        d.metadata = Some(serde_json::Map::from_iter([("x".to_owned(), 1.into())]));
        assert_ne!(fingerprint(&a), fingerprint(&d));
    }
}
