//! The real `credit-server` binary as a child process, for the tests that
//! need what an in-process server cannot give: `kill -9`, SIGTERM, several
//! servers on one database, a restart on the same port.
//!
//! The binary is `$CREDIT_SERVER_BIN`, else `credit-server` beside the test
//! binary's `deps/` directory (build it first: `cargo build -p
//! credit-server`). Its stderr goes to a temporary file shown when a start
//! fails or a test panics. A child never outlives its [`ServerProcess`]:
//! dropping it (a panicking test too) kills it.
//!
//! [`TcpProxy`] stands between a server and its database, to take the
//! database away and bring it back.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::Client;

/// How long a start (connect, migrate, bind) may take before it fails.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A `credit-server` child process on a loopback port of its own.
pub struct ServerProcess {
    /// Where it listens; the same across restarts.
    pub addr: SocketAddr,
    database_url: String,
    extra_args: Vec<String>,
    /// Environment variables set on the child after the defaults.
    envs: Vec<(String, String)>,
    bin: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts the server on a free loopback port against `database_url`
    /// (with `extra_args` after `--listen` and `--database-url`) and waits
    /// until health reports SERVING.
    pub async fn start(database_url: &str, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(database_url, extra_args, &[]).await
    }

    /// Like [`start`](Self::start), with environment variables `envs` set
    /// on the child after the defaults (so they override them: e.g.
    /// `("NO_COLOR", "")` leaves colour to the server's own choice, and
    /// `("OTEL_BSP_SCHEDULE_DELAY", "100")` flushes spans fast). Restarts
    /// keep them.
    pub async fn start_with_env(
        database_url: &str,
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log_dir = tempfile::tempdir()?;
        let mut server = ServerProcess {
            addr: free_port()?,
            database_url: database_url.to_owned(),
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            bin: binary()?,
            child: None,
            log: log_dir.path().join("credit-server.stderr"),
            _log_dir: log_dir,
        };
        server.spawn()?;
        server.wait_serving().await?;
        Ok(server)
    }

    /// Starts it again on the same port and database, after a kill or a
    /// shutdown, and waits until it is SERVING.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("restart of a server that is still running");
        }
        self.spawn()?;
        self.wait_serving().await
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        writeln!(log, "--- starting {} on {}", self.bin.display(), self.addr)?;
        let stderr = log.try_clone()?;
        // A clean environment: an operator's CREDIT_* or DATABASE_URL
        // variables must not change what the test starts.
        let child = Command::new(&self.bin)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("CREDIT_SERVER_LOG").unwrap_or_else(|_| "info,sqlx=warn".into()),
            )
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--database-url")
            .arg(&self.database_url)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until health reports SERVING; fails early if the child exits.
    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_exit()? {
                bail!(
                    "credit-server exited with {status} while starting:\n{}",
                    self.stderr_tail(30)
                );
            }
            if let Ok(ServingStatus::Serving) = self.health().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "credit-server not SERVING after {START_TIMEOUT:?}:\n{}",
                    self.stderr_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client on its own, already open connection.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let channel = Endpoint::from_shared(self.endpoint())?.connect().await?;
        Ok(Client::new(channel))
    }

    /// A client that connects on first use (and reconnects after a
    /// restart): calls to a server that is down fail with a `Status`
    /// (UNAVAILABLE) rather than at connect time.
    pub fn lazy_client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(self.lazy_channel()?))
    }

    fn lazy_channel(&self) -> anyhow::Result<Channel> {
        Ok(Endpoint::from_shared(self.endpoint())?
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy())
    }

    /// A health client on its own connection, connected on first use.
    pub fn health_client(&self) -> anyhow::Result<HealthClient<Channel>> {
        Ok(HealthClient::new(self.lazy_channel()?))
    }

    /// One `grpc.health.v1.Health/Check` of the whole server (service "").
    pub async fn health(&self) -> anyhow::Result<ServingStatus> {
        let mut health = self.health_client()?;
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(Duration::from_secs(1));
        let status = health.check(request).await?.into_inner().status;
        Ok(ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown))
    }

    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_exit(), Ok(None))
    }

    /// The exit status if the child has exited (and reaps it).
    fn try_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        let Some(child) = &mut self.child else {
            bail!("no child process");
        };
        Ok(child.try_wait()?)
    }

    /// `kill -9`: the process dies between any two instructions, with
    /// whatever it had in flight.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(child) = &mut self.child {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends SIGTERM (a graceful shutdown) and returns at once.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        // A reaped child's pid may belong to someone else by now.
        if let Some(status) = self.try_exit()? {
            bail!("credit-server already exited with {status}");
        }
        let pid = self.pid().context("no child process")?;
        let pid = libc::pid_t::try_from(pid)?;
        // SAFETY: kill(2) only sends a signal; the pid is our own child,
        // still unreaped (checked above; only `self.child` reaps it).
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill(SIGTERM)");
        }
        Ok(())
    }

    /// Waits up to `timeout` for the child to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "credit-server still running {timeout:?} later:\n{}",
                    self.stderr_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `result`, with the server's last stderr lines attached to an error
    /// (a scenario's failure is often explained there).
    pub fn explain<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        result.with_context(|| {
            format!(
                "credit-server on {} (stderr, last lines):\n{}",
                self.addr,
                self.stderr_tail(40)
            )
        })
    }

    /// Everything the server wrote to stderr (all its runs, each after a
    /// `--- starting` line of the harness's own).
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines the server wrote to stderr (all its runs).
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child
            && let Ok(None) = child.try_wait()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "credit-server on {} (stderr, last lines):\n{}",
                self.addr,
                self.stderr_tail(40)
            );
        }
    }
}

