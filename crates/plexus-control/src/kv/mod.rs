//! The KV store: Consul's key/value API over the [`Store`], under the store prefix `kv/`.
//!
//! Each key is one store key `kv/<key>` whose record is the writer's flags (8 bytes, big-endian)
//! followed by the value. `CreateIndex`/`ModifyIndex` are the store's create and mod revisions, so
//! `?cas=<ModifyIndex>` is a compare on the key's mod revision (`cas=0`: the key must not exist).
//! HTTP handlers live in [`api`]; locks (`?acquire=`/`?release=`, a record beside the key) in
//! [`lock`].

pub mod api;
pub mod lock;

use std::sync::Arc;

use plexus_api::KvPair;
use plexus_api::kv::KvExportEntry;
use tokio::sync::watch;

use crate::store::changes::{Changes, Interest};
use crate::store::{Compare, KeyValue, Op, Store, StoreError, Txn};

/// Store prefix of every KV key.
pub const PREFIX: &str = "kv/";
const FLAGS_LEN: usize = 8;

/// Why a KV operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The store failed.
    #[error("KV store unavailable")]
    Store(#[from] StoreError),
    /// A stored record is shorter than its header.
    #[error("KV record {key:?} is malformed")]
    Corrupt {
        /// The user's key.
        key: String,
    },
}

/// A KV entry as stored: key, flags, raw value and indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The user's key (without the store prefix).
    pub key: String,
    /// Flags.
    pub flags: u64,
    /// Raw value.
    pub value: Vec<u8>,
    /// Creating revision.
    pub create_index: u64,
    /// Last modifying revision.
    pub modify_index: u64,
    /// How many times the key's lock was acquired.
    pub lock_index: u64,
    /// The session holding the lock (`None`: free).
    pub session: Option<String>,
}

impl Entry {
    /// The JSON shape (`Value` base64, `null` when empty, as Consul shows it).
    pub fn to_pair(&self) -> KvPair {
        use base64::Engine;
        KvPair {
            lock_index: self.lock_index,
            session: self.session.clone(),
            key: self.key.clone(),
            flags: self.flags,
            value: (!self.value.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&self.value)),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }

    /// The export shape.
    pub fn to_export(&self) -> KvExportEntry {
        use base64::Engine;
        KvExportEntry {
            key: self.key.clone(),
            flags: self.flags,
            value: base64::engine::general_purpose::STANDARD.encode(&self.value),
        }
    }
}

pub(crate) fn decode(record: KeyValue) -> Result<Entry, KvError> {
    let key = record
        .key
        .strip_prefix(PREFIX)
        .unwrap_or(&record.key)
        .to_owned();
    let Some((flags, value)) = record.value.split_first_chunk::<FLAGS_LEN>() else {
        return Err(KvError::Corrupt { key });
    };
    Ok(Entry {
        key,
        flags: u64::from_be_bytes(*flags),
        value: value.to_vec(),
        create_index: record.create_revision,
        modify_index: record.mod_revision,
        lock_index: 0,
        session: None,
    })
}

impl Entry {
    fn with_lock(mut self, state: Option<&lock::LockState>) -> Self {
        if let Some(state) = state {
            self.lock_index = state.lock_index;
            self.session = (!state.session.is_empty()).then(|| state.session.clone());
        }
        self
    }
}

pub(crate) fn encode(flags: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FLAGS_LEN + value.len());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// Collapses keys below `prefix` at the first `separator` after it (Consul's `?keys&separator=`).
pub fn collapse_keys(prefix: &str, keys: &[String], separator: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for key in keys {
        let shown = match separator.filter(|s| !s.is_empty()) {
            Some(sep) => {
                let rest = key.strip_prefix(prefix).unwrap_or(key);
                match rest.find(sep) {
                    Some(at) => format!("{prefix}{}", &rest[..at + sep.len()]),
                    None => key.clone(),
                }
            }
            None => key.clone(),
        };
        if out.last() != Some(&shown) {
            out.push(shown);
        }
    }
    out
}

/// Consul's KV operations over a [`Store`].
#[derive(Clone)]
pub struct Kv {
    store: Arc<dyn Store>,
    changes: Arc<Changes>,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").finish_non_exhaustive()
    }
}

