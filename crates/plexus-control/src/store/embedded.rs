//! The embedded store: one durable redb file, fsync on every commit.
//!
//! Layout: table `kv` maps each key to a record of `create_revision` (8 bytes, big-endian),
//! `mod_revision` (8 bytes) and the value; table `meta` holds the store revision under `revision`.
//! Each [`Txn`] is one redb write transaction with [`Durability::Immediate`], so an acknowledged
//! write survives a crash. redb calls are blocking and run on tokio's blocking pool.
//!
//! Leases: table `leases` maps a lease id to its TTL (ms), table `leased` maps each key bound to a
//! lease to the lease id. Deadlines live in memory ([`LeaseTable`]); a task started by the first
//! lease grant (or at open when leases exist) deletes the keys of expired leases in one write.
//! **Across a restart** every stored lease gets a fresh full TTL from the moment the store opens:
//! a holder that is still alive renews it as usual; one that died with the server loses its keys
//! one TTL after the restart. Nothing expires early because the server was down.
//!
//! Watches replay from an in-memory [`History`] of the last [`KEPT_REVISIONS`] revisions and at
//! most [`super::history::KEPT_BYTES`] (both configurable, [`EmbeddedLimits`]); resuming from
//! anything older (or from before a restart) reports [`WatchEvent::Compacted`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, Durability, ReadableTable, Table, TableDefinition};
use tokio::sync::{Notify, watch};

use super::history::{History, HistoryLimits, KEPT_REVISIONS};
use super::integrity;
use super::lease::LeaseTable;
use super::{
    BoxError, Change, Compare, KeyValue, LeaseId, Op, Store, StoreError, Txn, TxnResult,
    WATCH_BUFFER, Watch, WatchEvent,
};

/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "plexus.redb";

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASES: TableDefinition<i64, u64> = TableDefinition::new("leases");
const LEASED: TableDefinition<&str, i64> = TableDefinition::new("leased");
const REVISION_KEY: &str = "revision";
const HEADER_LEN: usize = 16;

/// The most bytes of changes one watch event carries (whole revisions; a single larger revision
/// goes alone).
pub const WATCH_BATCH_BYTES: usize = 1024 * 1024;
/// redb's page cache (`--store-cache-bytes`): 32 MiB. redb's own default is 1 GiB, which a store
/// written with large values fills.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The embedded store's memory bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedLimits {
    /// The watch history's bounds.
    pub history: HistoryLimits,
    /// redb's page cache, bytes ([`CACHE_BYTES`]).
    pub cache_bytes: usize,
}

impl Default for EmbeddedLimits {
    fn default() -> Self {
        Self {
            history: HistoryLimits::default(),
            cache_bytes: CACHE_BYTES,
        }
    }
}

/// A [`Store`] in a single redb file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    revision: Arc<watch::Sender<u64>>,
    path: PathBuf,
    history: Arc<History>,
    leases: Arc<Leases>,
    metrics: Arc<super::metrics::StoreMetrics>,
}

/// In-memory lease deadlines and the expiry task's wake-up.
#[derive(Debug, Default)]
struct Leases {
    table: Mutex<LeaseTable>,
    changed: Notify,
    task_started: std::sync::atomic::AtomicBool,
}

