//! The real server, in-process, on a random loopback port.

use std::net::SocketAddr;

use credit_server::app::ServeOptions;
use credit_server::config::{DEFAULT_WRITE_SLOTS, PoolSettings};
use credit_server::ledger::{Ledger, LedgerConfig};
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;

use crate::Client;

/// A running server and a direct connection to its database (for setting up
/// and checking state the API does not expose).
pub struct TestServer {
    pub addr: SocketAddr,
    /// The server's database, for assertions on the tables themselves.
    pub db: DatabaseConnection,
    /// The server's ledger, for its write statistics.
    pub ledger: Ledger,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Connects to `url`, migrates, and serves on `127.0.0.1:0`.
    pub async fn start(url: &str) -> anyhow::Result<TestServer> {
        Self::start_with(url, ServeOptions::default()).await
    }

    /// Like [`start`](Self::start), with keys, TLS or limits.
    pub async fn start_with(url: &str, options: ServeOptions) -> anyhow::Result<TestServer> {
        let ledger = LedgerConfig {
            write_slots: DEFAULT_WRITE_SLOTS,
            ..LedgerConfig::default()
        };
        Self::start_custom(url, options, &PoolSettings::default(), ledger).await
    }

    /// Like [`start_with`](Self::start_with), with its own pool and ledger
    /// settings (small pools, short queues).
    pub async fn start_custom(
        url: &str,
        options: ServeOptions,
        pool: &PoolSettings,
        ledger: LedgerConfig,
    ) -> anyhow::Result<TestServer> {
        let db = credit_server::db::connect(url, pool).await?;
        credit_server::db::migrate(&db).await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel();
        let ledger = Ledger::with_config(db.clone(), ledger).map_err(anyhow::Error::msg)?;
        let ledger_for_stats = ledger.clone();
        let task = tokio::spawn(credit_server::app::serve(
            listener,
            ledger,
            options,
            async {
                let _ = rx.await;
            },
        ));
        Ok(TestServer {
            addr,
            ledger: ledger_for_stats,
            db,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A new client on its own connection.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let channel = Endpoint::from_shared(self.endpoint())?.connect().await?;
        Ok(Client::new(channel))
    }

    /// `n` clients, each on its own connection.
    pub async fn clients(&self, n: usize) -> anyhow::Result<Vec<Client>> {
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(self.client().await?);
        }
        Ok(clients)
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        let _ = self.db.close().await;
    }
}
