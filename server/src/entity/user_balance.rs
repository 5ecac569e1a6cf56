//! One row per user: the single source of truth for the balance, and the row
//! every write for that user locks.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user_balance")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    pub balance: i64,
    /// The part of a migrated legacy balance that no ledger row explains.
    pub opening_balance: i64,
    /// The sequence of the user's latest transaction (0 before any).
    pub last_sequence: i64,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
