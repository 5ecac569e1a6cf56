//! Balance reads that arrive together share one query.
//!
//! Under load most of a balance read's cost is the database round trip, not
//! the row. Reads queue in the process; a dispatcher hands everything queued
//! to a free query slot as one `SELECT ... WHERE user_id IN (...)`. With a
//! slot free a read goes alone the moment it arrives (no added latency at
//! low load); while the slots are busy the next batch gathers by itself.
//!
//! Why it is as fresh as a read of its own: a read only ever joins a query
//! that starts after the read arrived, so it sees every write acknowledged
//! before it was asked for (a caller that spent and then reads sees its
//! spend). Reads never lock, so sharing a query changes nothing else.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter, QuerySelect, Statement,
};

use super::lots::earmarks_of;
use super::model::{HoldState, LotCategory};
use crate::entity::{credit_hold, credit_lot};

use super::faults::Fault;
use super::store::Store;
use crate::telemetry::metrics as m;
use tokio::sync::{mpsc, oneshot};

use super::alerts;
use super::error::LedgerError;
use super::model::Balance;
use crate::entity::user_balance;

/// Most distinct users in one query.
const MAX_BATCH: usize = 512;

/// Concurrent balance queries: enough to keep latency flat at low load,
/// few enough that under load reads gather into batches.
const MAX_SLOTS: usize = 4;

/// Balance-read slots for a pool of `connections`: a quarter of it, 1 to
/// `MAX_SLOTS`.
pub fn slots_for(connections: usize) -> usize {
    (connections / 4).clamp(1, MAX_SLOTS)
}

type Reply = oneshot::Sender<Result<Balance, LedgerError>>;
type Job = (String, Reply);

/// The queue balance reads wait in.
#[derive(Clone)]
pub struct BalanceReads {
    queue: mpsc::UnboundedSender<Job>,
    stats: Arc<Counters>,
}

/// How much sharing the balance reads achieved so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Queries run for balance reads.
    pub queries: u64,
    /// Balance reads answered by those queries.
    pub reads: u64,
}

#[derive(Default)]
struct Counters {
    queries: AtomicU64,
    reads: AtomicU64,
}

impl BalanceReads {
    /// Starts the dispatcher with `slots` concurrent queries. It stops when
    /// the last clone is dropped.
    pub fn start(store: Store, slots: usize) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Counters::default());
        tokio::spawn(dispatch(store, rx, slots.max(1), stats.clone()));
        Self { queue, stats }
    }

    pub fn stats(&self) -> ReadStats {
        ReadStats {
            queries: self.stats.queries.load(Ordering::Relaxed),
            reads: self.stats.reads.load(Ordering::Relaxed),
        }
    }

    /// Queues a read of `user_id` and waits for its answer.
    pub async fn get(&self, user_id: String) -> Result<Balance, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((user_id, reply))
            .map_err(|_| LedgerError::Internal("the balance reader has stopped".into()))?;
        answer
            .await
            .map_err(|_| LedgerError::Internal("the balance reader dropped a request".into()))?
    }
}

/// The dispatcher's loop: queue reads, start a query per free slot.
async fn dispatch(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Job>,
    slots: usize,
    stats: Arc<Counters>,
) {
    let mut queued: Vec<Job> = Vec::new();
    let mut free = slots;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let mut open = true;
    loop {
        while free > 0 && !queued.is_empty() {
            free -= 1;
            let batch = take_batch(&mut queued);
            stats.queries.fetch_add(1, Ordering::Relaxed);
            stats.reads.fetch_add(batch.len() as u64, Ordering::Relaxed);
            metrics::counter!(m::BALANCE_QUERIES).increment(1);
            metrics::counter!(m::BALANCE_READS).increment(batch.len() as u64);
            let (store, done) = (store.clone(), done_tx.clone());
            // The query runs in a task of its own, awaited by this one, so a
            // panic in it still frees the slot (its readers' replies are
            // dropped: they are answered INTERNAL).
            tokio::spawn(async move {
                if let Err(err) = tokio::spawn(async move { answer(&store, batch).await }).await
                    && err.is_panic()
                {
                    tracing::error!("a balance read panicked; its callers were answered INTERNAL");
                }
                let _ = done.send(());
            });
        }
        if !open && free == slots && queued.is_empty() {
            return;
        }
        tokio::select! {
            job = rx.recv(), if open => match job {
                Some(job) => {
                    queued.push(job);
                    while let Ok(job) = rx.try_recv() {
                        queued.push(job);
                    }
                }
                None => open = false,
            },
            Some(()) = done_rx.recv() => free += 1,
        }
    }
}

