//! Step 1, the legacy schema: `user` still carries a nullable `balance`, and
//! `credit_transaction` is the append-only log.

use sea_orm_migration::prelude::*;

use crate::columns::{CreditTransaction as Tx, ID_LEN, User, credits, new_table, text, timestamp};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_database_backend();
        manager
            .create_table(
                new_table(db, User::Table)
                    .col(text(User::Id, ID_LEN).not_null().primary_key())
                    .col(text(User::Email, 320).not_null().unique_key())
                    .col(text(User::Name, 256).not_null().default(""))
                    .col(ColumnDef::new(User::Balance).big_integer().null())
                    .col(timestamp(db, User::CreatedAt))
                    .col(timestamp(db, User::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                new_table(db, Tx::Table)
                    .col(text(Tx::Id, 36).not_null().primary_key())
                    .col(text(Tx::UserId, ID_LEN).not_null())
                    .col(credits(Tx::Sequence))
                    .col(text(Tx::Type, 32).not_null())
                    .col(credits(Tx::Amount))
                    .col(credits(Tx::RunningBalance))
                    .col(text(Tx::IdempotencyKey, ID_LEN).not_null())
                    // SHA-256 (hex) of the request's parameters, to tell a
                    // retry from a reuse of its idempotency key.
                    .col(text(Tx::Fingerprint, 64).not_null())
                    .col(text(Tx::RefundedTransactionId, 36))
                    .col(credits(Tx::RefundedAmount).default(0))
                    .col(text(Tx::GraphExecId, 256))
                    .col(text(Tx::GraphId, 256))
                    .col(text(Tx::NodeId, 256))
                    .col(text(Tx::NodeExecId, 256))
                    .col(text(Tx::BlockId, 256))
                    .col(text(Tx::Reason, 256))
                    // Caller metadata as JSON text, stored verbatim.
                    .col(ColumnDef::new(Tx::Metadata).text())
                    .col(timestamp(db, Tx::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_credit_transaction_user")
                            .from(Tx::Table, Tx::UserId)
                            .to(User::Table, User::Id),
                    )
                    .to_owned(),
            )
            .await?;

        // Unique per user: a retry finds its original by key, and the
        // sequence has no duplicates; both are the last line of defence
        // behind the row lock.
        for (name, [first, second]) in [
            (
                "ux_credit_transaction_user_key",
                [Tx::UserId, Tx::IdempotencyKey],
            ),
            (
                "ux_credit_transaction_user_sequence",
                [Tx::UserId, Tx::Sequence],
            ),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Tx::Table)
                        .col(first)
                        .col(second)
                        .unique()
                        .to_owned(),
                )
                .await?;
        }
        for (name, [first, second]) in [
            (
                "ix_credit_transaction_user_created",
                [Tx::UserId, Tx::CreatedAt],
            ),
            (
                "ix_credit_transaction_user_graph_exec",
                [Tx::UserId, Tx::GraphExecId],
            ),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Tx::Table)
                        .col(first)
                        .col(second)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Tx::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(User::Table).to_owned())
            .await
    }
}
