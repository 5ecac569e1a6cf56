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
    /// The part of `balance` in PROMOTIONAL lots (the rest is PAID).
    pub promotional: i64,
    /// Credits a TOP_UP refund took beyond what the lots held; the next
    /// credit pays it back first. `balance == sum(lot remaining) - deficit`.
    pub deficit: i64,
    /// The earliest expire_time among lots with unearmarked credit left (a
    /// lower bound: see `ledger/lots.rs`); none when no such lot expires.
    pub lots_expire_at: Option<DateTimeUtc>,
    /// The user's last sequence when lots began (the migration): every
    /// later transaction has allocations that add up to its amount.
    pub lots_since_sequence: i64,
    /// Balance alerts in force (`ledger/alerts.rs`): 0 means a write needs
    /// no alert lookup.
    pub alert_count: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
