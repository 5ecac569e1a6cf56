//! Step 5: holds. `credit_hold` keeps each hold (its reserve and its one
//! close, each with the idempotency key, fingerprint and answer a retry
//! replays); `user_balance.held` is the sum of the user's ACTIVE holds and
//! `holds_expire_at` the earliest expire_time among them, so a balance read
//! stays one row until a hold expires; a capture's USAGE transaction names
//! its hold.

use sea_orm_migration::prelude::*;

use crate::columns::{
    CreditHold as H, CreditTransaction as Tx, ID_LEN, User, UserBalance as B, credits, new_table,
    nullable_timestamp, text, timestamp,
};

const BY_USER_STATE: &str = "idx_credit_hold_user_state_expire";
const BY_USER_ID: &str = "idx_credit_hold_user_id";
const RESERVE_KEY: &str = "uq_credit_hold_user_key";
const CLOSE_KEY: &str = "uq_credit_hold_user_close_key";

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_database_backend();
        manager
            .create_table(
                new_table(db, H::Table)
                    .col(text(H::Id, 36).not_null().primary_key())
                    .col(text(H::UserId, ID_LEN).not_null())
                    .col(credits(H::Amount))
                    .col(credits(H::CapturedAmount).default(0))
                    .col(text(H::State, 16).not_null())
                    .col(ColumnDef::new(H::Usage).text())
                    .col(ColumnDef::new(H::Metadata).text())
                    .col(timestamp(db, H::CreatedAt))
                    .col(timestamp(db, H::ExpireTime))
                    .col(nullable_timestamp(db, H::ClosedAt))
                    .col(text(H::CaptureTransactionId, 36))
                    .col(text(H::IdempotencyKey, ID_LEN).not_null())
                    .col(text(H::Fingerprint, 64).not_null())
                    .col(credits(H::ReserveBalance))
                    .col(credits(H::ReserveAvailable))
                    .col(text(H::CloseKey, ID_LEN))
                    .col(text(H::CloseFingerprint, 64))
                    .col(ColumnDef::new(H::CloseBalance).big_integer().null())
                    .col(ColumnDef::new(H::CloseAvailable).big_integer().null())
                    .col(text(H::ReleaseReason, 256))
                    .col(text(H::CreatedBy, ID_LEN))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_credit_hold_user")
                            .from(H::Table, H::UserId)
                            .to(User::Table, User::Id),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, cols, unique) in [
            (RESERVE_KEY, vec![H::UserId, H::IdempotencyKey], true),
            (CLOSE_KEY, vec![H::UserId, H::CloseKey], true),
            (
                BY_USER_STATE,
                vec![H::UserId, H::State, H::ExpireTime],
                false,
            ),
            (BY_USER_ID, vec![H::UserId, H::Id], false),
        ] {
            let mut index = Index::create();
            index.name(name).table(H::Table);
            for col in cols {
                index.col(col);
            }
            if unique {
                index.unique();
            }
            manager.create_index(index.to_owned()).await?;
        }
        // One column per statement: SQLite alters one thing at a time.
        for column in [
            credits(B::Held).default(0).to_owned(),
            nullable_timestamp(db, B::HoldsExpireAt),
            credits(B::HoldCount).default(0).to_owned(),
        ] {
            manager
                .alter_table(Table::alter().table(B::Table).add_column(column).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Tx::Table)
                    .add_column(text(Tx::HoldId, 36))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Tx::Table)
                    .drop_column(Tx::HoldId)
                    .to_owned(),
            )
            .await?;
        for column in [B::HoldCount, B::HoldsExpireAt, B::Held] {
            manager
                .alter_table(
                    Table::alter()
                        .table(B::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(H::Table).to_owned())
            .await
    }
}
