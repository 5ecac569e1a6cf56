//! A randomized storm: 50 clients mixing spends, top-ups, grants, refunds and
//! reads on a few users. Afterwards every acknowledged write is in the
//! ledger exactly once, nothing else is, and the invariants hold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::ensure;
use futures::future::join_all;
use integration_tests::{TestServer, api, invariants, ledger_tests};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::Code;

ledger_tests!(storm_keeps_every_invariant);

const CLIENTS: usize = 50;
const OPS_PER_CLIENT: usize = 30;
const USERS: [&str; 4] = ["s0", "s1", "s2", "s3"];

/// Transactions acknowledged to clients, by user: (transaction id, amount).
type Acked = Arc<Mutex<HashMap<String, Vec<(String, i64)>>>>;

async fn storm_keeps_every_invariant(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    for u in USERS {
        api::create_user(&mut c, u).await?;
    }
    let acked: Acked = Default::default();
    let seed: u64 = rand::rng().random();
    eprintln!("storm seed {seed}");
    let clients = server.clients(CLIENTS).await?;
    let workers = clients.into_iter().enumerate().map(|(i, mut c)| {
        let acked = acked.clone();
        async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
            for _ in 0..OPS_PER_CLIENT {
                let user = USERS[rng.random_range(0..USERS.len())];
                let amount = rng.random_range(1..200);
                let roll = rng.random_range(0..100);
                let result = match roll {
                    0..35 => api::spend(&mut c, user, amount)
                        .await
                        .map(|r| r.transaction),
                    35..55 => api::top_up(&mut c, user, amount)
                        .await
                        .map(|r| r.transaction),
                    55..65 => api::grant(&mut c, user, amount)
                        .await
                        .map(|r| r.transaction),
                    65..80 => {
                        let target = {
                            let acked = acked.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                            acked.get(user).and_then(|txs| {
                                (!txs.is_empty())
                                    .then(|| txs[rng.random_range(0..txs.len())].0.clone())
                            })
                        };
                        match target {
                            Some(t) => {
                                api::refund(&mut c, user, &t, Some(rng.random_range(1..100)))
                                    .await
                                    .map(|r| r.transaction)
                            }
                            None => continue,
                        }
                    }
                    _ => {
                        api::balance(&mut c, user).await?;
                        continue;
                    }
                };
                match result {
                    Ok(Some(tx)) => acked
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .entry(user.to_owned())
                        .or_default()
                        .push((tx.transaction_id, tx.amount)),
                    Ok(None) => anyhow::bail!("a write answered without its transaction"),
                    // The business refusals a storm must produce; anything
                    // else (a conflict, an internal error) fails the test.
                    Err(s) if s.code() == Code::FailedPrecondition => {
                        let reason = api::reason(&s).unwrap_or_default();
                        ensure!(
                            [
                                "INSUFFICIENT_BALANCE",
                                "REFUND_EXCEEDS_ORIGINAL",
                                "NOT_REFUNDABLE"
                            ]
                            .contains(&reason.as_str()),
                            "unexpected refusal {s:?}"
                        );
                    }
                    Err(s) => anyhow::bail!("unexpected error {s:?}"),
                }
            }
            anyhow::Ok(())
        }
    });
    for r in join_all(workers).await {
        r?;
    }

    let acked = acked
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let mut total = 0;
    for u in USERS {
        let txs = invariants::check_user(server, u).await?;
        let mut in_ledger: Vec<(String, i64)> = txs
            .into_iter()
            .map(|t| (t.transaction_id, t.amount))
            .collect();
        let mut expected = acked.get(u).cloned().unwrap_or_default();
        in_ledger.sort();
        expected.sort();
        ensure!(
            in_ledger == expected,
            "{u}: the ledger differs from what clients were told"
        );
        total += expected.len();
    }
    ensure!(
        total > CLIENTS * OPS_PER_CLIENT / 3,
        "too few writes applied ({total}) for a meaningful storm"
    );
    Ok(())
}
