//! SeaORM models of the ledger's tables (the schema is owned by the
//! `migration` crate).

pub mod alert_event;
pub mod balance_alert;
pub mod credit_allocation;
pub mod credit_hold;
pub mod credit_lot;
pub mod credit_transaction;
pub mod user;
pub mod user_balance;
