//! The write path: one balance change, one database transaction.
//!
//! Why it is correct (see also `DESIGN.md`):
//! 1. The user's `user_balance` row is locked first (`SELECT ... FOR UPDATE`
//!    on PostgreSQL/MySQL; `BEGIN IMMEDIATE` on SQLite). The row exists from
//!    the moment the user does, so there is always something to lock: no
//!    "insert if missing" race can lose a first write. All writes of one
//!    user therefore run one at a time, in any number of server processes;
//!    other users' rows are not touched.
//! 2. The idempotency lookup runs under that lock, so a concurrent duplicate
//!    waits for the first to commit and then finds it. The unique index on
//!    (user_id, idempotency_key) is the last line of defence.
//! 3. The new balance is computed with checked arithmetic and the rules of
//!    the operation; a failure rolls everything back.
//! 4. The balance row and the log row are written in the same transaction:
//!    `sequence = last_sequence + 1` and `running_balance = new balance`, so
//!    sequences have no gaps and running balances chain.
//! 5. The caller is answered only after the commit.

use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, QuerySelect,
    sea_query::Expr,
};
use uuid::Uuid;

use super::fingerprint::fingerprint;
use super::model::{Operation, Transaction, TxKind, Usage, WriteOutcome, WriteRequest};
use super::rows::to_row;
use super::{Ledger, now};
use crate::entity::{credit_transaction as ctx, user_balance};
use crate::error::LedgerError;

impl Ledger {
    /// Applies one write, or answers a retry of it from the stored original.
    pub async fn write(&self, req: WriteRequest) -> Result<WriteOutcome, LedgerError> {
        let fingerprint = fingerprint(&req);
        let txn = self.begin_write().await?;
        match apply(&txn.txn, &req, fingerprint).await {
            Ok(outcome) if outcome.replayed => {
                txn.rollback().await;
                Ok(outcome)
            }
            Ok(outcome) => {
                txn.commit().await?;
                Ok(outcome)
            }
            Err(err) => {
                txn.rollback().await;
                Err(err)
            }
        }
    }
}

/// The balance change an operation makes, worked out under the row lock.
struct Change {
    kind: TxKind,
    delta: i64,
    /// Whether the new balance may be negative (only a TOP_UP refund: that
    /// money went back to the payer whatever the balance is).
    may_go_negative: bool,
    usage: Option<Usage>,
    reason: Option<String>,
    /// A refund's target row and its refunded total after this refund.
    refund_of: Option<(String, i64, i64)>,
}

async fn apply<C: ConnectionTrait>(
    db: &C,
    req: &WriteRequest,
    fingerprint: String,
) -> Result<WriteOutcome, LedgerError> {
    let balance = user_balance::Entity::find_by_id(req.user_id.clone())
        .lock_exclusive()
        .one(db)
        .await?
        .ok_or_else(|| LedgerError::UserNotFound(req.user_id.clone()))?;

    let key = match &req.idempotency_key {
        Some(key) => {
            if let Some(original) = find_by_key(db, &req.user_id, key).await? {
                if original.fingerprint != fingerprint {
                    return Err(LedgerError::IdempotencyKeyReused(key.clone()));
                }
                let transaction = Transaction::try_from(original)?;
                return Ok(WriteOutcome {
                    balance: transaction.running_balance,
                    transaction,
                    replayed: true,
                });
            }
            key.clone()
        }
        None => format!("server-{}", Uuid::new_v4()),
    };

    let change = plan(db, req).await?;
    let new_balance =
        balance
            .balance
            .checked_add(change.delta)
            .ok_or(LedgerError::BalanceOverflow {
                balance: balance.balance,
                delta: change.delta,
            })?;
    if new_balance < 0 && !change.may_go_negative {
        return Err(LedgerError::InsufficientBalance {
            available: balance.balance,
            requested: -change.delta,
        });
    }

    let sequence = balance.last_sequence + 1;
    let created_at = now();
    // Guarded by the old sequence: under the row lock it always matches; if
    // it ever did not, failing beats writing a gap or a fork.
    let updated = user_balance::Entity::update_many()
        .col_expr(user_balance::Column::Balance, Expr::value(new_balance))
        .col_expr(user_balance::Column::LastSequence, Expr::value(sequence))
        .col_expr(user_balance::Column::UpdatedAt, Expr::value(created_at))
        .filter(user_balance::Column::UserId.eq(&req.user_id))
        .filter(user_balance::Column::LastSequence.eq(balance.last_sequence))
        .exec(db)
        .await?;
    if updated.rows_affected != 1 {
        return Err(LedgerError::Conflict(format!(
            "user_balance of {} changed under its row lock",
            req.user_id
        )));
    }

    if let Some((target, before, after)) = &change.refund_of {
        let updated = ctx::Entity::update_many()
            .col_expr(ctx::Column::RefundedAmount, Expr::value(*after))
            .filter(ctx::Column::Id.eq(target))
            .filter(ctx::Column::RefundedAmount.eq(*before))
            .exec(db)
            .await?;
        if updated.rows_affected != 1 {
            return Err(LedgerError::Conflict(format!(
                "refunded total of {target} changed"
            )));
        }
    }

    let transaction = Transaction {
        id: Uuid::now_v7().to_string(),
        user_id: req.user_id.clone(),
        kind: change.kind,
        amount: change.delta,
        running_balance: new_balance,
        sequence,
        idempotency_key: key,
        usage: change.usage,
        reason: change.reason,
        metadata: req.metadata.clone(),
        refunded_transaction_id: change.refund_of.map(|(target, _, _)| target),
        refunded_amount: 0,
        created_at,
    };
    ctx::Entity::insert(to_row(&transaction, fingerprint).into_active_model())
        .exec_without_returning(db)
        .await?;
    Ok(WriteOutcome {
        transaction,
        balance: new_balance,
        replayed: false,
    })
}