/// The `credit-server` binary to run.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("CREDIT_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    // Test binaries live in target/<profile>/deps; the server beside deps.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("cannot locate the target directory from the test binary")?;
    let bin = profile_dir.join(format!("credit-server{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!(
            "{} does not exist: build it first (`cargo build -p credit-server`) or set CREDIT_SERVER_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// A loopback port nothing listens on right now. Another process could
/// take it before the server binds; the start then fails loudly.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A TCP forwarder on loopback in front of a database server that can be
/// cut (listener closed, every forwarded connection dropped) and resumed on
/// the same port: the honest shape of "the database is unreachable", which
/// killing the database's own sessions is not (new connections would
/// succeed at once).
pub struct TcpProxy {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl TcpProxy {
    /// A proxy to the host and port of the database URL `url` (PostgreSQL
    /// or MySQL; the scheme's default port when none is given).
    pub async fn in_front_of(url: &str) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url)?;
        let host = parsed.host_str().context("no host in the database URL")?;
        let port = match (parsed.port(), parsed.scheme()) {
            (Some(port), _) => port,
            (None, "mysql") => 3306,
            (None, _) => 5432,
        };
        let upstream = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .context("the database host does not resolve")?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = TcpProxy {
            addr: listener.local_addr()?,
            upstream,
            tasks: Default::default(),
        };
        proxy.serve(listener)?;
        Ok(proxy)
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> anyhow::Result<String> {
        let mut url = url::Url::parse(url)?;
        url.set_host(Some("127.0.0.1"))?;
        url.set_port(Some(self.addr.port()))
            .map_err(|()| anyhow::anyhow!("{url} cannot have a port"))?;
        Ok(url.to_string())
    }

    fn serve(&self, listener: TcpListener) -> anyhow::Result<()> {
        let upstream = self.upstream;
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let forward = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut tasks) = tasks.lock() {
                    tasks.push(forward.abort_handle());
                }
            }
        });
        self.tasks
            .lock()
            .map_err(|_| anyhow::anyhow!("proxy task list poisoned"))?
            .push(accept.abort_handle());
        Ok(())
    }

    /// Stops listening and drops every forwarded connection: connects are
    /// refused and open sessions see their socket close.
    pub fn cut(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }

    /// Listens again on the same port.
    pub async fn resume(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => return Err(err).context("the proxy cannot listen again"),
            }
        };
        self.serve(listener)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
