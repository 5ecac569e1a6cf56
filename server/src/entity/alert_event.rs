//! Alert events: one row per downward crossing of an alert's threshold,
//! written in the transaction of the write that crossed it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "alert_event")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub alert_id: String,
    pub user_id: String,
    pub threshold: i64,
    pub balance_before: i64,
    pub balance_after: i64,
    pub transaction_id: String,
    pub sequence: i64,
    pub created_at: DateTimeUtc,
    /// The place in the change feed, given after commit (`ledger/feed.rs`).
    pub feed_position: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
