//! The money rules. Every balance change is one database transaction that
//! locks the user's `user_balance` row first (`batch.rs` argues why that is
//! correct; `group_commit.rs` how concurrent writes share transactions);
//! reads never lock. No gRPC types here: errors are [`LedgerError`], mapped
//! to gRPC in `service/status.rs`.

mod balance_reads;
mod batch;
mod db_error;
mod error;
mod faults;
mod fingerprint;
mod group_commit;
mod handle;
mod history;
mod holds;
pub mod model;
mod page_token;
mod pool;
mod rows;
mod rules;
mod store;
mod users;
pub mod verify;
mod verify_holds;
mod write;

pub use balance_reads::ReadStats;
pub use error::{Cause, FieldViolation, LedgerError, Overload};
pub use faults::Fault;
pub use group_commit::WriteStats;
pub use handle::{Ledger, LedgerConfig};
pub use pool::PoolState;
pub use store::HoldRules;
