//! The values the client hands back: plain Rust types read from the wire
//! messages, with timestamps as `chrono` times and metadata as JSON.
//!
//! Every type is `Serialize` in the proto3 JSON mapping of the message it
//! was read from, as grpcurl prints it with `-emit-defaults`: lowerCamelCase
//! field names, `int64` as strings, enum values by name
//! (`TRANSACTION_TYPE_USAGE`), timestamps in RFC 3339 (UTC, `Z`), every
//! scalar field present (empty strings and `"0"` included), message fields
//! (`usage`, `metadata`) only when set. It is what the CLI's `--json`
//! prints.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use credit_proto::v1 as pb;
use serde::{Serialize, Serializer};

use crate::metadata::{Metadata, from_struct};
use crate::{Error, Lot};

/// A holder of a credit balance.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// The caller-chosen identifier.
    pub user_id: String,
    /// The email address (the server stores it in lower case).
    pub email: String,
    /// The display name; may be empty.
    pub name: String,
    /// When the user was created.
    #[serde(serialize_with = "proto_json::timestamp")]
    pub created_at: DateTime<Utc>,
}

/// A user's balance at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Balance {
    /// The user the balance belongs to.
    pub user_id: String,
    /// The balance in credits.
    #[serde(serialize_with = "proto_json::int64")]
    pub balance: i64,
    /// When the balance last changed (the user's creation time if never).
    #[serde(serialize_with = "proto_json::timestamp")]
    pub updated_at: DateTime<Utc>,
    /// The sequence number of the user's latest transaction (0 if none).
    #[serde(serialize_with = "proto_json::int64")]
    pub last_sequence: i64,
    /// Credits earmarked by active holds that have not expired.
    #[serde(serialize_with = "proto_json::int64")]
    pub held: i64,
    /// What spends and reserves may use: `balance - held`.
    #[serde(serialize_with = "proto_json::int64")]
    pub available: i64,
    /// The part of the balance in paid lots (a deficit a top-up refund left
    /// counts here, so `paid + promotional == balance`).
    #[serde(serialize_with = "proto_json::int64")]
    pub paid: i64,
    /// The part of the balance in promotional lots.
    #[serde(serialize_with = "proto_json::int64")]
    pub promotional: i64,
    /// The next time credits not earmarked by a hold expire; `None` when
    /// none will.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(serialize_with = "proto_json::optional_timestamp")]
    pub next_expire_time: Option<DateTime<Utc>>,
    /// How many credits expire at `next_expire_time` (0 when none will).
    #[serde(serialize_with = "proto_json::int64")]
    pub next_expiring_amount: i64,
    /// The user's low-balance alerts in force, lowest threshold first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<crate::BalanceAlert>,
}

/// The kind of a balance change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionType {
    /// Purchased credits were added.
    TopUp,
    /// Credits were spent on metered usage.
    Usage,
    /// Credits were given without payment.
    Grant,
    /// An earlier transaction was reversed, in whole or in part.
    Refund,
    /// A payment-card check.
    CardCheck,
    /// The unspent remainder of a lot, gone at its expire_time.
    Expiration,
    /// A type this client does not know yet (a newer server); the wire value.
    Unknown(i32),
}

impl TransactionType {
    /// The name used by the CLI and in JSON output: `top-up`, `usage`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TopUp => "top-up",
            Self::Usage => "usage",
            Self::Grant => "grant",
            Self::Refund => "refund",
            Self::CardCheck => "card-check",
            Self::Expiration => "expiration",
            Self::Unknown(_) => "unknown",
        }
    }

    /// The wire enum value.
    pub fn to_proto(self) -> i32 {
        let known = match self {
            Self::TopUp => pb::TransactionType::TopUp,
            Self::Usage => pb::TransactionType::Usage,
            Self::Grant => pb::TransactionType::Grant,
            Self::Refund => pb::TransactionType::Refund,
            Self::CardCheck => pb::TransactionType::CardCheck,
            Self::Expiration => pb::TransactionType::Expiration,
            Self::Unknown(value) => return value,
        };
        known.into()
    }

    /// Reads a wire enum value; unrecognised values are kept as `Unknown`.
    pub fn from_proto(value: i32) -> Self {
        match pb::TransactionType::try_from(value) {
            Ok(pb::TransactionType::TopUp) => Self::TopUp,
            Ok(pb::TransactionType::Usage) => Self::Usage,
            Ok(pb::TransactionType::Grant) => Self::Grant,
            Ok(pb::TransactionType::Refund) => Self::Refund,
            Ok(pb::TransactionType::CardCheck) => Self::CardCheck,
            Ok(pb::TransactionType::Expiration) => Self::Expiration,
            Ok(pb::TransactionType::Unspecified) | Err(_) => Self::Unknown(value),
        }
    }
}

