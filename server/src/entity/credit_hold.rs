//! Holds: credits earmarked for one piece of work, from Reserve until one
//! Capture, Release or expiry closes them.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credit_hold")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub user_id: String,
    pub amount: i64,
    pub captured_amount: i64,
    /// `ACTIVE`, `CAPTURED`, `RELEASED` or `EXPIRED` (as last written: an
    /// ACTIVE hold past its expire_time is expired all the same).
    pub state: String,
    /// The usage details as JSON text.
    #[sea_orm(column_type = "Text", nullable)]
    pub usage: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub metadata: Option<String>,
    pub created_at: DateTimeUtc,
    pub expire_time: DateTimeUtc,
    pub closed_at: Option<DateTimeUtc>,
    pub capture_transaction_id: Option<String>,
    /// The Reserve's key and fingerprint, and the answer it got.
    pub idempotency_key: String,
    pub fingerprint: String,
    pub reserve_balance: i64,
    pub reserve_available: i64,
    /// The closing Capture's or Release's key and fingerprint, and its answer.
    pub close_key: Option<String>,
    pub close_fingerprint: Option<String>,
    pub close_balance: Option<i64>,
    pub close_available: Option<i64>,
    pub release_reason: Option<String>,
    pub created_by: Option<String>,
    /// The lots the hold earmarked at reserve time, in draw order, as JSON
    /// `[{"lot_id": .., "amount": ..}]`.
    #[sea_orm(column_type = "Text", nullable)]
    pub earmarks: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