impl Leases {
    fn table(&self) -> std::sync::MutexGuard<'_, LeaseTable> {
        plexus_runtime::lock::lock(&self.table)
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .field("revision", &*self.revision.borrow())
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) `<dir>/plexus.redb`, creating `dir` when missing.
    ///
    /// Blocking: call it before serving, or from a blocking task.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_keeping(dir, KEPT_REVISIONS)
    }

    /// Like [`EmbeddedStore::open`], keeping `kept_revisions` revisions for resuming watches.
    pub fn open_keeping(dir: &Path, kept_revisions: usize) -> Result<Self, StoreError> {
        let limits = EmbeddedLimits {
            history: HistoryLimits {
                revisions: kept_revisions,
                ..HistoryLimits::default()
            },
            ..EmbeddedLimits::default()
        };
        Self::open_with(dir, limits)
    }

    /// Like [`EmbeddedStore::open`], within `limits`.
    pub fn open_with(dir: &Path, limits: EmbeddedLimits) -> Result<Self, StoreError> {
        // The file holds secrets (the CA's keys unless wrapped): 0700 directory, 0600 file.
        plexus_runtime::private_fs::create_dir(dir).map_err(|e| StoreError::Open {
            path: dir.to_owned(),
            source: e.into(),
        })?;
        let path = dir.join(FILE_NAME);
        let open_error = |source: BoxError| StoreError::Open {
            path: path.clone(),
            source,
        };
        let exists = integrity::check_before_open(dir, &path, FILE_NAME)?;
        let db = if exists {
            // Tightens a looser file to 0600 (it holds the CA's keys unless wrapped).
            plexus_runtime::private_fs::create_file(&path).map_err(|e| open_error(e.into()))?;
            let mut db = integrity::guarded(&path, || {
                Database::builder()
                    .set_cache_size(limits.cache_bytes)
                    .open(&path)
                    .map_err(|e| format!("cannot open it: {e}"))
            })?;
            integrity::verify(&mut db, &path, KV, |key, record| {
                decode(key, record).is_ok()
            })?;
            db
        } else {
            create_new(dir, &path, limits.cache_bytes).map_err(open_error)?
        };
        let (revision, stored_leases) =
            integrity::guarded(&path, || init_tables(&db).map_err(|e| e.to_string()))?;
        tracing::debug!(path = %path.display(), revision, leases = stored_leases.len(), "store opened");
        let leases = Leases::default();
        {
            // Restart rule: every stored lease starts a full TTL from now.
            let now = tokio::time::Instant::now();
            let mut table = leases.table();
            for (id, ttl) in &stored_leases {
                table.grant(*id, *ttl, now);
            }
        }
        let metrics = Arc::new(super::metrics::StoreMetrics::default());
        let store = Self {
            db: Arc::new(db),
            revision: Arc::new(watch::channel(revision).0),
            path,
            history: Arc::new(History::with_limits(
                revision,
                limits.history,
                Some(Arc::clone(&metrics)),
            )),
            leases: Arc::new(leases),
            metrics,
        };
        if !stored_leases.is_empty() {
            store.start_expiry();
        }
        Ok(store)
    }

    /// Starts the lease expiry task once (needs a tokio runtime; without one, the first lease
    /// call starts it).
    fn start_expiry(&self) {
        use std::sync::atomic::Ordering;
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if self.leases.task_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = WeakStore {
            db: Arc::downgrade(&self.db),
            revision: Arc::downgrade(&self.revision),
            history: Arc::downgrade(&self.history),
            leases: Arc::downgrade(&self.leases),
            path: self.path.clone(),
        };
        tokio::spawn(expire_leases(weak));
    }

    /// Publishes a commit: the history first, then the revision watch.
    fn committed(&self, revision: u64, changes: Option<Vec<Change>>) {
        publish(&self.revision, &self.history, revision, changes);
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || {
            // A damaged page can make redb panic: that is a failed read, not a dead task.
            integrity::catch_quietly(|| f(&db)).unwrap_or_else(|panic| {
                Err(StoreError::Damaged {
                    path,
                    reason: integrity::panic_message(&*panic),
                })
            })
        })
        .await
        .map_err(|source| StoreError::Task { source })?;
        if let Err(error) = &result {
            self.metrics.failed(error);
        }
        result
    }

    /// The store's counters.
    pub fn metrics(&self) -> &super::metrics::StoreMetrics {
        &self.metrics
    }
}

/// Records a commit in the history (when a revision was committed) and moves the revision watch
/// forward (commits may finish out of order across tasks: it never moves back).
fn publish(
    revision_tx: &watch::Sender<u64>,
    history: &History,
    revision: u64,
    changes: Option<Vec<Change>>,
) {
    if let Some(changes) = changes {
        history.record(revision, changes);
    }
    revision_tx.send_if_modified(|current| {
        let newer = revision > *current;
        if newer {
            *current = revision;
        }
        newer
    });
}

/// What the lease expiry task holds: it must not keep the store alive.
struct WeakStore {
    db: Weak<Database>,
    revision: Weak<watch::Sender<u64>>,
    history: Weak<History>,
    leases: Weak<Leases>,
    path: PathBuf,
}

