//! Step 8: the change feed. Every transaction gets a `feed_position` after
//! it has committed, from one sequencer at a time (`feed_sequencer` holds
//! the last position given out); `server/src/ledger/feed.rs` argues why a
//! reader that resumes after a position never skips a row. Existing rows
//! are numbered here, user by user in sequence order, so the feed starts
//! with the whole history.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

use crate::columns::{CreditTransaction as Tx, FeedSequencer as S};

const BY_POSITION: &str = "idx_credit_transaction_feed_position";
const BY_USER_POSITION: &str = "idx_credit_transaction_user_feed_position";

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Tx::Table)
                    .add_column(ColumnDef::new(Tx::FeedPosition).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(S::Table)
                    .col(ColumnDef::new(S::Id).integer().not_null().primary_key())
                    .col(ColumnDef::new(S::LastPosition).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        number_existing_rows(manager).await?;
        // Unique: a position is given once (a second sequencer that somehow
        // repeated one would fail instead of forking the feed). NULLs (rows
        // not yet sequenced) do not collide on any of the three databases.
        manager
            .create_index(
                Index::create()
                    .name(BY_POSITION)
                    .table(Tx::Table)
                    .col(Tx::FeedPosition)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(BY_USER_POSITION)
                    .table(Tx::Table)
                    .col(Tx::UserId)
                    .col(Tx::FeedPosition)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in [BY_USER_POSITION, BY_POSITION] {
            manager
                .drop_index(Index::drop().name(name).table(Tx::Table).to_owned())
                .await?;
        }
        manager
            .drop_table(Table::drop().table(S::Table).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Tx::Table)
                    .drop_column(Tx::FeedPosition)
                    .to_owned(),
            )
            .await
    }
}

/// Positions 1..n for the rows that exist, user by user in sequence order
/// (per-user order is what the feed promises; the order across users of
/// rows written before the feed existed is not known), and the sequencer's
/// row after them.
async fn number_existing_rows(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let conn = manager.get_connection();
    let backend = manager.get_database_backend();
    let numbered = "SELECT id, ROW_NUMBER() OVER (ORDER BY user_id, sequence) AS n \
                    FROM credit_transaction";
    let update = match backend {
        DbBackend::MySql => format!(
            "UPDATE credit_transaction t JOIN ({numbered}) k ON t.id = k.id \
             SET t.feed_position = k.n"
        ),
        DbBackend::Postgres => format!(
            "UPDATE credit_transaction t SET feed_position = k.n \
             FROM ({numbered}) k WHERE t.id = k.id"
        ),
        _ => format!(
            "UPDATE credit_transaction SET feed_position = k.n \
             FROM ({numbered}) AS k WHERE credit_transaction.id = k.id"
        ),
    };
    conn.execute_unprepared(&update).await?;
    conn.execute_unprepared(
        "INSERT INTO feed_sequencer (id, last_position) \
         SELECT 1, COALESCE(MAX(feed_position), 0) FROM credit_transaction",
    )
    .await?;
    Ok(())
}
