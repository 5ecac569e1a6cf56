//! SeaORM models of the ledger's three tables (the schema is owned by the
//! `migration` crate).

pub mod credit_hold;
pub mod credit_transaction;
pub mod user;
pub mod user_balance;