/// Deletes the keys of expired leases, sleeping until the next deadline or a lease change.
async fn expire_leases(weak: WeakStore) {
    loop {
        let Some(leases) = weak.leases.upgrade() else {
            return;
        };
        let now = tokio::time::Instant::now();
        let due = leases.table().due(now);
        for lease in due {
            let (Some(db), Some(revision_tx), Some(history)) = (
                weak.db.upgrade(),
                weak.revision.upgrade(),
                weak.history.upgrade(),
            ) else {
                return;
            };
            let done = tokio::task::spawn_blocking(move || revoke(&db, lease)).await;
            match done {
                Ok(Ok((revision, changes))) => {
                    tracing::info!(
                        lease,
                        keys = changes.as_ref().map_or(0, Vec::len),
                        "lease expired"
                    );
                    leases.table().remove(lease);
                    publish(&revision_tx, &history, revision, changes);
                }
                Ok(Err(error)) => {
                    tracing::warn!(error = %super::super::api::ErrorChain(&error), lease, path = %weak.path.display(), "lease expiry failed; retrying");
                }
                Err(error) => tracing::warn!(%error, lease, "lease expiry task failed"),
            }
        }
        // Wake for the next deadline or a lease change; at least once a second, to end once the
        // store is gone (the task holds only weak references between rounds).
        let idle = tokio::time::Instant::now() + Duration::from_secs(1);
        let wake = leases.table().next_deadline().map_or(idle, |d| d.min(idle));
        let changed = leases.changed.notified();
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = changed => {}
        }
        drop(leases);
        if weak.db.upgrade().is_none() {
            return;
        }
    }
}

/// Creates a new database file under a temporary name and renames it into place once it is
/// initialised, so that a crash during creation leaves no empty data file behind.
fn create_new(dir: &Path, path: &Path, cache_bytes: usize) -> Result<Database, BoxError> {
    let creating = dir.join(integrity::creating_name(FILE_NAME));
    let _ = std::fs::remove_file(&creating);
    plexus_runtime::private_fs::create_file(&creating)?;
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(&creating)
        .map_err(boxed)?;
    init_tables(&db)?;
    std::fs::rename(&creating, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(db)
}

/// Creates the tables; returns the stored revision and leases.
fn init_tables(db: &Database) -> Result<(u64, Vec<(LeaseId, Duration)>), BoxError> {
    let mut tx = db.begin_write().map_err(boxed)?;
    tx.set_durability(Durability::Immediate);
    let (revision, leases) = {
        tx.open_table(KV).map_err(boxed)?;
        tx.open_table(LEASED).map_err(boxed)?;
        let meta = tx.open_table(META).map_err(boxed)?;
        let revision = meta
            .get(REVISION_KEY)
            .map_err(boxed)?
            .map_or(0, |g| g.value());
        let table = tx.open_table(LEASES).map_err(boxed)?;
        let mut leases = Vec::new();
        for entry in table.iter().map_err(boxed)? {
            let (id, ttl) = entry.map_err(boxed)?;
            leases.push((id.value(), Duration::from_millis(ttl.value())));
        }
        (revision, leases)
    };
    tx.commit().map_err(boxed)?;
    Ok((revision, leases))
}

fn boxed(e: impl Into<redb::Error>) -> BoxError {
    Box::new(e.into())
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend { source: boxed(e) }
}

fn encode(create_revision: u64, mod_revision: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + value.len());
    out.extend_from_slice(&create_revision.to_be_bytes());
    out.extend_from_slice(&mod_revision.to_be_bytes());
    out.extend_from_slice(value);
    out
}

fn decode(key: &str, record: &[u8]) -> Result<KeyValue, StoreError> {
    let corrupt = || StoreError::Corrupt {
        key: key.to_owned(),
    };
    let (create, rest) = record.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let (modified, value) = rest.split_first_chunk::<8>().ok_or_else(corrupt)?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        create_revision: u64::from_be_bytes(*create),
        mod_revision: u64::from_be_bytes(*modified),
    })
}

