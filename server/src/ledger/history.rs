//! Reads: balances, single transactions and history pages. Reads never lock
//! and never touch `user`'s columns for money.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Value};

use super::error::LedgerError;
use super::handle::Ledger;
use super::lots;
use super::model::{Balance, HistoryPage, HistoryQuery, Transaction};
use super::page_token;
use crate::entity::{credit_allocation, credit_transaction as ctx};

impl Ledger {
    /// The user's balance, read from `user_balance` only (reads that arrive
    /// together share a query: `balance_reads.rs`).
    pub async fn balance(&self, user_id: &str) -> Result<Balance, LedgerError> {
        self.reads.get(user_id.to_owned()).await
    }

    /// One transaction of one user.
    pub async fn transaction(
        &self,
        user_id: &str,
        transaction_id: &str,
    ) -> Result<Transaction, LedgerError> {
        let row = {
            let _turn = self.store.direct_read().await?;
            ctx::Entity::find_by_id(transaction_id.to_owned())
                .filter(ctx::Column::UserId.eq(user_id))
                .one(self.db())
                .await
                .map_err(|e| self.store.explain(e.into()))?
        };
        match row {
            Some(row) => {
                let mut transaction = Transaction::try_from(row)?;
                let allocations = {
                    let _turn = self.store.direct_read().await?;
                    credit_allocation::Entity::find()
                        .filter(credit_allocation::Column::TransactionId.eq(transaction_id))
                        .order_by_asc(credit_allocation::Column::Position)
                        .all(self.db())
                        .await
                        .map_err(|e| self.store.explain(e.into()))?
                };
                transaction.allocations = lots::to_allocations(&allocations);
                Ok(transaction)
            }
            None => {
                self.ensure_user(user_id).await?;
                Err(LedgerError::TransactionNotFound {
                    user_id: user_id.to_owned(),
                    transaction_id: transaction_id.to_owned(),
                })
            }
        }
    }

    /// One page of the user's history, newest first (by sequence, the order
    /// in which the balance changed).
    pub async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, LedgerError> {
        let HistoryQuery {
            user_id,
            page_size,
            page_token,
            filter,
        } = query;
        let before = page_token
            .as_deref()
            .map(|t| page_token::decode(t, &user_id, &filter))
            .transpose()?;
        self.ensure_user(&user_id).await?;

        let mut select = ctx::Entity::find().filter(ctx::Column::UserId.eq(&user_id));
        if let Some(before) = before {
            select = select.filter(ctx::Column::Sequence.lt(before));
        }
        if !filter.kinds.is_empty() {
            select =
                select.filter(ctx::Column::Type.is_in(filter.kinds.iter().map(|k| k.as_str())));
        }
        // MySQL takes a zoned time as a TIMESTAMP (1970 to 2038 only); the
        // column is a DATETIME in UTC, so bind the plain UTC time there.
        let mysql = self.db().get_database_backend() == DbBackend::MySql;
        // Times are stored to the microsecond, and databases round a finer
        // bound to the nearest one; rounding it up keeps `>=` and `<` exact.
        let bound = |t: DateTime<Utc>| -> Value {
            let t = ceil_to_micros(t);
            if mysql {
                t.naive_utc().into()
            } else {
                t.into()
            }
        };
        if let Some(after) = filter.created_after {
            select = select.filter(ctx::Column::CreatedAt.gte(bound(after)));
        }
        if let Some(before) = filter.created_before {
            select = select.filter(ctx::Column::CreatedAt.lt(bound(before)));
        }
        if let Some(graph_exec_id) = &filter.graph_exec_id {
            select = select.filter(ctx::Column::GraphExecId.eq(graph_exec_id));
        }
        if let Some(created_by) = &filter.created_by {
            select = select.filter(ctx::Column::CreatedBy.eq(created_by));
        }
        // One row more than asked tells whether another page follows.
        let mut rows = {
            let _turn = self.store.direct_read().await?;
            select
                .order_by_desc(ctx::Column::Sequence)
                .limit(page_size + 1)
                .all(self.db())
                .await
                .map_err(|e| self.store.explain(e.into()))?
        };
        let more = rows.len() as u64 > page_size;
        rows.truncate(page_size as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => Some(page_token::encode(&user_id, &filter, last.sequence)),
            _ => None,
        };
        let transactions = rows
            .into_iter()
            .map(Transaction::try_from)
            .collect::<Result<_, _>>()?;
        Ok(HistoryPage {
            transactions,
            next_page_token,
        })
    }

    /// NOT_FOUND for an unknown user, so an empty history means "no
    /// transactions", never "no such user".
    pub(super) async fn ensure_user(&self, user_id: &str) -> Result<(), LedgerError> {
        self.balance(user_id).await.map(|_| ())
    }
}

/// `t` rounded up to a whole microsecond, and no later than the last
/// microsecond of year 9999. Rounding the protobuf maximum
/// (`9999-12-31T23:59:59.999999999Z`, what clients send for "no bound") up
/// would give year 10000, which SQLite compares as text ("10000-..." sorts
/// before "2026-...") and MySQL cannot store: every backend must answer
/// alike (created_before the maximum is everything, created_after it
/// nothing).
fn ceil_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let latest = DateTime::<Utc>::from_timestamp(253_402_300_799, 999_999_000).unwrap_or(t);
    let extra_nanos = t.timestamp_subsec_nanos() % 1_000;
    let rounded = match extra_nanos {
        0 => t,
        n => t
            .checked_add_signed(chrono::TimeDelta::nanoseconds(i64::from(1_000 - n)))
            .unwrap_or(latest),
    };
    rounded.min(latest)
}
