//! Lots: each credit that came in (a top-up, a grant, or a migrated legacy
//! balance), with what is left of it, its draw priority and its expiry.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credit_lot")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub user_id: String,
    /// `PAID` or `PROMOTIONAL`.
    pub category: String,
    /// 0-100, lower is drawn first.
    pub priority: i32,
    pub granted_amount: i64,
    /// Credits not yet spent nor expired, earmarked ones included.
    pub remaining: i64,
    /// The part of `remaining` earmarked by ACTIVE holds (as last written).
    pub held: i64,
    /// Credits refunds put back into this lot.
    pub returned_amount: i64,
    /// Credits EXPIRATION transactions took from this lot.
    pub expired_amount: i64,
    pub expire_time: Option<DateTimeUtc>,
    /// The TOP_UP or GRANT that made it (none for a migrated balance).
    pub source_transaction_id: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
