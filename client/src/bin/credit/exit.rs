//! Exit codes: one per kind of failure, so scripts can tell "try again"
//! from "fix the request" without reading the message.

use std::process::ExitCode;

use credit_client::Error;

/// The table printed at the end of `--help`; keep it in step with `code`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  unexpected error (internal server error, malformed answer, unknown status)
  2  usage error: bad arguments or flags, or input refused before sending
  3  the server rejected the request as invalid
  4  user or transaction not found
  5  already exists: user id or email taken, or idempotency key used for another request
  6  insufficient balance
  7  refused by the ledger's rules: not refundable, refund exceeds original, balance overflow
  8  unavailable: cannot connect, server or database down or overloaded, deadline
     exceeded, or a persistent conflict; safe to run again with the same --key
  9  unauthenticated or permission denied
 10  `credit verify` found broken ledger invariants";

/// Success.
pub const OK: u8 = 0;
/// Bad command line (clap also exits with 2).
pub const USAGE: u8 = 2;
/// The call worked and found the ledger broken.
pub const LEDGER_VIOLATED: u8 = 10;

/// The exit code for a failed call.
pub fn code(err: &Error) -> u8 {
    match err {
        Error::InvalidInput(_) => USAGE,
        Error::InvalidArgument { .. } => 3,
        Error::NotFound { .. } => 4,
        Error::AlreadyExists { .. } | Error::IdempotencyKeyReused { .. } => 5,
        Error::InsufficientBalance { .. } => 6,
        Error::NotRefundable { .. }
        | Error::RefundExceedsOriginal { .. }
        | Error::BalanceOverflow { .. } => 7,
        Error::Unavailable { .. }
        | Error::DeadlineExceeded { .. }
        | Error::Conflict { .. }
        | Error::Overloaded { .. }
        | Error::Connect { .. } => 8,
        Error::Unauthenticated { .. } | Error::PermissionDenied { .. } => 9,
        _ => 1,
    }
}

/// Prints `err` as one line on stderr and returns its exit code.
pub fn fail(err: &Error) -> ExitCode {
    // One line, whatever the server's message holds, so logs and scripts
    // that read stderr line by line see the whole error.
    let line = err.to_string().replace(['\n', '\r'], " ");
    eprintln!("error: {line}");
    ExitCode::from(code(err))
}
