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
    /// Earmark credits until captured, released or expired.
    Reserve {
        amount: i64,
        expiry: Expiry,
        usage: Usage,
    },
    /// Settle a hold with the real cost (0 releases it). `usage: None`
    /// takes the hold's.
    Capture {
        hold_id: String,
        amount: i64,
        usage: Option<Usage>,
    },
    /// Give a hold back.
    Release {
        hold_id: String,
        reason: Option<String>,
    },
}

/// When a hold asked to end, as the caller said it (resolved against the
/// ledger's clock when the hold is placed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The server's default TTL.
    Default,
    /// This long after it is placed.
    Ttl(chrono::TimeDelta),
    /// At this instant.
    At(DateTime<Utc>),
}

/// The state of a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldState {
    Active,
    Captured,
    Released,
    Expired,
}

impl HoldState {
    pub const ALL: [HoldState; 4] = [
        HoldState::Active,
        HoldState::Captured,
        HoldState::Released,
        HoldState::Expired,
    ];

    /// The stored name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldState::Active => "ACTIVE",
            HoldState::Captured => "CAPTURED",
            HoldState::Released => "RELEASED",
            HoldState::Expired => "EXPIRED",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Credits earmarked for one piece of work.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub id: String,
    pub user_id: String,
    pub amount: i64,
    pub captured_amount: i64,
    /// As of the answer: an ACTIVE hold past its expire_time is `Expired`.
    pub state: HoldState,
    pub usage: Usage,
    pub metadata: Option<Metadata>,
    pub created_at: DateTime<Utc>,
    pub expire_time: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub capture_transaction_id: Option<String>,
    pub idempotency_key: String,
    pub release_reason: Option<String>,
}

/// Which holds a page lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldQuery {
    pub user_id: String,
    /// Empty means every state.
    pub states: Vec<HoldState>,
    pub page_size: u64,
    pub page_token: Option<String>,
}

/// One page of holds.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldPage {
    pub holds: Vec<Hold>,
    pub next_page_token: Option<String>,
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
    /// For a capture's USAGE transaction, the hold it settled.
    pub hold_id: Option<String>,
}

/// The answer to a write: the transaction (none for a reserve, a release or
/// a capture of 0), the hold it concerned, and the balances right after.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    pub transaction: Option<Transaction>,
    pub hold: Option<Hold>,
    pub balance: i64,
    /// balance - held.
    pub available: i64,
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
    /// Credits of active holds that have not expired.
    pub held: i64,
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
