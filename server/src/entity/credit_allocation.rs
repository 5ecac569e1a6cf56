//! Allocations: how much each transaction changed each lot, so every
//! credit can be traced from the lot it came from to the work it paid for.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credit_allocation")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub transaction_id: String,
    /// The allocation's place among its transaction's (draw order).
    #[sea_orm(primary_key, auto_increment = false)]
    pub position: i32,
    pub user_id: String,
    /// None: the user's deficit (credit a TOP_UP refund took beyond what
    /// the lots held, or that a later credit paid back).
    pub lot_id: Option<String>,
    /// The transaction's change to the lot's remaining credits (signed like
    /// the transaction's amount; the allocations of one transaction add up
    /// to its amount).
    pub amount: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
