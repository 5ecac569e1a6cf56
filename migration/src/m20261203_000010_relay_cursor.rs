//! Step 10: where each broker relay (`credit-server relay`) is in the change
//! feed. A relay stores its cursor here only after the broker confirmed
//! every message up to it, so a relay killed at any point resumes without
//! a gap (and the broker drops the repeats by message id).

use sea_orm_migration::prelude::*;

use crate::columns::{ID_LEN, RelayCursor as R, text, timestamp};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        manager
            .create_table(
                Table::create()
                    .table(R::Table)
                    .col(text(R::Name, ID_LEN).not_null().primary_key())
                    .col(ColumnDef::new(R::Position).big_integer().not_null())
                    .col(timestamp(backend, R::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(R::Table).to_owned())
            .await
    }
}
