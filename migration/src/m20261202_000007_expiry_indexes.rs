//! Step 7: indexes on the two expiry bounds of `user_balance`
//! (`lots_expire_at`, `holds_expire_at`), so the expiry sweeper finds the
//! users with an expiry due without reading every balance row. Writes keep
//! both columns as they were unless an expiry changes, so the indexes cost
//! a write little.

use sea_orm_migration::prelude::*;

use crate::columns::UserBalance as B;

const BY_LOTS_EXPIRY: &str = "idx_user_balance_lots_expire_at";
const BY_HOLDS_EXPIRY: &str = "idx_user_balance_holds_expire_at";

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, col) in [
            (BY_LOTS_EXPIRY, B::LotsExpireAt),
            (BY_HOLDS_EXPIRY, B::HoldsExpireAt),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(B::Table)
                        .col(col)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in [BY_LOTS_EXPIRY, BY_HOLDS_EXPIRY] {
            manager
                .drop_index(Index::drop().name(name).table(B::Table).to_owned())
                .await?;
        }
        Ok(())
    }
}
