//! The money rules. Every balance change is one database transaction that
//! locks the user's `user_balance` row first (`batch.rs` argues why that is
//! correct; `group_commit.rs` how concurrent writes share transactions);
//! reads never lock. No gRPC types here: errors are [`LedgerError`], mapped
//! to gRPC in `service/status.rs`.

pub mod alerts;
mod balance_reads;
mod batch;
mod db_error;
mod error;
mod faults;
pub mod feed;
mod feed_cache;
mod fingerprint;
mod group_commit;
mod handle;
mod history;
mod holds;
mod lookup;
mod lot_reads;
mod lots;
pub mod model;
mod page_token;
mod pool;
mod relay_cursor;
mod rows;
mod rules;
mod store;
pub mod sweeper;
mod users;
pub mod verify;
mod verify_alerts;
mod verify_holds;
mod verify_lots;
mod write;

pub use balance_reads::ReadStats;
pub use error::{Cause, FieldViolation, LedgerError, Overload};
pub use faults::Fault;
pub use group_commit::WriteStats;
pub use handle::{Ledger, LedgerConfig};
pub use pool::PoolState;
pub use store::HoldRules;
