//! Shared set-up of the property tests (`model_based.rs`, `fuzz_inputs.rs`):
//! proptest is synchronous, so each backend gets a runtime, a fresh
//! database and one long-lived server that every case talks to.

use integration_tests::{Backend, Client, TestDb, TestServer};
use proptest::test_runner::Config;
use tokio::runtime::Runtime;

/// `PROPTEST_CASES` cases (else `default_cases`), no regression files in
/// the source tree (the minimal failing input is printed in the panic).
pub fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        failure_persistence: None,
        // Every shrink step replays a whole case against the server.
        max_shrink_time: 120_000,
        ..Config::default()
    }
}

/// A server on a fresh database of one backend, driven from sync code.
pub struct Live {
    pub rt: Runtime,
    pub server: TestServer,
    pub client: Client,
    db: TestDb,
}

/// Starts `test` on `backend`, or `None` (said on stderr) when its URL is
/// unset.
pub fn start(test: &str, backend: Backend) -> Option<Live> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let Some(db) = rt
        .block_on(TestDb::create(backend))
        .expect("create the test database")
    else {
        eprintln!(
            "skipped {test} on {backend:?}: {} is not set",
            backend.env_var()
        );
        return None;
    };
    let server = rt
        .block_on(TestServer::start(&db.url))
        .expect("start the server");
    let client = rt.block_on(server.client()).expect("connect");
    Some(Live {
        rt,
        server,
        client,
        db,
    })
}

impl Live {
    /// Stops the server; drops the database if the run passed, else keeps
    /// it and fails with `failure`.
    pub fn finish<E: std::fmt::Display>(self, test: &str, result: Result<(), E>) {
        let Live { rt, server, db, .. } = self;
        rt.block_on(server.stop());
        match result {
            Ok(()) => rt
                .block_on(db.drop_database())
                .expect("drop the test database"),
            Err(err) => panic!("{test} on {:?} ({}): {err}", db.backend, db.url),
        }
    }
}
