//! The money rules of one write, with no database: what an operation does
//! to a balance and when it is refused. The batch (`batch.rs`) feeds them the
//! locked state and writes what they decide.

use std::collections::HashMap;

use super::error::LedgerError;
use super::model::{Operation, TxKind, Usage};
use crate::entity::credit_transaction as ctx;

/// A user's balance row as the current batch sees it (locked).
#[derive(Debug, Clone)]
pub struct Account {
    pub balance: i64,
    pub last_sequence: i64,
}

/// A refund target as the current batch sees it: the stored row with the
/// refunded total including this batch's earlier refunds.
#[derive(Debug, Clone)]
pub struct RefundTarget {
    pub row: ctx::Model,
    pub refunded: i64,
}

/// The balance change a request makes.
#[derive(Debug)]
pub struct Change {
    pub kind: TxKind,
    pub delta: i64,
    pub usage: Option<Usage>,
    pub reason: Option<String>,
    /// A refund's target and how much of it this refund returns.
    pub refund_of: Option<(String, i64)>,
    /// Only a TOP_UP refund may take the balance below zero: that money went
    /// back to the payer whatever the balance is.
    may_go_negative: bool,
}

/// Works out what `op` of `user_id` does, checking the operation's own rules.
pub fn plan(
    user_id: &str,
    op: &Operation,
    targets: &HashMap<String, RefundTarget>,
) -> Result<Change, LedgerError> {
    let simple = |kind, delta, usage, reason| Change {
        kind,
        delta,
        usage,
        reason,
        refund_of: None,
        may_go_negative: false,
    };
    Ok(match op {
        Operation::TopUp { amount } => simple(TxKind::TopUp, *amount, None, None),
        Operation::Grant { amount, reason } => simple(TxKind::Grant, *amount, None, reason.clone()),
        Operation::Spend { amount, usage } => {
            simple(TxKind::Usage, -amount, Some(usage.clone()), None)
        }
        Operation::Refund {
            transaction_id,
            amount,
            reason,
            usage_only,
        } => {
            let target = targets
                .get(transaction_id)
                .filter(|t| t.row.user_id == user_id)
                .ok_or_else(|| LedgerError::TransactionNotFound {
                    user_id: user_id.to_owned(),
                    transaction_id: transaction_id.clone(),
                })?;
            let kind = TxKind::parse(&target.row.r#type).unwrap_or(TxKind::CardCheck);
            if *usage_only && kind != TxKind::Usage {
                return Err(LedgerError::PermissionDenied(format!(
                    "this key may refund only USAGE transactions; {transaction_id} is {}",
                    kind.as_str()
                )));
            }
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
            let remaining = target.row.amount.saturating_abs() - target.refunded;
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
                usage: None,
                reason: reason.clone(),
                refund_of: Some((transaction_id.clone(), requested)),
                may_go_negative,
            }
        }
    })
}

/// Applies `change` to `account`: checked arithmetic and the floor at zero.
/// Returns the new balance and the transaction's sequence.
pub fn apply(account: &mut Account, change: &Change) -> Result<(i64, i64), LedgerError> {
    let new_balance =
        account
            .balance
            .checked_add(change.delta)
            .ok_or(LedgerError::BalanceOverflow {
                balance: account.balance,
                delta: change.delta,
            })?;
    // Only taking credits can be refused for want of them: a credit to a
    // balance left negative by a TOP_UP refund is always welcome.
    if change.delta < 0 && new_balance < 0 && !change.may_go_negative {
        return Err(LedgerError::InsufficientBalance {
            available: account.balance,
            requested: -change.delta,
        });
    }
    account.balance = new_balance;
    account.last_sequence += 1;
    Ok((new_balance, account.last_sequence))
}
