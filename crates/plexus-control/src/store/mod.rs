//! The control plane's state: revisioned keys with etcd's semantics.
//!
//! Every committed write gets one new, strictly increasing store revision; every key remembers the
//! revision that created it and the one that last changed it. Writes are [`Txn`]s: compare-and-set
//! guards plus a list of operations applied atomically. Readers learn about commits through
//! [`Store::revision_watch`].
//!
//! Backends: [`embedded::EmbeddedStore`] (one durable file, the default) and [`etcd::EtcdStore`]
//! (an etcd cluster shared by several server replicas). Nothing here goes beyond what etcd's KV
//! API offers; a transaction must not name one key twice (etcd refuses it).

pub mod changes;
pub mod embedded;
pub mod etcd;
pub mod history;
pub mod integrity;
pub mod lease;
pub mod metrics;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;

/// A boxed error from a store backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One stored key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value, opaque to the store.
    pub value: Vec<u8>,
    /// The revision of the write that created the key.
    pub create_revision: u64,
    /// The revision of the last write that changed the key.
    pub mod_revision: u64,
}

/// A guard of a [`Txn`]: the transaction's operations run only when every compare holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals `revision`; revision 0 means the key must not exist.
    ModRevision {
        /// The key to compare.
        key: String,
        /// The expected `mod_revision` (0: absent).
        revision: u64,
    },
}

/// One write of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Creates or replaces a key.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
    },
    /// Removes a key (nothing happens when it is absent).
    Delete {
        /// The key.
        key: String,
    },
    /// Removes every key starting with `prefix`.
    DeletePrefix {
        /// The prefix.
        prefix: String,
    },
    /// Creates or replaces a key bound to a lease: the key is deleted when the lease expires or
    /// is revoked. A plain [`Op::Put`] of the key later unbinds it.
    PutLeased {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
        /// The lease (from [`Store::lease_grant`]).
        lease: LeaseId,
    },
}

/// A lease: keys bound to it vanish when its holder stops renewing it.
pub type LeaseId = i64;

/// One change to a key, as a watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The key was created or replaced.
    Put(KeyValue),
    /// The key was deleted at `revision`.
    Delete {
        /// The key.
        key: String,
        /// The revision of the delete.
        revision: u64,
    },
}

impl Change {
    /// The key changed.
    pub fn key(&self) -> &str {
        match self {
            Change::Put(kv) => &kv.key,
            Change::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> u64 {
        match self {
            Change::Put(kv) => kv.mod_revision,
            Change::Delete { revision, .. } => *revision,
        }
    }
}

/// What a watch delivers. Every change after the start revision arrives exactly once and in
/// order, unless the watch reports [`WatchEvent::Compacted`]: then the changes in between are gone
/// and the watcher must re-list (a [`Store::range`]) and watch again from the listed revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Changes of one or more revisions, in revision order.
    Changes(Vec<Change>),
    /// The history the watch needed is gone: re-list. The watch ends after this event.
    Compacted {
        /// The oldest revision the store can still replay from.
        compact_revision: u64,
    },
}

/// A running watch: events until the store goes away, or a [`WatchEvent::Compacted`].
pub type Watch = tokio::sync::mpsc::Receiver<WatchEvent>;

/// What a store says about itself, for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStatus {
    /// `embedded` or `etcd`.
    pub backend: String,
    /// The file, or the endpoints.
    pub location: String,
    /// The etcd members (empty for the embedded store).
    pub members: Vec<MemberStatus>,
}

/// One etcd member as the operator view shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemberStatus {
    /// The member's name.
    pub name: String,
    /// Its client URL.
    pub endpoint: String,
    /// True when it answered a status request.
    pub healthy: bool,
    /// True when it is the raft leader.
    pub leader: bool,
    /// Its etcd version (empty when it did not answer).
    pub version: String,
}

/// How many events a watch buffers before the store stops reading for it.
pub const WATCH_BUFFER: usize = 256;

/// An atomic, guarded write: when all `compares` hold, all `ops` are applied under one new revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Guards; all must hold.
    pub compares: Vec<Compare>,
    /// Writes, applied in order.
    pub ops: Vec<Op>,
}

