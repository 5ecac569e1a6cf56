//! Column shapes shared by the migrations, and the table names.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

/// Longest user id, idempotency key or other caller-chosen identifier.
pub const ID_LEN: u32 = 128;

/// A timestamp with microsecond precision on every backend. MySQL's
/// `TIMESTAMP` keeps whole seconds and ends in 2038, so it gets `DATETIME(6)`
/// (always written in UTC by the server).
pub fn timestamp(backend: DbBackend, name: impl IntoIden) -> ColumnDef {
    let mut col = ColumnDef::new(name);
    match backend {
        DbBackend::MySql => col.custom("DATETIME(6)"),
        _ => col.timestamp_with_time_zone(),
    };
    col.not_null();
    col
}

/// A nullable timestamp (see [`timestamp`]).
pub fn nullable_timestamp(backend: DbBackend, name: impl IntoIden) -> ColumnDef {
    let mut col = ColumnDef::new(name);
    match backend {
        DbBackend::MySql => col.custom("DATETIME(6)"),
        _ => col.timestamp_with_time_zone(),
    };
    col.null();
    col
}

/// A non-null `BIGINT` credit amount.
pub fn credits(name: impl IntoIden) -> ColumnDef {
    ColumnDef::new(name).big_integer().not_null().to_owned()
}

/// A `VARCHAR(len)`, nullable unless `not_null` is called on the result.
pub fn text(name: impl IntoIden, len: u32) -> ColumnDef {
    ColumnDef::new(name).string_len(len).to_owned()
}

/// The `user` table.
#[derive(DeriveIden)]
pub enum User {
    Table,
    Id,
    Email,
    Name,
    /// The legacy balance column, dropped by step 3.
    Balance,
    CreatedAt,
    UpdatedAt,
}

/// The `credit_transaction` table.
#[derive(DeriveIden)]
pub enum CreditTransaction {
    Table,
    Id,
    UserId,
    Sequence,
    Type,
    Amount,
    RunningBalance,
    IdempotencyKey,
    Fingerprint,
    RefundedTransactionId,
    RefundedAmount,
    GraphExecId,
    GraphId,
    NodeId,
    NodeExecId,
    BlockId,
    Reason,
    Metadata,
    CreatedAt,
    /// Added by step 4: who made the write.
    CreatedBy,
    CreatedBySubject,
    /// Added by step 5: the hold a capture's USAGE transaction settled.
    HoldId,
    /// Added by step 8: the transaction's place in the change feed, given
    /// after it committed (NULL until then).
    FeedPosition,
}

/// The `feed_sequencer` table (step 8): one row, the last feed position
/// given out.
#[derive(DeriveIden)]
pub enum FeedSequencer {
    Table,
    Id,
    LastPosition,
}

/// The `user_balance` table.
#[derive(DeriveIden)]
pub enum UserBalance {
    Table,
    UserId,
    Balance,
    OpeningBalance,
    LastSequence,
    UpdatedAt,
    /// Added by step 5: the credits of ACTIVE holds, and the earliest
    /// expire_time among them.
    Held,
    HoldsExpireAt,
    /// How many holds the user ever had: a user with none needs no hold
    /// lookups on its write path.
    HoldCount,
    /// Added by step 6: the part of the balance in PROMOTIONAL lots, the
    /// credits taken beyond what the lots held, the earliest expiry among
    /// lots with free credit, and the last sequence when lots began.
    Promotional,
    Deficit,
    LotsExpireAt,
    LotsSinceSequence,
    /// Added by step 9: balance alerts in force; a user with none needs no
    /// alert lookups on its write path.
    AlertCount,
}

/// The `balance_alert` table (step 9).
#[derive(DeriveIden)]
pub enum BalanceAlert {
    Table,
    Id,
    UserId,
    Threshold,
    Armed,
    IdempotencyKey,
    CreatedAt,
    CreatedSequence,
    CreatedArmed,
    DeletedAt,
    DeletedSequence,
}

/// The `alert_event` table (step 9).
#[derive(DeriveIden)]
pub enum AlertEvent {
    Table,
    Id,
    AlertId,
    UserId,
    Threshold,
    BalanceBefore,
    BalanceAfter,
    TransactionId,
    Sequence,
    CreatedAt,
    FeedPosition,
}

/// The `credit_hold` table (step 5).
#[derive(DeriveIden)]
pub enum CreditHold {
    Table,
    Id,
    UserId,
    Amount,
    CapturedAmount,
    State,
    Usage,
    Metadata,
    CreatedAt,
    ExpireTime,
    ClosedAt,
    CaptureTransactionId,
    IdempotencyKey,
    Fingerprint,
    ReserveBalance,
    ReserveAvailable,
    CloseKey,
    CloseFingerprint,
    CloseBalance,
    CloseAvailable,
    ReleaseReason,
    CreatedBy,
    /// Added by step 6: the lots the hold earmarked, as JSON text.
    Earmarks,
}

/// The `credit_lot` table (step 6).
#[derive(DeriveIden)]
pub enum CreditLot {
    Table,
    Id,
    UserId,
    Category,
    Priority,
    GrantedAmount,
    Remaining,
    Held,
    ReturnedAmount,
    ExpiredAmount,
    ExpireTime,
    SourceTransactionId,
    CreatedAt,
}

/// The `credit_allocation` table (step 6).
#[derive(DeriveIden)]
pub enum CreditAllocation {
    Table,
    TransactionId,
    Position,
    UserId,
    LotId,
    Amount,
}

/// A new table, compared byte for byte on MySQL/MariaDB: their default
/// collation ignores case and accents, which would make "ALICE" the same
/// user as "alice" and "KEY" the same idempotency key as "key".
pub fn new_table(backend: DbBackend, name: impl IntoIden) -> TableCreateStatement {
    let mut table = Table::create();
    table.table(name);
    if backend == DbBackend::MySql {
        table.character_set("utf8mb4").collate("utf8mb4_bin");
    }
    table
}

/// The `user` table's name quoted for raw SQL on `backend`.
pub fn quoted_user_table(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::MySql => "`user`",
        _ => "\"user\"",
    }
}

/// The `relay_cursor` table (step 10): where each broker relay is in the
/// change feed.
#[derive(DeriveIden)]
pub enum RelayCursor {
    Table,
    Name,
    Position,
    UpdatedAt,
}
