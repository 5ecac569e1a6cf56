//! Step 6: lots. `credit_lot` keeps each credit that came in (what is left
//! of it, its category, draw priority and expiry) and `credit_allocation`
//! how much each transaction changed each lot. `user_balance` gains the
//! promotional part of the balance, the deficit (credits taken beyond what
//! the lots held), the earliest lot expiry and the sequence lots began at;
//! `credit_hold` gains the lots each hold earmarked.
//!
//! The backfill turns every positive balance into one non-expiring PAID lot
//! (priority 100) whose `held` is the user's held credits (at most the
//! balance), earmarks that lot for the user's ACTIVE holds, oldest first,
//! up to its `held`, and records a negative balance as a deficit. Lot ids
//! are UUID v7 strings made here, so the lots are written in batches of
//! users; everything else is one statement.

use std::collections::HashMap;

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

use crate::columns::{
    CreditAllocation as A, CreditHold as H, CreditLot as L, ID_LEN, User, UserBalance as B,
    credits, new_table, nullable_timestamp, text, timestamp,
};

const LOT_BY_USER_REMAINING: &str = "idx_credit_lot_user_remaining";
const LOT_BY_USER_ID: &str = "idx_credit_lot_user_id";
const ALLOCATION_BY_LOT: &str = "idx_credit_allocation_lot";
/// The verifier reads a user's allocations.
const ALLOCATION_BY_USER: &str = "idx_credit_allocation_user";