fn read_key(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<KeyValue>, StoreError> {
    match table.get(key).map_err(backend)? {
        Some(guard) => decode(key, guard.value()).map(Some),
        None => Ok(None),
    }
}

fn keys_with_prefix(
    table: &Table<'_, &'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<String>, StoreError> {
    let mut keys = Vec::new();
    for entry in table.range(prefix..).map_err(backend)? {
        let (key, _) = entry.map_err(backend)?;
        if !key.value().starts_with(prefix) {
            break;
        }
        keys.push(key.value().to_owned());
    }
    Ok(keys)
}

fn current_revision(tx: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let meta = tx.open_table(META).map_err(backend)?;
    let current = meta.get(REVISION_KEY).map_err(backend)?.map(|g| g.value());
    Ok(current.unwrap_or(0))
}

/// A lease that a put names does not exist (expired or never granted).
#[derive(Debug, thiserror::Error)]
#[error("lease {0} not found (expired or never granted)")]
pub struct LeaseNotFound(pub LeaseId);

/// Runs one transaction inside a redb write transaction. Returns the result and, when a new
/// revision was committed, its changes.
fn apply(db: &Database, txn: Txn) -> Result<(TxnResult, Option<Vec<Change>>), StoreError> {
    let mut tx = db.begin_write().map_err(backend)?;
    tx.set_durability(Durability::Immediate);
    let current = current_revision(&tx)?;
    let held = {
        let kv = tx.open_table(KV).map_err(backend)?;
        let mut held = true;
        for Compare::ModRevision { key, revision } in &txn.compares {
            let actual = read_key(&kv, key)?.map_or(0, |kv| kv.mod_revision);
            if actual != *revision {
                held = false;
                break;
            }
        }
        held
    };
    if !held || txn.ops.is_empty() {
        tx.abort().map_err(backend)?;
        let result = TxnResult {
            succeeded: held,
            revision: current,
        };
        return Ok((result, None));
    }
    let next = current + 1;
    let mut changes = Vec::new();
    {
        let mut kv = tx.open_table(KV).map_err(backend)?;
        let mut leased = tx.open_table(LEASED).map_err(backend)?;
        let leases = tx.open_table(LEASES).map_err(backend)?;
        for op in txn.ops {
            let (key, value, lease) = match op {
                Op::Put { key, value } => (key, value, None),
                Op::PutLeased { key, value, lease } => (key, value, Some(lease)),
                Op::Delete { key } => {
                    if kv.remove(key.as_str()).map_err(backend)?.is_some() {
                        leased.remove(key.as_str()).map_err(backend)?;
                        changes.push(Change::Delete {
                            key,
                            revision: next,
                        });
                    }
                    continue;
                }
                Op::DeletePrefix { prefix } => {
                    for key in keys_with_prefix(&kv, &prefix)? {
                        kv.remove(key.as_str()).map_err(backend)?;
                        leased.remove(key.as_str()).map_err(backend)?;
                        changes.push(Change::Delete {
                            key,
                            revision: next,
                        });
                    }
                    continue;
                }
            };
            let created = read_key(&kv, &key)?.map_or(next, |kv| kv.create_revision);
            kv.insert(key.as_str(), encode(created, next, &value).as_slice())
                .map_err(backend)?;
            match lease {
                Some(lease) => {
                    if leases.get(lease).map_err(backend)?.is_none() {
                        return Err(StoreError::Backend {
                            source: Box::new(LeaseNotFound(lease)),
                        });
                    }
                    leased.insert(key.as_str(), lease).map_err(backend)?;
                }
                None => {
                    leased.remove(key.as_str()).map_err(backend)?;
                }
            }
            changes.push(Change::Put(KeyValue {
                key,
                value,
                create_revision: created,
                mod_revision: next,
            }));
        }
        let mut meta = tx.open_table(META).map_err(backend)?;
        meta.insert(REVISION_KEY, next).map_err(backend)?;
    }
    tx.commit().map_err(backend)?;
    let result = TxnResult {
        succeeded: true,
        revision: next,
    };
    Ok((result, Some(changes)))
}

/// Deletes a lease and its keys in one write (a new revision when it had keys).
fn revoke(db: &Database, lease: LeaseId) -> Result<(u64, Option<Vec<Change>>), StoreError> {
    let mut tx = db.begin_write().map_err(backend)?;
    tx.set_durability(Durability::Immediate);
    let current = current_revision(&tx)?;
    let keys: Vec<String> = {
        let leased = tx.open_table(LEASED).map_err(backend)?;
        let mut keys = Vec::new();
        for entry in leased.iter().map_err(backend)? {
            let (key, owner) = entry.map_err(backend)?;
            if owner.value() == lease {
                keys.push(key.value().to_owned());
            }
        }
        keys
    };
    let next = current + 1;
    let mut changes = Vec::new();
    {
        let mut leases = tx.open_table(LEASES).map_err(backend)?;
        leases.remove(lease).map_err(backend)?;
        let mut kv = tx.open_table(KV).map_err(backend)?;
        let mut leased = tx.open_table(LEASED).map_err(backend)?;
        for key in keys {
            leased.remove(key.as_str()).map_err(backend)?;
            if kv.remove(key.as_str()).map_err(backend)?.is_some() {
                changes.push(Change::Delete {
                    key,
                    revision: next,
                });
            }
        }
        if !changes.is_empty() {
            let mut meta = tx.open_table(META).map_err(backend)?;
            meta.insert(REVISION_KEY, next).map_err(backend)?;
        }
    }
    tx.commit().map_err(backend)?;
    if changes.is_empty() {
        Ok((current, None))
    } else {
        Ok((next, Some(changes)))
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(backend)?;
            let kv = tx.open_table(KV).map_err(backend)?;
            read_key(&kv, &key)
        })
        .await
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(backend)?;
            let meta = tx.open_table(META).map_err(backend)?;
            let revision = meta.get(REVISION_KEY).map_err(backend)?.map(|g| g.value());
            let kv = tx.open_table(KV).map_err(backend)?;
            let mut out = Vec::new();
            for entry in kv.range(prefix.as_str()..).map_err(backend)? {
                let (key, record) = entry.map_err(backend)?;
                if !key.value().starts_with(&prefix) {
                    break;
                }
                out.push(decode(key.value(), record.value())?);
            }
            Ok((out, revision.unwrap_or(0)))
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let (result, changes) = self.blocking(move |db| apply(db, txn)).await?;
        self.committed(result.revision, changes);
        Ok(result)
    }

    fn revision_watch(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    async fn current_revision(&self) -> Result<u64, StoreError> {
        // Published (`committed`) before `txn` returns, so a read after a write sees it.
        Ok(*self.revision.borrow())
    }

    async fn written_revision(&self) -> Result<u64, StoreError> {
        // Recorded before `txn` returns, like the revision.
        Ok(self.history.written())
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<Watch, StoreError> {
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        let history = Arc::clone(&self.history);
        let prefix = prefix.to_owned();
        let mut contiguous = history.contiguous();
        let mut cursor = if after_revision == 0 {
            *contiguous.borrow_and_update()
        } else {
            after_revision
        };
        tokio::spawn(async move {
            loop {
                // Take the changes out of the shared history only once the watcher has room
                // for them, and at most WATCH_BATCH_BYTES at a time: a slow watcher holds at
                // most WATCH_BUFFER batches, and what it has not taken yet stays shared.
                let Ok(permit) = tx.reserve().await else {
                    return;
                };
                match history.since(&prefix, cursor, WATCH_BATCH_BYTES) {
                    Err(compacted) => {
                        permit.send(WatchEvent::Compacted {
                            compact_revision: compacted.compact_revision,
                        });
                        return;
                    }
                    Ok((changes, newest)) => {
                        cursor = newest;
                        if !changes.is_empty() {
                            permit.send(WatchEvent::Changes(changes));
                        }
                    }
                }
                tokio::select! {
                    changed = contiguous.wait_for(|r| *r > cursor) => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }

    async fn range_unleased(&self) -> Result<Option<(Vec<KeyValue>, u64)>, StoreError> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(backend)?;
            let meta = tx.open_table(META).map_err(backend)?;
            let revision = meta.get(REVISION_KEY).map_err(backend)?.map(|g| g.value());
            let kv = tx.open_table(KV).map_err(backend)?;
            let leased = tx.open_table(LEASED).map_err(backend)?;
            let mut out = Vec::new();
            for entry in kv.iter().map_err(backend)? {
                let (key, record) = entry.map_err(backend)?;
                if leased.get(key.value()).map_err(backend)?.is_none() {
                    out.push(decode(key.value(), record.value())?);
                }
            }
            Ok(Some((out, revision.unwrap_or(0))))
        })
        .await
    }

    fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    async fn status(&self) -> super::StoreStatus {
        super::StoreStatus {
            backend: "embedded".to_owned(),
            location: self.path.display().to_string(),
            members: Vec::new(),
        }
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let ttl = ttl.max(Duration::from_millis(1));
        let id = self
            .blocking(move |db| {
                let mut tx = db.begin_write().map_err(backend)?;
                tx.set_durability(Durability::Immediate);
                let id = {
                    let mut leases = tx.open_table(LEASES).map_err(backend)?;
                    let mut id: LeaseId = (rand::random::<u64>() >> 2) as LeaseId + 1;
                    while leases.get(id).map_err(backend)?.is_some() {
                        id = (rand::random::<u64>() >> 2) as LeaseId + 1;
                    }
                    let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                    leases.insert(id, millis).map_err(backend)?;
                    id
                };
                tx.commit().map_err(backend)?;
                Ok(id)
            })
            .await?;
        self.leases
            .table()
            .grant(id, ttl, tokio::time::Instant::now());
        self.leases.changed.notify_one();
        self.start_expiry();
        Ok(id)
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        self.start_expiry();
        Ok(self
            .leases
            .table()
            .keep_alive(lease, tokio::time::Instant::now()))
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let (revision, changes) = self.blocking(move |db| revoke(db, lease)).await?;
        self.leases.table().remove(lease);
        self.leases.changed.notify_one();
        self.committed(revision, changes);
        Ok(())
    }
}

#[cfg(test)]
#[path = "embedded_tests.rs"]
mod tests;