async fn find_by_key<C: ConnectionTrait>(
    db: &C,
    user_id: &str,
    key: &str,
) -> Result<Option<ctx::Model>, LedgerError> {
    Ok(ctx::Entity::find()
        .filter(ctx::Column::UserId.eq(user_id))
        .filter(ctx::Column::IdempotencyKey.eq(key))
        .one(db)
        .await?)
}

/// Works out the change `req` makes, checking the operation's own rules.
async fn plan<C: ConnectionTrait>(db: &C, req: &WriteRequest) -> Result<Change, LedgerError> {
    let simple = |kind, delta, usage, reason| Change {
        kind,
        delta,
        may_go_negative: false,
        usage,
        reason,
        refund_of: None,
    };
    Ok(match &req.operation {
        Operation::TopUp { amount } => simple(TxKind::TopUp, *amount, None, None),
        Operation::Grant { amount, reason } => simple(TxKind::Grant, *amount, None, reason.clone()),
        Operation::Spend { amount, usage } => {
            simple(TxKind::Usage, -amount, Some(usage.clone()), None)
        }
        Operation::Refund {
            transaction_id,
            amount,
            reason,
        } => {
            let target = ctx::Entity::find_by_id(transaction_id.clone())
                .filter(ctx::Column::UserId.eq(&req.user_id))
                .one(db)
                .await?
                .ok_or_else(|| LedgerError::TransactionNotFound {
                    user_id: req.user_id.clone(),
                    transaction_id: transaction_id.clone(),
                })?;
            let kind = TxKind::parse(&target.r#type).unwrap_or(TxKind::CardCheck);
            // USAGE gives credits back; TOP_UP and GRANT take them away.
            let (sign, may_go_negative) = match kind {
                TxKind::Usage => (1, false),
                TxKind::TopUp => (-1, true),
                TxKind::Grant => (-1, false),
                TxKind::Refund | TxKind::CardCheck => {
                    return Err(LedgerError::NotRefundable {
                        transaction_id: transaction_id.clone(),
                        kind: kind.as_str(),
                    });
                }
            };
            let remaining = target.amount.saturating_abs() - target.refunded_amount;
            let requested = amount.unwrap_or(remaining);
            if requested > remaining || requested <= 0 {
                return Err(LedgerError::RefundExceedsOriginal {
                    transaction_id: transaction_id.clone(),
                    remaining,
                    requested,
                });
            }
            Change {
                kind: TxKind::Refund,
                delta: sign * requested,
                may_go_negative,
                usage: None,
                reason: reason.clone(),
                refund_of: Some((
                    target.id,
                    target.refunded_amount,
                    target.refunded_amount + requested,
                )),
            }
        }
    })
}
