//! The append-only ledger: one row per applied balance change.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credit_transaction")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub user_id: String,
    pub sequence: i64,
    /// `TOP_UP`, `USAGE`, `GRANT`, `REFUND` or `CARD_CHECK`.
    pub r#type: String,
    pub amount: i64,
    pub running_balance: i64,
    pub idempotency_key: String,
    pub fingerprint: String,
    pub refunded_transaction_id: Option<String>,
    pub refunded_amount: i64,
    pub graph_exec_id: Option<String>,
    pub graph_id: Option<String>,
    pub node_id: Option<String>,
    pub node_exec_id: Option<String>,
    pub block_id: Option<String>,
    pub reason: Option<String>,
    /// Caller metadata as JSON text.
    #[sea_orm(column_type = "Text", nullable)]
    pub metadata: Option<String>,
    pub created_at: DateTimeUtc,
    /// The API key name the write was made with (`anonymous` without keys).
    pub created_by: Option<String>,
    /// The writer's TLS client-certificate subject, if any.
    pub created_by_subject: Option<String>,
    /// The hold a capture's USAGE transaction settled.
    pub hold_id: Option<String>,
    /// The transaction's place in the change feed, given by the sequencer
    /// after it committed (`ledger/feed.rs`); NULL until then.
    pub feed_position: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
