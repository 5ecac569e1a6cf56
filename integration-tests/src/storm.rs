//! The storm workload shared by the storm and multi-process tests: clients
//! making random spends, top-ups, grants, refunds and reads on a few users,
//! each write with its own idempotency key, recording what was acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::ensure;
use credit_proto::v1 as pb;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::{Code, Status};

use crate::{Client, api};

/// Transactions acknowledged to clients, by user: (transaction id, amount).
pub type Acked = Arc<Mutex<AckedByUser>>;

/// See [`Acked`].
pub type AckedByUser = HashMap<String, Vec<(String, i64)>>;

/// What one storm client does.
#[derive(Clone, Copy)]
pub struct Storm {
    pub users: &'static [&'static str],
    pub ops_per_client: usize,
    pub seed: u64,
    /// Most grants expire 5 to 40 s (of the ledger's clock, as the client
    /// last saw it in a write's `created_at`) after they are made. A grant
    /// the clock overtook on its way is refused (`expire_time` must be in
    /// the future), which the storm accepts.
    pub expiring_grants: bool,
}

impl Storm {
    /// Client `i`'s share of the storm. Only the ledger's own refusals
    /// (insufficient balance, refund limits) may fail a write; anything
    /// else (a conflict, an internal error) fails the storm.
    pub async fn client(self, mut c: Client, i: usize, acked: Acked) -> anyhow::Result<()> {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_add(i as u64));
        let mut clock = chrono::Utc::now();
        for n in 0..self.ops_per_client {
            let user = self.users[rng.random_range(0..self.users.len())];
            let amount = rng.random_range(1..200);
            let key = format!("storm-{i}-{n}");
            let result = match rng.random_range(0..100) {
                0..35 => api::spend_with_key(&mut c, user, amount, &key)
                    .await
                    .map(|r| r.transaction),
                35..55 => api::top_up_with_key(&mut c, user, amount, &key)
                    .await
                    .map(|r| r.transaction),
                55..65 => {
                    let expires = (self.expiring_grants && rng.random_bool(0.7))
                        .then(|| clock + chrono::TimeDelta::seconds(rng.random_range(5..40)));
                    grant(&mut c, user, amount, expires, &key).await
                }
                65..85 => {
                    let Some(target) = pick(&acked, user, &mut rng)? else {
                        continue;
                    };
                    refund(&mut c, user, &target, rng.random_range(1..100), &key).await
                }
                _ => {
                    api::balance(&mut c, user).await?;
                    continue;
                }
            };
            match result {
                Ok(Some(tx)) => {
                    if let Some(at) = tx.created_at.and_then(|t| {
                        chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
                    }) {
                        clock = clock.max(at);
                    }
                    lock(&acked)?
                        .entry(user.to_owned())
                        .or_default()
                        .push((tx.transaction_id, tx.amount))
                }
                Ok(None) => anyhow::bail!("{key}: a write answered without its transaction"),
                Err(s) if s.code() == Code::FailedPrecondition => {
                    let reason = api::reason(&s).unwrap_or_default();
                    ensure!(
                        [
                            "INSUFFICIENT_BALANCE",
                            "REFUND_EXCEEDS_ORIGINAL",
                            "NOT_REFUNDABLE"
                        ]
                        .contains(&reason.as_str()),
                        "{key}: unexpected refusal {s:?}"
                    );
                }
                Err(s)
                    if self.expiring_grants
                        && s.code() == Code::InvalidArgument
                        && api::bad_fields(&s) == ["expire_time"] => {}
                Err(s) => anyhow::bail!("{key}: unexpected error {s:?}"),
            }
        }
        Ok(())
    }
}

fn lock(acked: &Acked) -> anyhow::Result<std::sync::MutexGuard<'_, AckedByUser>> {
    acked
        .lock()
        .map_err(|_| anyhow::anyhow!("a storm client panicked"))
}

/// A random acknowledged transaction of `user`, to refund.
fn pick(acked: &Acked, user: &str, rng: &mut StdRng) -> anyhow::Result<Option<String>> {
    Ok(lock(acked)?
        .get(user)
        .and_then(|txs| (!txs.is_empty()).then(|| txs[rng.random_range(0..txs.len())].0.clone())))
}

type Written = Result<Option<pb::Transaction>, Status>;

async fn grant(
    c: &mut Client,
    user: &str,
    amount: i64,
    expires: Option<chrono::DateTime<chrono::Utc>>,
    key: &str,
) -> Written {
    let request = pb::GrantRequest {
        user_id: user.to_owned(),
        amount,
        idempotency_key: key.to_owned(),
        reason: "storm grant".to_owned(),
        metadata: None,
        expire_time: expires.map(|at| prost_types::Timestamp {
            seconds: at.timestamp(),
            nanos: 0,
        }),
        ..Default::default()
    };
    c.grant(with_deadline(request))
        .await
        .map(|r| r.into_inner().transaction)
}

async fn refund(c: &mut Client, user: &str, target: &str, amount: i64, key: &str) -> Written {
    let request = pb::RefundRequest {
        user_id: user.to_owned(),
        transaction_id: target.to_owned(),
        amount: Some(amount),
        idempotency_key: key.to_owned(),
        reason: "storm refund".to_owned(),
        metadata: None,
    };
    c.refund(with_deadline(request))
        .await
        .map(|r| r.into_inner().transaction)
}

/// A generous deadline: a call stuck behind a lock fails the test instead
/// of hanging it.
fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(15));
    request
}
