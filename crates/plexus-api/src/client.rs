//! A typed client for the Plexus (Consul-shaped) HTTP API, used by the CLI, the proxy and tests.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::acl::SecretId;
use crate::catalog::Indexed;
use crate::error::ErrorBody;

mod acl;
mod catalog;
mod config;
mod connect;
mod event;
mod job;
mod kv;
mod operator;
mod session;
mod tls;

pub use connect::IntentionSet;
pub use event::EventFilters;
pub use session::SessionCreate;

/// Where clients look for the control plane when nothing else is said.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8500";
/// The environment variable naming the control plane's HTTP address.
pub const HTTP_ADDR_ENV: &str = "PLEXUS_HTTP_ADDR";
/// The environment variable holding the ACL token clients send.
pub const HTTP_TOKEN_ENV: &str = "PLEXUS_HTTP_TOKEN";
/// The environment variable naming a file holding the ACL token.
pub const HTTP_TOKEN_FILE_ENV: &str = "PLEXUS_HTTP_TOKEN_FILE";
/// Consul's name for [`HTTP_TOKEN_ENV`], also read.
pub const CONSUL_HTTP_TOKEN_ENV: &str = "CONSUL_HTTP_TOKEN";
/// Consul's name for [`HTTP_TOKEN_FILE_ENV`], also read.
pub const CONSUL_HTTP_TOKEN_FILE_ENV: &str = "CONSUL_HTTP_TOKEN_FILE";

pub use crate::error::{NO_QUORUM_HEADER, SERVERS_UNREACHABLE_HEADER};

/// Longest wait for a server to accept a connection before the next server is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a server's answer to a request that does not block. A blocking query may
/// take its `wait`, plus the sixteenth the server may add, plus this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive probes on idle connections: a connection whose server vanished (a partition, a
/// host gone) is closed by the kernel after about `idle + interval × retries` (16 s) instead of
/// holding a blocking query or a pooled request until its timeout.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_RETRIES: u32 = 3;
/// How long a pooled connection may sit idle before the client drops it: under the servers'
/// keep-alive idle limit (`--http-header-timeout`, 10 s by default), so the client never reuses a
/// connection the server is closing at that moment (the request would fail with an incomplete
/// message before the server has seen it).
const POOL_IDLE: Duration = Duration::from_secs(5);

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not `host:port` or `http://host:port`.
    #[error("invalid control-plane address {0:?}: expected host:port or http://host:port")]
    BadAddress(String),
    /// The control plane could not be reached.
    #[error("cannot reach the control plane at {addr}")]
    Unreachable {
        /// Base URL.
        addr: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The control plane answered with an error status.
    #[error("{method} {path}: {status}: {message}")]
    Status {
        /// Method.
        method: &'static str,
        /// Path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The error message from the body (or the raw body).
        message: String,
        /// The field at fault, when the server named one.
        field: Option<String>,
    },
    /// The TLS handshake with the control plane failed (wrong CA, expired or misnamed
    /// certificate, a refused client certificate, a plaintext port).
    #[error("TLS with the control plane at {addr} failed: {reason}")]
    Tls {
        /// Base URL.
        addr: String,
        /// What went wrong, in words, with what to check.
        reason: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// An `https://` address without a CA to verify the server with.
    #[error("{addr}: HTTPS needs a CA file to verify the server: --ca-file or PLEXUS_CACERT")]
    NoCaFile {
        /// The address.
        addr: String,
    },
    /// The response was not of the expected shape.
    #[error("{path}: unexpected response body")]
    Decode {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
}

impl ClientError {
    /// The HTTP status when the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when no answer came: the server could not be reached, or the TLS handshake failed
    /// (worth retrying with backoff; a TLS failure is also logged as such).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::Tls { .. }
        )
    }
}

/// Blocking-query options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// Return once the index moves past this.
    pub index: Option<u64>,
    /// The longest wait.
    pub wait: Option<Duration>,
}

impl QueryOptions {
    /// A blocking query from `index` waiting at most `wait`.
    pub fn blocking(index: u64, wait: Duration) -> Self {
        Self {
            index: Some(index),
            wait: Some(wait),
        }
    }
}

/// Normalises `host:port` or `http://host:port` to a base URL without a trailing slash.
pub fn base_url(addr: &str) -> Result<String, ClientError> {
    base_url_with_scheme(addr, "http")
}

