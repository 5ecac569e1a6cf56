//! Test harness: a fresh database per test (SQLite always; PostgreSQL and
//! MariaDB/MySQL when `CREDIT_TEST_POSTGRES_URL` / `CREDIT_TEST_MYSQL_URL`
//! name a server), the real server on `127.0.0.1:0`, and real gRPC clients.

pub mod api;
mod database;
pub mod invariants;
pub mod process;
mod server;
pub mod storm;

pub use database::{Backend, TestDb};
pub use server::TestServer;

use credit_proto::v1::credit_service_client::CreditServiceClient;
use tonic::transport::Channel;

/// The generated client every test talks through.
pub type Client = CreditServiceClient<Channel>;

/// Defines one `#[tokio::test]` per backend for each scenario
/// `async fn(&TestServer) -> anyhow::Result<()>` named. A backend whose URL is not
/// set says so and passes; CI sets them all.
#[macro_export]
macro_rules! ledger_tests {
    ($($name:ident),* $(,)?) => { $crate::per_backend!(run; $($name),*); };
}

/// Defines one `#[tokio::test]` per backend for each scenario
/// `async fn(&TestDb) -> anyhow::Result<()>` named: a fresh, empty database
/// and no server (for migration tests).
#[macro_export]
macro_rules! database_tests {
    ($($name:ident),* $(,)?) => { $crate::per_backend!(run_on_database; $($name),*); };
}

/// The modules `sqlite`, `postgres` and `mysql`, each with one test per
/// scenario, run by `$crate::$runner`.
#[doc(hidden)]
#[macro_export]
macro_rules! per_backend {
    ($runner:ident; $($name:ident),*) => {
        $crate::per_backend!(@module sqlite, Sqlite, $runner; $($name),*);
        $crate::per_backend!(@module postgres, Postgres, $runner; $($name),*);
        $crate::per_backend!(@module mysql, MySql, $runner; $($name),*);
    };
    (@module $module:ident, $backend:ident, $runner:ident; $($name:ident),*) => {
        mod $module {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::$runner(stringify!($name), $crate::Backend::$backend, super::$name).await
            } )*
        }
    };
}

/// Runs `scenario` on a fresh database of `backend`, then drops it (kept
/// when the scenario fails, for a look).
pub async fn run_on_database<F>(name: &str, backend: Backend, scenario: F)
where
    F: AsyncFnOnce(&TestDb) -> anyhow::Result<()>,
{
    init_test_logging();
    let Some(db) = TestDb::create(backend)
        .await
        .expect("create the test database")
    else {
        eprintln!(
            "skipped {name} on {backend:?}: {} is not set",
            backend.env_var()
        );
        return;
    };
    match scenario(&db).await {
        Ok(()) => db.drop_database().await.expect("drop the test database"),
        Err(err) => panic!(
            "{name} on {backend:?} failed (database kept at {}): {err:?}",
            db.url
        ),
    }
}

/// Runs `scenario` against a fresh server on a fresh database of `backend`.
pub async fn run<F>(name: &str, backend: Backend, scenario: F)
where
    F: AsyncFnOnce(&TestServer) -> anyhow::Result<()>,
{
    run_on_database(name, backend, async |db: &TestDb| {
        let server = TestServer::start(&db.url).await?;
        let result = scenario(&server).await;
        server.stop().await;
        result
    })
    .await
}

/// Test logs only when asked: `TEST_LOG=1` (level from `RUST_LOG`).
fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
