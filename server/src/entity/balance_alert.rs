//! Low-balance alerts: a threshold per row, armed while the balance is at
//! or above it since the last event.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "balance_alert")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub user_id: String,
    pub threshold: i64,
    /// Whether the next downward crossing records an event.
    pub armed: bool,
    /// The key it was set with, if the caller gave one.
    pub idempotency_key: Option<String>,
    pub created_at: DateTimeUtc,
    /// The user's last sequence when it was set, and whether it was armed
    /// then: the verifier replays every crossing from there.
    pub created_sequence: i64,
    pub created_armed: bool,
    pub deleted_at: Option<DateTimeUtc>,
    /// The user's last sequence when it was removed.
    pub deleted_sequence: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
