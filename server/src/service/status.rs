//! The one mapping from errors to gRPC: each [`LedgerError`] variant gets
//! exactly one code and one `google.rpc.ErrorInfo` reason (domain
//! `credit.v1`), plus `BadRequest` / `ResourceInfo` where they help; the
//! gate's own refusals (keys, roles, limits) are built here too, so every
//! error a caller can see carries its ErrorInfo.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::ledger::{FieldViolation, LedgerError, Overload};

/// The `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "credit.v1";

/// Most field violations one answer lists: an answer must stay within the
/// HTTP/2 header limits whatever the request was.
const MAX_REPORTED_VIOLATIONS: usize = 10;
/// Longest field path an answer repeats (metadata paths are caller keys).
const MAX_REPORTED_FIELD_CHARS: usize = 128;

/// A status with one ErrorInfo of `reason` and `metadata`.
pub fn with_reason(code: Code, reason: &str, message: impl Into<String>) -> Status {
    with_info(code, reason, message, HashMap::new(), ErrorDetails::new())
}

fn with_info(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: HashMap<String, String>,
    mut details: ErrorDetails,
) -> Status {
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}

/// A key whose role may not call the method.
pub fn permission_denied(message: String) -> Status {
    Status::from(LedgerError::PermissionDenied(message))
}

/// A missing or unknown API key.
pub fn unauthenticated(message: &str) -> Status {
    with_reason(Code::Unauthenticated, "UNAUTHENTICATED", message)
}

/// The server's concurrency limit shed the call.
pub fn shed() -> Status {
    overloaded(
        "the server is at its concurrency limit; retry with backoff",
        "concurrentRequests",
    )
}

/// A stream limit (`--max-streams`, `--max-streams-per-key`) refused a
/// new stream.
pub fn too_many_streams(limit: usize, resource: &str) -> Status {
    with_info(
        Code::ResourceExhausted,
        "TOO_MANY_STREAMS",
        format!(
            "{limit} streams are already open {}; close one or retry later",
            match resource {
                "streamsPerKey" => "for this API key",
                _ => "on this server",
            }
        ),
        HashMap::from([
            ("resource".to_owned(), resource.to_owned()),
            ("limit".to_owned(), limit.to_string()),
        ]),
        ErrorDetails::new(),
    )
}

/// A stream's consumer read too slowly: its buffer stayed full.
pub fn slow_consumer(waited: std::time::Duration) -> Status {
    with_info(
        Code::ResourceExhausted,
        "SLOW_CONSUMER",
        format!(
            "the stream's buffer stayed full for {} s: the consumer reads slower than the ledger \
             changes. Resume with start_after = the last cursor you processed",
            waited.as_secs()
        ),
        HashMap::from([("waitedSeconds".to_owned(), waited.as_secs().to_string())]),
        ErrorDetails::new(),
    )
}

/// The server is shutting down: streams end so consumers go elsewhere.
pub fn shutting_down() -> Status {
    with_reason(
        Code::Unavailable,
        "SHUTTING_DOWN",
        "the server is shutting down; reconnect (to another server process) and resume with \
         start_after = the last cursor you processed",
    )
}

/// The call's deadline (the server's request timeout or the caller's
/// `grpc-timeout`, whichever is shorter) passed before it finished.
pub fn deadline_exceeded() -> Status {
    with_reason(
        Code::DeadlineExceeded,
        "DEADLINE_EXCEEDED",
        "the call did not finish within its deadline; a write may still be applied: retry with the same idempotency key",
    )
}

/// A method the service does not have.
pub fn unimplemented(method: &str) -> Status {
    with_reason(
        Code::Unimplemented,
        "METHOD_NOT_FOUND",
        format!("credit.v1.CreditService has no method {method:?}"),
    )
}

/// The request message is larger than `--max-message-bytes`.
pub fn message_too_large(limit: usize) -> Status {
    with_info(
        Code::OutOfRange,
        "MESSAGE_TOO_LARGE",
        format!("the request message is too large: the server accepts at most {limit} bytes"),
        HashMap::from([("limitBytes".to_owned(), limit.to_string())]),
        ErrorDetails::new(),
    )
}

/// The request's metadata (headers) is larger than `--max-metadata-bytes`.
pub fn metadata_too_large(size: usize, limit: usize) -> Status {
    with_info(
        Code::InvalidArgument,
        "METADATA_TOO_LARGE",
        format!("the request metadata is {size} bytes; the server accepts at most {limit}"),
        HashMap::from([
            ("limitBytes".to_owned(), limit.to_string()),
            ("sizeBytes".to_owned(), size.to_string()),
        ]),
        ErrorDetails::new(),
    )
}

