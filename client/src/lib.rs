//! A typed async client for the credit ledger service (`credit.v1`).
//!
//! - [`CreditClient::connect`] (or [`CreditClient::builder`] for the
//!   deadline, retries, bearer token and TLS; or
//!   [`CreditClient::from_channel`]).
//! - One method per RPC, taking plain values: writes return a builder for
//!   their optional parts (idempotency key, usage, metadata as JSON) that
//!   is sent by `.await`ing it.
//! - Safe retries: every write carries an idempotency key (a fresh UUID
//!   unless you give one) and is retried on UNAVAILABLE, ABORTED,
//!   RESOURCE_EXHAUSTED and deadline expiry with that same key, after a
//!   bounded, jittered exponential backoff. The server applies a key once
//!   and answers a repeat with the original transaction, so a retry never
//!   charges twice.
//! - Holds for work whose cost is known only afterwards:
//!   [`CreditClient::reserve`] an estimate, [`CreditClient::capture`] the
//!   real cost (or [`CreditClient::release`]); a hold nobody settles
//!   expires by itself.
//! - Lots: every top-up and grant makes one, with a category (paid or
//!   promotional), a draw priority and an optional expiry
//!   ([`Write::expire_time`], [`Write::priority`], [`Write::category`]);
//!   spends draw from them in order, and each transaction's
//!   [`Transaction::allocations`] say from which. [`CreditClient::list_lots`]
//!   lists them; [`Balance`] splits the balance into paid and promotional.
//! - The change feed: [`CreditClient::watch_transactions`] (every
//!   committed transaction once, resumable from a cursor) and
//!   [`CreditClient::watch_balance`], as streams that reopen by themselves
//!   after a lost connection or a server restart.
//! - Low-balance alerts: [`CreditClient::set_balance_alert`]; each
//!   downward crossing is one [`AlertEvent`] (in the feed with
//!   [`FeedContent::AlertEvents`], and [`CreditClient::list_alert_events`])
//!   whose id makes a safe idempotency key for the top-up it leads to.
//! - [`CreditClient::verify_ledger`]: the server's check of the ledger's
//!   invariants (admin).
//! - Typed errors ([`Error`]) read from the server's `google.rpc` details.
//! - [`ListTransactions::stream`]: every page of a user's history as one
//!   `futures::Stream`.
//!
//! ```no_run
//! use credit_client::{CreditClient, Error, Usage};
//! use futures::TryStreamExt;
//! use serde_json::json;
//!
//! # async fn example() -> Result<(), Error> {
//! let client = CreditClient::connect("http://127.0.0.1:50051").await?;
//! client.create_user("alice", "alice@example.com").name("Alice").await?;
//! client.top_up("alice", 100).idempotency_key("order-1").await?;
//!
//! let usage = Usage::new().graph_exec_id("run-7").reason("LLM call");
//! match client.spend("alice", 250).usage(usage).metadata(json!({"model": "small"})).await {
//!     Ok(receipt) => println!("balance now {}", receipt.balance),
//!     Err(Error::InsufficientBalance { available, .. }) => println!("only {available} left"),
//!     Err(other) => return Err(other),
//! }
//!
//! let history: Vec<_> = client.list_transactions("alice").stream().try_collect().await?;
//! println!("{} transactions", history.len());
//! # Ok(())
//! # }
//! ```
//!
//! The conversions need no server:
//!
//! ```
//! use credit_client::TransactionType;
//!
//! let kind: TransactionType = "top_up".parse()?;
//! assert_eq!(kind, TransactionType::TopUp);
//! assert_eq!(kind.to_string(), "top-up");
//! # Ok::<(), credit_client::Error>(())
//! ```

#![warn(missing_docs)]

mod alerts;
mod client;
mod config;
mod error;
mod history;
mod holds;
mod lots;
mod metadata;
mod model;
mod paging;
mod retry;
mod users;
mod verify;
mod watch;
mod writes;