impl fmt::Display for TransactionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(value) => write!(f, "unknown({value})"),
            known => f.write_str(known.as_str()),
        }
    }
}

impl Serialize for TransactionType {
    /// The proto enum name (`TRANSACTION_TYPE_TOP_UP`), or the number for a
    /// value this client does not know, as the proto3 JSON mapping has it.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match pb::TransactionType::try_from(self.to_proto()) {
            Ok(known) if !matches!(self, Self::Unknown(_)) => {
                serializer.serialize_str(known.as_str_name())
            }
            _ => serializer.serialize_i32(self.to_proto()),
        }
    }
}

impl FromStr for TransactionType {
    type Err = Error;

    /// Accepts `top-up`, `top_up`, `TOP_UP` and `TRANSACTION_TYPE_TOP_UP`
    /// alike, so people and scripts can use whichever spelling they know.
    fn from_str(s: &str) -> Result<Self, Error> {
        let normal = s.trim().to_ascii_lowercase().replace('_', "-");
        let normal = normal.strip_prefix("transaction-type-").unwrap_or(&normal);
        match normal {
            "top-up" | "topup" => Ok(Self::TopUp),
            "usage" | "spend" => Ok(Self::Usage),
            "grant" => Ok(Self::Grant),
            "refund" => Ok(Self::Refund),
            "card-check" => Ok(Self::CardCheck),
            "expiration" => Ok(Self::Expiration),
            _ => Err(Error::InvalidInput(format!(
                "unknown transaction type {s:?} (expected top-up, usage, grant, refund, card-check or expiration)"
            ))),
        }
    }
}

/// What a spend paid for. Every field is optional free text (at most 256
/// characters).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// The graph execution the usage belongs to.
    #[serde(serialize_with = "proto_json::string")]
    pub graph_exec_id: Option<String>,
    /// The graph that ran.
    #[serde(serialize_with = "proto_json::string")]
    pub graph_id: Option<String>,
    /// The node that ran.
    #[serde(serialize_with = "proto_json::string")]
    pub node_id: Option<String>,
    /// The node execution that was charged.
    #[serde(serialize_with = "proto_json::string")]
    pub node_exec_id: Option<String>,
    /// The block that ran.
    #[serde(serialize_with = "proto_json::string")]
    pub block_id: Option<String>,
    /// A human-readable reason for the charge.
    #[serde(serialize_with = "proto_json::string")]
    pub reason: Option<String>,
}

impl Usage {
    /// Usage with no details; add them with the setters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the graph execution id.
    pub fn graph_exec_id(mut self, value: impl Into<String>) -> Self {
        self.graph_exec_id = Some(value.into());
        self
    }

    /// Sets the graph id.
    pub fn graph_id(mut self, value: impl Into<String>) -> Self {
        self.graph_id = Some(value.into());
        self
    }

    /// Sets the node id.
    pub fn node_id(mut self, value: impl Into<String>) -> Self {
        self.node_id = Some(value.into());
        self
    }

    /// Sets the node execution id.
    pub fn node_exec_id(mut self, value: impl Into<String>) -> Self {
        self.node_exec_id = Some(value.into());
        self
    }

    /// Sets the block id.
    pub fn block_id(mut self, value: impl Into<String>) -> Self {
        self.block_id = Some(value.into());
        self
    }