fn overloaded(message: impl Into<String>, resource: &str) -> Status {
    with_info(
        Code::ResourceExhausted,
        "OVERLOADED",
        message,
        HashMap::from([("resource".to_owned(), resource.to_owned())]),
        ErrorDetails::new(),
    )
}

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
        let mut details = ErrorDetails::new();
        let mut message = err.to_string();
        let (code, reason) = match &err {
            LedgerError::InvalidArgument(violations) => {
                let shown = reportable(violations);
                message = format!(
                    "invalid request: {}",
                    LedgerError::describe_violations(&shown)
                );
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
            LedgerError::HoldNotFound { hold_id, .. } => {
                details.set_resource_info(
                    "credit.v1.Hold",
                    hold_id,
                    "",
                    "no such hold for this user",
                );
                (Code::NotFound, "HOLD_NOT_FOUND")
            }
            LedgerError::AlertNotFound { alert_id, .. } => {
                details.set_resource_info(
                    "credit.v1.BalanceAlert",
                    alert_id,
                    "",
                    "no such alert for this user",
                );
                (Code::NotFound, "ALERT_NOT_FOUND")
            }
            LedgerError::TooManyAlerts { .. } => (Code::FailedPrecondition, "TOO_MANY_ALERTS"),
            LedgerError::HoldNotActive { .. } => (Code::FailedPrecondition, "HOLD_NOT_ACTIVE"),
            LedgerError::HoldExpired { .. } => (Code::FailedPrecondition, "HOLD_EXPIRED"),
            LedgerError::PermissionDenied(_) => (Code::PermissionDenied, "PERMISSION_DENIED"),
            LedgerError::Conflict(cause) => {
                tracing::warn!(reason = "CONFLICT", %cause, "request failed");
                message = "a concurrent write conflicted with this one; retry with the same idempotency key".into();
                (Code::Aborted, "CONFLICT")
            }
            LedgerError::Unavailable(cause) => {
                tracing::warn!(reason = "DATABASE_UNAVAILABLE", %cause, "request failed");
                message =
                    "the database is unavailable; retry later with the same idempotency key".into();
                (Code::Unavailable, "DATABASE_UNAVAILABLE")
            }
            LedgerError::OutcomeUnknown(cause) => {
                tracing::warn!(reason = "DATABASE_UNAVAILABLE", %cause, "commit outcome unknown");
                message = "the database failed while committing this write, so it may or may not \
                           be applied; retry with the same idempotency key to learn which"
                    .into();
                (Code::Unavailable, "DATABASE_UNAVAILABLE")
            }
            LedgerError::Overloaded(what) => {
                let resource = match what {
                    Overload::DatabaseConnections => "databaseConnections",
                    Overload::WriteQueue { .. } => "writeQueue",
                    Overload::DirectReads => "historyReads",
                };
                ::metrics::counter!(crate::telemetry::metrics::SHED, "resource" => resource)
                    .increment(1);
                return overloaded(
                    format!("the server is overloaded ({what}); retry with backoff"),
                    resource,
                );
            }
            LedgerError::Internal(detail) => {
                // Database text may name tables or hosts: log it, don't send it.
                tracing::error!(reason = "INTERNAL", detail = %detail, "request failed");
                message = "internal error".into();
                (Code::Internal, "INTERNAL")
            }
        };
        with_info(code, reason, message, error_metadata(&err), details)
    }
}

/// The `ErrorInfo.metadata` that lets a caller act without parsing text.
fn error_metadata(err: &LedgerError) -> HashMap<String, String> {
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
        LedgerError::OutcomeUnknown(_) => vec![("writeOutcome", "UNKNOWN".to_owned())],
        LedgerError::HoldNotFound { user_id, hold_id } => {
            vec![("userId", user_id.clone()), ("holdId", hold_id.clone())]
        }
        LedgerError::AlertNotFound { user_id, alert_id } => {
            vec![("userId", user_id.clone()), ("alertId", alert_id.clone())]
        }
        LedgerError::TooManyAlerts { limit } => vec![("limit", limit.to_string())],
        LedgerError::HoldNotActive { hold_id, state } => {
            vec![("holdId", hold_id.clone()), ("state", (*state).to_owned())]
        }
        LedgerError::HoldExpired {
            hold_id,
            expire_time,
        } => vec![
            ("holdId", hold_id.clone()),
            ("expireTime", expire_time.to_rfc3339()),
        ],
        _ => vec![],
    };
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
