//! The embedded store: one durable redb file, fsync on every commit.
//!
//! Layout: table `kv` maps each key to a record of `create_revision` (8 bytes, big-endian),
//! `mod_revision` (8 bytes) and the value; table `meta` holds the store revision under `revision`.
//! Each [`Txn`] is one redb write transaction with [`Durability::Immediate`], so an acknowledged
//! write survives a crash. redb calls are blocking and run on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, Durability, ReadableTable, Table, TableDefinition};
use tokio::sync::watch;

use super::{BoxError, Compare, KeyValue, Op, Store, StoreError, Txn, TxnResult};

/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "plexus.redb";

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
const HEADER_LEN: usize = 16;

/// A [`Store`] in a single redb file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    revision: Arc<watch::Sender<u64>>,
    path: PathBuf,
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
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.to_owned(),
            source: e.into(),
        })?;
        let path = dir.join(FILE_NAME);
        let open_error = |source: BoxError| StoreError::Open {
            path: path.clone(),
            source,
        };
        let db = Database::create(&path).map_err(|e| open_error(boxed(e)))?;
        let revision = init_tables(&db).map_err(open_error)?;
        tracing::debug!(path = %path.display(), revision, "store opened");
        Ok(Self {
            db: Arc::new(db),
            revision: Arc::new(watch::channel(revision).0),
            path,
        })
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
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|source| StoreError::Task { source })?
    }
}

/// Creates both tables and returns the stored revision.
fn init_tables(db: &Database) -> Result<u64, BoxError> {
    let mut tx = db.begin_write().map_err(boxed)?;
    tx.set_durability(Durability::Immediate);
    let revision = {
        tx.open_table(KV).map_err(boxed)?;
        let meta = tx.open_table(META).map_err(boxed)?;
        meta.get(REVISION_KEY)
            .map_err(boxed)?
            .map_or(0, |g| g.value())
    };
    tx.commit().map_err(boxed)?;
    Ok(revision)
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

/// Runs one transaction inside a redb write transaction. Returns the result and, when it
/// committed, the new revision.
fn apply(db: &Database, txn: Txn) -> Result<TxnResult, StoreError> {
    let mut tx = db.begin_write().map_err(backend)?;
    tx.set_durability(Durability::Immediate);
    let current = {
        let meta = tx.open_table(META).map_err(backend)?;
        let current = meta.get(REVISION_KEY).map_err(backend)?.map(|g| g.value());
        current.unwrap_or(0)
    };
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
        return Ok(TxnResult {
            succeeded: held,
            revision: current,
        });
    }
    let next = current + 1;
    {
        let mut kv = tx.open_table(KV).map_err(backend)?;
        for op in txn.ops {
            match op {
                Op::Put { key, value } => {
                    let created = read_key(&kv, &key)?.map_or(next, |kv| kv.create_revision);
                    kv.insert(key.as_str(), encode(created, next, &value).as_slice())
                        .map_err(backend)?;
                }
                Op::Delete { key } => {
                    kv.remove(key.as_str()).map_err(backend)?;
                }
                Op::DeletePrefix { prefix } => {
                    for key in keys_with_prefix(&kv, &prefix)? {
                        kv.remove(key.as_str()).map_err(backend)?;
                    }
                }
            }
        }
        let mut meta = tx.open_table(META).map_err(backend)?;
        meta.insert(REVISION_KEY, next).map_err(backend)?;
    }
    tx.commit().map_err(backend)?;
    Ok(TxnResult {
        succeeded: true,
        revision: next,
    })
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
        let result = self.blocking(move |db| apply(db, txn)).await?;
        if result.succeeded {
            // Commits may finish out of order across tasks: the watch only ever moves forward.
            self.revision.send_if_modified(|current| {
                let newer = result.revision > *current;
                if newer {
                    *current = result.revision;
                }
                newer
            });
        }
        Ok(result)
    }

    fn revision_watch(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }
}

#[cfg(test)]
#[path = "embedded_tests.rs"]
mod tests;
