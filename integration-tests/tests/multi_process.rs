//! Several real `credit-server` processes over one database (build the
//! binary first: `cargo build -p credit-server`). Clients spread across
//! them run a storm of spends, top-ups, grants and refunds on a few users
//! that start at zero, so refusals at the floor race between processes.
//! Afterwards the ledger is exactly the acknowledged writes and the
//! verifier finds nothing wrong: each user's writes are serialised by the
//! database's row lock, not by anything inside one process.
//!
//! PostgreSQL runs with 2 and 3 processes; MariaDB/MySQL with 3 and SQLite
//! (one file, `BEGIN IMMEDIATE` across processes) with 2. A backend whose
//! URL is unset says so and passes.

use std::time::Instant;

use anyhow::{Context, ensure};
use credit_server::config::PoolSettings;
use credit_server::entity::{credit_transaction as ctx, user_balance};
use credit_server::ledger::verify::verify;
use futures::future::join_all;
use integration_tests::process::ServerProcess;
use integration_tests::storm::{Acked, Storm};
use integration_tests::{Backend, TestDb, api, run_on_database};
use rand::Rng;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_processes() {
    run_on_database("postgres_two_processes", Backend::Postgres, async |db| {
        storm(db, 2).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_three_processes() {
    run_on_database("postgres_three_processes", Backend::Postgres, async |db| {
        storm(db, 3).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_three_processes() {
    run_on_database("mysql_three_processes", Backend::MySql, async |db| {
        storm(db, 3).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_processes() {
    run_on_database("sqlite_two_processes", Backend::Sqlite, async |db| {
        storm(db, 2).await
    })
    .await
}

const CLIENTS: usize = 30;
const OPS_PER_CLIENT: usize = 40;
const USERS: [&str; 4] = ["m0", "m1", "m2", "m3"];

async fn storm(test_db: &TestDb, processes: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    // The first start migrates the fresh database; the others find it done.
    let mut servers = vec![ServerProcess::start(&test_db.url, &[]).await?];
    let rest = join_all((1..processes).map(|_| ServerProcess::start(&test_db.url, &[]))).await;
    for server in rest {
        servers.push(server?);
    }
    let result = run_storm(test_db, &servers, started).await;
    servers
        .iter()
        .fold(result, |result, server| server.explain(result))
}

async fn run_storm(
    test_db: &TestDb,
    servers: &[ServerProcess],
    started: Instant,
) -> anyhow::Result<()> {
    let processes = servers.len();
    let mut c = servers[0].client().await?;
    for u in USERS {
        api::create_user(&mut c, u).await?;
    }

    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        clients.push(servers[i % processes].client().await?);
    }
    let acked: Acked = Default::default();
    let seed: u64 = rand::rng().random();
    let storm = Storm {
        expiring_grants: false,
        users: &USERS,
        ops_per_client: OPS_PER_CLIENT,
        seed,
    };
    let workers = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| storm.client(c, i, acked.clone()));
    for result in join_all(workers).await {
        result.with_context(|| format!("storm seed {seed}"))?;
    }
    let storm_took = started.elapsed();

    let db = credit_server::db::connect(&test_db.url, &PoolSettings::default()).await?;
    let acked = acked
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let mut total = 0;
    for u in USERS {
        let mut in_ledger: Vec<(String, i64)> = ctx::Entity::find()
            .filter(ctx::Column::UserId.eq(u))
            .all(&db)
            .await?
            .into_iter()
            .map(|t| (t.id, t.amount))
            .collect();
        let mut expected = acked.get(u).cloned().unwrap_or_default();
        in_ledger.sort();
        expected.sort();
        ensure!(
            in_ledger == expected,
            "{u}: the ledger ({} rows) differs from what clients were told ({} acknowledged); seed {seed}",
            in_ledger.len(),
            expected.len()
        );
        total += expected.len();
        // Every process serves the same balance.
        let stored = user_balance::Entity::find_by_id(u.to_owned())
            .one(&db)
            .await?
            .context("balance row")?
            .balance;
        for server in servers {
            let served = api::balance(&mut server.client().await?, u).await?;
            ensure!(
                served == stored,
                "{u}: {} serves {served}, the table has {stored}",
                server.addr
            );
        }
    }
    let report = verify(&db, None).await?;
    ensure!(report.is_clean(), "seed {seed}:\n{report}");
    ensure!(
        total > CLIENTS * OPS_PER_CLIENT / 3,
        "too few writes applied ({total}) for a meaningful storm"
    );
    db.close().await?;
    eprintln!(
        "{processes} processes on {:?}: {total} writes acknowledged, storm {storm_took:?}, total {:?}",
        test_db.backend,
        started.elapsed()
    );
    Ok(())
}