/// Like [`base_url`], with `scheme` for bare `host:port` addresses (`https` when
/// `CONSUL_HTTP_SSL` says so).
pub fn base_url_with_scheme(addr: &str, scheme: &str) -> Result<String, ClientError> {
    let trimmed = addr.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .unwrap_or(trimmed);
    let valid = rest
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
        && !rest.contains('/');
    if !valid {
        return Err(ClientError::BadAddress(addr.to_owned()));
    }
    if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        Ok(trimmed.to_owned())
    } else {
        Ok(format!("{scheme}://{trimmed}"))
    }
}

/// The control-plane address from a flag, else `PLEXUS_HTTP_ADDR`, else `127.0.0.1:8500`.
pub fn resolve_addr(flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| std::env::var(HTTP_ADDR_ENV).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_owned())
}

/// Why the ACL token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("cannot read the token file {path}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The token file holds no token.
    #[error("the token file {path} is empty")]
    Empty {
        /// The file.
        path: std::path::PathBuf,
    },
}

/// Reads a token file (surrounding whitespace removed; an empty file is an error).
pub fn read_token_file(path: &std::path::Path) -> Result<SecretId, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(SecretId::new(token))
}

/// The ACL token a client sends, in Consul's order: `--token`, `--token-file`,
/// `PLEXUS_HTTP_TOKEN`, `PLEXUS_HTTP_TOKEN_FILE`, `CONSUL_HTTP_TOKEN`, `CONSUL_HTTP_TOKEN_FILE`.
/// `None`: no token (the anonymous token).
pub fn resolve_token(
    flag: Option<&SecretId>,
    file_flag: Option<&std::path::Path>,
) -> Result<Option<SecretId>, TokenError> {
    if let Some(token) = flag.filter(|t| !t.is_empty()) {
        return Ok(Some(token.clone()));
    }
    if let Some(path) = file_flag {
        return read_token_file(path).map(Some);
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    for (token_var, file_var) in [
        (HTTP_TOKEN_ENV, HTTP_TOKEN_FILE_ENV),
        (CONSUL_HTTP_TOKEN_ENV, CONSUL_HTTP_TOKEN_FILE_ENV),
    ] {
        if let Some(token) = env(token_var) {
            return Ok(Some(SecretId::new(token.trim())));
        }
        if let Some(path) = env(file_var) {
            return read_token_file(std::path::Path::new(&path)).map(Some);
        }
    }
    Ok(None)
}

/// How a client reaches the control plane beyond its addresses.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// TLS for `https://` servers: trusted roots, the client certificate, the server name
    /// (built by `plexus_runtime::tls`). Required when an address is `https://`.
    pub tls: Option<rustls::ClientConfig>,
    /// Bare `host:port` addresses mean `https://` (`PLEXUS_HTTP_SSL`, `CONSUL_HTTP_SSL`).
    pub https: bool,
    /// Host names connected to at other addresses than DNS would give (the port of each
    /// address is used when the URL names none): a server reached through a mesh gateway is
    /// `https://server.<dc>.consul` connected to at the gateway, its certificate verified for
    /// that name.
    pub resolve: Vec<(String, Vec<SocketAddr>)>,
}

/// A client of the control plane: one server, or several with failover.
///
/// Requests go to the server that last answered. When a connection cannot be made, or a server
/// refuses for want of a store quorum ([`NO_QUORUM_HEADER`]), the next server is tried at once (a
/// request that may have reached a server's store is never repeated elsewhere); callers back off (jittered) after an [`ClientError::Unreachable`]. While no server
/// answers, [`Client::stale_since`] says since when: proxies show it on their admin endpoint.
///
/// With a token ([`Client::with_token`]) every request carries it in `X-Consul-Token`.
#[derive(Debug, Clone)]
pub struct Client {
    servers: std::sync::Arc<Servers>,
    http: reqwest::Client,
    /// The TLS configuration `http` was built with (for clients made from this one).
    tls: Option<rustls::ClientConfig>,
    /// The host name overrides `http` was built with.
    resolve: Vec<(String, Vec<SocketAddr>)>,
    /// The token sent with every request (`None`: anonymous).
    token: Option<SecretId>,
}

#[derive(Debug)]
struct Servers {
    bases: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
    stale_since: tokio::sync::watch::Sender<Option<std::time::SystemTime>>,
}

impl Client {
    /// A client for `addr` (`host:port` or `http://host:port`).
    pub fn new(addr: &str) -> Result<Self, ClientError> {
        Self::with_servers(&[addr])
    }

