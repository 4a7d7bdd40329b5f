//! The etcd backend: several `plexus server` replicas over one etcd cluster (3.4 or later),
//! through etcd's gRPC API with the `etcd-client` crate.
//!
//! - **Namespace.** Every key lives under a prefix (`--etcd-prefix`, default `plexus/`), so
//!   several Plexus clusters, tests or other applications share one etcd. Nothing outside the
//!   prefix is read, written or watched (an etcd user with readwrite permission on the prefix
//!   only is enough; checked at start).
//! - **Security.** TLS with a CA and an optional client certificate, and etcd's user/password
//!   authentication (the client re-authenticates when its token expires). The password never
//!   reaches a log line ([`Password`]).
//! - **Endpoints.** Requests go to one endpoint at a time ([`Endpoints`]), the first given until
//!   it fails, then the next: a member cut off by a partition (packets dropped, no connection
//!   reset) only delays the requests that were on it, where a client balancing over every
//!   endpoint would keep sending a share of all requests into the partition until its keep-alive
//!   noticed. A member without a leader refuses requests (`require_leader`), which moves on too.
//!   Reads are retried for a few seconds through elections; a write is sent again only when it
//!   certainly never reached etcd, so the store never applies one twice.
//! - **Revisions** are etcd's: reads are linearizable and return the header revision, so an index
//!   read through one replica is never ahead of what another replica reads next.
//! - **Written revision.** Every transaction that writes also puts [`WRITTEN_KEY`] under the
//!   prefix, so that key's mod revision is the newest Plexus write in the namespace, whoever made
//!   it. [`Store::written_revision`] reads it: a watcher of the namespace that has applied it
//!   reflects every acknowledged write, while revisions written outside the namespace (other
//!   users of a shared etcd) are never waited for. (etcd's progress notifications could say the
//!   same, but etcd before 3.4.25/3.5.8, Debian's 3.4.23 included, may send one ahead of events
//!   it has not sent yet; the marker holds on every version.) Revision reads are batched: callers
//!   arriving while one is in flight share the next one, which starts after they asked (1,000
//!   woken blocking queries: one or two reads).
//! - **Watches** are gRPC watch streams ([`watch`]) that resume from the last delivered
//!   revision. [`Store::revision_watch`] is fed by one such watch on the namespace.
//! - **Group commit** ([`batch`]): transactions that queue while etcd is busy with others go to
//!   it as one when their keys do not overlap.
//! - **Listings** are paged (1,000 keys per request) at one pinned revision: a consistent
//!   snapshot without one huge response.
//!
//! etcd refuses a transaction that names one key twice (or puts inside a range it deletes):
//! writers build transactions with one operation per key, as the catalog does.

mod batch;
pub mod error;
pub mod options;
mod revisions;
mod watch;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, DeleteOptions, GetOptions, PutOptions,
    Txn as EtcdTxn, TxnOp,
};
use plexus_runtime::Backoff;
use tokio::sync::{Notify, oneshot, watch as tokio_watch};
use tokio_util::sync::CancellationToken;

pub use error::{Cause, EtcdError};
pub use options::{
    Credentials, DEFAULT_PREFIX, EtcdOptions, OptionsError, Password, TlsFiles, endpoint_url,
};
use revisions::{Revisions, advance, follow, read_revisions};

use super::{
    BoxError, Compare, KeyValue, LeaseId, MemberStatus, Op, Store, StoreError, StoreStatus, Txn,
    TxnResult, WATCH_BUFFER, Watch,
};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const KEEP_ALIVE: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a read (or a write that never left) is repeated while etcd is unavailable
/// (about 5 s in all).
const RETRIES: usize = 8;
/// Keys per page of a listing.
const PAGE: i64 = 1_000;
/// Largest response accepted (a page of large KV values).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// Put (empty) by every writing transaction: its mod revision is the newest write in the
/// namespace. No Plexus key starts with a dot.
pub const WRITTEN_KEY: &str = ".written";

