//! Domain -> wire conversions, and the wire types (Struct, Timestamp) whose
//! reading needs care.

use chrono::{DateTime, Datelike, Utc};
use credit_proto::v1 as pb;
use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};

use crate::ledger::model::{
    Hold, HoldState, Lot, LotCategory, Metadata, Transaction, TxKind, Usage, User,
};

pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A valid wire timestamp as a `DateTime`, or why it is not one.
pub fn from_timestamp(t: &Timestamp) -> Result<DateTime<Utc>, &'static str> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err("nanos must be between 0 and 999,999,999");
    }
    // Years 1 to 9999: what every supported database stores and compares
    // correctly (SQLite compares times as text, four-digit years).
    DateTime::from_timestamp(t.seconds, t.nanos as u32)
        .filter(|t| (1..=9999).contains(&t.year()))
        .ok_or("must be between 0001-01-01 and 9999-12-31")
}

pub fn tx_kind(kind: TxKind) -> pb::TransactionType {
    match kind {
        TxKind::TopUp => pb::TransactionType::TopUp,
        TxKind::Usage => pb::TransactionType::Usage,
        TxKind::Grant => pb::TransactionType::Grant,
        TxKind::Refund => pb::TransactionType::Refund,
        TxKind::CardCheck => pb::TransactionType::CardCheck,
        TxKind::Expiration => pb::TransactionType::Expiration,
    }
}

/// The domain kind of a wire enum value; `None` for UNSPECIFIED or unknown.
pub fn from_tx_type(value: i32) -> Option<TxKind> {
    match pb::TransactionType::try_from(value).ok()? {
        pb::TransactionType::Unspecified => None,
        pb::TransactionType::TopUp => Some(TxKind::TopUp),
        pb::TransactionType::Usage => Some(TxKind::Usage),
        pb::TransactionType::Grant => Some(TxKind::Grant),
        pb::TransactionType::Refund => Some(TxKind::Refund),
        pb::TransactionType::CardCheck => Some(TxKind::CardCheck),
        pb::TransactionType::Expiration => Some(TxKind::Expiration),
    }
}

pub fn hold_state(state: HoldState) -> pb::HoldState {
    match state {
        HoldState::Active => pb::HoldState::Active,
        HoldState::Captured => pb::HoldState::Captured,
        HoldState::Released => pb::HoldState::Released,
        HoldState::Expired => pb::HoldState::Expired,
    }
}

/// The domain state of a wire enum value; `None` for UNSPECIFIED or unknown.
pub fn from_hold_state(value: i32) -> Option<HoldState> {
    match pb::HoldState::try_from(value).ok()? {
        pb::HoldState::Unspecified => None,
        pb::HoldState::Active => Some(HoldState::Active),
        pb::HoldState::Captured => Some(HoldState::Captured),
        pb::HoldState::Released => Some(HoldState::Released),
        pb::HoldState::Expired => Some(HoldState::Expired),
    }
}

impl From<Hold> for pb::Hold {
    fn from(h: Hold) -> Self {
        Self {
            hold_id: h.id,
            user_id: h.user_id,
            amount: h.amount,
            captured_amount: h.captured_amount,
            state: hold_state(h.state).into(),
            usage: Some(h.usage.into()),
            metadata: h.metadata.map(to_struct),
            created_at: Some(timestamp(h.created_at)),
            expire_time: Some(timestamp(h.expire_time)),
            closed_at: h.closed_at.map(timestamp),
            capture_transaction_id: h.capture_transaction_id.unwrap_or_default(),
            idempotency_key: h.idempotency_key,
            release_reason: h.release_reason.unwrap_or_default(),
        }
    }
}

impl From<User> for pb::User {
    fn from(u: User) -> Self {
        Self {
            user_id: u.id,
            email: u.email,
            name: u.name,
            created_at: Some(timestamp(u.created_at)),
        }
    }
}

impl From<Usage> for pb::UsageDetails {
    fn from(u: Usage) -> Self {
        Self {
            graph_exec_id: u.graph_exec_id.unwrap_or_default(),
            graph_id: u.graph_id.unwrap_or_default(),
            node_id: u.node_id.unwrap_or_default(),
            node_exec_id: u.node_exec_id.unwrap_or_default(),
            block_id: u.block_id.unwrap_or_default(),
            reason: u.reason.unwrap_or_default(),
        }
    }
}

