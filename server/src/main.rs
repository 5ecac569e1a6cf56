//! `credit-server`: connects to the database, applies pending migrations and
//! serves gRPC until SIGINT/SIGTERM.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use credit_server::config::{Config, LogFormat};
use credit_server::ledger::Ledger;
use credit_server::{app, db};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(config.log_format);

    let database = db::connect(&config.database_url, &config.pool)
        .await
        .with_context(|| {
            format!(
                "cannot open the database at {}",
                redact(&config.database_url)
            )
        })?;
    db::migrate(&database)
        .await
        .context("cannot migrate the database")?;

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        database = %redact(&config.database_url),
        "credit-server ready"
    );

    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let ledger = Ledger::new(database.clone(), config.write_slots);
    let server = tokio::spawn(app::serve(listener, ledger, async move {
        shutdown_signal().await;
        let _ = stopped_tx.send(());
    }));
    let mut server = server;
    tokio::select! {
        result = &mut server => result??,
        _ = async {
            let _ = stopped_rx.await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!("in-flight calls did not finish within {grace:?}; stopping anyway"),
    }
    database.close().await.ok();
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