/// The oldest queued reads, up to `MAX_BATCH` distinct users.
fn take_batch(queued: &mut Vec<Job>) -> Vec<Job> {
    let mut users = HashSet::new();
    let mut split = queued.len();
    for (i, (user, _)) in queued.iter().enumerate() {
        users.insert(user.as_str());
        if users.len() > MAX_BATCH {
            split = i;
            break;
        }
    }
    let rest = queued.split_off(split);
    std::mem::replace(queued, rest)
}

/// Runs one query for `batch` and answers each read.
async fn answer(store: &Store, batch: Vec<Job>) {
    let users: HashSet<&str> = batch.iter().map(|(u, _)| u.as_str()).collect();
    if store
        .faults
        .fires(Fault::PanicInBalanceRead, users.iter().copied())
    {
        panic!("fault injected: panic in a balance read");
    }
    match fetch(&store.db, users, store.clock.now())
        .await
        .map_err(|e| store.explain(e))
    {
        Ok(found) => {
            for (user, reply) in batch {
                let result = match found.get(&user) {
                    Some(b) => Ok(b.clone()),
                    None => Err(LedgerError::UserNotFound(user)),
                };
                let _ = reply.send(result);
            }
        }
        Err(err) => {
            for (_, reply) in batch {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

/// The balance rows of `users`, by user, with what their holds hold now.
async fn fetch(
    db: &DatabaseConnection,
    users: HashSet<&str>,
    now: DateTime<Utc>,
) -> Result<HashMap<String, Balance>, LedgerError> {
    let query = user_balance::Entity::find();
    let rows = if db.get_database_backend() == DbBackend::Postgres {
        // One statement text whatever the batch size: prepared once per
        // connection instead of once per distinct IN-list length.
        let users: Vec<String> = users.into_iter().map(str::to_owned).collect();
        query
            .from_raw_sql(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT * FROM user_balance WHERE user_id = ANY($1)",
                [users.into()],
            ))
            .all(db)
            .await?
    } else {
        query
            .filter(user_balance::Column::UserId.is_in(users))
            .all(db)
            .await?
    };
    // `held` is exact until the user's earliest hold expires; past that,
    // the active holds that have not expired are summed, and the earmarks
    // of those that have are given back to their lots (a later write will
    // write both down). One extra query, only for such users.
    let stale: Vec<&str> = rows
        .iter()
        .filter(|r| r.holds_expire_at.is_some_and(|at| at <= now))
        .map(|r| r.user_id.as_str())
        .collect();
    let holds = holds_now(db, &stale, now).await?;
    // Likewise the lots: only users with expiring credit need them read,
    // and those whose expired holds may have given credit back to a lot.
    let expiring: Vec<&str> = rows
        .iter()
        .filter(|r| r.lots_expire_at.is_some() || stale.contains(&r.user_id.as_str()))
        .map(|r| r.user_id.as_str())
        .collect();
    let expiring = expiring_lots(db, &expiring, &holds.freed, now).await?;
    // And the alerts, only of users that have some.
    let alerting: Vec<&str> = rows
        .iter()
        .filter(|r| r.alert_count > 0)
        .map(|r| r.user_id.as_str())
        .collect();
    let mut alerts = alerts::in_force(db, &alerting).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let held = match r.holds_expire_at {
                Some(at) if at <= now => holds.held.get(&r.user_id).copied().unwrap_or(0),
                _ => r.held,
            };
            let lots = expiring.get(&r.user_id).cloned().unwrap_or_default();
            let balance = r.balance - lots.expired_paid - lots.expired_promotional;
            let promotional = r.promotional - lots.expired_promotional;
            let balance = Balance {
                user_id: r.user_id.clone(),
                balance,
                held,
                paid: balance - promotional,
                promotional,
                next_expire_time: lots.next_expire_time,
                next_expiring_amount: lots.next_expiring_amount,
                last_sequence: r.last_sequence,
                updated_at: r.updated_at,
                alerts: alerts.remove(&r.user_id).unwrap_or_default(),
            };
            (r.user_id.clone(), balance)
        })
        .collect())
}