    /// Sets the human-readable reason.
    pub fn reason(mut self, value: impl Into<String>) -> Self {
        self.reason = Some(value.into());
        self
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

impl From<pb::UsageDetails> for Usage {
    fn from(u: pb::UsageDetails) -> Self {
        Self {
            graph_exec_id: non_empty(u.graph_exec_id),
            graph_id: non_empty(u.graph_id),
            node_id: non_empty(u.node_id),
            node_exec_id: non_empty(u.node_exec_id),
            block_id: non_empty(u.block_id),
            reason: non_empty(u.reason),
        }
    }
}

/// One applied change to a user's balance.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Transaction {
    /// The server-assigned identifier.
    pub transaction_id: String,
    /// The user whose balance changed.
    pub user_id: String,
    /// The kind of change.
    #[serde(rename = "type")]
    pub kind: TransactionType,
    /// The signed change in credits: positive adds, negative takes away.
    #[serde(serialize_with = "proto_json::int64")]
    pub amount: i64,
    /// The balance right after this transaction.
    #[serde(serialize_with = "proto_json::int64")]
    pub running_balance: i64,
    /// The position in the user's history: 1, 2, 3, ...
    #[serde(serialize_with = "proto_json::int64")]
    pub sequence: i64,
    /// The idempotency key the transaction was written with.
    pub idempotency_key: String,
    /// What a usage transaction paid for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Caller metadata, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// For a refund, the transaction it reverses.
    #[serde(serialize_with = "proto_json::string")]
    pub refunded_transaction_id: Option<String>,
    /// When the transaction was applied.
    #[serde(serialize_with = "proto_json::timestamp")]
    pub created_at: DateTime<Utc>,
    /// The reason given for a grant or refund.
    #[serde(serialize_with = "proto_json::string")]
    pub reason: Option<String>,
    /// How many credits of this transaction have been refunded so far.
    #[serde(serialize_with = "proto_json::int64")]
    pub refunded_amount: i64,
    /// Who made the write: the API key's name (`anonymous` on a server
    /// without keys); `None` for writes from before the server recorded it.
    #[serde(serialize_with = "proto_json::string")]
    pub created_by: Option<String>,
    /// The writer's TLS client-certificate subject, if it presented one.
    #[serde(serialize_with = "proto_json::string")]
    pub created_by_certificate_subject: Option<String>,
    /// For the usage transaction of a capture, the hold it settled.
    #[serde(serialize_with = "proto_json::string")]
    pub hold_id: Option<String>,
    /// The lots this transaction drew from or added to, in draw order; they
    /// add up to `amount`. Filled by [`CreditClient::get_transaction`] and
    /// in write answers; empty in history pages and for transactions from
    /// before lots existed.
    ///
    /// [`CreditClient::get_transaction`]: crate::CreditClient::get_transaction
    pub allocations: Vec<Allocation>,
}

/// How much one transaction changed one lot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// The lot; `None` for the user's deficit (credits a top-up refund took
    /// beyond what the lots held).
    #[serde(serialize_with = "proto_json::string")]
    pub lot_id: Option<String>,
    /// The signed change to the lot's remaining credits.
    #[serde(serialize_with = "proto_json::int64")]
    pub amount: i64,
}

impl From<pb::Allocation> for Allocation {
    fn from(a: pb::Allocation) -> Self {
        Self {
            lot_id: non_empty(a.lot_id),
            amount: a.amount,
        }
    }
}

/// The answer to every write: the applied transaction and the balance right
/// after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    /// The applied transaction (the original one when a retry or a repeated
    /// idempotency key was answered from the server's record).
    pub transaction: Transaction,
    /// The user's balance right after the transaction.
    #[serde(serialize_with = "proto_json::int64")]
    pub balance: i64,
    /// For a top-up or grant, the lot the credits went to, as this write
    /// left it (a retry is answered with the lot as the original write
    /// left it; [`CreditClient::list_lots`] has what is left of it now).
    /// `None` for spends and refunds.
    ///
    /// [`CreditClient::list_lots`]: crate::CreditClient::list_lots
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lot: Option<Lot>,
}

impl TryFrom<pb::User> for User {
    type Error = Error;

    fn try_from(u: pb::User) -> Result<Self, Error> {
        Ok(Self {
            created_at: time(u.created_at, "user.created_at")?,
            user_id: u.user_id,
            email: u.email,
            name: u.name,
        })
    }
}