impl From<Transaction> for pb::Transaction {
    fn from(t: Transaction) -> Self {
        Self {
            transaction_id: t.id,
            user_id: t.user_id,
            r#type: tx_kind(t.kind).into(),
            amount: t.amount,
            running_balance: t.running_balance,
            sequence: t.sequence,
            idempotency_key: t.idempotency_key,
            usage: t.usage.map(Into::into),
            metadata: t.metadata.map(to_struct),
            refunded_transaction_id: t.refunded_transaction_id.unwrap_or_default(),
            created_at: Some(timestamp(t.created_at)),
            reason: t.reason.unwrap_or_default(),
            refunded_amount: t.refunded_amount,
            created_by: t.created_by.unwrap_or_default(),
            created_by_certificate_subject: t.created_by_subject.unwrap_or_default(),
            hold_id: t.hold_id.unwrap_or_default(),
            allocations: t
                .allocations
                .into_iter()
                .map(|a| pb::Allocation {
                    lot_id: a.lot_id.unwrap_or_default(),
                    amount: a.amount,
                })
                .collect(),
        }
    }
}

impl From<Lot> for pb::Lot {
    fn from(l: Lot) -> Self {
        Self {
            lot_id: l.id,
            user_id: l.user_id,
            category: match l.category {
                LotCategory::Paid => pb::CreditCategory::Paid,
                LotCategory::Promotional => pb::CreditCategory::Promotional,
            }
            .into(),
            priority: l.priority,
            granted_amount: l.granted_amount,
            remaining: l.remaining,
            held: l.held,
            expire_time: l.expire_time.map(timestamp),
            source_transaction_id: l.source_transaction_id.unwrap_or_default(),
            created_at: Some(timestamp(l.created_at)),
        }
    }
}

/// A protobuf `Struct` as a JSON object, or the path of the first value JSON
/// cannot hold (a value without a kind, NaN or an infinity).
pub fn from_struct(s: Struct) -> Result<Metadata, String> {
    s.fields
        .into_iter()
        .map(|(k, v)| {
            let json = from_value(v).map_err(|path| join(&k, &path))?;
            Ok((k, json))
        })
        .collect()
}

fn from_value(v: Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v.kind.ok_or_else(String::new)? {
        Kind::NullValue(_) => J::Null,
        Kind::BoolValue(b) => J::Bool(b),
        Kind::StringValue(s) => J::String(s),
        Kind::NumberValue(n) => J::Number(serde_json::Number::from_f64(n).ok_or_else(String::new)?),
        Kind::StructValue(s) => J::Object(from_struct(s)?),
        Kind::ListValue(l) => J::Array(
            l.values
                .into_iter()
                .enumerate()
                .map(|(i, v)| from_value(v).map_err(|path| join(&format!("[{i}]"), &path)))
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn join(head: &str, rest: &str) -> String {
    match rest {
        "" => head.to_owned(),
        r if r.starts_with('[') => format!("{head}{r}"),
        r => format!("{head}.{r}"),
    }
}

pub fn to_struct(m: Metadata) -> Struct {
    Struct {
        fields: m.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(to_struct(o)),
    };
    Value { kind: Some(kind) }
}

impl From<crate::ledger::model::Balance> for pb::GetBalanceResponse {
    fn from(b: crate::ledger::model::Balance) -> Self {
        Self {
            available: b.balance.saturating_sub(b.held),
            user_id: b.user_id,
            balance: b.balance,
            updated_at: Some(timestamp(b.updated_at)),
            last_sequence: b.last_sequence,
            held: b.held,
            paid: b.paid,
            promotional: b.promotional,
            next_expire_time: b.next_expire_time.map(timestamp),
            next_expiring_amount: b.next_expiring_amount,
            alerts: b.alerts.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<crate::ledger::alerts::Alert> for pb::BalanceAlert {
    fn from(a: crate::ledger::alerts::Alert) -> Self {
        Self {
            alert_id: a.alert_id,
            user_id: a.user_id,
            threshold: a.threshold,
            armed: a.armed,
            created_at: Some(timestamp(a.created_at)),
            deleted_at: a.deleted_at.map(timestamp),
        }
    }
}

impl From<crate::ledger::alerts::AlertEvent> for pb::AlertEvent {
    fn from(e: crate::ledger::alerts::AlertEvent) -> Self {
        Self {
            event_id: e.event_id,
            alert_id: e.alert_id,
            user_id: e.user_id,
            threshold: e.threshold,
            balance_before: e.balance_before,
            balance_after: e.balance_after,
            transaction_id: e.transaction_id,
            sequence: e.sequence,
            created_at: Some(timestamp(e.created_at)),
        }
    }
}
