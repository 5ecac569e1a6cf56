//! The client's one error type. Server errors are read from the
//! `google.rpc.ErrorInfo` the service attaches (its reason and metadata),
//! never from the message text, which is for people and may change.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use chrono::{DateTime, Utc};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::HoldState;

/// The `ErrorInfo.domain` of every error the credit service returns.
pub const ERROR_DOMAIN: &str = "credit.v1";

/// What a [`Error::NotFound`] or [`Error::AlreadyExists`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A user, named by its user id.
    User,
    /// A transaction, named by its transaction id.
    Transaction,
    /// An email address, which only one user may have.
    Email,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::User => "user",
            Self::Transaction => "transaction",
            Self::Email => "email",
        })
    }
}

/// One invalid request field, as the server's `google.rpc.BadRequest` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path, e.g. `amount` or `usage.node_id`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// Everything a call can fail with.
///
/// A failed write changed nothing, with one exception the retries make
/// harmless: after [`Error::Unavailable`], [`Error::DeadlineExceeded`],
/// [`Error::Overloaded`] or [`Error::Conflict`] the write may or may not
/// have been applied, and sending it again with the same idempotency key is
/// always safe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server rejected the request's fields; `violations` says which.
    #[error("invalid request: {}", describe_violations(.violations, .message))]
    InvalidArgument {
        /// Every invalid field with what to fix.
        violations: Vec<FieldViolation>,
        /// The server's message.
        message: String,
    },
    /// The user or transaction does not exist.
    #[error("{subject} {id:?} not found")]
    NotFound {
        /// What was looked for.
        subject: Subject,
        /// Its id as the server reported it.
        id: String,
    },
    /// A user with this id but another email exists, or another user has
    /// this email.
    #[error("{subject} {id:?} already exists")]
    AlreadyExists {
        /// Which value is taken.
        subject: Subject,
        /// The taken value.
        id: String,
    },
    /// The balance is too small for the spend.
    #[error("insufficient balance: {available} available, {requested} requested")]
    InsufficientBalance {
        /// The balance at the time of the request.
        available: i64,
        /// The amount asked for.
        requested: i64,
    },
    /// The idempotency key was used before for a different request.
    #[error("idempotency key {key:?} was already used for a different request")]
    IdempotencyKeyReused {
        /// The key.
        key: String,
    },
    /// The change would take the balance outside the `i64` range.
    #[error("the balance {balance} cannot change by {delta} without overflowing")]
    BalanceOverflow {
        /// The balance at the time of the request.
        balance: i64,
        /// The change asked for.
        delta: i64,
    },
    /// The transaction's type cannot be refunded (e.g. a refund).
    #[error(
        "transaction {transaction_id} is a {transaction_type} transaction and cannot be refunded"
    )]
    NotRefundable {
        /// The transaction.
        transaction_id: String,
        /// Its type as the server names it.
        transaction_type: String,
    },
    /// The refund is larger than what is left of the original transaction.
    #[error("refund of {requested} exceeds the {refundable} credits still refundable")]
    RefundExceedsOriginal {
        /// What can still be refunded.
        refundable: i64,
        /// The amount asked for.
        requested: i64,
    },
    /// The user has no hold with this id.
    #[error("hold {hold_id:?} of user {user_id:?} not found")]
    HoldNotFound {
        /// The user asked about.
        user_id: String,
        /// The hold asked for.
        hold_id: String,
    },
    /// The hold was already captured or released.
    #[error("hold {hold_id} is {state}, not active")]
    HoldNotActive {
        /// The hold.
        hold_id: String,
        /// Its state.
        state: HoldState,
    },
    /// The hold's expire time passed before it was captured or released;
    /// its credits are available again.
    #[error("hold {hold_id} expired at {}", expire_time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))]
    HoldExpired {
        /// The hold.
        hold_id: String,
        /// When it expired.
        expire_time: DateTime<Utc>,
    },
    /// A concurrent write conflicted, on every attempt; retry later with the
    /// same idempotency key.
    #[error("conflict: {message}")]
    Conflict {
        /// The server's message.
        message: String,
    },
    /// The server or its database could not be reached, on every attempt.
    #[error("service unavailable: {message}")]
    Unavailable {
        /// The server's or the transport's message.
        message: String,
    },
    /// The server was at its concurrency limit and shed the call, on every
    /// attempt; retry later with the same idempotency key.
    #[error("server overloaded: {message}")]
    Overloaded {
        /// The server's message.
        message: String,
    },
    /// No answer arrived within the deadline, on every attempt.
    #[error("deadline exceeded: {message}")]
    DeadlineExceeded {
        /// The client's or the server's message.
        message: String,
    },
    /// The server did not accept the credentials (or none were given).
    #[error("unauthenticated: {message}")]
    Unauthenticated {
        /// The server's message.
        message: String,
    },
    /// The credentials do not allow this call.
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// The server's message.
        message: String,
    },
    /// The server failed; the request may be retried later.
    #[error("internal server error: {message}")]
    Internal {
        /// The server's message.
        message: String,
    },
    /// The connection could not be set up (bad endpoint, TLS, refused).
    #[error("cannot connect to {endpoint}: {}", source_chain(.source))]
    Connect {
        /// The endpoint as given.
        endpoint: String,
        /// The transport's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The caller's input was refused before anything was sent.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The server answered with something the API does not allow.
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    /// A status this client has no variant for (e.g. from a proxy, or a
    /// reason added by a newer server).
    #[error("{message} ({code:?}{})", reason.as_ref().map(|r| format!(", {r}")).unwrap_or_default())]
    Other {
        /// The gRPC status code.
        code: Code,
        /// The `ErrorInfo` reason, when there was one.
        reason: Option<String>,
        /// The status message.
        message: String,
    },
}

