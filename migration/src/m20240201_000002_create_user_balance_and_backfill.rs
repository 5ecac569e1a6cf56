//! Step 2: `user_balance` becomes the single source of truth, one row per
//! user, backfilled from the legacy `user.balance` (NULL counts as 0).
//!
//! `opening_balance` records the part of a migrated balance that no ledger
//! row explains (the legacy column was written without a log), so the
//! invariant `balance == opening_balance + sum(amount)` holds for every user
//! and nothing is lost. `last_sequence` continues any legacy log.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{DbBackend, Statement, Value};

use crate::columns::{
    ID_LEN, User, UserBalance, credits, new_table, quoted_user_table, text, timestamp,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_database_backend();
        manager
            .create_table(
                new_table(db, UserBalance::Table)
                    .col(text(UserBalance::UserId, ID_LEN).not_null().primary_key())
                    .col(credits(UserBalance::Balance).default(0))
                    .col(credits(UserBalance::OpeningBalance).default(0))
                    .col(credits(UserBalance::LastSequence).default(0))
                    .col(timestamp(db, UserBalance::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_user_balance_user")
                            .from(UserBalance::Table, UserBalance::UserId)
                            .to(User::Table, User::Id),
                    )
                    .to_owned(),
            )
            .await?;

        let user = quoted_user_table(db);
        let sql = format!(
            "INSERT INTO user_balance (user_id, balance, opening_balance, last_sequence, updated_at) \
             SELECT u.id, COALESCE(u.balance, 0), \
                    COALESCE(u.balance, 0) - COALESCE((SELECT SUM(t.amount) FROM credit_transaction t WHERE t.user_id = u.id), 0), \
                    COALESCE((SELECT MAX(t.sequence) FROM credit_transaction t WHERE t.user_id = u.id), 0), \
                    {p} \
             FROM {user} u",
            p = placeholder(db, 1),
        );
        let now = Value::from(chrono::Utc::now());
        manager
            .get_connection()
            .execute_raw(Statement::from_sql_and_values(db, sql, [now]))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Step 3's down has already copied every balance back to
        // `user.balance`, so dropping the table loses nothing.
        manager
            .drop_table(Table::drop().table(UserBalance::Table).to_owned())
            .await
    }
}

/// The `n`th bind placeholder in `backend`'s raw SQL dialect.
fn placeholder(backend: DbBackend, n: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("${n}"),
        _ => "?".to_owned(),
    }
}