/// Users whose lots one statement writes (and whose holds one query reads).
const USERS_PER_BATCH: u64 = 500;
/// Holds whose earmarks one UPDATE writes.
const HOLDS_PER_UPDATE: usize = 500;
/// The category and draw priority of a migrated balance's lot.
const MIGRATED_CATEGORY: &str = "PAID";
const MIGRATED_PRIORITY: i32 = 100;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_database_backend();
        manager
            .create_table(
                new_table(db, L::Table)
                    .col(text(L::Id, 36).not_null().primary_key())
                    .col(text(L::UserId, ID_LEN).not_null())
                    .col(text(L::Category, 16).not_null())
                    .col(ColumnDef::new(L::Priority).integer().not_null())
                    .col(credits(L::GrantedAmount))
                    .col(credits(L::Remaining))
                    .col(credits(L::Held).default(0))
                    .col(credits(L::ReturnedAmount).default(0))
                    .col(credits(L::ExpiredAmount).default(0))
                    .col(nullable_timestamp(db, L::ExpireTime))
                    .col(text(L::SourceTransactionId, 36))
                    .col(timestamp(db, L::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_credit_lot_user")
                            .from(L::Table, L::UserId)
                            .to(User::Table, User::Id),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            (LOT_BY_USER_REMAINING, [L::UserId, L::Remaining]),
            (LOT_BY_USER_ID, [L::UserId, L::Id]),
        ] {
            let mut index = Index::create();
            index.name(name).table(L::Table);
            for col in cols {
                index.col(col);
            }
            manager.create_index(index.to_owned()).await?;
        }
        manager
            .create_table(
                new_table(db, A::Table)
                    .col(text(A::TransactionId, 36).not_null())
                    .col(ColumnDef::new(A::Position).integer().not_null())
                    .col(text(A::UserId, ID_LEN).not_null())
                    .col(text(A::LotId, 36))
                    .col(credits(A::Amount))
                    .primary_key(Index::create().col(A::TransactionId).col(A::Position))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(ALLOCATION_BY_LOT)
                    .table(A::Table)
                    .col(A::LotId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(ALLOCATION_BY_USER)
                    .table(A::Table)
                    .col(A::UserId)
                    .col(A::TransactionId)
                    .to_owned(),
            )
            .await?;
        // One column per statement: SQLite alters one thing at a time.
        for column in [
            credits(B::Promotional).default(0).to_owned(),
            credits(B::Deficit).default(0).to_owned(),
            nullable_timestamp(db, B::LotsExpireAt),
            credits(B::LotsSinceSequence).default(0).to_owned(),
        ] {
            manager
                .alter_table(Table::alter().table(B::Table).add_column(column).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(H::Table)
                    .add_column(ColumnDef::new(H::Earmarks).text().null())
                    .to_owned(),
            )
            .await?;
        backfill(manager).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(H::Table)
                    .drop_column(H::Earmarks)
                    .to_owned(),
            )
            .await?;
        for column in [
            B::LotsSinceSequence,
            B::LotsExpireAt,
            B::Deficit,
            B::Promotional,
        ] {
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
            .drop_table(Table::drop().table(A::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(L::Table).to_owned())
            .await
    }
}

/// One migrated balance's lot.
struct Lot {
    id: String,
    user_id: String,
    balance: i64,
    held: i64,
}

async fn backfill(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let conn = manager.get_connection();
    // Every later transaction has allocations; a negative balance is a
    // deficit (there is no lot to take it from).
    conn.execute(
        Query::update()
            .table(B::Table)
            .value(B::LotsSinceSequence, Expr::col(B::LastSequence))
            .value(
                B::Deficit,
                Expr::case(
                    Expr::col(B::Balance).lt(0),
                    Expr::val(0i64).sub(Expr::col(B::Balance)),
                )
                .finally(0i64),
            ),
    )
    .await?;

    let now = chrono::Utc::now();
    let mut after: Option<String> = None;
    loop {
        let mut select = Query::select();
        select
            .columns([B::UserId, B::Balance, B::Held])
            .from(B::Table)
            .and_where(Expr::col(B::Balance).gt(0i64))
            .order_by(B::UserId, Order::Asc)
            .limit(USERS_PER_BATCH);
        if let Some(after) = &after {
            select.and_where(Expr::col(B::UserId).gt(after.as_str()));
        }
        let rows = conn.query_all(&select).await?;
        let mut lots = Vec::with_capacity(rows.len());
        for row in &rows {
            let balance: i64 = row.try_get("", "balance")?;
            let held: i64 = row.try_get("", "held")?;
            lots.push(Lot {
                id: uuid::Uuid::now_v7().to_string(),
                user_id: row.try_get("", "user_id")?,
                balance,
                held: held.clamp(0, balance),
            });
        }
        let Some(last) = lots.last() else { break };
        after = Some(last.user_id.clone());

        let mut insert = Query::insert();
        insert.into_table(L::Table).columns([
            L::Id,
            L::UserId,
            L::Category,
            L::Priority,
            L::GrantedAmount,
            L::Remaining,
            L::Held,
            L::ReturnedAmount,
            L::ExpiredAmount,
            L::CreatedAt,
        ]);
        for lot in &lots {
            insert.values_panic([
                lot.id.as_str().into(),
                lot.user_id.as_str().into(),
                MIGRATED_CATEGORY.into(),
                MIGRATED_PRIORITY.into(),
                lot.balance.into(),
                lot.balance.into(),
                lot.held.into(),
                0i64.into(),
                0i64.into(),
                now.into(),
            ]);
        }
        conn.execute(&insert).await?;
        earmark(manager, &lots).await?;
        if (rows.len() as u64) < USERS_PER_BATCH {
            break;
        }
    }

    // The ACTIVE holds of users with no lot earmark nothing.
    conn.execute(
        Query::update()
            .table(H::Table)
            .value(H::Earmarks, "[]")
            .and_where(Expr::col(H::State).eq("ACTIVE"))
            .and_where(Expr::col(H::Earmarks).is_null()),
    )
    .await?;
    Ok(())
}

/// Earmarks each lot for its user's ACTIVE holds, oldest first, until the
/// lot's `held` runs out: the hold that crosses it gets what is left, later
/// ones nothing.
async fn earmark(manager: &SchemaManager<'_>, lots: &[Lot]) -> Result<(), DbErr> {
    let conn = manager.get_connection();
    let holds = conn
        .query_all(
            Query::select()
                .columns([H::Id, H::UserId, H::Amount])
                .from(H::Table)
                .and_where(Expr::col(H::State).eq("ACTIVE"))
                .and_where(Expr::col(H::UserId).is_in(lots.iter().map(|lot| lot.user_id.as_str())))
                .order_by(H::UserId, Order::Asc)
                .order_by(H::CreatedAt, Order::Asc)
                .order_by(H::Id, Order::Asc),
        )
        .await?;
    // Per user: the lot and how much of its `held` is not yet earmarked.
    let mut left: HashMap<&str, (&str, i64)> = lots
        .iter()
        .map(|lot| (lot.user_id.as_str(), (lot.id.as_str(), lot.held)))
        .collect();
    let mut earmarks = Vec::with_capacity(holds.len());
    for hold in &holds {
        let id: String = hold.try_get("", "id")?;
        let user_id: String = hold.try_get("", "user_id")?;
        let amount: i64 = hold.try_get("", "amount")?;
        let json = match left.get_mut(user_id.as_str()) {
            Some((lot_id, free)) if amount > 0 && *free > 0 => {
                let take = Ord::min(amount, *free);
                *free -= take;
                format!(r#"[{{"lot_id":"{lot_id}","amount":{take}}}]"#)
            }
            _ => "[]".to_owned(),
        };
        earmarks.push((id, json));
    }
    for chunk in earmarks.chunks(HOLDS_PER_UPDATE) {
        let mut case = CaseStatement::new();
        for (id, json) in chunk {
            case = case.case(Expr::col(H::Id).eq(id.as_str()), json.as_str());
        }
        conn.execute(
            Query::update()
                .table(H::Table)
                .value(H::Earmarks, case)
                .and_where(Expr::col(H::Id).is_in(chunk.iter().map(|(id, _)| id.as_str()))),
        )
        .await?;
    }
    Ok(())
}
