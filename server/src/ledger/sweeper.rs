//! The expiry sweeper: writes down the expiries of users nobody writes to.
//!
//! Expiry never waits for it. Reads already leave out expired holds and
//! lots (`balance_reads.rs`), and every write writes down what is due for
//! its users before any rule runs (`batch.rs`). What the sweeper adds is
//! that the log explains the balance by itself soon after an expiry even
//! on a quiet account: the EXPIRATION transactions and EXPIRED holds appear
//! within an interval, dated their expire_time as a write would date them.
//!
//! A sweep is ordinary writes: one `Settle` per due user, through the same
//! write queue, row lock and transaction as every other write, so several
//! server processes may sweep at once (each settle recomputes from what is
//! stored under the lock; a user settled twice is settled once and then
//! found with nothing due).

use std::time::Duration;

use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::error::LedgerError;
use super::handle::Ledger;
use super::model::{Actor, Operation, WriteOutcome, WriteRequest};
use super::store::time_value;
use crate::entity::user_balance;
use crate::telemetry::metrics as m;

/// Most users one sweep settles; more wait for the next sweep.
pub const SWEEP_BATCH: u64 = 256;

/// The name the sweeper's writes are made under.
const SWEEPER: &str = "expiry-sweeper";

impl Ledger {
    /// Writes down `user_id`'s due expiries (none due: changes nothing).
    pub async fn settle(&self, user_id: &str) -> Result<WriteOutcome, LedgerError> {
        self.write(WriteRequest {
            user_id: user_id.to_owned(),
            operation: Operation::Settle,
            idempotency_key: None,
            metadata: None,
            actor: Actor {
                name: SWEEPER.to_owned(),
                certificate_subject: None,
            },
        })
        .await
    }

    /// Up to `limit` users with a hold or lot expiry due now that no write
    /// has written down (the indexed bounds on `user_balance`).
    pub async fn due_users(&self, limit: u64) -> Result<Vec<String>, LedgerError> {
        use user_balance::Column as C;
        let at = time_value(self.store.backend(), self.store.clock.now());
        let _turn = self.store.direct_read().await?;
        user_balance::Entity::find()
            .select_only()
            .column(C::UserId)
            .filter(
                Condition::any()
                    .add(C::LotsExpireAt.lte(at.clone()))
                    .add(C::HoldsExpireAt.lte(at)),
            )
            .order_by_asc(C::UserId)
            .limit(limit)
            .into_tuple::<String>()
            .all(self.db())
            .await
            .map_err(|e| self.store.explain(e.into()))
    }

    /// One sweep: settles up to [`SWEEP_BATCH`] due users (together, so
    /// they share transactions) and returns how many it settled.
    pub async fn sweep(&self) -> Result<usize, LedgerError> {
        let due = self.due_users(SWEEP_BATCH).await?;
        let settled = futures::future::join_all(due.iter().map(|u| self.settle(u))).await;
        let mut count = 0;
        for (user, result) in due.iter().zip(settled) {
            match result {
                Ok(_) => count += 1,
                // The user's next write (or the next sweep) does it instead.
                Err(err) => tracing::warn!(user_id = %user, error = %err, "settle failed"),
            }
        }
        ::metrics::counter!(m::SWEPT_USERS).increment(count as u64);
        Ok(count)
    }
}

/// Most sweeps one tick runs back to back.
const SWEEPS_PER_TICK: usize = 16;

/// Sweeps every `every` until the task is aborted. A full sweep goes again
/// at once (more users may be due), up to `SWEEPS_PER_TICK` in a row, so a
/// backlog drains fast but never keeps the database busy without a pause;
/// a failed sweep waits for the next tick.
pub async fn run(ledger: Ledger, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        for _ in 0..SWEEPS_PER_TICK {
            match ledger.sweep().await {
                Ok(n) if n as u64 == SWEEP_BATCH => continue,
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "expiry sweep failed; trying again next interval");
                    break;
                }
            }
        }
    }
}
