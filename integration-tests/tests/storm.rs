//! A randomized storm: 50 clients mixing spends, top-ups, grants, refunds and
//! reads on a few users. Afterwards every acknowledged write is in the
//! ledger exactly once, nothing else is, and the invariants hold.

use anyhow::ensure;
use futures::future::join_all;
use integration_tests::storm::{Acked, Storm};
use integration_tests::{TestServer, api, invariants, ledger_tests};
use rand::Rng;

ledger_tests!(storm_keeps_every_invariant);

const CLIENTS: usize = 50;
const OPS_PER_CLIENT: usize = 30;
const USERS: [&str; 4] = ["s0", "s1", "s2", "s3"];

async fn storm_keeps_every_invariant(server: &TestServer) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    for u in USERS {
        api::create_user(&mut c, u).await?;
    }
    let acked: Acked = Default::default();
    let seed: u64 = rand::rng().random();
    eprintln!("storm seed {seed}");
    let storm = Storm {
        users: &USERS,
        ops_per_client: OPS_PER_CLIENT,
        seed,
    };
    let clients = server.clients(CLIENTS).await?;
    let workers = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| storm.client(c, i, acked.clone()));
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
