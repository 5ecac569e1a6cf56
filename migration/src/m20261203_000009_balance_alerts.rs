//! Step 9: low-balance alerts. `balance_alert` holds each user's thresholds
//! (with the sequence and armed state they were set at, so the verifier can
//! replay every crossing since); `alert_event` records each downward
//! crossing, written in the transaction of the write that crossed, and
//! numbered into the change feed like a transaction (`feed_position`).
//! `user_balance.alert_count` lets a write of a user without alerts skip
//! the alert lookup.

use sea_orm_migration::prelude::*;

use crate::columns::{
    AlertEvent as E, BalanceAlert as A, ID_LEN, UserBalance as B, credits, nullable_timestamp,
    text, timestamp,
};

const ALERT_BY_USER: &str = "idx_balance_alert_user";
const ALERT_BY_KEY: &str = "idx_balance_alert_user_key";
const EVENT_BY_USER: &str = "idx_alert_event_user_sequence";
const EVENT_BY_POSITION: &str = "idx_alert_event_feed_position";

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        manager
            .alter_table(
                Table::alter()
                    .table(B::Table)
                    .add_column(
                        ColumnDef::new(B::AlertCount)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(A::Table)
                    .col(text(A::Id, 36).not_null().primary_key())
                    .col(text(A::UserId, ID_LEN).not_null())
                    .col(credits(A::Threshold))
                    .col(ColumnDef::new(A::Armed).boolean().not_null())
                    .col(text(A::IdempotencyKey, ID_LEN).null())
                    .col(timestamp(backend, A::CreatedAt))
                    .col(ColumnDef::new(A::CreatedSequence).big_integer().not_null())
                    .col(ColumnDef::new(A::CreatedArmed).boolean().not_null())
                    .col(nullable_timestamp(backend, A::DeletedAt))
                    .col(ColumnDef::new(A::DeletedSequence).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(ALERT_BY_USER)
                    .table(A::Table)
                    .col(A::UserId)
                    .col(A::Threshold)
                    .to_owned(),
            )
            .await?;
        // NULL keys (alerts set without one) do not collide.
        manager
            .create_index(
                Index::create()
                    .name(ALERT_BY_KEY)
                    .table(A::Table)
                    .col(A::UserId)
                    .col(A::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(E::Table)
                    .col(text(E::Id, 36).not_null().primary_key())
                    .col(text(E::AlertId, 36).not_null())
                    .col(text(E::UserId, ID_LEN).not_null())
                    .col(credits(E::Threshold))
                    .col(credits(E::BalanceBefore))
                    .col(credits(E::BalanceAfter))
                    .col(text(E::TransactionId, 36).not_null())
                    .col(ColumnDef::new(E::Sequence).big_integer().not_null())
                    .col(timestamp(backend, E::CreatedAt))
                    .col(ColumnDef::new(E::FeedPosition).big_integer().null())
                    .to_owned(),
            )
            .await?;
        // One event per alert and crossing transaction, whatever happens.
        manager
            .create_index(
                Index::create()
                    .name(EVENT_BY_USER)
                    .table(E::Table)
                    .col(E::UserId)
                    .col(E::Sequence)
                    .col(E::AlertId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(EVENT_BY_POSITION)
                    .table(E::Table)
                    .col(E::FeedPosition)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(E::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(A::Table).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(B::Table)
                    .drop_column(B::AlertCount)
                    .to_owned(),
            )
            .await
    }
}
