//! Step 4: every transaction records who made it (the API key's name, and
//! the TLS client-certificate subject when there was one), for the audit
//! trail and the history filter `created_by`. Rows written before stay NULL:
//! nobody recorded their writer, and inventing one would be a lie.

use sea_orm_migration::prelude::*;

use crate::columns::{CreditTransaction, ID_LEN, text};

/// Longest certificate subject kept (RFC 5280 names rarely pass 256).
const SUBJECT_LEN: u32 = 512;
const INDEX: &str = "idx_credit_transaction_user_created_by";

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        for column in [
            text(CreditTransaction::CreatedBy, ID_LEN),
            text(CreditTransaction::CreatedBySubject, SUBJECT_LEN),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(CreditTransaction::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(CreditTransaction::Table)
                    .col(CreditTransaction::UserId)
                    .col(CreditTransaction::CreatedBy)
                    .col(CreditTransaction::Sequence)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(INDEX)
                    .table(CreditTransaction::Table)
                    .to_owned(),
            )
            .await?;
        for column in [
            CreditTransaction::CreatedBySubject,
            CreditTransaction::CreatedBy,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(CreditTransaction::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
