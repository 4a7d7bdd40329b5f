//! The etcd backend: several `plexus server` replicas over one etcd cluster (3.4 or later).
//!
//! Spoken over etcd's own v3 JSON gateway (`/v3/kv/*`, `/v3/watch`, `/v3/lease/*`) on the client
//! port, with reqwest: the `etcd-client` crate generates its gRPC code at build time and needs
//! `protoc`, which a fresh machine with only Rust does not have.
//!
//! - Every key lives under a namespace prefix (default `plexus/`), so several clusters or tests can
//!   share one etcd.
//! - Revisions are etcd's: reads return the header revision of a linearizable read, so an index
//!   read through one replica is never ahead of what another replica reads next.
//! - [`Store::revision_watch`] is fed by one watch on the namespace ([`follow`]): a write through
//!   any replica wakes blocking queries on all of them. After a broken stream the follower fails
//!   over to the next endpoint and resumes from the last revision it saw; when that revision was
//!   compacted it re-reads the current revision (a "re-list": blockers wake and re-read) and
//!   carries on.
//! - Requests go to the endpoint that last answered; a connection failure moves on to the next.
//!   Only requests that never reached etcd are retried elsewhere, so a write is never applied
//!   twice by the store itself.
//!
//! etcd refuses a transaction that names one key twice (or puts inside a range it deletes):
//! writers build transactions with one operation per key, as the catalog does.

pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use plexus_runtime::Backoff;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    BoxError, Change, Compare, KeyValue, LeaseId, Op, Store, StoreError, Txn, TxnResult,
    WATCH_BUFFER, Watch, WatchEvent,
};
use wire::{b64, prefix_end, unb64};

/// The namespace prefix when none is given.
pub const DEFAULT_PREFIX: &str = "plexus/";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times a read is repeated while etcd is unavailable (about 5 s in all).
const READ_RETRIES: usize = 8;

/// Why an etcd request failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint could be reached.
    #[error("no etcd endpoint reachable (tried {endpoints})")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The last cause.
        #[source]
        source: reqwest::Error,
    },
    /// The request failed on the way (timeout, broken connection) after it may have reached etcd.
    #[error("etcd request to {endpoint}{path} failed")]
    Request {
        /// The endpoint.
        endpoint: String,
        /// The gateway path.
        path: &'static str,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// etcd answered with an error.
    #[error("etcd {path} answered {status}: {message}")]
    Answer {
        /// The gateway path.
        path: &'static str,
        /// HTTP status.
        status: u16,
        /// etcd's message.
        message: String,
    },
    /// An endpoint is not `host:port` or `http://host:port`.
    #[error("invalid etcd endpoint {0:?}: expected host:port or http://host:port")]
    BadEndpoint(String),
    /// A key or value in an answer is not base64 or not UTF-8.
    #[error("etcd answered with a malformed key or value")]
    Malformed,
}

impl EtcdError {
    /// True for failures that go away by themselves: no endpoint reachable, a leader election,
    /// a request timed out inside etcd.
    pub fn is_transient(&self) -> bool {
        match self {
            EtcdError::Unreachable { .. } | EtcdError::Request { .. } => true,
            EtcdError::Answer { status, .. } => *status >= 500,
            EtcdError::BadEndpoint(_) | EtcdError::Malformed => false,
        }
    }
}

fn backend(error: EtcdError) -> StoreError {
    StoreError::Backend {
        source: Box::new(error) as BoxError,
    }
}

/// A [`Store`] in an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
    /// Stops the background watches once the last clone is dropped (they hold `inner` while
    /// streaming, so `inner` alone would never drop).
    _stop_on_drop: Arc<tokio_util::sync::DropGuard>,
}