pub use alerts::{AlertEvent, AlertEventPage, BalanceAlert, ListAlertEvents, SetBalanceAlert};
pub use client::CreditClient;
pub use config::{
    ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEADLINE, TlsConfig, parse_endpoint,
};
pub use error::{ERROR_DOMAIN, Error, FieldViolation, Subject};
pub use history::{ListTransactions, Page};
pub use holds::{Capture, Hold, HoldPage, HoldReceipt, HoldState, ListHolds, Release, Reserve};
pub use lots::{ListLots, Lot, LotCategory, LotPage};
pub use metadata::Metadata;
pub use model::{Allocation, Balance, Receipt, Transaction, TransactionType, Usage, User};
pub use retry::RetryPolicy;
pub use users::CreateUser;
pub use verify::{LedgerReport, LedgerViolation};
pub use watch::{FeedContent, FeedMessage, WatchBalance, WatchTransactions};
pub use writes::{Grant, Refund, Spend, TopUp, Write, WriteOp, new_idempotency_key};

/// Every RPC of `credit.v1.CreditService` and the [`CreditClient`] method
/// that calls it: `(rpc, method)`.
///
/// A unit test refers to each method named here at compile time, and the
/// workspace test `clients_cover_every_rpc` checks that every RPC in the
/// service's descriptor is listed, so a new RPC without a method here fails
/// the build's tests.
pub const RPC_METHODS: &[(&str, &str)] = &[
    ("CreateUser", "create_user"),
    ("GetUser", "get_user"),
    ("GetBalance", "get_balance"),
    ("TopUp", "top_up"),
    ("Spend", "spend"),
    ("Grant", "grant"),
    ("Refund", "refund"),
    ("GetTransaction", "get_transaction"),
    ("ListTransactions", "list_transactions"),
    ("VerifyLedger", "verify_ledger"),
    ("Reserve", "reserve"),
    ("Capture", "capture"),
    ("Release", "release"),
    ("GetHold", "get_hold"),
    ("ListHolds", "list_holds"),
    ("ListLots", "list_lots"),
    ("WatchTransactions", "watch_transactions"),
    ("WatchBalance", "watch_balance"),
    ("SetBalanceAlert", "set_balance_alert"),
    ("DeleteBalanceAlert", "delete_balance_alert"),
    ("ListAlertEvents", "list_alert_events"),
];

/// The generated `credit.v1` messages and client, for what this crate does
/// not wrap.
pub use credit_proto::v1 as proto;

#[cfg(test)]
mod tests {
    use super::*;

    /// The methods that exist, each called in a closure the compiler checks
    /// but the test never runs: a method renamed or removed fails to build.
    macro_rules! existing_methods {
        ($($method:ident($($arg:expr),*)),* $(,)?) => {{
            let _calls = |client: &CreditClient| {
                $( drop(client.$method($($arg),*)); )*
            };
            [$(stringify!($method)),*]
        }};
    }

    #[test]
    fn rpc_methods_name_real_methods() {
        let existing = existing_methods!(
            create_user("u", "u@example.com"),
            get_user("u"),
            get_balance("u"),
            top_up("u", 1),
            spend("u", 1),
            grant("u", 1),
            refund("u", "tx"),
            get_transaction("u", "tx"),
            list_transactions("u"),
            verify_ledger(),
            reserve("u", 1),
            capture("u", "hold", 1),
            release("u", "hold"),
            get_hold("u", "hold"),
            list_holds("u"),
            list_lots("u"),
            watch_transactions("u"),
            watch_balance("u"),
            set_balance_alert("u", 1),
            delete_balance_alert("u", "alert"),
            list_alert_events("u"),
        );
        for (rpc, method) in RPC_METHODS {
            assert!(
                existing.contains(method),
                "RPC_METHODS maps {rpc} to CreditClient::{method}, which the \
                 compile-time list above does not name"
            );
        }
        let mut rpcs: Vec<&str> = RPC_METHODS.iter().map(|(rpc, _)| *rpc).collect();
        rpcs.sort_unstable();
        rpcs.dedup();
        assert_eq!(rpcs.len(), RPC_METHODS.len(), "an RPC is listed twice");
    }
}
