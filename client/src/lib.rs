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

mod client;
mod config;
mod error;
mod history;
mod metadata;
mod model;
mod retry;
mod users;
mod verify;
mod writes;

pub use client::CreditClient;
pub use config::{ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEADLINE, TlsConfig};
pub use error::{ERROR_DOMAIN, Error, FieldViolation, Subject};
pub use history::{ListTransactions, Page};
pub use metadata::Metadata;
pub use model::{Balance, Receipt, Transaction, TransactionType, Usage, User};
pub use retry::RetryPolicy;
pub use users::CreateUser;
pub use verify::{LedgerReport, LedgerViolation};
pub use writes::{Grant, Refund, Spend, TopUp, Write, WriteOp, new_idempotency_key};

/// The generated `credit.v1` messages and client, for what this crate does
/// not wrap.
pub use credit_proto::v1 as proto;
