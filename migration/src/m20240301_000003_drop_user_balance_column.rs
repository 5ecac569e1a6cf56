//! Step 3: `user.balance` is gone, so nothing can read or write a stale
//! balance. `down` restores the column from `user_balance`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::Statement;

use crate::columns::{User, quoted_user_table};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(User::Table)
                    .drop_column(User::Balance)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_database_backend();
        manager
            .alter_table(
                Table::alter()
                    .table(User::Table)
                    .add_column(ColumnDef::new(User::Balance).big_integer().null())
                    .to_owned(),
            )
            .await?;
        let user = quoted_user_table(db);
        let sql = format!(
            "UPDATE {user} SET balance = \
             (SELECT b.balance FROM user_balance b WHERE b.user_id = {user}.id)"
        );
        manager
            .get_connection()
            .execute_raw(Statement::from_string(db, sql))
            .await?;
        Ok(())
    }
}