fn backend(error: EtcdError) -> StoreError {
    StoreError::Backend {
        source: Box::new(error) as BoxError,
    }
}

/// etcd's revision (an `i64`) as ours.
fn unrev(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

/// Our revision as etcd's.
fn rev(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

/// The smallest key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A [`Store`] in an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
    /// Stops the background tasks once the last clone is dropped.
    _stop_on_drop: Arc<tokio_util::sync::DropGuard>,
}

struct Inner {
    endpoints: Endpoints,
    options: EtcdOptions,
    revision: tokio_watch::Sender<u64>,
    /// Callers of `current_revision`/`written_revision` waiting for the next read.
    revision_waiters: Mutex<Vec<oneshot::Sender<Result<Revisions, Cause>>>>,
    revision_asked: Notify,
    /// Group commit of concurrent transactions.
    batcher: batch::Batcher,
    stop: CancellationToken,
}

/// One etcd client per endpoint, connected on first use, and the one requests go to now.
struct Endpoints {
    clients: Vec<tokio::sync::OnceCell<Client>>,
    current: std::sync::atomic::AtomicUsize,
}

impl Endpoints {
    fn new(count: usize) -> Self {
        Self {
            clients: (0..count.max(1))
                .map(|_| tokio::sync::OnceCell::new())
                .collect(),
            current: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl Inner {
    /// The client of the current endpoint, with its position (for [`Inner::failed`]).
    async fn client(&self) -> (usize, Result<Client, etcd_client::Error>) {
        let endpoints = &self.endpoints;
        let at =
            endpoints.current.load(std::sync::atomic::Ordering::Relaxed) % endpoints.clients.len();
        let endpoint = self.options.endpoints.get(at).cloned().unwrap_or_default();
        let client = endpoints.clients[at]
            .get_or_try_init(|| Client::connect([endpoint], Some(self.options.connect_options())))
            .await
            .cloned();
        (at, client)
    }

    /// Moves on from the endpoint at `at` after a failure there (unless another request already
    /// did).
    fn failed(&self, at: usize) {
        let count = self.endpoints.clients.len();
        if count < 2 {
            return;
        }
        let next = (at + 1) % count;
        if self
            .endpoints
            .current
            .compare_exchange(
                at,
                next,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
        {
            tracing::info!(
                failed = %self.options.endpoints.get(at).map_or("", String::as_str),
                next = %self.options.endpoints.get(next).map_or("", String::as_str),
                "etcd endpoint failed; moving to the next"
            );
        }
    }
}

impl Inner {
    /// The namespace-relative key of a full etcd key; `None` outside the namespace.
    fn strip(&self, full: &[u8]) -> Option<String> {
        let rest = full.strip_prefix(self.options.prefix.as_bytes())?;
        String::from_utf8(rest.to_vec()).ok()
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.options.prefix).into_bytes()
    }
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.options.endpoints)
            .field("prefix", &self.inner.options.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// A plain-text store over `endpoints` under `prefix` (tests, `plexus dev`-like set-ups).
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        let options =
            EtcdOptions::new(endpoints, prefix).map_err(|source| StoreError::Backend {
                source: Box::new(source),
            })?;
        Self::open(options).await
    }

    /// Connects and checks, in this order, that etcd answers (TLS included), accepts the
    /// credentials, and lets the user read and write the namespace; then starts following the
    /// namespace's revision. Each refusal is its own [`EtcdError`] (wrapped in
    /// [`StoreError::Backend`]); only [`EtcdError::is_transient`] ones are worth retrying.
    pub async fn open(options: EtcdOptions) -> Result<Self, StoreError> {
        let user = options.credentials.as_ref().map(|c| c.username.clone());
        let fail = |op: &'static str, access: &'static str, error: &etcd_client::Error| {
            backend(error::startup(
                op,
                error,
                &options.endpoints,
                user.as_deref(),
                &options.prefix,
                access,
            ))
        };
        let client = Client::connect(&options.endpoints, Some(options.connect_options()))
            .await
            .map_err(|e| fail("authenticate", "read", &e))?;
        let status = client
            .maintenance_client()
            .status()
            .await
            .map_err(|e| fail("status", "read", &e))?;
        let prefix = options.prefix.as_bytes().to_vec();
        // Read access: count the namespace (also the start revision).
        let counted = client
            .kv_client()
            .get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_err(|e| fail("range", "read", &e))?;
        // Write access, without writing: etcd checks the permissions of every operation of a
        // transaction, also when its compare (a version below 0) never holds.
        client
            .kv_client()
            .txn(
                EtcdTxn::new()
                    .when([EtcdCompare::version(prefix.clone(), CompareOp::Less, 0)])
                    .and_then([TxnOp::delete(
                        prefix,
                        Some(DeleteOptions::new().with_prefix()),
                    )]),
            )
            .await
            .map_err(|e| fail("txn", "write", &e))?;
        let revision = counted.header().map_or(0, |h| unrev(h.revision()));
        tracing::info!(
            version = %status.version(),
            revision,
            keys = counted.count(),
            prefix = %options.prefix,
            user = %options.user(),
            tls = options.tls.is_some(),
            "connected to etcd"
        );
        let stop = CancellationToken::new();
        let endpoints = Endpoints::new(options.endpoints.len());
        if options.endpoints.len() == 1 {
            // The start-up client is the one endpoint's client: keep it.
            let _ = endpoints.clients[0].set(client);
        }
        let store = Self {
            inner: Arc::new(Inner {
                endpoints,
                options,
                revision: tokio_watch::channel(revision).0,
                revision_waiters: Mutex::new(Vec::new()),
                revision_asked: Notify::new(),
                batcher: batch::Batcher::new(),
                stop: stop.clone(),
            }),
            _stop_on_drop: Arc::new(stop.drop_guard()),
        };
        tokio::spawn(follow(Arc::downgrade(&store.inner), revision));
        tokio::spawn(read_revisions(Arc::downgrade(&store.inner)));
        Ok(store)
    }

    /// The endpoints, as URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.options.endpoints
    }

    /// Runs `call` with a fresh client handle, retrying for a few seconds while etcd is
    /// unavailable; `writes` retries only what certainly never reached etcd.
    async fn retry<T, F, Fut>(&self, op: &'static str, write: bool, call: F) -> Result<T, EtcdError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let mut attempt = 0;
        loop {
            let (at, client) = self.inner.client().await;
            let answer = match client {
                Ok(client) => call(client).await,
                Err(error) => Err(error),
            };
            match answer {
                Ok(answer) => return Ok(answer),
                Err(error) => {
                    let cause = Cause::of(&error);
                    if cause.is_transient() {
                        self.inner.failed(at);
                    }
                    let again = if write {
                        cause.never_sent()
                    } else {
                        cause.is_transient()
                    };
                    if !again || attempt >= RETRIES {
                        return Err(EtcdError::Request { op, source: cause });
                    }
                    tracing::debug!(error = %cause, op, attempt, "etcd unavailable; retrying");
                    attempt += 1;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    fn decode(&self, kv: etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        let kv = kv.0;
        let key = self.inner.strip(&kv.key).ok_or_else(|| {
            backend(EtcdError::Malformed(
                String::from_utf8_lossy(&kv.key).into(),
            ))
        })?;
        Ok(KeyValue {
            key,
            value: kv.value,
            create_revision: unrev(kv.create_revision),
            mod_revision: unrev(kv.mod_revision),
        })
    }

    /// Every key in `[start, end)`, paged at one revision.
    async fn list(&self, start: Vec<u8>, end: Vec<u8>) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let mut attempts = 0;
        'listing: loop {
            let mut records = Vec::new();
            let mut revision = 0;
            let mut from = start.clone();
            loop {
                let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
                if revision > 0 {
                    options = options.with_revision(rev(revision));
                }
                let page = self
                    .retry("range", false, |client| {
                        let (from, options) = (from.clone(), options.clone());
                        async move {
                            client
                                .kv_client()
                                .max_decoding_message_size(MAX_MESSAGE)
                                .get(from, Some(options))
                                .await
                        }
                    })
                    .await;
                let mut page = match page {
                    Ok(page) => page,
                    Err(EtcdError::Request { source, .. })
                        if revision > 0
                            && source.code() == Some(tonic::Code::OutOfRange)
                            && attempts < 3 =>
                    {
                        // The pinned revision was compacted under the listing: start over.
                        attempts += 1;
                        continue 'listing;
                    }
                    Err(error) => return Err(backend(error)),
                };
                if revision == 0 {
                    revision = page.header().map_or(0, |h| unrev(h.revision()));
                }
                let more = page.more();
                let kvs = page.take_kvs();
                let Some(last) = kvs.last().map(|kv| kv.key().to_vec()) else {
                    break;
                };
                for kv in kvs {
                    records.push(self.decode(kv)?);
                }
                if !more {
                    break;
                }
                from = last;
                from.push(0);
            }
            self.advance(revision);
            return Ok((records, revision));
        }
    }

    fn advance(&self, revision: u64) {
        advance(&self.inner.revision, revision);
    }

    /// One etcd transaction (with the written marker when it writes).
    async fn txn_direct(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|Compare::ModRevision { key, revision }| {
                EtcdCompare::mod_revision(
                    self.inner.full_key(key),
                    CompareOp::Equal,
                    rev(*revision),
                )
            })
            .collect();
        let writes = !txn.ops.is_empty();
        let mut ops: Vec<TxnOp> = txn
            .ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(self.inner.full_key(&key), value, None),
                Op::PutLeased { key, value, lease } => TxnOp::put(
                    self.inner.full_key(&key),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                ),
                Op::Delete { key } => TxnOp::delete(self.inner.full_key(&key), None),
                Op::DeletePrefix { prefix } => TxnOp::delete(
                    self.inner.full_key(&prefix),
                    Some(DeleteOptions::new().with_prefix()),
                ),
            })
            .collect();
        if writes {
            ops.push(TxnOp::put(
                self.inner.full_key(WRITTEN_KEY),
                Vec::new(),
                None,
            ));
        }
        let request = EtcdTxn::new().when(compares).and_then(ops);
        let answer = self
            .retry("txn", true, |client| {
                let request = request.clone();
                async move { client.kv_client().txn(request).await }
            })
            .await
            .map_err(backend)?;
        let revision = answer.header().map_or(0, |h| unrev(h.revision()));
        self.advance(revision);
        Ok(TxnResult {
            succeeded: answer.succeeded(),
            revision,
        })
    }

    /// etcd's status as a member reports it, and the member list.
    async fn members(&self) -> Result<Vec<MemberStatus>, EtcdError> {
        let listed = self
            .retry("member list", false, |client| async move {
                client.cluster_client().member_list().await
            })
            .await?;
        let mut members = Vec::new();
        for member in listed.members() {
            let endpoint = member.client_urls().first().cloned().unwrap_or_default();
            let status = self.member_status(&endpoint).await;
            members.push(MemberStatus {
                name: member.name().to_owned(),
                endpoint,
                healthy: status.is_some(),
                leader: status.as_ref().is_some_and(|s| s.leader() == member.id()),
                version: status.map(|s| s.version().to_owned()).unwrap_or_default(),
            });
        }
        Ok(members)
    }

    /// The status of one member: `None` when it does not answer.
    async fn member_status(&self, endpoint: &str) -> Option<etcd_client::StatusResponse> {
        let options = self.inner.options.connect_options();
        let connect = async {
            let mut client = Client::connect([endpoint], Some(options)).await.ok()?;
            client.status().await.ok()
        };
        tokio::time::timeout(CONNECT_TIMEOUT * 2, connect)
            .await
            .ok()
            .flatten()
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.get_at(key).await?.0)
    }

    async fn get_at(&self, key: &str) -> Result<(Option<KeyValue>, u64), StoreError> {
        let full = self.inner.full_key(key);
        let mut answer = self
            .retry("range", false, |client| {
                let full = full.clone();
                async move {
                    client
                        .kv_client()
                        .max_decoding_message_size(MAX_MESSAGE)
                        .get(full, None)
                        .await
                }
            })
            .await
            .map_err(backend)?;
        let revision = answer.header().map_or(0, |h| unrev(h.revision()));
        self.advance(revision);
        let record = answer
            .take_kvs()
            .into_iter()
            .next()
            .map(|kv| self.decode(kv))
            .transpose()?;
        Ok((record, revision))
    }

    async fn current_revision(&self) -> Result<u64, StoreError> {
        Ok(self.revisions().await?.current)
    }

    async fn written_revision(&self) -> Result<u64, StoreError> {
        Ok(self.revisions().await?.written)
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let start = self.inner.full_key(prefix);
        let end = prefix_end(&start);
        self.list(start, end).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        if batch::batchable(&txn) {
            self.txn_batched(txn).await
        } else {
            self.txn_direct(txn).await
        }
    }

    fn revision_watch(&self) -> tokio_watch::Receiver<u64> {
        self.inner.revision.subscribe()
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<Watch, StoreError> {
        let cursor = if after_revision == 0 {
            // From now: the current revision is the resume point.
            self.current_revision().await?
        } else {
            after_revision
        };
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        tokio::spawn(watch::run(
            Arc::downgrade(&self.inner),
            prefix.to_owned(),
            cursor,
            tx,
        ));
        Ok(rx)
    }

    async fn status(&self) -> StoreStatus {
        let members = match self.members().await {
            Ok(members) => members,
            Err(error) => {
                tracing::warn!(error = %crate::api::ErrorChain(&error), "cannot list etcd members");
                Vec::new()
            }
        };
        StoreStatus {
            backend: "etcd".to_owned(),
            location: self.inner.options.endpoints.join(","),
            members,
        }
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let seconds = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let answer = self
            .retry("lease grant", true, |client| async move {
                client.lease_client().grant(seconds, None).await
            })
            .await
            .map_err(backend)?;
        Ok(answer.id())
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        let renewed = self
            .retry("lease keep-alive", false, |client| async move {
                match client.lease_client().keep_alive(lease).await {
                    // The first answer (checked by the client) renewed it; a second one on the
                    // same stream tells the TTL.
                    Ok((mut keeper, mut stream)) => {
                        keeper.keep_alive().await?;
                        let ttl = stream.message().await?.map_or(0, |r| r.ttl());
                        Ok(Some(ttl))
                    }
                    Err(etcd_client::Error::LeaseKeepAliveError(message))
                        if message.contains("not found") =>
                    {
                        Ok(None)
                    }
                    Err(error) => Err(error),
                }
            })
            .await
            .map_err(backend)?;
        Ok(renewed
            .filter(|ttl| *ttl > 0)
            .map(|ttl| Duration::from_secs(ttl.unsigned_abs())))
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let revoked = self
            .retry("lease revoke", true, |client| async move {
                client.lease_client().revoke(lease).await
            })
            .await;
        match revoked {
            Ok(answer) => {
                self.advance(answer.header().map_or(0, |h| unrev(h.revision())));
                // The revoke deleted keys without the marker: move it, so a read after it (on
                // any replica) waits for those deletes. Best effort: the deletes arrive anyway.
                let marked = match self.inner.client().await {
                    (_, Ok(client)) => {
                        client
                            .kv_client()
                            .put(self.inner.full_key(WRITTEN_KEY), Vec::new(), None)
                            .await
                    }
                    (_, Err(error)) => Err(error),
                };
                if let Err(error) = marked {
                    tracing::debug!(error = %Cause::of(&error), "etcd written marker not moved after a revoke");
                }
                Ok(())
            }
            Err(EtcdError::Request { source, .. })
                if source.to_string().contains("lease not found") =>
            {
                Ok(())
            }
            Err(error) => Err(backend(error)),
        }
    }
}