    /// A client for several servers (each `host:port` or `http://host:port`), with failover.
    pub fn with_servers<S: AsRef<str>>(addrs: &[S]) -> Result<Self, ClientError> {
        Self::with_options(addrs, ClientOptions::default())
    }

    /// A client for several servers (`host:port`, `http://host:port` or `https://host:port`)
    /// with failover, talking TLS as `options` say.
    pub fn with_options<S: AsRef<str>>(
        addrs: &[S],
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let scheme = if options.https { "https" } else { "http" };
        let bases = addrs
            .iter()
            .map(|a| base_url_with_scheme(a.as_ref(), scheme))
            .collect::<Result<Vec<_>, _>>()?;
        if bases.is_empty() {
            return Err(ClientError::BadAddress(String::new()));
        }
        if options.tls.is_none()
            && let Some(https) = bases.iter().find(|b| b.starts_with("https://"))
        {
            return Err(ClientError::NoCaFile {
                addr: https.clone(),
            });
        }
        let http = http_client(true, CONNECT_TIMEOUT, options.tls.clone(), &options.resolve)
            .map_err(|source| ClientError::Unreachable {
                addr: bases.join(","),
                source,
            })?;
        Ok(Self {
            servers: std::sync::Arc::new(Servers {
                bases,
                current: std::sync::atomic::AtomicUsize::new(0),
                stale_since: tokio::sync::watch::Sender::new(None),
            }),
            http,
            tls: options.tls,
            resolve: options.resolve,
            token: None,
        })
    }

    /// The same servers (and failover state), through a client that opens a new connection for
    /// every request and waits at most `connect_timeout` for it: for requests that must never
    /// wait on a pooled connection that died silently (an agent's lease renewals).
    pub fn with_fresh_connections(&self, connect_timeout: Duration) -> Result<Self, ClientError> {
        let http = http_client(false, connect_timeout, self.tls.clone(), &self.resolve).map_err(
            |source| ClientError::Unreachable {
                addr: self.servers.bases.join(","),
                source,
            },
        )?;
        Ok(Self {
            servers: std::sync::Arc::clone(&self.servers),
            http,
            tls: self.tls.clone(),
            resolve: self.resolve.clone(),
            token: self.token.clone(),
        })
    }