impl TryFrom<pb::GetBalanceResponse> for Balance {
    type Error = Error;

    fn try_from(b: pb::GetBalanceResponse) -> Result<Self, Error> {
        Ok(Self {
            updated_at: time(b.updated_at, "updated_at")?,
            user_id: b.user_id,
            balance: b.balance,
            last_sequence: b.last_sequence,
            held: b.held,
            available: b.available,
            paid: b.paid,
            promotional: b.promotional,
            next_expire_time: b
                .next_expire_time
                .map(|t| time(Some(t), "next_expire_time"))
                .transpose()?,
            next_expiring_amount: b.next_expiring_amount,
            alerts: b
                .alerts
                .into_iter()
                .map(crate::BalanceAlert::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl TryFrom<pb::Transaction> for Transaction {
    type Error = Error;

    fn try_from(t: pb::Transaction) -> Result<Self, Error> {
        Ok(Self {
            created_at: time(t.created_at, "transaction.created_at")?,
            kind: TransactionType::from_proto(t.r#type),
            transaction_id: t.transaction_id,
            user_id: t.user_id,
            amount: t.amount,
            running_balance: t.running_balance,
            sequence: t.sequence,
            idempotency_key: t.idempotency_key,
            usage: t.usage.map(Usage::from),
            metadata: t.metadata.map(from_struct),
            refunded_transaction_id: non_empty(t.refunded_transaction_id),
            reason: non_empty(t.reason),
            refunded_amount: t.refunded_amount,
            created_by: non_empty(t.created_by),
            created_by_certificate_subject: non_empty(t.created_by_certificate_subject),
            hold_id: non_empty(t.hold_id),
            allocations: t.allocations.into_iter().map(Allocation::from).collect(),
        })
    }
}

/// Serializers for the proto3 JSON mapping (see the module docs).
pub(crate) mod proto_json {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::Serializer;

    /// `int64` as a string, so JavaScript's doubles do not round it.
    pub fn int64<S: Serializer>(value: &i64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    /// An `int64` the client reads as `None` when it is 0 on the wire.
    pub fn optional_int64<S: Serializer>(
        value: &Option<i64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        int64(&value.unwrap_or(0), serializer)
    }

    /// A string the client reads as `None` when it is empty on the wire.
    pub fn string<S: Serializer>(value: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(value.as_deref().unwrap_or_default())
    }

    /// A timestamp message field: RFC 3339 when set (use with
    /// `skip_serializing_if = "Option::is_none"`, as unset messages are
    /// left out).
    pub fn optional_timestamp<S: Serializer>(
        value: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(t) => timestamp(t, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// RFC 3339 in UTC with `Z`, with 0, 3, 6 or 9 fractional digits.
    pub fn timestamp<S: Serializer>(
        value: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
}

/// A message field the API always sets, or `InvalidResponse` naming it.
pub(crate) fn required<T>(value: Option<T>, field: &str) -> Result<T, Error> {
    value.ok_or_else(|| Error::InvalidResponse(format!("the server's answer has no {field}")))
}

/// A wire timestamp as a `chrono` time.
pub(crate) fn time(t: Option<prost_types::Timestamp>, field: &str) -> Result<DateTime<Utc>, Error> {
    let t = required(t, field)?;
    u32::try_from(t.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
        .ok_or_else(|| Error::InvalidResponse(format!("{field} is not a valid time")))
}

/// A chrono time as a wire timestamp.
pub(crate) fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        // Below 1e9, so it always fits.
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub(crate) fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_types_parse_in_every_spelling() -> Result<(), Error> {
        for s in ["top-up", "top_up", "TOP_UP", "TRANSACTION_TYPE_TOP_UP"] {
            assert_eq!(s.parse::<TransactionType>()?, TransactionType::TopUp);
        }
        assert!("bogus".parse::<TransactionType>().is_err());
        Ok(())
    }

    #[test]
    fn unknown_wire_types_are_kept() {
        let kind = TransactionType::from_proto(42);
        assert_eq!(kind, TransactionType::Unknown(42));
        assert_eq!(kind.to_proto(), 42);
        assert_eq!(kind.to_string(), "unknown(42)");
    }
}
