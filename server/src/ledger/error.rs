//! The ledger's one error type: why a request was refused or failed, in the
//! ledger's own terms. No transport here: `service/status.rs` maps each
//! variant to a gRPC code and `google.rpc` details, in one place.
//!
//! A failed request changes nothing. Infrastructure failures keep their
//! cause (`source`) for logs; it is never sent to callers.

use std::fmt;
use std::sync::Arc;

/// One invalid request field: its path (e.g. `usage.node_id`) and what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// What ran out when the server sheds a request (retryable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// Every database connection stayed busy for the whole acquire timeout.
    DatabaseConnections,
    /// The write queue is full (`--max-queued-writes`).
    WriteQueue { limit: usize },
    /// The connections set aside for history and single-transaction reads
    /// stayed busy for the whole acquire timeout.
    DirectReads,
}

impl fmt::Display for Overload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DatabaseConnections => f.write_str("every database connection is busy"),
            Self::WriteQueue { limit } => write!(f, "{limit} writes are already queued"),
            Self::DirectReads => f.write_str("every connection for history reads is busy"),
        }
    }
}

/// The cause of an infrastructure failure, kept for logs (cheap to clone:
/// a batch's failure is every one of its writes' failure).
#[derive(Debug, Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    pub fn new(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(err))
    }

    /// A cause that is only a description.
    pub fn msg(text: impl Into<String>) -> Self {
        #[derive(Debug)]
        struct Text(String);
        impl fmt::Display for Text {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::error::Error for Text {}
        Self::new(Text(text.into()))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Everything that can make a request fail.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("user {0:?} not found")]
    UserNotFound(String),
    #[error("transaction {transaction_id:?} not found for user {user_id:?}")]
    TransactionNotFound {
        user_id: String,
        transaction_id: String,
    },
    #[error("user {0:?} already exists with a different email")]
    UserAlreadyExists(String),
    #[error("email {0:?} is already used by another user")]
    EmailAlreadyExists(String),
    #[error("insufficient balance: {available} available, {requested} requested")]
    InsufficientBalance { available: i64, requested: i64 },
    #[error("idempotency key {0:?} was already used with different parameters")]
    IdempotencyKeyReused(String),
    #[error("the balance {balance} cannot change by {delta}: the result would overflow int64")]
    BalanceOverflow { balance: i64, delta: i64 },
    #[error("transaction {transaction_id} is a {kind} transaction and cannot be refunded")]
    NotRefundable {
        transaction_id: String,
        kind: &'static str,
    },
    #[error("{}", refund_refusal(transaction_id, *remaining, *requested))]
    RefundExceedsOriginal {
        transaction_id: String,
        remaining: i64,
        requested: i64,
    },
    #[error("hold {hold_id:?} not found for user {user_id:?}")]
    HoldNotFound { user_id: String, hold_id: String },
    #[error("hold {hold_id} is already {state}: a hold is captured or released once")]
    HoldNotActive {
        hold_id: String,
        state: &'static str,
    },
    #[error("hold {hold_id} expired at {expire_time}; its credits are available again")]
    HoldExpired {
        hold_id: String,
        expire_time: chrono::DateTime<chrono::Utc>,
    },
    #[error("alert {alert_id:?} not found for user {user_id:?}")]
    AlertNotFound { user_id: String, alert_id: String },
    #[error("the user already has {limit} balance alerts; remove one before setting another")]
    TooManyAlerts { limit: usize },
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A concurrent write got in the way (deadlock, serialization failure,
    /// an account locked elsewhere for too long); retrying is safe.
    #[error("a concurrent write conflicted with this one: {0}")]
    Conflict(#[source] Cause),
    /// The database cannot be reached; nothing was written.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// The connection failed while the write was committing: it may or may
    /// not have been applied. Never retried inside the server.
    #[error("the database failed while committing; the write may or may not be applied: {0}")]
    OutcomeUnknown(#[source] Cause),
    /// The server sheds load instead of queueing without bound.
    #[error("overloaded: {0}")]
    Overloaded(Overload),
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

fn refund_refusal(transaction_id: &str, remaining: i64, requested: i64) -> String {
    if remaining <= 0 {
        format!("transaction {transaction_id} is already fully refunded: nothing is left to refund")
    } else {
        format!(
            "refund of {requested} exceeds the {remaining} credits of transaction {transaction_id} not yet refunded"
        )
    }
}

impl LedgerError {
    /// A single-field `InvalidArgument`.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// The violations of an `InvalidArgument`, for the answer's details.
    pub fn describe_violations(violations: &[FieldViolation]) -> String {
        describe(violations)
    }
}
