//! The ledger's schema history, oldest first.
//!
//! The legacy schema kept the balance in `user.balance`. Step 2 moves it to
//! `user_balance` (one row per user, the single source of truth) and step 3
//! drops the old column. Step 4 records who made each write; step 5 adds
//! holds; step 6 adds lots (paid and promotional credits, each transaction's
//! allocations to them, and the lots each hold earmarks), turning every
//! positive balance into one paid lot; step 7 indexes the expiry bounds
//! for the expiry sweeper; step 8 gives transactions their place in the
//! change feed. Every step has a working `down`.

pub use sea_orm_migration::prelude::*;

mod columns;
mod m20240101_000001_create_user_and_credit_transaction;
mod m20240201_000002_create_user_balance_and_backfill;
mod m20240301_000003_drop_user_balance_column;
mod m20261130_000004_record_who_wrote;
mod m20261130_000005_holds;
mod m20261201_000006_lots;
mod m20261202_000007_expiry_indexes;
mod m20261203_000008_change_feed;
mod m20261203_000009_balance_alerts;
mod m20261203_000010_relay_cursor;

/// Runs the ledger's migrations in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20240101_000001_create_user_and_credit_transaction::Migration),
            Box::new(m20240201_000002_create_user_balance_and_backfill::Migration),
            Box::new(m20240301_000003_drop_user_balance_column::Migration),
            Box::new(m20261130_000004_record_who_wrote::Migration),
            Box::new(m20261130_000005_holds::Migration),
            Box::new(m20261201_000006_lots::Migration),
            Box::new(m20261202_000007_expiry_indexes::Migration),
            Box::new(m20261203_000008_change_feed::Migration),
            Box::new(m20261203_000009_balance_alerts::Migration),
            Box::new(m20261203_000010_relay_cursor::Migration),
        ]
    }
}

/// The number of migrations before the balance moved out of `user` (the
/// legacy schema); tests migrate up to here to build a pre-migration database.
pub const LEGACY_SCHEMA_STEPS: u32 = 1;
