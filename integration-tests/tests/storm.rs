//! A randomized storm: 50 clients mixing spends, top-ups, grants, refunds and
//! reads on a few users. Afterwards every acknowledged write is in the
//! ledger exactly once, nothing else is, and the invariants hold. A second
//! storm makes most grants expire within seconds while the ledger's clock
//! runs fast and the expiry sweeper races the writers; besides the writes,
//! the ledger then holds only the EXPIRATIONs time explains.

use anyhow::ensure;
use credit_proto::v1 as pb;
use futures::future::join_all;
use integration_tests::storm::{Acked, AckedByUser, Storm};
use integration_tests::{TestServer, api, invariants, ledger_tests};
use rand::Rng;

ledger_tests!(
    storm_keeps_every_invariant,
    storm_with_expiries_keeps_every_invariant
);

const CLIENTS: usize = 50;
const OPS_PER_CLIENT: usize = 30;
const USERS: [&str; 4] = ["s0", "s1", "s2", "s3"];

async fn storm_keeps_every_invariant(server: &TestServer) -> anyhow::Result<()> {
    let acked = storm(server, false).await?;
    check_acked(server, &acked).await
}

/// The clock moves 1 s every 25 ms and a sweep runs every 40 ms while the
/// storm's grants expire 5 to 40 s after they are made.
async fn storm_with_expiries_keeps_every_invariant(server: &TestServer) -> anyhow::Result<()> {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let ledger = server.ledger.clone();
    let time = tokio::spawn(async move {
        let mut sweeps = 0usize;
        let mut tick = 0u32;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            ledger.advance_clock(std::time::Duration::from_secs(1));
            tick += 1;
            if tick.is_multiple_of(2) {
                sweeps += ledger.sweep().await?;
            }
        }
        anyhow::Ok(sweeps)
    });
    let result = storm(server, true).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let swept = time.await??;
    let acked = result?;
    // The clock has stopped; settle what expired since each user's last
    // write. Until then reads already leave those lots out while the table
    // still counts them, so comparing the two would race the clock.
    let settled = server.ledger.sweep().await?;
    check_acked(server, &acked).await?;
    // Past every expiry, one more sweep, and the ledger is still exact.
    server
        .ledger
        .advance_clock(std::time::Duration::from_secs(3600));
    let last = server.ledger.sweep().await?;
    let mut expirations = 0;
    for u in USERS {
        let txs = invariants::check_user(server, u).await?;
        expirations += txs
            .iter()
            .filter(|t| t.r#type() == pb::TransactionType::Expiration)
            .count();
    }
    let report = server.ledger.verify(None).await?;
    ensure!(report.is_clean(), "the verifier found:\n{report}");
    ensure!(
        expirations > 0,
        "no grant expired unspent: not a storm with expiries"
    );
    eprintln!(
        "storm with expiries: {expirations} EXPIRATIONs, users settled by sweeps {swept} + {settled} + {last}; \
         verifier: {} users, {} transactions, clean",
        report.users_checked, report.transactions_checked
    );
    Ok(())
}

/// Runs the storm and returns what clients were told, per user.
async fn storm(server: &TestServer, expiring_grants: bool) -> anyhow::Result<AckedByUser> {
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
        expiring_grants,
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
    Ok(acked)
}

/// Every acknowledged write is in the ledger exactly once, nothing else is
/// (besides the ledger's own EXPIRATIONs), and the invariants hold.
async fn check_acked(server: &TestServer, acked: &AckedByUser) -> anyhow::Result<()> {
    let mut total = 0;
    for u in USERS {
        let txs = invariants::check_user(server, u).await?;
        // EXPIRATIONs are the ledger's own writes, not a client's.
        let mut in_ledger: Vec<(String, i64)> = txs
            .into_iter()
            .filter(|t| t.r#type() != pb::TransactionType::Expiration)
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
