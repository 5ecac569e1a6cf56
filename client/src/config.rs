//! How a [`CreditClient`] is set up: the endpoint, the per-call deadline,
//! retries, and the credentials and TLS settings it sends.

use std::fmt;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::{CreditClient, Error, RetryPolicy};

/// The deadline of each attempt of a call unless the caller sets another.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// How long connecting may take unless the caller sets another limit.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds a [`CreditClient`]; start with [`CreditClient::builder`].
#[derive(Clone)]
pub struct ClientBuilder {
    endpoint: String,
    deadline: Duration,
    call_timeout: Option<Duration>,
    connect_timeout: Duration,
    retry: RetryPolicy,
    bearer_token: Option<String>,
    tls: Option<TlsConfig>,
}

impl ClientBuilder {
    /// Settings for `endpoint` (`http://host:port`, `https://host:port`, or
    /// `host:port`, which means `http://` or, with [`ClientBuilder::tls`],
    /// `https://`) with the defaults: a 10 s deadline per attempt, no limit
    /// on a call as a whole, a 5 s connect timeout, [`RetryPolicy::default`],
    /// no credentials, TLS only for `https`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            deadline: DEFAULT_DEADLINE,
            call_timeout: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retry: RetryPolicy::default(),
            bearer_token: None,
            tls: None,
        }
    }

    /// The deadline of each attempt. It is sent to the server (as
    /// `grpc-timeout`) and enforced by the client; a call that retries can
    /// take up to `max_attempts` deadlines plus the waits between them.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The longest one call may take as a whole: every attempt and the
    /// waits between them. Each attempt's deadline is cut to what is left,
    /// no retry starts that could not finish in time, and a call that runs
    /// out of time fails with [`Error::DeadlineExceeded`] (or with the
    /// failure of its last attempt, when the wait before the next one would
    /// not fit). Without it a call may take up to `max_attempts` deadlines
    /// plus the waits between them.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    /// How long setting up the connection may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How failed calls are retried.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// A token sent with every call as `authorization: Bearer <token>`.
    /// Use it over TLS: on plain `http` anyone on the path can read it.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(token.into());
        self
    }

    /// TLS settings for an `https` endpoint (an `http` endpoint is always
    /// plain text). Without this, `https` endpoints trust the bundled
    /// public root certificates.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Connects now; fails if the server cannot be reached.
    pub async fn connect(self) -> Result<CreditClient, Error> {
        let endpoint = self.endpoint()?;
        let channel = endpoint.connect().await.map_err(|source| Error::Connect {
            endpoint: self.endpoint.clone(),
            source,
        })?;
        self.finish(channel)
    }

    /// Connects on the first call (and reconnects as needed); a server that
    /// is down shows up as [`Error::Unavailable`] from that call.
    pub fn connect_lazy(self) -> Result<CreditClient, Error> {
        let channel = self.endpoint()?.connect_lazy();
        self.finish(channel)
    }

    fn endpoint(&self) -> Result<Endpoint, Error> {
        let invalid = |err: tonic::transport::Error| {
            Error::InvalidInput(format!("invalid endpoint {:?}: {err}", self.endpoint))
        };
        let default_scheme = match self.tls {
            Some(_) => "https",
            None => "http",
        };
        let uri = parse_endpoint(&self.endpoint, default_scheme)?;
        let endpoint = Endpoint::from(uri).connect_timeout(self.connect_timeout);
        let tls = match (&self.tls, endpoint.uri().scheme_str()) {
            (Some(tls), _) => Some(tls.clone()),
            (None, Some("https")) => Some(TlsConfig::new()),
            (None, _) => None,
        };
        match tls {
            Some(tls) => endpoint.tls_config(tls.to_tonic()).map_err(invalid),
            None => Ok(endpoint),
        }
    }

    fn finish(self, channel: tonic::transport::Channel) -> Result<CreditClient, Error> {
        let mut client = CreditClient::from_channel(channel)
            .with_deadline(self.deadline)
            .with_retry_policy(self.retry);
        if let Some(timeout) = self.call_timeout {
            client = client.with_call_timeout(timeout);
        }
        match self.bearer_token {
            Some(token) => client.with_bearer_token(&token),
            None => Ok(client),
        }
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("deadline", &self.deadline)
            .field("call_timeout", &self.call_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("tls", &self.tls)
            .finish()
    }
}