struct Inner {
    endpoints: Vec<String>,
    current: AtomicUsize,
    http: reqwest::Client,
    prefix: String,
    revision: watch::Sender<u64>,
    stop: CancellationToken,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// Normalises `host:port` or `http://host:port` to a base URL.
pub fn endpoint_url(text: &str) -> Result<String, EtcdError> {
    let trimmed = text.trim().trim_end_matches('/');
    let rest = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    let valid = rest
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
        && !rest.contains('/');
    if !valid {
        return Err(EtcdError::BadEndpoint(text.to_owned()));
    }
    Ok(format!("http://{rest}"))
}

impl EtcdStore {
    /// A store over `endpoints` under `prefix`. Checks that one endpoint answers (the caller
    /// retries with backoff while none does) and starts following the namespace's revision.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        let endpoints = endpoints
            .iter()
            .map(|e| endpoint_url(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?;
        if endpoints.is_empty() {
            return Err(backend(EtcdError::BadEndpoint(String::new())));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|source| {
                backend(EtcdError::Unreachable {
                    endpoints: endpoints.join(","),
                    source,
                })
            })?;
        let stop = CancellationToken::new();
        let store = Self {
            inner: Arc::new(Inner {
                endpoints,
                current: AtomicUsize::new(0),
                http,
                prefix: prefix.to_owned(),
                revision: watch::channel(0).0,
                stop: stop.clone(),
            }),
            _stop_on_drop: Arc::new(stop.drop_guard()),
        };
        let status: wire::Status = store.call("/v3/maintenance/status", &json!({})).await?;
        tracing::info!(version = %status.version, revision = status.header.revision, "connected to etcd");
        let (_, revision) = store.range_raw(b"\0", Some(vec![0]), true).await?;
        store.advance(revision);
        tokio::spawn(follow(Arc::downgrade(&store.inner), revision));
        Ok(store)
    }

    /// The endpoints, as URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// etcd's status as the current endpoint reports it.
    pub async fn status(&self) -> Result<wire::Status, StoreError> {
        self.call("/v3/maintenance/status", &json!({})).await
    }

    /// The etcd cluster's members.
    pub async fn members(&self) -> Result<Vec<wire::Member>, StoreError> {
        let list: wire::MemberList = self.call("/v3/cluster/member/list", &json!({})).await?;
        Ok(list.members)
    }

    /// The status of one endpoint (for health views): `None` when it does not answer.
    pub async fn endpoint_status(&self, endpoint: &str) -> Option<wire::Status> {
        let response = self
            .inner
            .http
            .post(format!("{endpoint}/v3/maintenance/status"))
            .timeout(CONNECT_TIMEOUT)
            .json(&json!({}))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    fn advance(&self, revision: u64) {
        advance(&self.inner.revision, revision);
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.inner.prefix).into_bytes()
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &'static str,
        body: &B,
    ) -> Result<T, StoreError> {
        call(&self.inner, path, body).await.map_err(backend)
    }

    /// A read (or other request safe to repeat): retried with backoff for a few seconds while
    /// etcd is electing a leader or no endpoint answers.
    async fn call_idempotent<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &'static str,
        body: &B,
    ) -> Result<T, StoreError> {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let mut attempts = 0;
        loop {
            match call(&self.inner, path, body).await {
                Ok(answer) => return Ok(answer),
                Err(error) if attempts < READ_RETRIES && error.is_transient() => {
                    tracing::debug!(%error, path, "etcd busy; retrying the read");
                    attempts += 1;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(error) => return Err(backend(error)),
            }
        }
    }

    /// Range read: `(keys, header revision)`. `serializable` reads from the member's local state.
    async fn range_raw(
        &self,
        key: &[u8],
        range_end: Option<Vec<u8>>,
        count_only: bool,
    ) -> Result<(Vec<wire::Kv>, u64), StoreError> {
        let mut body = json!({ "key": b64(key) });
        if let Some(end) = range_end {
            body["range_end"] = json!(b64(&end));
        }
        if count_only {
            body["count_only"] = json!(true);
        }
        let answer: wire::RangeResponse = self.call_idempotent("/v3/kv/range", &body).await?;
        Ok((answer.kvs, answer.header.revision))
    }

    fn decode(&self, kv: wire::Kv) -> Result<KeyValue, StoreError> {
        let key = unb64(&kv.key)
            .and_then(|k| String::from_utf8(k).ok())
            .ok_or_else(|| backend(EtcdError::Malformed))?;
        let key = key
            .strip_prefix(&self.inner.prefix)
            .ok_or_else(|| backend(EtcdError::Malformed))?
            .to_owned();
        let value = unb64(&kv.value).ok_or_else(|| backend(EtcdError::Malformed))?;
        Ok(KeyValue {
            key,
            value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
        })
    }
}

fn advance(sender: &watch::Sender<u64>, revision: u64) {
    sender.send_if_modified(|current| {
        let newer = revision > *current;
        if newer {
            *current = revision;
        }
        newer
    });
}

/// POSTs `body` to `path`, starting at the endpoint that last answered and moving on to the next
/// one while the connection cannot be made.
async fn call<B: Serialize, T: DeserializeOwned>(
    inner: &Inner,
    path: &'static str,
    body: &B,
) -> Result<T, EtcdError> {
    let count = inner.endpoints.len();
    let start = inner.current.load(Ordering::Relaxed);
    let mut last_error = None;
    for step in 0..count {
        let index = (start + step) % count;
        let endpoint = &inner.endpoints[index];
        let sent = inner
            .http
            .post(format!("{endpoint}{path}"))
            .timeout(REQUEST_TIMEOUT)
            .json(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(source) if source.is_connect() => {
                tracing::debug!(%endpoint, error = %source, "etcd endpoint unreachable; trying the next");
                last_error = Some(source);
                continue;
            }
            Err(source) => {
                // It may have reached etcd: not retried elsewhere; the next call starts further on.
                inner.current.store((index + 1) % count, Ordering::Relaxed);
                return Err(EtcdError::Request {
                    endpoint: endpoint.clone(),
                    path,
                    source,
                });
            }
        };
        inner.current.store(index, Ordering::Relaxed);
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| EtcdError::Request {
                endpoint: endpoint.clone(),
                path,
                source,
            })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<wire::GatewayError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            if status.is_server_error() {
                // e.g. no leader on this member: let the next call try another.
                inner.current.store((index + 1) % count, Ordering::Relaxed);
            }
            return Err(EtcdError::Answer {
                path,
                status: status.as_u16(),
                message,
            });
        }
        return serde_json::from_slice(&bytes).map_err(|_| EtcdError::Answer {
            path,
            status: status.as_u16(),
            message: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    Err(EtcdError::Unreachable {
        endpoints: inner.endpoints.join(","),
        source: last_error.expect("at least one endpoint was tried"),
    })
}

/// Follows the namespace with one watch and moves the revision watch forward. Resumes after the
/// last revision seen when the stream breaks; re-reads the current revision when that revision was
/// compacted. Ends when the store is dropped.
async fn follow(inner: std::sync::Weak<Inner>, mut seen: u64) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let stop = strong.stop.clone();
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = watch_once(&strong, seen) => outcome,
        };
        match outcome {
            Ok(WatchEnd::Compacted(oldest)) => {
                tracing::info!(
                    from = seen + 1,
                    oldest,
                    "etcd watch revision compacted; re-reading"
                );
                // The events in between are gone: take the current revision, which wakes every
                // blocked reader to re-read (the re-list).
                let now = call::<_, wire::RangeResponse>(
                    &strong,
                    "/v3/kv/range",
                    &json!({"key": b64(b"\0"), "range_end": b64(&[0]), "count_only": true}),
                )
                .await;
                match now {
                    Ok(answer) => {
                        seen = answer.header.revision.max(seen);
                        advance(&strong.revision, seen);
                    }
                    Err(error) => tracing::warn!(%error, "etcd re-read after compaction failed"),
                }
                backoff.reset();
                continue;
            }
            Ok(WatchEnd::Closed(last)) => {
                seen = seen.max(last);
                tracing::debug!(seen, "etcd watch stream ended; resuming");
            }
            Err(error) => {
                tracing::warn!(%error, seen, retry_within = ?backoff.next_ceiling(), "etcd watch failed; resuming on the next endpoint");
                let count = strong.endpoints.len();
                let next = (strong.current.load(Ordering::Relaxed) + 1) % count;
                strong.current.store(next, Ordering::Relaxed);
            }
        }
        drop(strong);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

enum WatchEnd {
    /// The start revision was compacted; the oldest available one.
    Compacted(u64),
    /// The stream ended; the last revision seen.
    Closed(u64),
}

async fn watch_once(inner: &Inner, seen: u64) -> Result<WatchEnd, EtcdError> {
    let count = inner.endpoints.len();
    let index = inner.current.load(Ordering::Relaxed) % count;
    let endpoint = &inner.endpoints[index];
    let key = inner.prefix.as_bytes();
    let body = json!({"create_request": {
        "key": b64(key),
        "range_end": b64(&prefix_end(key)),
        "start_revision": (seen + 1).to_string(),
    }});
    let request_error = |source| EtcdError::Request {
        endpoint: endpoint.clone(),
        path: "/v3/watch",
        source,
    };
    let mut response = inner
        .http
        .post(format!("{endpoint}/v3/watch"))
        .json(&body)
        .send()
        .await
        .map_err(request_error)?;
    if !response.status().is_success() {
        return Err(EtcdError::Answer {
            path: "/v3/watch",
            status: response.status().as_u16(),
            message: response.text().await.unwrap_or_default(),
        });
    }
    let mut last = seen;
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request_error)? {
        buffer.extend_from_slice(&chunk);
        while let Some(at) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=at).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let message: wire::WatchMessage =
                serde_json::from_slice(&line).map_err(|_| EtcdError::Malformed)?;
            if let Some(error) = message.error {
                return Err(EtcdError::Answer {
                    path: "/v3/watch",
                    status: 200,
                    message: error.to_string(),
                });
            }
            let Some(result) = message.result else {
                continue;
            };
            if result.compact_revision > 0 {
                return Ok(WatchEnd::Compacted(result.compact_revision));
            }
            if result.canceled {
                return Ok(WatchEnd::Closed(last));
            }
            let newest = result
                .events
                .iter()
                .map(|e| e.kv.mod_revision)
                .max()
                .unwrap_or(0);
            if newest > 0 {
                last = last.max(newest);
                advance(&inner.revision, last);
            }
        }
    }
    Ok(WatchEnd::Closed(last))
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.get_at(key).await?.0)
    }

    async fn get_at(&self, key: &str) -> Result<(Option<KeyValue>, u64), StoreError> {
        let (kvs, revision) = self.range_raw(&self.full_key(key), None, false).await?;
        self.advance(revision);
        let record = kvs
            .into_iter()
            .next()
            .map(|kv| self.decode(kv))
            .transpose()?;
        Ok((record, revision))
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let start = self.full_key(prefix);
        let end = prefix_end(&start);
        let (kvs, revision) = self.range_raw(&start, Some(end), false).await?;
        self.advance(revision);
        let records = kvs
            .into_iter()
            .map(|kv| self.decode(kv))
            .collect::<Result<_, _>>()?;
        Ok((records, revision))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let compare: Vec<_> = txn
            .compares
            .iter()
            .map(|Compare::ModRevision { key, revision }| {
                json!({
                    "target": "MOD",
                    "result": "EQUAL",
                    "key": b64(&self.full_key(key)),
                    "mod_revision": revision.to_string(),
                })
            })
            .collect();
        let success: Vec<_> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => json!({"request_put": {
                    "key": b64(&self.full_key(key)),
                    "value": b64(value),
                }}),
                Op::PutLeased { key, value, lease } => json!({"request_put": {
                    "key": b64(&self.full_key(key)),
                    "value": b64(value),
                    "lease": lease.to_string(),
                }}),
                Op::Delete { key } => json!({"request_delete_range": {
                    "key": b64(&self.full_key(key)),
                }}),
                Op::DeletePrefix { prefix } => {
                    let start = self.full_key(prefix);
                    json!({"request_delete_range": {
                        "key": b64(&start),
                        "range_end": b64(&prefix_end(&start)),
                    }})
                }
            })
            .collect();
        let answer: wire::TxnResponse = self
            .call(
                "/v3/kv/txn",
                &json!({"compare": compare, "success": success}),
            )
            .await?;
        self.advance(answer.header.revision);
        Ok(TxnResult {
            succeeded: answer.succeeded,
            revision: answer.header.revision,
        })
    }

    fn revision_watch(&self) -> watch::Receiver<u64> {
        self.inner.revision.subscribe()
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<Watch, StoreError> {
        let cursor = if after_revision == 0 {
            // From now: the current revision is the resume point.
            let (_, revision) = self.range_raw(b"\0", Some(vec![0]), true).await?;
            revision
        } else {
            after_revision
        };
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        tokio::spawn(watch_prefix(
            Arc::downgrade(&self.inner),
            prefix.to_owned(),
            cursor,
            tx,
        ));
        Ok(rx)
    }

    async fn status(&self) -> super::StoreStatus {
        let mut members = Vec::new();
        match self.members().await {
            Ok(listed) => {
                for member in listed {
                    let endpoint = member.client_urls.first().cloned().unwrap_or_default();
                    let status = self.endpoint_status(&endpoint).await;
                    members.push(super::MemberStatus {
                        name: member.name,
                        endpoint,
                        healthy: status.is_some(),
                        leader: status.as_ref().is_some_and(|s| s.leader == member.id),
                        version: status.map(|s| s.version).unwrap_or_default(),
                    });
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::api::ErrorChain(&error), "cannot list etcd members");
            }
        }
        super::StoreStatus {
            backend: "etcd".to_owned(),
            location: self.inner.endpoints.join(","),
            members,
        }
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let seconds = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let answer: wire::LeaseResponse = self
            .call("/v3/lease/grant", &json!({"TTL": seconds.to_string()}))
            .await?;
        Ok(answer.id)
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        let answer: wire::KeepAliveMessage = self
            .call_idempotent("/v3/lease/keepalive", &json!({"ID": lease.to_string()}))
            .await?;
        let ttl = answer.result.map_or(0, |r| r.ttl);
        Ok((ttl > 0).then(|| Duration::from_secs(ttl.unsigned_abs())))
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let revoked = call::<_, wire::HeaderOnly>(
            &self.inner,
            "/v3/lease/revoke",
            &json!({"ID": lease.to_string()}),
        )
        .await;
        match revoked {
            Ok(answer) => {
                self.advance(answer.header.revision);
                Ok(())
            }
            Err(EtcdError::Answer { message, .. }) if message.contains("lease not found") => Ok(()),
            Err(error) => Err(backend(error)),
        }
    }
}