impl Kv {
    /// KV over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        // A lock record (`K\0lock`) is part of `K`'s answer: its writes wake `K`'s queries.
        let changes = Arc::new(Changes::with_companion(
            Arc::clone(&store),
            PREFIX,
            Some(lock::LOCK_SUFFIX.to_owned()),
        ));
        Self { store, changes }
    }

    /// The store revision watch.
    pub fn index_watch(&self) -> watch::Receiver<u64> {
        self.store.revision_watch()
    }

    /// What a blocking read of `key` (with `listing`: every key under it) waits on: the last
    /// revision at which that answer may have changed, moving only for writes to those keys.
    pub async fn changes(&self, key: &str, listing: bool) -> watch::Receiver<u64> {
        let key = format!("{PREFIX}{key}");
        let interest = if listing {
            Interest::Prefix(key)
        } else {
            Interest::Key(key)
        };
        self.changes.watch(interest).await
    }

    /// One key, with the store revision the read reflects.
    pub async fn get(&self, key: &str) -> Result<(Option<Entry>, u64), KvError> {
        let (record, revision) = self.store.get_at(&format!("{PREFIX}{key}")).await?;
        let Some(record) = record else {
            return Ok((None, revision));
        };
        let lock = self.store.get(&lock::lock_key(key)).await?;
        let state = lock.as_ref().and_then(lock::decode_lock).map(|(_, s)| s);
        let revision = revision.max(lock.map_or(0, |l| l.mod_revision));
        Ok((Some(decode(record)?.with_lock(state.as_ref())), revision))
    }

    /// Every key starting with `prefix`, sorted, with the revision the read reflects.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<Entry>, u64), KvError> {
        let (records, revision) = self.store.range(&format!("{PREFIX}{prefix}")).await?;
        let (locks, values): (Vec<_>, Vec<_>) = records
            .into_iter()
            .partition(|r| r.key.ends_with(lock::LOCK_SUFFIX));
        let locks: std::collections::HashMap<String, lock::LockState> =
            locks.iter().filter_map(lock::decode_lock).collect();
        let entries = values
            .into_iter()
            .map(|record| {
                let entry = decode(record)?;
                let state = locks.get(&entry.key);
                Ok(entry.with_lock(state))
            })
            .collect::<Result<_, KvError>>()?;
        Ok((entries, revision))
    }

    /// Writes a key. With `cas`, only when the key's modify index equals it (0: only when absent).
    /// Returns whether the write happened and the store revision after it.
    pub async fn put(
        &self,
        key: &str,
        value: &[u8],
        flags: u64,
        cas: Option<u64>,
    ) -> Result<(bool, u64), KvError> {
        let store_key = format!("{PREFIX}{key}");
        let compares = cas
            .map(|revision| Compare::ModRevision {
                key: store_key.clone(),
                revision,
            })
            .into_iter()
            .collect();
        let result = self
            .store
            .txn(Txn {
                compares,
                ops: vec![Op::Put {
                    key: store_key,
                    value: encode(flags, value),
                }],
            })
            .await?;
        Ok((result.succeeded, result.revision))
    }

    /// Deletes a key, or with `recurse` every key under the prefix. With `cas` (single key only),
    /// only when the key's modify index equals it.
    pub async fn delete(
        &self,
        key: &str,
        recurse: bool,
        cas: Option<u64>,
    ) -> Result<(bool, u64), KvError> {
        let store_key = format!("{PREFIX}{key}");
        // A prefix delete takes the keys' lock records along (they start with the key).
        let ops = if recurse {
            vec![Op::DeletePrefix {
                prefix: store_key.clone(),
            }]
        } else {
            vec![
                Op::Delete {
                    key: store_key.clone(),
                },
                Op::Delete {
                    key: lock::lock_key(key),
                },
            ]
        };
        let compares = match cas {
            Some(revision) if !recurse => vec![Compare::ModRevision {
                key: store_key,
                revision,
            }],
            _ => Vec::new(),
        };
        let result = self.store.txn(Txn { compares, ops }).await?;
        Ok((result.succeeded, result.revision))
    }
}

#[cfg(test)]
mod tests;
