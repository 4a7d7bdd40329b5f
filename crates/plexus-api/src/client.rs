//! A typed client for the Plexus (Consul-shaped) HTTP API, used by the CLI, the proxy and tests.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::catalog::Indexed;
use crate::error::ErrorBody;
use crate::model::{
    AgentSelf, AgentService, CatalogService, CheckStatus, HealthCheck, Node, ServiceEntry,
};
use crate::registration::ServiceRegistration;

mod connect;
pub use connect::IntentionSet;

/// Where clients look for the control plane when nothing else is said.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8500";
/// The environment variable naming the control plane's HTTP address.
pub const HTTP_ADDR_ENV: &str = "PLEXUS_HTTP_ADDR";

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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

    /// True when the server could not be reached at all (worth retrying with backoff).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
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
        Ok(format!("http://{trimmed}"))
    }
}

/// The control-plane address from a flag, else `PLEXUS_HTTP_ADDR`, else `127.0.0.1:8500`.
pub fn resolve_addr(flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| std::env::var(HTTP_ADDR_ENV).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_owned())
}

/// A client of one control plane.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for `addr` (`host:port` or `http://host:port`).
    pub fn new(addr: &str) -> Result<Self, ClientError> {
        let base = base_url(addr)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|source| ClientError::Unreachable {
                addr: base.clone(),
                source,
            })?;
        Ok(Self { base, http })
    }

    /// The base URL this client talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `PUT /v1/agent/service/register`.
    pub async fn register_service(
        &self,
        registration: &ServiceRegistration,
    ) -> Result<(), ClientError> {
        self.send_put("/v1/agent/service/register", Some(registration))
            .await
    }

    /// `PUT /v1/agent/service/deregister/:id`.
    pub async fn deregister_service(&self, id: &str) -> Result<(), ClientError> {
        self.send_put::<()>(
            &format!("/v1/agent/service/deregister/{}", encode(id)),
            None,
        )
        .await
    }

    /// `GET /v1/agent/services`.
    pub async fn agent_services(&self) -> Result<BTreeMap<String, AgentService>, ClientError> {
        Ok(self
            .get("/v1/agent/services", QueryOptions::default(), &[])
            .await?
            .value)
    }

    /// `GET /v1/agent/service/:id`, optionally blocking.
    pub async fn agent_service(
        &self,
        id: &str,
        query: QueryOptions,
    ) -> Result<Indexed<AgentService>, ClientError> {
        self.get(&format!("/v1/agent/service/{}", encode(id)), query, &[])
            .await
    }

    /// `GET /v1/agent/checks`.
    pub async fn agent_checks(&self) -> Result<BTreeMap<String, HealthCheck>, ClientError> {
        Ok(self
            .get("/v1/agent/checks", QueryOptions::default(), &[])
            .await?
            .value)
    }

    /// `GET /v1/agent/self`.
    pub async fn agent_self(&self) -> Result<AgentSelf, ClientError> {
        Ok(self
            .get("/v1/agent/self", QueryOptions::default(), &[])
            .await?
            .value)
    }

    /// `PUT /v1/agent/check/pass|warn|fail/:id` for TTL checks.
    pub async fn update_ttl_check(
        &self,
        check_id: &str,
        status: CheckStatus,
        note: &str,
    ) -> Result<(), ClientError> {
        let verb = match status {
            CheckStatus::Passing => "pass",
            CheckStatus::Warning => "warn",
            CheckStatus::Critical | CheckStatus::Maintenance => "fail",
        };
        let path = format!(
            "/v1/agent/check/{verb}/{}?note={}",
            encode(check_id),
            encode(note)
        );
        self.send_put::<()>(&path, None).await
    }

    /// `GET /v1/catalog/services`.
    pub async fn catalog_services(
        &self,
        query: QueryOptions,
    ) -> Result<Indexed<BTreeMap<String, Vec<String>>>, ClientError> {
        self.get("/v1/catalog/services", query, &[]).await
    }

    /// `GET /v1/catalog/service/:name`.
    pub async fn catalog_service(
        &self,
        name: &str,
        query: QueryOptions,
    ) -> Result<Indexed<Vec<CatalogService>>, ClientError> {
        self.get(&format!("/v1/catalog/service/{}", encode(name)), query, &[])
            .await
    }

    /// `GET /v1/catalog/nodes`.
    pub async fn catalog_nodes(
        &self,
        query: QueryOptions,
    ) -> Result<Indexed<Vec<Node>>, ClientError> {
        self.get("/v1/catalog/nodes", query, &[]).await
    }

    /// `GET /v1/health/service/:name` (`passing`: only instances whose checks all pass).
    pub async fn health_service(
        &self,
        name: &str,
        passing: bool,
        query: QueryOptions,
    ) -> Result<Indexed<Vec<ServiceEntry>>, ClientError> {
        let flags: &[&str] = if passing { &["passing"] } else { &[] };
        self.get(
            &format!("/v1/health/service/{}", encode(name)),
            query,
            flags,
        )
        .await
    }

    /// `GET /v1/health/connect/:name`: the sidecars in front of `name`'s instances.
    pub async fn health_connect(
        &self,
        name: &str,
        passing: bool,
        query: QueryOptions,
    ) -> Result<Indexed<Vec<ServiceEntry>>, ClientError> {
        let flags: &[&str] = if passing { &["passing"] } else { &[] };
        self.get(
            &format!("/v1/health/connect/{}", encode(name)),
            query,
            flags,
        )
        .await
    }

    /// `GET /v1/health/checks/:service`.
    pub async fn health_checks(
        &self,
        service: &str,
        query: QueryOptions,
    ) -> Result<Indexed<Vec<HealthCheck>>, ClientError> {
        self.get(
            &format!("/v1/health/checks/{}", encode(service)),
            query,
            &[],
        )
        .await
    }

    /// `GET /v1/health/state/:state` (`any`, `passing`, `warning`, `critical`).
    pub async fn health_state(
        &self,
        state: &str,
        query: QueryOptions,
    ) -> Result<Indexed<Vec<HealthCheck>>, ClientError> {
        self.get(&format!("/v1/health/state/{}", encode(state)), query, &[])
            .await
    }

    /// `GET /v1/status/leader`.
    pub async fn status_leader(&self) -> Result<String, ClientError> {
        Ok(self
            .get("/v1/status/leader", QueryOptions::default(), &[])
            .await?
            .value)
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: QueryOptions,
        flags: &[&str],
    ) -> Result<Indexed<T>, ClientError> {
        let mut path_with_flags = path.to_owned();
        if !flags.is_empty() {
            path_with_flags.push(if path.contains('?') { '&' } else { '?' });
            path_with_flags.push_str(&flags.join("&"));
        }
        let (indexed, _) = self.get_with_headers(&path_with_flags, query).await?;
        Ok(indexed)
    }

    async fn get_with_headers<T: DeserializeOwned>(
        &self,
        path: &str,
        query: QueryOptions,
    ) -> Result<(Indexed<T>, reqwest::header::HeaderMap), ClientError> {
        let mut url = format!("{}{}", self.base, path);
        let mut params: Vec<String> = Vec::new();
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
        let response = self
            .http
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                addr: self.base.clone(),
                source,
            })?;
        let path = path.split('?').next().unwrap_or(path);
        let response = check_status("GET", path, response).await?;
        let headers = response.headers().clone();
        let index = headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let value = response
            .json()
            .await
            .map_err(|source| ClientError::Decode {
                path: path.to_owned(),
                source,
            })?;
        Ok((Indexed { index, value }, headers))
    }

    async fn send_put<B: serde::Serialize>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), ClientError> {
        let mut request = self
            .http
            .put(format!("{}{}", self.base, path))
            .timeout(REQUEST_TIMEOUT);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                addr: self.base.clone(),
                source,
            })?;
        check_status("PUT", path, response).await.map(|_| ())
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

fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_accept_both_forms() {
        assert_eq!(base_url("127.0.0.1:8500").unwrap(), "http://127.0.0.1:8500");
        assert_eq!(
            base_url("http://127.0.0.1:8500/").unwrap(),
            "http://127.0.0.1:8500"
        );
        assert_eq!(base_url("localhost:1").unwrap(), "http://localhost:1");
        for bad in ["", "8500", "host:", "host:99999", "http://h:1/x", ":80"] {
            assert!(base_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("web-1"), "web-1");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
