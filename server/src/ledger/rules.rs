//! The money rules of one write, with no database: what an operation does
//! to a balance and when it is refused. The batch (`batch.rs`) feeds them the
//! locked state and writes what they decide.

use std::collections::HashMap;

use super::error::LedgerError;
use super::model::{Operation, TxKind, Usage};
use crate::entity::credit_transaction as ctx;

/// A user's balance row as the current batch sees it (locked).
#[derive(Debug, Clone, Default)]
pub struct Account {
    pub balance: i64,
    pub last_sequence: i64,
    /// Credits of ACTIVE holds (the batch writes expired ones down first).
    pub held: i64,
    /// The earliest expire_time among ACTIVE holds.
    pub holds_expire_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Holds the user ever had.
    pub hold_count: i64,
    /// The part of `balance` in PROMOTIONAL lots.
    pub promotional: i64,
    /// Credits a TOP_UP refund took beyond the lots (`lots.rs`).
    pub deficit: i64,
    /// The earliest expire_time among lots with unearmarked credit left.
    pub lots_expire_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Balance alerts in force (`alerts.rs`).
    pub alerts: i64,
}

impl Account {
    /// What spends and reserves may use.
    pub fn available(&self) -> i64 {
        self.balance.saturating_sub(self.held)
    }
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
        Operation::TopUp { amount, .. } => simple(TxKind::TopUp, *amount, None, None),
        Operation::Grant { amount, reason, .. } => {
            simple(TxKind::Grant, *amount, None, reason.clone())
        }
        Operation::Spend { amount, usage } => {
            simple(TxKind::Usage, -amount, Some(usage.clone()), None)
        }
        Operation::Reserve { .. } | Operation::Capture { .. } | Operation::Release { .. } => {
            return Err(LedgerError::Internal(
                "hold operations are planned by holds.rs".into(),
            ));
        }
        Operation::Settle => {
            return Err(LedgerError::Internal("a settle changes no balance".into()));
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
                TxKind::Refund | TxKind::CardCheck | TxKind::Expiration => {
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

/// Applies `change` to `account`: checked arithmetic and the floor: what
/// is taken must come from the available balance (balance minus active
/// holds), so `available >= 0` holds after every change but a TOP_UP
/// refund. Returns the new balance and the transaction's sequence.
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
    if change.delta < 0 && new_balance < account.held && !change.may_go_negative {
        return Err(LedgerError::InsufficientBalance {
            available: account.available(),
            requested: -change.delta,
        });
    }
    account.balance = new_balance;
    account.last_sequence += 1;
    Ok((new_balance, account.last_sequence))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::model::Usage;

    /// A stored transaction of `kind` and `amount` with `refunded` so far.
    fn target(kind: TxKind, amount: i64, refunded: i64) -> HashMap<String, RefundTarget> {
        let row = ctx::Model {
            id: "t".into(),
            user_id: "u".into(),
            sequence: 1,
            r#type: kind.as_str().into(),
            amount,
            running_balance: amount,
            idempotency_key: "k".into(),
            fingerprint: "f".into(),
            refunded_transaction_id: None,
            refunded_amount: refunded,
            graph_exec_id: None,
            graph_id: None,
            node_id: None,
            node_exec_id: None,
            block_id: None,
            reason: None,
            metadata: None,
            created_at: chrono::Utc::now(),
            created_by: None,
            created_by_subject: None,
            hold_id: None,
            feed_position: None,
        };
        HashMap::from([("t".to_owned(), RefundTarget { row, refunded })])
    }

    fn refund(amount: Option<i64>, usage_only: bool) -> Operation {
        Operation::Refund {
            transaction_id: "t".into(),
            amount,
            reason: None,
            usage_only,
        }
    }

    /// Name, balance before, operation, refund targets, the balance after
    /// or a part of the refusal's text.
    type Case = (
        &'static str,
        i64,
        Operation,
        HashMap<String, RefundTarget>,
        Result<i64, &'static str>,
    );

    fn run(
        balance: i64,
        op: &Operation,
        targets: &HashMap<String, RefundTarget>,
    ) -> Result<i64, String> {
        let mut account = Account {
            balance,
            last_sequence: 7,
            ..Account::default()
        };
        let change = plan("u", op, targets).map_err(|e| e.to_string())?;
        let (new_balance, sequence) = apply(&mut account, &change).map_err(|e| e.to_string())?;
        assert_eq!(sequence, 8, "every applied change takes the next sequence");
        assert_eq!(account.balance, new_balance);
        Ok(new_balance)
    }

    #[test]
    fn money_rules() {
        let none = HashMap::new();
        let spend = |amount| Operation::Spend {
            amount,
            usage: Usage::default(),
        };
        let cases: Vec<Case> = vec![
            (
                "top-up adds",
                5,
                Operation::TopUp {
                    amount: 10,
                    lot: Default::default(),
                },
                none.clone(),
                Ok(15),
            ),
            (
                "grant adds",
                0,
                Operation::Grant {
                    amount: 3,
                    reason: None,
                    lot: Default::default(),
                },
                none.clone(),
                Ok(3),
            ),
            ("spend of all", 10, spend(10), none.clone(), Ok(0)),
            (
                "overspend",
                10,
                spend(11),
                none.clone(),
                Err("insufficient balance: 10 available, 11 requested"),
            ),
            (
                "top-up overflow",
                i64::MAX,
                Operation::TopUp {
                    amount: 1,
                    lot: Default::default(),
                },
                none.clone(),
                Err("overflow"),
            ),
            (
                "credit to a negative balance",
                -5,
                Operation::TopUp {
                    amount: 1,
                    lot: Default::default(),
                },
                none.clone(),
                Ok(-4),
            ),
            (
                "refund of usage returns",
                0,
                refund(None, false),
                target(TxKind::Usage, -30, 10),
                Ok(20),
            ),
            (
                "partial refund",
                0,
                refund(Some(5), true),
                target(TxKind::Usage, -30, 0),
                Ok(5),
            ),
            (
                "refund beyond what is left",
                0,
                refund(Some(25), false),
                target(TxKind::Usage, -30, 10),
                Err("exceeds the 20 credits"),
            ),
            (
                "fully refunded",
                0,
                refund(None, false),
                target(TxKind::Usage, -30, 30),
                Err("already fully refunded"),
            ),
            (
                "top-up refund may go negative",
                3,
                refund(None, false),
                target(TxKind::TopUp, 10, 0),
                Ok(-7),
            ),
            (
                "grant refund may not",
                3,
                refund(None, false),
                target(TxKind::Grant, 10, 0),
                Err("insufficient balance"),
            ),
            (
                "service refunds usage only",
                50,
                refund(None, true),
                target(TxKind::TopUp, 10, 0),
                Err("permission denied"),
            ),
            (
                "refunds are not refundable",
                50,
                refund(None, false),
                target(TxKind::Refund, 10, 0),
                Err("cannot be refunded"),
            ),
            (
                "unknown target",
                50,
                refund(None, false),
                none.clone(),
                Err("not found"),
            ),
        ];
        for (name, balance, op, targets, want) in cases {
            let got = run(balance, &op, &targets);
            match (&got, want) {
                (Ok(b), Ok(w)) => assert_eq!(*b, w, "{name}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{name}: {e:?} lacks {w:?}"),
                _ => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_refused_change_leaves_the_account_alone() {
        let mut account = Account {
            balance: 4,
            last_sequence: 2,
            ..Account::default()
        };
        let change = plan(
            "u",
            &Operation::Spend {
                amount: 5,
                usage: Usage::default(),
            },
            &HashMap::new(),
        )
        .unwrap();
        assert!(apply(&mut account, &change).is_err());
        assert_eq!((account.balance, account.last_sequence), (4, 2));
    }
}
