//! Test harness: a fresh database per test (SQLite always; PostgreSQL and
//! MariaDB/MySQL when `CREDIT_TEST_POSTGRES_URL` / `CREDIT_TEST_MYSQL_URL`
//! name a server), the real server on `127.0.0.1:0`, and real gRPC clients.

pub mod api;
mod database;
pub mod invariants;
pub mod process;
mod server;

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
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { $crate::run(stringify!($name), $crate::Backend::Sqlite, super::$name).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { $crate::run(stringify!($name), $crate::Backend::Postgres, super::$name).await } )*
        }
        mod mysql {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { $crate::run(stringify!($name), $crate::Backend::MySql, super::$name).await } )*
        }
    };
}

/// Defines one `#[tokio::test]` per backend for each scenario
/// `async fn(&TestDb) -> anyhow::Result<()>` named: a fresh, empty database
/// and no server (for migration tests).
#[macro_export]
macro_rules! database_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test]
            async fn $name() { $crate::run_on_database(stringify!($name), $crate::Backend::Sqlite, super::$name).await } )*
        }
        mod postgres {
            $( #[tokio::test]
            async fn $name() { $crate::run_on_database(stringify!($name), $crate::Backend::Postgres, super::$name).await } )*
        }
        mod mysql {
            $( #[tokio::test]
            async fn $name() { $crate::run_on_database(stringify!($name), $crate::Backend::MySql, super::$name).await } )*
        }
    };
}

/// Runs `scenario` on a fresh database of `backend`, then drops it.
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

/// Runs `scenario` against a fresh server on `backend`, then drops the
/// database (kept when the scenario fails, for a look).
pub async fn run<F>(name: &str, backend: Backend, scenario: F)
where
    F: AsyncFnOnce(&TestServer) -> anyhow::Result<()>,
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
    let url = db.url.clone();
    let server = TestServer::start(&url).await.expect("start the server");
    let result = scenario(&server).await;
    server.stop().await;
    match result {
        Ok(()) => db.drop_database().await.expect("drop the test database"),
        Err(err) => panic!("{name} on {backend:?} failed (database kept at {url}): {err:?}"),
    }
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
