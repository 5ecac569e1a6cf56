//! The ledger's domain types: what callers ask for and what they get back.
//! No wire (protobuf) and no database types here.

use chrono::{DateTime, Utc};

/// Caller metadata: a JSON object, stored and returned verbatim.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// The kind of a balance change, as stored in `credit_transaction.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxKind {
    TopUp,
    Usage,
    Grant,
    Refund,
    CardCheck,
}

impl TxKind {
    pub const ALL: [TxKind; 5] = [
        TxKind::TopUp,
        TxKind::Usage,
        TxKind::Grant,
        TxKind::Refund,
        TxKind::CardCheck,
    ];

    /// The stored name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            TxKind::TopUp => "TOP_UP",
            TxKind::Usage => "USAGE",
            TxKind::Grant => "GRANT",
            TxKind::Refund => "REFUND",
            TxKind::CardCheck => "CARD_CHECK",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What a spend paid for; every part optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub graph_exec_id: Option<String>,
    pub graph_id: Option<String>,
    pub node_id: Option<String>,
    pub node_exec_id: Option<String>,
    pub block_id: Option<String>,
    pub reason: Option<String>,
}

/// The balance change a write asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    TopUp {
        amount: i64,
    },
    Spend {
        amount: i64,
        usage: Usage,
    },
    Grant {
        amount: i64,
        reason: Option<String>,
    },
    /// `amount: None` refunds everything not yet refunded.
    Refund {
        transaction_id: String,
        amount: Option<i64>,
        reason: Option<String>,
        /// Set for callers that may refund only USAGE (the service role).
        usage_only: bool,
    },
}

/// One write: an operation on one user's balance.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteRequest {
    pub user_id: String,
    /// `None` when the caller gave none; the ledger then makes one.
    pub idempotency_key: Option<String>,
    pub operation: Operation,
    pub metadata: Option<Metadata>,
    /// Who asks (recorded on the transaction; not part of the fingerprint:
    /// a retry is the same write whoever sends it).
    pub actor: Actor,
}

/// Who made a write, for the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// The API key's name, or `anonymous` when the server runs without keys.
    pub name: String,
    /// The subject of the caller's TLS client certificate, if it sent one.
    pub certificate_subject: Option<String>,
}

/// An applied balance change.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub id: String,
    pub user_id: String,
    pub kind: TxKind,
    /// Signed: positive adds credits, negative takes them away.
    pub amount: i64,
    pub running_balance: i64,
    pub sequence: i64,
    pub idempotency_key: String,
    pub usage: Option<Usage>,
    /// The reason of a GRANT or REFUND.
    pub reason: Option<String>,
    pub metadata: Option<Metadata>,
    pub refunded_transaction_id: Option<String>,
    pub refunded_amount: i64,
    pub created_at: DateTime<Utc>,
    /// Who wrote it; `None` for rows written before this was recorded.
    pub created_by: Option<String>,
    pub created_by_subject: Option<String>,
}

/// The answer to a write: the transaction and the balance right after it.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    pub transaction: Transaction,
    pub balance: i64,
    /// True when this was a retry answered from the stored original.
    pub replayed: bool,
}

/// A holder of a balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// A user to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub id: String,
    /// Already normalised (trimmed, lower-case) by validation.
    pub email: String,
    pub name: String,
}

/// A user's current balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub user_id: String,
    pub balance: i64,
    pub last_sequence: i64,
    pub updated_at: DateTime<Utc>,
}

/// Which transactions a history page shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// Empty means every kind.
    pub kinds: Vec<TxKind>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub graph_exec_id: Option<String>,
    /// Only transactions written with this API key name.
    pub created_by: Option<String>,
}

/// A request for one page of a user's history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub user_id: String,
    pub page_size: u64,
    pub page_token: Option<String>,
    pub filter: HistoryFilter,
}

/// One page of history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    pub transactions: Vec<Transaction>,
    /// `None` on the last page.
    pub next_page_token: Option<String>,
}
