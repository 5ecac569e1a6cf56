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
    /// The unspent remainder of a lot, gone at its expire_time.
    Expiration,
}

impl TxKind {
    pub const ALL: [TxKind; 6] = [
        TxKind::TopUp,
        TxKind::Usage,
        TxKind::Grant,
        TxKind::Refund,
        TxKind::CardCheck,
        TxKind::Expiration,
    ];

    /// The stored name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            TxKind::TopUp => "TOP_UP",
            TxKind::Usage => "USAGE",
            TxKind::Grant => "GRANT",
            TxKind::Refund => "REFUND",
            TxKind::CardCheck => "CARD_CHECK",
            TxKind::Expiration => "EXPIRATION",
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

/// Which kind of credit a lot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LotCategory {
    /// Credits someone paid for (top-ups; grants may say so).
    Paid,
    /// Credits given away (grants by default).
    Promotional,
}

impl LotCategory {
    pub const ALL: [LotCategory; 2] = [LotCategory::Paid, LotCategory::Promotional];

    /// The stored name of the category.
    pub fn as_str(self) -> &'static str {
        match self {
            LotCategory::Paid => "PAID",
            LotCategory::Promotional => "PROMOTIONAL",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What a TopUp or Grant says about the lot it makes; `None` takes the
/// operation's default (top-ups: PAID, priority 100; grants: PROMOTIONAL,
/// priority 50; neither expires).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LotTerms {
    pub category: Option<LotCategory>,
    /// 0-100, lower is drawn first.
    pub priority: Option<i32>,
    pub expire_time: Option<DateTime<Utc>>,
}

/// Credits that came in together: what is left of them, when they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lot {
    pub id: String,
    pub user_id: String,
    pub category: LotCategory,
    pub priority: i32,
    pub granted_amount: i64,
    /// Spendable or earmarked credits left, as of the answer (0 once
    /// expired, but for what active holds earmarked).
    pub remaining: i64,
    /// The part of `remaining` earmarked by active holds.
    pub held: i64,
    pub expire_time: Option<DateTime<Utc>>,
    pub source_transaction_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// How much a transaction changed one lot (`lot_id: None`: the deficit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub lot_id: Option<String>,
    pub amount: i64,
}

/// The balance change a write asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    TopUp {
        amount: i64,
        lot: LotTerms,
    },
    Spend {
        amount: i64,
        usage: Usage,
    },
    Grant {
        amount: i64,
        reason: Option<String>,
        lot: LotTerms,
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
    /// Write down what time did to the user's holds and lots (their expiry,
    /// which every batch does first for its users) and nothing else: the
    /// sweeper's write for users nobody writes to. Never sent by callers.
    Settle,
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

/// Which lots a page lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotQuery {
    pub user_id: String,
    /// Also lots with nothing left as of now.
    pub include_empty: bool,
    pub page_size: u64,
    pub page_token: Option<String>,
}

/// One page of lots, in draw order.
#[derive(Debug, Clone, PartialEq)]
pub struct LotPage {
    pub lots: Vec<Lot>,
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
    /// The lots it drew from or added to, in order (empty for transactions
    /// from before lots, and where not read).
    pub allocations: Vec<Allocation>,
}

/// The answer to a write: the transaction (none for a reserve, a release or
/// a capture of 0), the hold it concerned, and the balances right after.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    pub transaction: Option<Transaction>,
    pub hold: Option<Hold>,
    /// The lot a TopUp or Grant made.
    pub lot: Option<Lot>,
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
    /// The part of `balance` in PAID and PROMOTIONAL lots (a deficit left
    /// by a TOP_UP refund counts against paid).
    pub paid: i64,
    pub promotional: i64,
    /// The next instant unearmarked credits expire, and how many.
    pub next_expire_time: Option<DateTime<Utc>>,
    pub next_expiring_amount: i64,
    pub last_sequence: i64,
    pub updated_at: DateTime<Utc>,
    /// The alerts in force, lowest threshold first.
    pub alerts: Vec<super::alerts::Alert>,
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
