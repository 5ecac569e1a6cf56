//! `credit-server`: connects to the database, applies pending migrations and
//! serves gRPC until SIGINT/SIGTERM. `verify` and `new-key` are one-shot
//! subcommands.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use credit_server::app::{self, ServeOptions};
use credit_server::auth::{KeyRing, key_line};
use credit_server::config::{
    Cli, Command, Config, SecuritySettings, check_exposure, check_metrics_exposure,
};
use credit_server::db;
use credit_server::ledger::Ledger;
use credit_server::telemetry;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let serving = cli.command.is_none();
    let otlp = serving
        .then_some(cli.config.telemetry.otlp_endpoint.as_deref())
        .flatten();
    let telemetry = telemetry::logging::init(cli.config.log_format, otlp)?;
    let result = run(cli).await;
    telemetry.shutdown();
    result
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => serve(cli.config).await,
        Some(Command::NewKey { name, role }) => {
            let key = format!(
                "ck_{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            println!("key (give this to the caller; it is not stored): {key}");
            println!("keys file line: {}", key_line(&name, role, &key));
            Ok(())
        }
        Some(Command::Verify { user }) => verify(&cli.config, user.as_deref()).await,
        Some(Command::Relay {
            nats_url,
            stream,
            subject_prefix,
            name,
        }) => {
            let database = open_database(&cli.config).await?;
            db::migrate(&database)
                .await
                .context("cannot migrate the database")?;
            let ledger =
                Ledger::with_config(database, cli.config.ledger()).map_err(anyhow::Error::msg)?;
            credit_server::relay::run(
                ledger,
                credit_server::relay::RelayConfig {
                    nats_url,
                    stream,
                    subject_prefix,
                    name,
                },
            )
            .await
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let keys = load_keys(&config.security)?;
    check_exposure(config.listen, keys.is_some(), config.security.insecure)
        .map_err(anyhow::Error::msg)?;
    match &keys {
        Some(keys) => tracing::info!(keys = keys.len(), "API keys required"),
        None => tracing::warn!(
            "no API keys configured: every caller is an admin (allowed on loopback only, or with --insecure)"
        ),
    }
    let tls = load_tls(&config.security)?;
    if let Some(listen) = config.telemetry.metrics_listen {
        check_metrics_exposure(listen, config.security.insecure).map_err(anyhow::Error::msg)?;
        telemetry::metrics::serve(listen)
            .with_context(|| format!("cannot serve metrics on {listen}"))?;
        tracing::info!(%listen, "metrics on /metrics");
    }

    let database = open_database(&config).await?;
    db::migrate(&database)
        .await
        .context("cannot migrate the database")?;

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        database = %redact(&config.database_url),
        tls = tls.is_some(),
        "credit-server ready"
    );

    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let ledger = Ledger::with_config(database.clone(), config.ledger())
        .map_err(|e| anyhow::anyhow!("cannot start: {e}"))?;
    let options = ServeOptions {
        keys,
        tls,
        limits: config.limits.limits(),
        grpc_web: config.grpc_web.options(),
        access_log: config.telemetry.access_log,
        sweep_interval: (config.expiry_sweep_secs > 0)
            .then(|| Duration::from_secs(config.expiry_sweep_secs)),
        ..ServeOptions::default()
    };
    let mut server = tokio::spawn(app::serve(listener, ledger, options, async move {
        shutdown_signal().await;
        let _ = stopped_tx.send(());
    }));
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

/// Prints the verifier's report; exits non-zero on any violation.
async fn verify(config: &Config, user: Option<&str>) -> anyhow::Result<()> {
    let database = open_database(config).await?;
    let report = credit_server::ledger::verify::verify(&database, user)
        .await
        .context("cannot read the ledger")?;
    println!("{report}");
    database.close().await.ok();
    if !report.is_clean() {
        std::process::exit(1);
    }
    Ok(())
}

async fn open_database(config: &Config) -> anyhow::Result<sea_orm::DatabaseConnection> {
    db::connect(&config.database_url, &config.pool)
        .await
        .with_context(|| {
            format!(
                "cannot open the database at {}",
                redact(&config.database_url)
            )
        })
}

/// The configured keys, or `None` when there are none.
fn load_keys(security: &SecuritySettings) -> anyhow::Result<Option<KeyRing>> {
    let mut text = String::new();
    if let Some(path) = &security.api_keys_file {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the API keys file {}", path.display()))?;
    }
    if let Some(inline) = &security.api_keys {
        text.push('\n');
        text.push_str(inline);
    }
    let ring = KeyRing::parse(&text).map_err(anyhow::Error::msg)?;
    if ring.is_empty() && (security.api_keys_file.is_some() || security.api_keys.is_some()) {
        bail!("API keys were configured but none was found; refusing to run without them");
    }
    Ok((!ring.is_empty()).then_some(ring))
}

fn load_tls(security: &SecuritySettings) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&security.tls_cert, &security.tls_key) else {
        return Ok(None);
    };
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &security.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
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