/// What a user's expiring lots mean at `now`.
#[derive(Debug, Clone, Default)]
struct Expiring {
    /// Unearmarked credit of lots past their expire_time that no write has
    /// written down yet (it no longer counts), by category.
    expired_paid: i64,
    expired_promotional: i64,
    next_expire_time: Option<DateTime<Utc>>,
    next_expiring_amount: i64,
}

/// Reads the lots of `users` with unearmarked credit and an expiry. `freed`
/// are the earmarks, by lot, of holds that expired but were not yet written
/// down: they are unearmarked as of `now`, so if their lot has expired too
/// they no longer count.
async fn expiring_lots(
    db: &DatabaseConnection,
    users: &[&str],
    freed: &HashMap<String, i64>,
    now: DateTime<Utc>,
) -> Result<HashMap<String, Expiring>, LedgerError> {
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = credit_lot::Entity::find()
        .filter(credit_lot::Column::UserId.is_in(users.iter().copied()))
        .filter(credit_lot::Column::Remaining.gt(0))
        .filter(credit_lot::Column::ExpireTime.is_not_null())
        .all(db)
        .await?;
    let mut out: HashMap<String, Expiring> = HashMap::new();
    for lot in rows {
        let held = lot.held - freed.get(&lot.id).copied().unwrap_or(0);
        let (Some(at), free) = (lot.expire_time, lot.remaining - held) else {
            continue;
        };
        if free <= 0 {
            continue;
        }
        let e = out.entry(lot.user_id.clone()).or_default();
        if at <= now {
            if lot.category == LotCategory::Promotional.as_str() {
                e.expired_promotional += free;
            } else {
                e.expired_paid += free;
            }
        } else if e.next_expire_time.is_none_or(|next| at < next) {
            e.next_expire_time = Some(at);
            e.next_expiring_amount = free;
        } else if e.next_expire_time == Some(at) {
            e.next_expiring_amount += free;
        }
    }
    Ok(out)
}

/// What `users`' ACTIVE holds mean at `now`.
#[derive(Debug, Default)]
pub(super) struct HoldsNow {
    /// Credits of the holds that have not expired, by user.
    pub held: HashMap<String, i64>,
    /// Earmarks of the holds that have expired, by lot.
    pub freed: HashMap<String, i64>,
}

/// Reads `users`' ACTIVE holds (as last written) and sorts them by whether
/// they have expired at `now`.
pub(super) async fn holds_now(
    db: &DatabaseConnection,
    users: &[&str],
    now: DateTime<Utc>,
) -> Result<HoldsNow, LedgerError> {
    let mut out = HoldsNow::default();
    if users.is_empty() {
        return Ok(out);
    }
    let rows = credit_hold::Entity::find()
        .select_only()
        .column(credit_hold::Column::UserId)
        .column(credit_hold::Column::Amount)
        .column(credit_hold::Column::ExpireTime)
        .column(credit_hold::Column::Earmarks)
        .filter(credit_hold::Column::UserId.is_in(users.iter().copied()))
        .filter(credit_hold::Column::State.eq(HoldState::Active.as_str()))
        .into_tuple::<(String, i64, DateTime<Utc>, Option<String>)>()
        .all(db)
        .await?;
    for (user, amount, expire_time, earmarks) in rows {
        if expire_time > now {
            *out.held.entry(user).or_insert(0) += amount;
        } else {
            for e in earmarks_of(earmarks.as_deref())? {
                *out.freed.entry(e.lot_id).or_insert(0) += e.amount;
            }
        }
    }
    Ok(out)
}