/// One watch for a caller: streams the namespace's `prefix` from `cursor + 1`, reconnecting (to
/// the next endpoint) from the last delivered revision when the stream breaks, until the receiver
/// is dropped or the history is compacted.
async fn watch_prefix(
    inner: std::sync::Weak<Inner>,
    prefix: String,
    mut cursor: u64,
    tx: tokio::sync::mpsc::Sender<WatchEvent>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let stop = strong.stop.clone();
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
            outcome = stream_changes(&strong, &prefix, &mut cursor, &tx) => outcome,
        };
        match outcome {
            Ok(Some(compact_revision)) => {
                let _ = tx.send(WatchEvent::Compacted { compact_revision }).await;
                return;
            }
            Ok(None) => backoff.reset(),
            Err(error) => {
                tracing::debug!(%error, cursor, "etcd watch broke; resuming");
                let count = strong.endpoints.len();
                let next = (strong.current.load(Ordering::Relaxed) + 1) % count;
                strong.current.store(next, Ordering::Relaxed);
            }
        }
        drop(strong);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Streams changes after `cursor` into `tx`, moving `cursor` with each delivered revision.
/// `Some(compact_revision)` when the start was compacted; `None` when the stream ended.
async fn stream_changes(
    inner: &Inner,
    prefix: &str,
    cursor: &mut u64,
    tx: &tokio::sync::mpsc::Sender<WatchEvent>,
) -> Result<Option<u64>, EtcdError> {
    let count = inner.endpoints.len();
    let endpoint = &inner.endpoints[inner.current.load(Ordering::Relaxed) % count];
    let key = format!("{}{prefix}", inner.prefix).into_bytes();
    let body = json!({"create_request": {
        "key": b64(&key),
        "range_end": b64(&prefix_end(&key)),
        "start_revision": (*cursor + 1).to_string(),
    }});
    let request_error = |source| EtcdError::Request {
        endpoint: endpoint.clone(),
        path: "/v3/watch",
        source,
    };
    let mut response = inner
        .http
        .post(format!("{endpoint}/v3/watch"))
        .json(&body)
        .send()
        .await
        .map_err(request_error)?;
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request_error)? {
        buffer.extend_from_slice(&chunk);
        while let Some(at) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=at).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let message: wire::WatchMessage =
                serde_json::from_slice(&line).map_err(|_| EtcdError::Malformed)?;
            let Some(result) = message.result else {
                return Err(EtcdError::Answer {
                    path: "/v3/watch",
                    status: 200,
                    message: message.error.map(|e| e.to_string()).unwrap_or_default(),
                });
            };
            if result.compact_revision > 0 {
                return Ok(Some(result.compact_revision));
            }
            if result.canceled {
                return Ok(None);
            }
            let mut changes = Vec::with_capacity(result.events.len());
            for event in result.events {
                let revision = event.kv.mod_revision;
                if revision <= *cursor {
                    continue;
                }
                let full = unb64(&event.kv.key)
                    .and_then(|k| String::from_utf8(k).ok())
                    .ok_or(EtcdError::Malformed)?;
                let key = full
                    .strip_prefix(&inner.prefix)
                    .ok_or(EtcdError::Malformed)?
                    .to_owned();
                let change = if event.kind.as_deref() == Some("DELETE") {
                    Change::Delete { key, revision }
                } else {
                    Change::Put(KeyValue {
                        key,
                        value: unb64(&event.kv.value).ok_or(EtcdError::Malformed)?,
                        create_revision: event.kv.create_revision,
                        mod_revision: revision,
                    })
                };
                changes.push(change);
            }
            if let Some(last) = changes.last().map(Change::revision) {
                if tx.send(WatchEvent::Changes(changes)).await.is_err() {
                    return Ok(None);
                }
                *cursor = last;
            }
        }
    }
    Ok(None)
}
