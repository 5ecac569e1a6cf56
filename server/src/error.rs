//! The one domain error of the service, and its one mapping to a gRPC
//! `Status` (code, message and `google.rpc` details).

use sea_orm::{DbErr, RuntimeErr};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "credit.v1";

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

/// Everything that can make a request fail. A failed request changes nothing.
#[derive(Debug, thiserror::Error)]
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
    #[error(
        "refund of {requested} exceeds the {remaining} credits of transaction {transaction_id} not yet refunded"
    )]
    RefundExceedsOriginal {
        transaction_id: String,
        remaining: i64,
        requested: i64,
    },
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("a concurrent write conflicted with this one; retry with the same idempotency key")]
    Conflict(String),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
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

impl LedgerError {
    /// The same failure again, for each write of a batch that failed as a
    /// whole (database failures; request errors are never batch-wide).
    pub fn same_again(&self) -> Self {
        match self {
            Self::Unavailable(detail) => Self::Unavailable(detail.clone()),
            Self::Conflict(detail) => Self::Conflict(detail.clone()),
            other => Self::Internal(other.to_string()),
        }
    }

    /// A single-field `InvalidArgument`.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

impl From<DbErr> for LedgerError {
    /// Connection trouble is retryable (`UNAVAILABLE`); deadlocks and
    /// serialization failures are retryable conflicts (`ABORTED`); anything
    /// else is a bug or a broken database (`INTERNAL`).
    fn from(err: DbErr) -> Self {
        let text = err.to_string();
        match &err {
            DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => return Self::Unavailable(text),
            DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
                use sea_orm::sqlx::Error as Sqlx;
                match e.as_ref() {
                    Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed => {
                        return Self::Unavailable(text);
                    }
                    Sqlx::Database(db) => {
                        let code = db.code().unwrap_or_default();
                        // PostgreSQL serialization failure / deadlock, MySQL
                        // deadlock / lock wait timeout, SQLite busy / locked.
                        if matches!(&*code, "40001" | "40P01" | "1213" | "1205" | "5" | "6")
                            || db.message().contains("database is locked")
                        {
                            return Self::Conflict(text);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        if err.sql_err().is_some() {
            // A unique key caught a race the row lock should have prevented.
            return Self::Conflict(text);
        }
        Self::Internal(text)
    }
}

/// Most field violations one answer lists: an answer must stay within the
/// HTTP/2 header limits whatever the request was.
const MAX_REPORTED_VIOLATIONS: usize = 10;
/// Longest field path an answer repeats (metadata paths are caller keys).
const MAX_REPORTED_FIELD_CHARS: usize = 128;

/// The violations an answer reports: the first few, each field path cut to
/// a bounded length, and a note of how many more there were.
fn reportable(violations: &[FieldViolation]) -> Vec<FieldViolation> {
    let mut shown: Vec<FieldViolation> = violations
        .iter()
        .take(MAX_REPORTED_VIOLATIONS)
        .map(|v| {
            let mut field: String = v.field.chars().take(MAX_REPORTED_FIELD_CHARS).collect();
            if field.len() < v.field.len() {
                field.push('…');
            }
            FieldViolation::new(field, v.description.clone())
        })
        .collect();
    if violations.len() > MAX_REPORTED_VIOLATIONS {
        shown.push(FieldViolation::new(
            "",
            format!(
                "and {} more violations",
                violations.len() - MAX_REPORTED_VIOLATIONS
            ),
        ));
    }
    shown
}

impl From<LedgerError> for Status {
    fn from(err: LedgerError) -> Self {
        let mut message = err.to_string();
        let mut details = ErrorDetails::new();
        let (code, reason) = match &err {
            LedgerError::InvalidArgument(violations) => {
                let shown = reportable(violations);
                message = format!("invalid request: {}", describe(&shown));
                for v in &shown {
                    details.add_bad_request_violation(&v.field, &v.description);
                }
                (Code::InvalidArgument, "INVALID_ARGUMENT")
            }
            LedgerError::UserNotFound(user_id) => {
                details.set_resource_info("credit.v1.User", user_id, "", "no such user");
                (Code::NotFound, "USER_NOT_FOUND")
            }
            LedgerError::TransactionNotFound { transaction_id, .. } => {
                details.set_resource_info(
                    "credit.v1.Transaction",
                    transaction_id,
                    "",
                    "no such transaction for this user",
                );
                (Code::NotFound, "TRANSACTION_NOT_FOUND")
            }
            LedgerError::UserAlreadyExists(_) => (Code::AlreadyExists, "USER_ALREADY_EXISTS"),
            LedgerError::EmailAlreadyExists(_) => (Code::AlreadyExists, "EMAIL_ALREADY_EXISTS"),
            LedgerError::InsufficientBalance { .. } => {
                (Code::FailedPrecondition, "INSUFFICIENT_BALANCE")
            }
            LedgerError::IdempotencyKeyReused(_) => (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED"),
            LedgerError::BalanceOverflow { .. } => (Code::InvalidArgument, "BALANCE_OVERFLOW"),
            LedgerError::NotRefundable { .. } => (Code::FailedPrecondition, "NOT_REFUNDABLE"),
            LedgerError::RefundExceedsOriginal { .. } => {
                (Code::FailedPrecondition, "REFUND_EXCEEDS_ORIGINAL")
            }
            LedgerError::PermissionDenied(_) => (Code::PermissionDenied, "PERMISSION_DENIED"),
            LedgerError::Conflict(_) => (Code::Aborted, "CONFLICT"),
            LedgerError::Unavailable(_) => (Code::Unavailable, "DATABASE_UNAVAILABLE"),
            LedgerError::Internal(_) => (Code::Internal, "INTERNAL"),
        };
        details.set_error_info(reason, ERROR_DOMAIN, error_metadata(&err));
        let message = match &err {
            // Database text may name tables or hosts: log it, don't send it.
            LedgerError::Conflict(detail)
            | LedgerError::Unavailable(detail)
            | LedgerError::Internal(detail) => {
                tracing::warn!(reason, detail = %detail, "request failed");
                match code {
                    Code::Aborted => "a concurrent write conflicted with this one; retry with the same idempotency key".to_owned(),
                    Code::Unavailable => "the database is unavailable; retry later with the same idempotency key".to_owned(),
                    _ => "internal error".to_owned(),
                }
            }
            _ => message,
        };
        Status::with_error_details(code, message, details)
    }
}

/// The `ErrorInfo.metadata` that lets a caller act without parsing text.
fn error_metadata(err: &LedgerError) -> std::collections::HashMap<String, String> {
    let pairs: Vec<(&str, String)> = match err {
        LedgerError::UserNotFound(user_id) => vec![("userId", user_id.clone())],
        LedgerError::TransactionNotFound {
            user_id,
            transaction_id,
        } => vec![
            ("userId", user_id.clone()),
            ("transactionId", transaction_id.clone()),
        ],
        LedgerError::UserAlreadyExists(user_id) => vec![("userId", user_id.clone())],
        LedgerError::EmailAlreadyExists(email) => vec![("email", email.clone())],
        LedgerError::InsufficientBalance {
            available,
            requested,
        } => vec![
            ("availableBalance", available.to_string()),
            ("requestedAmount", requested.to_string()),
        ],
        LedgerError::IdempotencyKeyReused(key) => vec![("idempotencyKey", key.clone())],
        LedgerError::BalanceOverflow { balance, delta } => vec![
            ("balance", balance.to_string()),
            ("delta", delta.to_string()),
        ],
        LedgerError::NotRefundable {
            transaction_id,
            kind,
        } => vec![
            ("transactionId", transaction_id.clone()),
            ("transactionType", (*kind).to_owned()),
        ],
        LedgerError::RefundExceedsOriginal {
            transaction_id,
            remaining,
            requested,
        } => vec![
            ("transactionId", transaction_id.clone()),
            ("refundableAmount", remaining.to_string()),
            ("requestedAmount", requested.to_string()),
        ],
        _ => vec![],
    };
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
