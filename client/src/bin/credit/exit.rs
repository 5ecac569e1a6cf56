//! Exit codes: one per kind of failure, so scripts can tell "try again"
//! from "fix the request" without reading the message.

use std::process::ExitCode;

use credit_client::Error;
use serde_json::{Value as Json, json};
use tonic::Code;

/// The table printed at the end of `--help`; keep it in step with `code`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  unexpected error (internal server error, malformed answer, unknown status)
  2  usage error: bad arguments or flags, or input refused before sending
  3  the server rejected the request as invalid
  4  user, transaction or hold not found
  5  already exists: user id or email taken, or idempotency key used for another request
  6  insufficient balance
  7  refused by the ledger's rules: not refundable, refund exceeds original, balance
     overflow, hold not active (captured or released) or expired
  8  unavailable: cannot connect, server or database down or overloaded, deadline
     exceeded (--timeout), or a persistent conflict; safe to run again with the
     same --key
  9  unauthenticated or permission denied
 10  `credit verify` found broken ledger invariants";

/// Success.
pub const OK: u8 = 0;
/// An unexpected failure.
pub const FAILURE: u8 = 1;
/// Bad command line (clap also exits with 2).
pub const USAGE: u8 = 2;
/// The call worked and found the ledger broken.
pub const LEDGER_VIOLATED: u8 = 10;

/// The exit code for a failed call.
pub fn code(err: &Error) -> u8 {
    match err {
        Error::InvalidInput(_) => USAGE,
        Error::InvalidArgument { .. } => 3,
        Error::NotFound { .. } | Error::HoldNotFound { .. } => 4,
        Error::AlreadyExists { .. } | Error::IdempotencyKeyReused { .. } => 5,
        Error::InsufficientBalance { .. } => 6,
        Error::NotRefundable { .. }
        | Error::RefundExceedsOriginal { .. }
        | Error::BalanceOverflow { .. }
        | Error::HoldNotActive { .. }
        | Error::HoldExpired { .. } => 7,
        Error::Unavailable { .. }
        | Error::DeadlineExceeded { .. }
        | Error::Conflict { .. }
        | Error::Overloaded { .. }
        | Error::Connect { .. } => 8,
        Error::Unauthenticated { .. } | Error::PermissionDenied { .. } => 9,
        _ => FAILURE,
    }
}

/// Prints `err` on stderr (one `error:` line, or with `--json` one JSON
/// object on one line) and returns its exit code.
pub fn fail(err: &Error, json: bool) -> ExitCode {
    if json {
        eprintln!("{}", error_json(err));
    } else {
        // One line, whatever the server's message holds, so logs and scripts
        // that read stderr line by line see the whole error.
        let line = err.to_string().replace(['\n', '\r'], " ");
        eprintln!("error: {line}");
    }
    ExitCode::from(code(err))
}

/// A command line clap refused (exit 2). Help and version go to stdout as
/// clap prints them; with `--json`, errors are a JSON object like any other.
pub fn usage(err: clap::Error, json: bool) -> ExitCode {
    use clap::error::ErrorKind;
    if !json
        || matches!(
            err.kind(),
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
        )
    {
        err.exit();
    }
    let rendered = err.render().to_string();
    let message = rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    let object = json!({
        "code": code_name(Code::InvalidArgument),
        "reason": Json::Null,
        "message": message,
        "metadata": {},
    });
    eprintln!("{object}");
    ExitCode::from(USAGE)
}

/// `{"code": "FAILED_PRECONDITION", "reason": "INSUFFICIENT_BALANCE",
/// "message": "...", "metadata": {...}}`, plus `fieldViolations` for an
/// invalid request. `reason` is null when the error has none.
pub fn error_json(err: &Error) -> Json {
    let mut object = json!({
        "code": code_name(err.code()),
        "reason": err.reason(),
        "message": err.to_string(),
        "metadata": err.metadata(),
    });
    if let Error::InvalidArgument { violations, .. } = err
        && !violations.is_empty()
    {
        object["fieldViolations"] = violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
    }
    object
}

/// The canonical name of a gRPC code, as `google.rpc.Code` spells it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_as_json() {
        let err = Error::InsufficientBalance {
            available: 40,
            requested: 100,
        };
        assert_eq!(
            error_json(&err),
            json!({
                "code": "FAILED_PRECONDITION",
                "reason": "INSUFFICIENT_BALANCE",
                "message": "insufficient balance: 40 available, 100 requested",
                "metadata": {"availableBalance": "40", "requestedAmount": "100"},
            })
        );
        let local = error_json(&Error::InvalidInput("x".into()));
        assert_eq!(local["code"], "INVALID_ARGUMENT");
        assert!(local["reason"].is_null());
        assert_eq!(code(&Error::InvalidInput("x".into())), USAGE);
    }
}