impl Error {
    /// The gRPC code the error arrived with (or the closest one, for errors
    /// raised in the client).
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } | Self::BalanceOverflow { .. } => Code::InvalidArgument,
            Self::InvalidInput(_) => Code::InvalidArgument,
            Self::NotFound { .. } | Self::HoldNotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } | Self::IdempotencyKeyReused { .. } => Code::AlreadyExists,
            Self::InsufficientBalance { .. }
            | Self::NotRefundable { .. }
            | Self::RefundExceedsOriginal { .. }
            | Self::HoldNotActive { .. }
            | Self::HoldExpired { .. } => Code::FailedPrecondition,
            Self::Conflict { .. } => Code::Aborted,
            Self::Overloaded { .. } => Code::ResourceExhausted,
            Self::Unavailable { .. } | Self::Connect { .. } => Code::Unavailable,
            Self::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Self::Unauthenticated { .. } => Code::Unauthenticated,
            Self::PermissionDenied { .. } => Code::PermissionDenied,
            Self::Internal { .. } | Self::InvalidResponse(_) => Code::Internal,
            Self::Other { code, .. } => *code,
        }
    }

    /// Whether sending the same request again (with the same idempotency
    /// key) later may succeed. The client has already retried these a few
    /// times before returning them.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. }
                | Self::Conflict { .. }
                | Self::Overloaded { .. }
                | Self::DeadlineExceeded { .. }
                | Self::Connect { .. }
        )
    }

    /// The `google.rpc.ErrorInfo` reason this error stands for, e.g.
    /// `INSUFFICIENT_BALANCE`; `None` when it has none (transport failures,
    /// errors raised in the client, and UNAVAILABLE, whose reason the typed
    /// error does not keep).
    pub fn reason(&self) -> Option<&str> {
        Some(match self {
            Self::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Self::NotFound {
                subject: Subject::Transaction,
                ..
            } => "TRANSACTION_NOT_FOUND",
            Self::NotFound { .. } => "USER_NOT_FOUND",
            Self::AlreadyExists {
                subject: Subject::Email,
                ..
            } => "EMAIL_ALREADY_EXISTS",
            Self::AlreadyExists { .. } => "USER_ALREADY_EXISTS",
            Self::InsufficientBalance { .. } => "INSUFFICIENT_BALANCE",
            Self::IdempotencyKeyReused { .. } => "IDEMPOTENCY_KEY_REUSED",
            Self::BalanceOverflow { .. } => "BALANCE_OVERFLOW",
            Self::NotRefundable { .. } => "NOT_REFUNDABLE",
            Self::RefundExceedsOriginal { .. } => "REFUND_EXCEEDS_ORIGINAL",
            Self::HoldNotFound { .. } => "HOLD_NOT_FOUND",
            Self::HoldNotActive { .. } => "HOLD_NOT_ACTIVE",
            Self::HoldExpired { .. } => "HOLD_EXPIRED",
            Self::Conflict { .. } => "CONFLICT",
            Self::Overloaded { .. } => "OVERLOADED",
            Self::Unauthenticated { .. } => "UNAUTHENTICATED",
            Self::PermissionDenied { .. } => "PERMISSION_DENIED",
            Self::Internal { .. } => "INTERNAL",
            Self::Other { reason, .. } => return reason.as_deref(),
            Self::Unavailable { .. }
            | Self::DeadlineExceeded { .. }
            | Self::Connect { .. }
            | Self::InvalidInput(_)
            | Self::InvalidResponse(_) => return None,
        })
    }

    /// The `ErrorInfo` metadata the typed error holds, under the server's
    /// keys (`availableBalance`, `requestedAmount`, `userId`, ...); empty
    /// for errors that carry none.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        let pairs: Vec<(&str, String)> = match self {
            Self::NotFound {
                subject: Subject::Transaction,
                id,
            } => vec![("transactionId", id.clone())],
            Self::NotFound { id, .. }
            | Self::AlreadyExists {
                subject: Subject::User,
                id,
            } => vec![("userId", id.clone())],
            Self::AlreadyExists { id, .. } => vec![("email", id.clone())],
            Self::InsufficientBalance {
                available,
                requested,
            } => vec![
                ("availableBalance", available.to_string()),
                ("requestedAmount", requested.to_string()),
            ],
            Self::IdempotencyKeyReused { key } => vec![("idempotencyKey", key.clone())],
            Self::BalanceOverflow { balance, delta } => vec![
                ("balance", balance.to_string()),
                ("delta", delta.to_string()),
            ],
            Self::NotRefundable {
                transaction_id,
                transaction_type,
            } => vec![
                ("transactionId", transaction_id.clone()),
                ("transactionType", transaction_type.clone()),
            ],
            Self::RefundExceedsOriginal {
                refundable,
                requested,
            } => vec![
                ("refundableAmount", refundable.to_string()),
                ("requestedAmount", requested.to_string()),
            ],
            Self::HoldNotFound { user_id, hold_id } => {
                vec![("userId", user_id.clone()), ("holdId", hold_id.clone())]
            }
            Self::HoldNotActive { hold_id, state } => vec![
                ("holdId", hold_id.clone()),
                ("state", state.as_str().to_ascii_uppercase()),
            ],
            Self::HoldExpired {
                hold_id,
                expire_time,
            } => vec![
                ("holdId", hold_id.clone()),
                (
                    "expireTime",
                    expire_time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                ),
            ],
            _ => vec![],
        };
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// Reads a failed call's status: the credit service's `ErrorInfo` when
    /// present, else the bare status code.
    pub fn from_status(status: Status) -> Self {
        let details = status.get_error_details();
        let info = details.error_info().filter(|i| i.domain == ERROR_DOMAIN);
        let from_reason = info.and_then(|info| {
            let violations = details
                .bad_request()
                .map(|b| {
                    b.field_violations
                        .iter()
                        .map(|v| FieldViolation {
                            field: v.field.clone(),
                            description: v.description.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            from_reason(&info.reason, &info.metadata, violations, status.message())
        });
        from_reason.unwrap_or_else(|| from_code(&status, info.map(|i| i.reason.clone())))
    }
}

/// The typed error for a known `ErrorInfo` reason, or `None` when the reason
/// is unknown or its metadata is incomplete (then the code decides).
fn from_reason(
    reason: &str,
    meta: &HashMap<String, String>,
    violations: Vec<FieldViolation>,
    message: &str,
) -> Option<Error> {
    let text = |key: &str| meta.get(key).cloned();
    let number = |key: &str| meta.get(key).and_then(|v| v.parse::<i64>().ok());
    let message = message.to_owned();
    Some(match reason {
        "INVALID_ARGUMENT" => Error::InvalidArgument {
            violations,
            message,
        },
        "USER_NOT_FOUND" => Error::NotFound {
            subject: Subject::User,
            id: text("userId")?,
        },
        "TRANSACTION_NOT_FOUND" => Error::NotFound {
            subject: Subject::Transaction,
            id: text("transactionId")?,
        },
        "USER_ALREADY_EXISTS" => Error::AlreadyExists {
            subject: Subject::User,
            id: text("userId")?,
        },
        "EMAIL_ALREADY_EXISTS" => Error::AlreadyExists {
            subject: Subject::Email,
            id: text("email")?,
        },
        "INSUFFICIENT_BALANCE" => Error::InsufficientBalance {
            available: number("availableBalance")?,
            requested: number("requestedAmount")?,
        },
        "IDEMPOTENCY_KEY_REUSED" => Error::IdempotencyKeyReused {
            key: text("idempotencyKey")?,
        },
        "BALANCE_OVERFLOW" => Error::BalanceOverflow {
            balance: number("balance")?,
            delta: number("delta")?,
        },
        "NOT_REFUNDABLE" => Error::NotRefundable {
            transaction_id: text("transactionId")?,
            transaction_type: text("transactionType")?,
        },
        "REFUND_EXCEEDS_ORIGINAL" => Error::RefundExceedsOriginal {
            refundable: number("refundableAmount")?,
            requested: number("requestedAmount")?,
        },
        "HOLD_NOT_FOUND" => Error::HoldNotFound {
            user_id: text("userId")?,
            hold_id: text("holdId")?,
        },
        "HOLD_NOT_ACTIVE" => Error::HoldNotActive {
            hold_id: text("holdId")?,
            state: text("state")?.parse().ok()?,
        },
        "HOLD_EXPIRED" => Error::HoldExpired {
            hold_id: text("holdId")?,
            expire_time: DateTime::parse_from_rfc3339(&text("expireTime")?)
                .ok()?
                .with_timezone(&Utc),
        },
        "PERMISSION_DENIED" => Error::PermissionDenied { message },
        "UNAUTHENTICATED" => Error::Unauthenticated { message },
        "OVERLOADED" => Error::Overloaded { message },
        "DEADLINE_EXCEEDED" => Error::DeadlineExceeded { message },
        // Too large to send as it is: no retry can help.
        "MESSAGE_TOO_LARGE" | "METADATA_TOO_LARGE" => Error::InvalidArgument {
            violations,
            message,
        },
        "CONFLICT" => Error::Conflict { message },
        "DATABASE_UNAVAILABLE" => Error::Unavailable { message },
        "INTERNAL" => Error::Internal { message },
        _ => return None,
    })
}

/// Statuses without our `ErrorInfo`: from the transport, a proxy, or an
/// unknown reason.
fn from_code(status: &Status, reason: Option<String>) -> Error {
    let message = status.message().to_owned();
    match (status.code(), reason) {
        (Code::Unavailable, None) => Error::Unavailable { message },
        (Code::Aborted, None) => Error::Conflict { message },
        (Code::DeadlineExceeded, None) => Error::DeadlineExceeded { message },
        (Code::ResourceExhausted, None) => Error::Overloaded { message },
        (Code::Unauthenticated, None) => Error::Unauthenticated { message },
        (Code::PermissionDenied, None) => Error::PermissionDenied { message },
        (Code::Internal, None) => Error::Internal { message },
        (code, reason) => Error::Other {
            code,
            reason,
            message,
        },
    }
}

fn describe_violations(violations: &[FieldViolation], message: &str) -> String {
    if violations.is_empty() {
        return message.to_owned();
    }
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The transport's error with its causes: its own text ("transport error")
/// says nothing useful alone.
fn source_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut next = err.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        // Wrappers often repeat their cause's text word for word.
        if parts.last() != Some(&part) {
            parts.push(part);
        }
        next = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    fn status(code: Code, reason: &str, meta: &[(&str, &str)]) -> Status {
        let mut details = ErrorDetails::new();
        let meta: HashMap<String, String> = meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        details.set_error_info(reason, ERROR_DOMAIN, meta);
        Status::with_error_details(code, "text that must not matter", details)
    }

    #[test]
    fn insufficient_balance_is_read_from_metadata() {
        let err = Error::from_status(status(
            Code::FailedPrecondition,
            "INSUFFICIENT_BALANCE",
            &[("availableBalance", "40"), ("requestedAmount", "100")],
        ));
        assert!(matches!(
            err,
            Error::InsufficientBalance {
                available: 40,
                requested: 100
            }
        ));
        assert_eq!(
            err.to_string(),
            "insufficient balance: 40 available, 100 requested"
        );
        assert_eq!(err.reason(), Some("INSUFFICIENT_BALANCE"));
        let meta = err.metadata();
        assert_eq!(meta["availableBalance"], "40");
        assert_eq!(meta["requestedAmount"], "100");
    }

    #[test]
    fn hold_reasons_are_typed() {
        let err = Error::from_status(status(
            Code::NotFound,
            "HOLD_NOT_FOUND",
            &[("userId", "u"), ("holdId", "h")],
        ));
        assert!(
            matches!(&err, Error::HoldNotFound { user_id, hold_id } if user_id == "u" && hold_id == "h")
        );
        assert_eq!(err.reason(), Some("HOLD_NOT_FOUND"));
        assert_eq!(err.code(), Code::NotFound);
        let err = Error::from_status(status(
            Code::FailedPrecondition,
            "HOLD_NOT_ACTIVE",
            &[("holdId", "h"), ("state", "CAPTURED")],
        ));
        assert!(matches!(
            err,
            Error::HoldNotActive {
                state: HoldState::Captured,
                ..
            }
        ));
        assert_eq!(err.metadata()["state"], "CAPTURED");
        let err = Error::from_status(status(
            Code::FailedPrecondition,
            "HOLD_EXPIRED",
            &[("holdId", "h"), ("expireTime", "2030-01-02T03:04:05+00:00")],
        ));
        let Error::HoldExpired { expire_time, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(expire_time.to_rfc3339(), "2030-01-02T03:04:05+00:00");
        assert_eq!(err.to_string(), "hold h expired at 2030-01-02T03:04:05Z");
    }

    #[test]
    fn bad_request_violations_are_kept() {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("amount", "must be greater than 0, got 0");
        details.set_error_info("INVALID_ARGUMENT", ERROR_DOMAIN, HashMap::new());
        let err = Error::from_status(Status::with_error_details(
            Code::InvalidArgument,
            "x",
            details,
        ));
        assert_eq!(
            err.to_string(),
            "invalid request: amount: must be greater than 0, got 0"
        );
    }

    #[test]
    fn incomplete_metadata_falls_back_to_the_code() {
        let err = Error::from_status(status(
            Code::FailedPrecondition,
            "INSUFFICIENT_BALANCE",
            &[],
        ));
        assert!(matches!(
            err,
            Error::Other { code: Code::FailedPrecondition, reason: Some(r), .. } if r == "INSUFFICIENT_BALANCE"
        ));
    }

    #[test]
    fn bare_transport_statuses_map_by_code() {
        assert!(matches!(
            Error::from_status(Status::unavailable("connection refused")),
            Error::Unavailable { .. }
        ));
        assert!(Error::from_status(Status::aborted("x")).is_retryable());
    }

    #[test]
    fn other_domains_are_not_trusted() {
        let mut details = ErrorDetails::new();
        details.set_error_info("USER_NOT_FOUND", "example.com", HashMap::new());
        let err = Error::from_status(Status::with_error_details(Code::NotFound, "x", details));
        assert!(matches!(
            err,
            Error::Other {
                code: Code::NotFound,
                reason: None,
                ..
            }
        ));
    }
}