/// Reads a server address: `http://host[:port]`, `https://host[:port]`, or
/// `host[:port]` without a scheme (as grpcurl and the Python client take
/// it), which gets `default_scheme`. Anything else (another scheme, no
/// host, a port that is not 1 to 65535, a path, spaces) is
/// [`Error::InvalidInput`] saying what is wrong, before anything is sent.
///
/// ```
/// use credit_client::parse_endpoint;
///
/// let uri = parse_endpoint("127.0.0.1:50051", "http")?;
/// assert_eq!(uri.to_string(), "http://127.0.0.1:50051/");
/// assert!(parse_endpoint("not a host::", "http").is_err());
/// assert!(parse_endpoint("ftp://example.com:21", "http").is_err());
/// # Ok::<(), credit_client::Error>(())
/// ```
pub fn parse_endpoint(address: &str, default_scheme: &str) -> Result<Uri, Error> {
    let bad = |why: &str| {
        Error::InvalidInput(format!(
            "invalid server address {address:?}: {why} (expected host:port, \
             http://host:port or https://host:port)"
        ))
    };
    let text = address.trim();
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    let full = match text.contains("://") {
        true => text.to_owned(),
        false => format!("{default_scheme}://{text}"),
    };
    let uri: Uri = full.parse().map_err(|_| bad("not a valid address"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(bad(&format!("unsupported scheme {other:?}"))),
        None => return Err(bad("no scheme")),
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    if uri
        .host()
        .is_none_or(|host| host.is_empty() || host == "[]")
    {
        return Err(bad("no host"));
    }
    if authority.contains('@') {
        return Err(bad("user names and passwords do not go in the address"));
    }
    // `[::1]:50051` has a port, `[::1]` has none.
    let port = match authority.rsplit_once(':') {
        Some((host, port)) if !authority.ends_with(']') && !host.is_empty() => Some(port),
        _ => None,
    };
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p != 0)
    {
        return Err(bad(&format!(
            "the port {port:?} is not a number from 1 to 65535"
        )));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("a server address has no path or query"));
    }
    Ok(uri)
}

/// TLS settings for the connection to the server.
///
/// By default the server's certificate must chain to one of the bundled
/// public root certificates; with [`TlsConfig::ca_certificate_pem`] it must
/// chain to the given CA instead (a private deployment).
#[derive(Clone, Default)]
pub struct TlsConfig {
    ca_certificate_pem: Option<Vec<u8>>,
    domain_name: Option<String>,
    client_identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsConfig {
    /// TLS trusting the bundled public roots, checking the endpoint's host.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trust only this CA (PEM) instead of the public roots.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificate_pem = Some(pem.into());
        self
    }

    /// The name the server's certificate must carry, when it is not the
    /// endpoint's host (e.g. connecting by IP address).
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }

    /// A client certificate and its private key (both PEM), for servers
    /// that require mutual TLS.
    pub fn client_identity_pem(
        mut self,
        certificate: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.client_identity_pem = Some((certificate.into(), key.into()));
        self
    }

    fn to_tonic(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_certificate_pem {
            Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
            None => config.with_webpki_roots(),
        };
        if let Some(name) = &self.domain_name {
            config = config.domain_name(name.clone());
        }
        if let Some((cert, key)) = &self.client_identity_pem {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

impl fmt::Debug for TlsConfig {
    /// Shows which settings are present, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("custom_ca", &self.ca_certificate_pem.is_some())
            .field("domain_name", &self.domain_name)
            .field("client_identity", &self.client_identity_pem.is_some())
            .finish()
    }
}

/// `authorization: Bearer <token>` as a header value, marked sensitive so
/// HTTP/2 never puts it in its compression tables (and `Debug` hides it).
pub(crate) fn bearer_header(token: &str) -> Result<MetadataValue<Ascii>, Error> {
    let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        Error::InvalidInput("the bearer token has characters a header cannot carry".to_owned())
    })?;
    value.set_sensitive(true);
    Ok(value)
}