/// The outcome of a [`Txn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResult {
    /// True when the compares held (and the ops were applied).
    pub succeeded: bool,
    /// The store revision after the transaction: the new one when ops were applied, otherwise the
    /// unchanged current one.
    pub revision: u64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened or created.
    #[error("cannot open store at {path}")]
    Open {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The backend failed to read or write.
    #[error("store backend failed")]
    Backend {
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// A stored record is not in the store's own format.
    #[error("stored record {key:?} is malformed")]
    Corrupt {
        /// The key of the record, or the name of the metadata entry.
        key: String,
    },
    /// The data file failed its checks at open (see [`integrity`]).
    #[error("the store's data file failed its integrity check")]
    Integrity(#[from] integrity::IntegrityError),
    /// Reading the data file failed inside the storage engine (a damaged page).
    #[error("store file {path} is damaged: {reason}")]
    Damaged {
        /// The data file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The task running the operation panicked or was cancelled.
    #[error("store task did not complete")]
    Task {
        /// The cause.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl StoreError {
    /// True when the stored data itself is at fault (damaged file, malformed record): an
    /// internal error that retrying will not fix, as opposed to a store that cannot be reached.
    pub fn is_damage(&self) -> bool {
        match self {
            StoreError::Integrity(_) | StoreError::Damaged { .. } | StoreError::Corrupt { .. } => {
                true
            }
            StoreError::Backend { source } => source
                .downcast_ref::<redb::Error>()
                .is_some_and(|e| matches!(e, redb::Error::Corrupted(_))),
            StoreError::Open { .. } | StoreError::Task { .. } => false,
        }
    }

    /// A short label for metrics: `damaged`, `backend` or `task`.
    pub fn kind(&self) -> &'static str {
        if self.is_damage() {
            "damaged"
        } else if matches!(self, StoreError::Task { .. }) {
            "task"
        } else {
            "backend"
        }
    }
}

/// Revisioned key-value storage with compare-and-set transactions.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Reads one key with the store revision the read reflects (at least the key's
    /// `mod_revision`). Backends whose reads carry a revision (etcd) override this so that an index
    /// taken from one replica is never ahead of what another replica's read shows.
    async fn get_at(&self, key: &str) -> Result<(Option<KeyValue>, u64), StoreError> {
        let revision = *self.revision_watch().borrow();
        let record = self.get(key).await?;
        let at_least = record.as_ref().map_or(0, |kv| kv.mod_revision);
        Ok((record, revision.max(at_least)))
    }

    /// The store's current revision as a read issued now would see it: a read after a write
    /// that returned gets at least that write's revision. The default asks the backend (a
    /// linearizable read on etcd); a backend whose revision watch is published before a write
    /// returns (the embedded store) answers from it without touching storage.
    async fn current_revision(&self) -> Result<u64, StoreError> {
        Ok(self.get_at("").await?.1)
    }

    /// The revision of the newest write that changed this store's keys, as a read issued now
    /// would see it: a watcher of every key that has applied it reflects every write
    /// acknowledged before the call. On a store shared with others (etcd, outside the
    /// namespace) the store's revision runs ahead of it, and so does a revision that changed
    /// nothing (a delete of absent keys); a watcher waiting for those would wait for events that
    /// never come. Expiring leases (the store's own deletes) may be newer. The default is the
    /// current revision.
    async fn written_revision(&self) -> Result<u64, StoreError> {
        self.current_revision().await
    }

    /// Reads every key starting with `prefix`, sorted by key, with the store revision the read
    /// reflects.
    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError>;

    /// Applies a transaction atomically. When a compare fails nothing is written and the revision
    /// does not move; when `ops` is empty the revision does not move either.
    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError>;

    /// The latest committed revision.
    fn revision_watch(&self) -> watch::Receiver<u64>;

    /// What the store says about itself (backend, location, members and their health).
    async fn status(&self) -> StoreStatus {
        StoreStatus {
            backend: "unknown".to_owned(),
            ..StoreStatus::default()
        }
    }

    /// Watches every key starting with `prefix` for changes after `after_revision` (0: from now).
    /// See [`WatchEvent`] for the resume protocol.
    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<Watch, StoreError> {
        let _ = (prefix, after_revision);
        Err(unsupported("watch"))
    }

    /// Grants a lease that expires `ttl` after its last keep-alive.
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let _ = ttl;
        Err(unsupported("leases"))
    }

    /// Renews a lease; `None` when it has expired or never existed (its keys are gone).
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        let _ = lease;
        Err(unsupported("leases"))
    }

    /// Every key that is not bound to a lease, read at one revision (what a backup keeps).
    /// `None` from a backend that cannot tell leased keys apart (the caller then filters by the
    /// key prefixes it knows to be leased).
    async fn range_unleased(&self) -> Result<Option<(Vec<KeyValue>, u64)>, StoreError> {
        Ok(None)
    }

    /// The store's counters, as Prometheus text (empty for a backend that keeps none).
    fn metrics_text(&self) -> String {
        String::new()
    }

    /// Revokes a lease now, deleting its keys (nothing happens for an unknown lease).
    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let _ = lease;
        Err(unsupported("leases"))
    }
}

fn unsupported(what: &str) -> StoreError {
    StoreError::Backend {
        source: format!("this store does not support {what}").into(),
    }
}

#[cfg(test)]
mod conformance;