    /// The same client sending `token` (`None`: no token, i.e. anonymous) with every request.
    pub fn with_token(mut self, token: Option<SecretId>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// The token this client sends, if any.
    pub fn token(&self) -> Option<&SecretId> {
        self.token.as_ref()
    }

    /// The base URL of the server requests currently go to.
    pub fn base(&self) -> &str {
        let index = self
            .servers
            .current
            .load(std::sync::atomic::Ordering::Relaxed);
        &self.servers.bases[index % self.servers.bases.len()]
    }

    /// Every server's base URL.
    pub fn servers(&self) -> &[String] {
        &self.servers.bases
    }

    /// Since when no server has answered (`None` while the last request got an answer). An
    /// agent in between that answers "no server is reachable" counts as no answer.
    pub fn stale_since(&self) -> Option<std::time::SystemTime> {
        *self.servers.stale_since.borrow()
    }

    /// [`Client::stale_since`] as it changes (shared by every clone of this client, including
    /// [`Client::with_fresh_connections`]'s): an agent answers the requests it passes on as soon
    /// as its own calls find the servers gone, instead of waiting on dead connections.
    pub fn stale_watch(&self) -> tokio::sync::watch::Receiver<Option<std::time::SystemTime>> {
        self.servers.stale_since.subscribe()
    }

    fn set_stale(&self, stale: bool) {
        self.servers.stale_since.send_if_modified(|since| {
            match (stale, since.is_some()) {
                (true, false) => *since = Some(std::time::SystemTime::now()),
                (false, true) => *since = None,
                _ => return false,
            }
            true
        });
    }

    /// Sends the request `build` makes for a server's base URL, failing over to the next server
    /// while connections cannot be made.
    async fn send(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        self.send_as(self.token.as_ref(), build).await
    }

    /// Like `send`, with `token` instead of the client's own.
    async fn send_as(
        &self,
        token: Option<&SecretId>,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        use std::sync::atomic::Ordering;
        let build = |base: &str| match token {
            Some(token) => build(base).header(crate::acl::TOKEN_HEADER, token.expose()),
            None => build(base),
        };
        let count = self.servers.bases.len();
        let start = self.servers.current.load(Ordering::Relaxed);
        let mut step = 0;
        loop {
            let index = (start + step) % count;
            let base = &self.servers.bases[index];
            match build(base).send().await {
                // Refused before anything was read or written: the next server may have quorum.
                Ok(response)
                    if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                        && response.headers().contains_key(NO_QUORUM_HEADER)
                        && step + 1 < count =>
                {
                    tracing::debug!(server = %base, "server without store quorum; trying the next");
                    step += 1;
                }
                Ok(response) => {
                    self.servers.current.store(index, Ordering::Relaxed);
                    let relayed_outage = response.status()
                        == reqwest::StatusCode::SERVICE_UNAVAILABLE
                        && response.headers().contains_key(SERVERS_UNREACHABLE_HEADER);
                    self.set_stale(relayed_outage);
                    return Ok(response);
                }
                Err(source) if source.is_connect() && step + 1 < count => {
                    tracing::debug!(server = %base, error = %source, "server unreachable; trying the next");
                    step += 1;
                }
                Err(source) => {
                    // Start with the next server next time.
                    self.servers
                        .current
                        .store((index + 1) % count, Ordering::Relaxed);
                    self.set_stale(true);
                    let mut reason = tls::failure(&source);
                    if reason.is_none()
                        && !source.is_connect()
                        && !source.is_timeout()
                        && let Some(config) = &self.tls
                    {
                        reason = tls::probe(base, config, &self.resolve).await;
                    }
                    if let Some(reason) = reason {
                        return Err(ClientError::Tls {
                            addr: base.clone(),
                            reason,
                            source,
                        });
                    }
                    return Err(ClientError::Unreachable {
                        addr: base.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// `GET /v1/status/leader`.
    pub async fn status_leader(&self) -> Result<String, ClientError> {
        Ok(self
            .get("/v1/status/leader", QueryOptions::default(), &[])
            .await?
            .value)
    }

    /// `GET path` (`path` already encoded, e.g. with [`encode`]) with blocking-query options and
    /// bare flags (`passing`), decoding the JSON answer and its index.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: QueryOptions,
        flags: &[&str],
    ) -> Result<Indexed<T>, ClientError> {
        let response = self.send_get(path, query, flags).await?;
        let response = check_status("GET", path, response).await?;
        let index = index_of(&response);
        let value = response
            .json()
            .await
            .map_err(|source| ClientError::Decode {
                path: path.to_owned(),
                source,
            })?;
        Ok(Indexed { index, value })
    }

    /// Like `get`, with 404 as `None` (and the index the 404 carried).
    async fn get_optional<T: DeserializeOwned>(
        &self,
        path: &str,
        query: QueryOptions,
        flags: &[&str],
    ) -> Result<Indexed<Option<T>>, ClientError> {
        let response = self.send_get(path, query, flags).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Indexed {
                index: index_of(&response),
                value: None,
            });
        }
        let response = check_status("GET", path, response).await?;
        let index = index_of(&response);
        let value = response
            .json()
            .await
            .map_err(|source| ClientError::Decode {
                path: path.to_owned(),
                source,
            })?;
        Ok(Indexed {
            index,
            value: Some(value),
        })
    }

    async fn send_get(
        &self,
        path: &str,
        query: QueryOptions,
        flags: &[&str],
    ) -> Result<reqwest::Response, ClientError> {
        let mut url = path.to_owned();
        let mut params: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
        if let Some(index) = query.index {
            params.push(format!("index={index}"));
        }
        let mut timeout = REQUEST_TIMEOUT;
        if let Some(wait) = query.wait {
            params.push(format!("wait={}ms", wait.as_millis()));
            timeout += wait + wait / 16;
        }
        if !params.is_empty() {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&params.join("&"));
        }
        self.send(|base| self.http.get(format!("{base}{url}")).timeout(timeout))
            .await
    }

    /// Like `get` (no flags), also returning the response headers.
    pub(crate) async fn get_with_headers<T: DeserializeOwned>(
        &self,
        path: &str,
        query: QueryOptions,
    ) -> Result<(Indexed<T>, reqwest::header::HeaderMap), ClientError> {
        let response = self.send_get(path, query, &[]).await?;
        let path = path.split('?').next().unwrap_or(path);
        let response = check_status("GET", path, response).await?;
        let headers = response.headers().clone();
        let index = index_of(&response);
        let value = response
            .json()
            .await
            .map_err(|source| ClientError::Decode {
                path: path.to_owned(),
                source,
            })?;
        Ok((Indexed { index, value }, headers))
    }

    pub(crate) async fn send_put<B: serde::Serialize>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), ClientError> {
        let response = self
            .send(|base| {
                let request = self
                    .http
                    .put(format!("{base}{path}"))
                    .timeout(REQUEST_TIMEOUT);
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
        check_status("PUT", path, response).await.map(|_| ())
    }

    /// `PUT path` with an optional JSON body, decoding the JSON answer.
    pub async fn put_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.put_json_within(path, body, REQUEST_TIMEOUT).await
    }

    /// [`Client::put_json`] with its own request timeout.
    pub async fn put_json_within<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let response = self
            .send(|base| {
                let request = self.http.put(format!("{base}{path}")).timeout(timeout);
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
        let response = check_status("PUT", path, response).await?;
        response.json().await.map_err(|source| ClientError::Decode {
            path: path.to_owned(),
            source,
        })
    }

    /// Sends any request (`path_and_query` as given) to the servers with failover and returns
    /// the answer as it is, whatever its status: for agents passing requests on to servers.
    /// Waits as long as the request may take ([`forward_timeout`]). The request carries `token`
    /// (the caller's, not this client's own; `None`: anonymous).
    pub async fn forward(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        token: Option<&SecretId>,
    ) -> Result<reqwest::Response, ClientError> {
        let timeout = forward_timeout(path_and_query);
        self.send_as(token, |base| {
            let mut request = self
                .http
                .request(method.clone(), format!("{base}{path_and_query}"))
                .timeout(timeout)
                .body(body.clone());
            if let Some(content_type) = content_type {
                request = request.header(reqwest::header::CONTENT_TYPE, content_type);
            }
            request
        })
        .await
    }
}

/// The reqwest client every [`Client`] uses: bounded connects, keep-alive probes, TLS when
/// given; `pooled` false opens a new connection per request.
fn http_client(
    pooled: bool,
    connect_timeout: Duration,
    tls: Option<rustls::ClientConfig>,
    resolve: &[(String, Vec<SocketAddr>)],
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .tcp_keepalive(KEEPALIVE_IDLE)
        .tcp_keepalive_interval(KEEPALIVE_INTERVAL)
        .tcp_keepalive_retries(KEEPALIVE_RETRIES)
        .pool_idle_timeout(POOL_IDLE);
    if let Some(tls) = tls {
        builder = builder.use_preconfigured_tls(tls);
    }
    for (name, addrs) in resolve {
        builder = builder.resolve_to_addrs(name, addrs);
    }
    if pooled {
        builder.build()
    } else {
        builder.pool_max_idle_per_host(0).build()
    }
}

/// Longest `wait` a blocking query may ask for (Consul's limit).
const LONGEST_WAIT: Duration = Duration::from_secs(600);
/// `wait` when a blocking query names none (Consul's default).
const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// How long a forwarded request may take: a blocking query (`index=` in the query) its `wait`
/// (default 5 min, at most 10 min) plus a sixteenth plus [`REQUEST_TIMEOUT`]; anything else
/// [`REQUEST_TIMEOUT`].
pub fn forward_timeout(path_and_query: &str) -> Duration {
    let Some((_, query)) = path_and_query.split_once('?') else {
        return REQUEST_TIMEOUT;
    };
    let mut blocking = false;
    let mut wait = DEFAULT_WAIT;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "index" => blocking = true,
            "wait" => {
                if let Ok(parsed) = crate::GoDuration::parse(value) {
                    wait = parsed.get().min(LONGEST_WAIT);
                }
            }
            _ => {}
        }
    }
    if blocking {
        wait + wait / 16 + REQUEST_TIMEOUT
    } else {
        REQUEST_TIMEOUT
    }
}

async fn check_status(
    method: &'static str,
    path: &str,
    response: reqwest::Response,
) -> Result<reqwest::Response, ClientError> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let (message, field) = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => (body.error.message, body.error.field),
        Err(_) => (text.trim().to_owned(), None),
    };
    Err(ClientError::Status {
        method,
        path: path.to_owned(),
        status,
        message,
        field,
    })
}

fn index_of(response: &reqwest::Response) -> u64 {
    response
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What stays as it is in a path segment: letters, digits and `-_.~:`.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b':');

/// Percent-encodes a KV key, keeping `/` as the path separator it is.
fn encode_key(key: &str) -> String {
    const KEY: &percent_encoding::AsciiSet = &SEGMENT.remove(b'/');
    percent_encoding::utf8_percent_encode(key, KEY).to_string()
}

/// Percent-encodes one path segment (a service, node or check name).
pub fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
}

#[cfg(test)]
mod tests;
