//! The credit-server as a real child process (so its memory can be measured
//! and nothing of the tool's own runtime flatters it), or an existing one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// How long a started server may take to migrate and report SERVING.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped server may take to finish in-flight calls.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A credit-server child process on a loopback port.
pub struct ServerProcess {
    child: Child,
    pub pid: u32,
    pub endpoint: String,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

/// The binary to start: the flag or `CREDIT_SERVER_BIN`, else the
/// credit-server next to this executable (cargo puts both in one directory).
pub fn resolve_binary(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match flag {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()
            .context("cannot find this executable's directory")?
            .with_file_name(format!("credit-server{}", std::env::consts::EXE_SUFFIX)),
    };
    anyhow::ensure!(
        path.is_file(),
        "credit-server binary not found at {} (build it with `cargo build -p credit-server`, \
         or pass --server-bin / CREDIT_SERVER_BIN)",
        path.display()
    );
    Ok(path)
}

impl ServerProcess {
    /// Starts `binary` against `database_url` on a free loopback port and
    /// waits until it reports SERVING.
    pub async fn start(
        binary: &Path,
        database_url: &str,
        max_connections: u32,
    ) -> anyhow::Result<ServerProcess> {
        let port = free_port()?;
        let log_dir = tempfile::Builder::new()
            .prefix("credit-bench-server-")
            .tempdir()
            .context("cannot create a directory for the server log")?;
        let log_path = log_dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).context("cannot create the server log")?;
        let child = Command::new(binary)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database-url")
            .arg(database_url)
            .arg("--db-max-connections")
            .arg(max_connections.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cannot share the server log")?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child
            .id()
            .context("the server exited as soon as it started")?;
        let mut server = ServerProcess {
            child,
            pid,
            endpoint: format!("http://127.0.0.1:{port}"),
            log_path,
            _log_dir: log_dir,
        };
        server.wait_serving().await?;
        Ok(server)
    }

    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "credit-server exited during start-up ({status}); its log:\n{}",
                    self.log_tail()
                );
            }
            if health_serving(&self.endpoint).await {
                return Ok(());
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                bail!(
                    "credit-server did not report SERVING within {STARTUP_TIMEOUT:?}; its log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines the server logged.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM (the server's graceful path), then SIGKILL after a grace.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if !self.is_running() {
            bail!(
                "credit-server died during the run; its log:\n{}",
                self.log_tail()
            );
        }
        let pid = libc::pid_t::try_from(self.pid).context("server pid out of range")?;
        // SAFETY: kill(2) with a pid we spawned and still own (not reaped,
        // checked just above); it touches no memory of ours.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    eprintln!("note: credit-server exited with {status}");
                }
            }
            Err(_) => {
                eprintln!("note: credit-server ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}

/// Whether the server at `endpoint` reports SERVING for the whole server.
pub async fn health_serving(endpoint: &str) -> bool {
    let Ok(endpoint) = Endpoint::from_shared(endpoint.to_owned()) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
    else {
        return false;
    };
    let mut client = HealthClient::<Channel>::new(channel);
    match client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
    {
        Ok(res) => res.into_inner().status == ServingStatus::Serving as i32,
        Err(_) => false,
    }
}

/// Waits up to the start-up timeout for an existing server to be SERVING.
pub async fn wait_existing(endpoint: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    while !health_serving(endpoint).await {
        if started.elapsed() > STARTUP_TIMEOUT {
            bail!("{endpoint} does not report SERVING on grpc.health.v1.Health");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// A loopback port nobody listens on right now. The server binds it a
/// moment later; another process taking it in between makes the start fail
/// loudly, never silently.
fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(listener.local_addr()?.port())
}
