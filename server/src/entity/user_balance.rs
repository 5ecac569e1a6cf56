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
    /// The credits of the user's ACTIVE holds (expired ones included until
    /// a write or read notices them: see `holds_expire_at`).
    pub held: i64,
    /// The earliest expire_time among ACTIVE holds; none when there are none.
    pub holds_expire_at: Option<DateTimeUtc>,
    /// Holds the user ever had.
    pub hold_count: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
