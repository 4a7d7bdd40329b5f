//! Config entries: stored, validated L7 policy (`service-defaults`, `service-resolver`,
//! `service-splitter`, `service-router`) and the compiled discovery chain sidecars watch.
//! `service-intentions` entries are not stored here: they are the intentions of their
//! destination, gathered and replaced through [`Intentions`].
//!
//! Storage: `config/entries/<kind>/<name>` holds each entry as JSON; `config/index` is bumped by
//! every write, so its `mod_revision` is the config index (`X-Consul-Index` of every config
//! read) and writes are serialised by compare-and-set on it: an entry is validated alone and
//! against the entries read at that index, and stored only if nothing changed in between.
//!
//! The HTTP API is in [`api`]; validation and compilation are pure, in
//! [`plexus_api::config_entry`].

pub mod api;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use plexus_api::Indexed;
use plexus_api::config_entry::chain::DiscoveryChain;
use plexus_api::config_entry::validate::{check_references, validate};
use plexus_api::config_entry::{ConfigEntry, EntryError, EntryErrors, Kind, compile};
use tokio::sync::watch;

use crate::catalog::keys::escape;
use crate::intentions::{IntentionError, Intentions};
use crate::store::changes::{Changes, Interest};
use crate::store::{Compare, KeyValue, Op, Store, StoreError, Txn};

/// Prefix of the entries.
pub const ENTRIES: &str = "config/entries/";
/// The key whose revision is the config index.
pub const INDEX: &str = "config/index";

const MAX_ATTEMPTS: usize = 16;

/// Why a config operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The store failed.
    #[error("the config store is unavailable")]
    Store(#[from] StoreError),
    /// A stored record does not decode.
    #[error("stored config entry {key:?} is not valid")]
    Corrupt {
        /// Its key.
        key: String,
    },
    /// The entry is invalid (alone or against the stored ones).
    #[error("{0}")]
    Invalid(EntryErrors),
    /// No such entry.
    #[error("config entry {kind}/{name} not found")]
    NotFound {
        /// Kind.
        kind: Kind,
        /// Name.
        name: String,
    },
    /// Concurrent writers.
    #[error("config entries kept changing during the write; try again")]
    Contended,
}

impl From<IntentionError> for ConfigError {
    fn from(error: IntentionError) -> Self {
        match error {
            IntentionError::Store(e) => Self::Store(e),
            IntentionError::Corrupt { key } => Self::Corrupt { key },
            IntentionError::Invalid { field, message } => {
                Self::Invalid(EntryErrors(vec![EntryError::new(field, message)]))
            }
            IntentionError::Contended => Self::Contended,
            // A source already named by an intention of another destination cannot happen (the
            // pair includes the destination); the others are reported as they are.
            other => Self::Invalid(EntryErrors(vec![EntryError::new("", other.to_string())])),
        }
    }
}

/// The config entry service over a store.
pub struct ConfigEntries {
    store: Arc<dyn Store>,
    changes: Changes,
    /// Where `service-intentions` entries live (they are the intentions, gathered).
    intentions: Option<Arc<Intentions>>,
}

impl std::fmt::Debug for ConfigEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigEntries").finish_non_exhaustive()
    }
}

fn key(kind: Kind, name: &str) -> String {
    format!("{ENTRIES}{}/{}", kind.as_str(), escape(name))
}

fn decode(kv: &KeyValue) -> Result<ConfigEntry, ConfigError> {
    let corrupt = || ConfigError::Corrupt {
        key: kv.key.clone(),
    };
    let value: serde_json::Value = serde_json::from_slice(&kv.value).map_err(|_| corrupt())?;
    let mut entry = ConfigEntry::from_json(value).map_err(|_| corrupt())?;
    entry.set_indexes(kv.create_revision, kv.mod_revision);
    Ok(entry)
}

/// A snapshot of every entry at one config index.
struct Snapshot {
    entries: Vec<ConfigEntry>,
    /// `mod_revision` of [`INDEX`] (0: never written).
    index_rev: u64,
}

impl ConfigEntries {
    /// Config entries over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let changes = Changes::new(Arc::clone(&store), ENTRIES);
        Self {
            store,
            changes,
            intentions: None,
        }
    }

    /// Serves `service-intentions` from `intentions`.
    pub fn with_intentions(mut self, intentions: Arc<Intentions>) -> Self {
        self.intentions = Some(intentions);
        self
    }

    fn intentions(&self) -> Result<&Intentions, ConfigError> {
        self.intentions.as_deref().ok_or_else(|| {
            ConfigError::Invalid(EntryErrors(vec![EntryError::new(
                "Kind",
                "service-intentions entries are not served here",
            )]))
        })
    }

    /// What a blocking read waits on: the last revision at which the entries of `kind` (all
    /// kinds: `None`), or with `name` that one entry, changed.
    pub async fn changes(&self, kind: Option<Kind>, name: Option<&str>) -> watch::Receiver<u64> {
        if kind == Some(Kind::ServiceIntentions)
            && let Some(intentions) = &self.intentions
        {
            return intentions.changes().await;
        }
        let interest = match (kind, name) {
            (Some(kind), Some(name)) => Interest::Key(key(kind, name)),
            (Some(kind), None) => Interest::Prefix(format!("{ENTRIES}{}/", kind.as_str())),
            (None, _) => Interest::Prefix(ENTRIES.to_owned()),
        };
        self.changes.watch(interest).await
    }

    /// Store revisions (wakes blocking queries; they then re-check the config index).
    pub fn revision_watch(&self) -> watch::Receiver<u64> {
        self.store.revision_watch()
    }

    async fn snapshot(&self) -> Result<Snapshot, ConfigError> {
        // The index is read before the entries: a write landing between the two reads then
        // gives entries newer than their label (the next blocking query returns at once and
        // reads them again), never a label newer than the entries (a watcher would block on
        // the new index while holding the old entries until the next write).
        let index_rev = self
            .store
            .get(INDEX)
            .await?
            .map(|kv| kv.mod_revision)
            .unwrap_or(0);
        let (records, _) = self.store.range(ENTRIES).await?;
        let entries = records.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot { entries, index_rev })
    }

    /// The config index: the revision of the last config write (at least 1).
    pub async fn index(&self) -> Result<u64, ConfigError> {
        Ok(self
            .store
            .get(INDEX)
            .await?
            .map(|kv| kv.mod_revision)
            .unwrap_or(0)
            .max(1))
    }

    /// Every entry of `kind`, by name.
    pub async fn list(&self, kind: Kind) -> Result<Indexed<Vec<ConfigEntry>>, ConfigError> {
        if kind == Kind::ServiceIntentions {
            let Indexed { index, value } = self.intentions()?.entries().await?;
            return Ok(Indexed {
                index: index.max(1),
                value: value
                    .into_iter()
                    .map(ConfigEntry::ServiceIntentions)
                    .collect(),
            });
        }
        let snap = self.snapshot().await?;
        let mut list: Vec<ConfigEntry> = snap
            .entries
            .into_iter()
            .filter(|e| e.kind() == kind)
            .collect();
        list.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(Indexed {
            index: snap.index_rev.max(1),
            value: list,
        })
    }

    /// One entry, with the config index.
    pub async fn get(&self, kind: Kind, name: &str) -> Result<Indexed<ConfigEntry>, ConfigError> {
        if kind == Kind::ServiceIntentions {
            let Indexed { index, value } = self.intentions()?.entry(name).await?;
            return match value {
                Some(entry) => Ok(Indexed {
                    index: index.max(1),
                    value: ConfigEntry::ServiceIntentions(entry),
                }),
                None => Err(ConfigError::NotFound {
                    kind,
                    name: name.to_owned(),
                }),
            };
        }
        let kv = self.store.get(&key(kind, name)).await?;
        let index = self.index().await?;
        match kv {
            Some(kv) => Ok(Indexed {
                index,
                value: decode(&kv)?,
            }),
            None => Err(ConfigError::NotFound {
                kind,
                name: name.to_owned(),
            }),
        }
    }

    /// The compiled chain for calls to `service`, with the config index.
    pub async fn chain(&self, service: &str) -> Result<Indexed<DiscoveryChain>, ConfigError> {
        let snap = self.snapshot().await?;
        Ok(Indexed {
            index: snap.index_rev.max(1),
            value: compile::compile(service, &snap.entries),
        })
    }

    /// Validates and stores `entry`. With `cas`, only if the stored entry's `ModifyIndex` is
    /// `cas` (0: only if absent); returns `false` when that does not hold.
    pub async fn put(&self, mut entry: ConfigEntry, cas: Option<u64>) -> Result<bool, ConfigError> {
        validate(&entry).map_err(ConfigError::Invalid)?;
        if let ConfigEntry::ServiceIntentions(entry) = &entry {
            return Ok(self.intentions()?.replace_destination(entry, cas).await?);
        }
        entry.set_indexes(0, 0);
        let entry_key = key(entry.kind(), entry.name());
        let value = serde_json::to_vec(&entry).map_err(|_| ConfigError::Corrupt {
            key: entry_key.clone(),
        })?;
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let current = snap
                .entries
                .iter()
                .find(|e| e.kind() == entry.kind() && e.name() == entry.name());
            if let Some(cas) = cas {
                let current_index = current.map(|e| e.indexes().1).unwrap_or(0);
                if current_index != cas {
                    return Ok(false);
                }
            }
            check_references(&entry, &snap.entries).map_err(ConfigError::Invalid)?;
            self.check_gateway_services(&entry).await?;
            let mut compares = vec![Compare::ModRevision {
                key: INDEX.to_owned(),
                revision: snap.index_rev,
            }];
            if let Some(cas) = cas {
                compares.push(Compare::ModRevision {
                    key: entry_key.clone(),
                    revision: cas,
                });
            }
            let txn = Txn {
                compares,
                ops: vec![
                    Op::Put {
                        key: entry_key.clone(),
                        value: value.clone(),
                    },
                    Op::Put {
                        key: INDEX.to_owned(),
                        value: Vec::new(),
                    },
                ],
            };
            if self.store.txn(txn).await?.succeeded {
                return Ok(true);
            }
        }
        Err(ConfigError::Contended)
    }

    /// A gateway entry may only name services the catalog has (Consul's ingress and
    /// terminating gateways route to registered services): each unknown one is an error naming
    /// its field.
    async fn check_gateway_services(&self, entry: &ConfigEntry) -> Result<(), ConfigError> {
        let named = match entry {
            ConfigEntry::IngressGateway(g) => g.named_services(),
            ConfigEntry::TerminatingGateway(g) => g.named_services(),
            _ => return Ok(()),
        };
        if named.is_empty() {
            return Ok(());
        }
        let (records, _) = self.store.range(crate::catalog::keys::SERVICES).await?;
        let known: std::collections::BTreeSet<String> = records
            .iter()
            .filter_map(|kv| serde_json::from_slice::<plexus_api::AgentService>(&kv.value).ok())
            .map(|service| service.service)
            .collect();
        let problems: Vec<EntryError> = named
            .into_iter()
            .filter(|(_, name)| !known.contains(*name))
            .map(|(field, name)| {
                EntryError::new(
                    field,
                    format!("unknown service {name:?}: no instance of it is registered"),
                )
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(EntryErrors(problems)))
        }
    }

    /// Deletes an entry (absent: nothing happens). Refused when a remaining splitter or router
    /// would name a subset no longer defined.
    pub async fn delete(&self, kind: Kind, name: &str) -> Result<(), ConfigError> {
        if kind == Kind::ServiceIntentions {
            return Ok(self.intentions()?.delete_destination(name).await?);
        }
        for _ in 0..MAX_ATTEMPTS {
            let snap = self.snapshot().await?;
            let remaining: Vec<ConfigEntry> = snap
                .entries
                .iter()
                .filter(|e| !(e.kind() == kind && e.name() == name))
                .cloned()
                .collect();
            if remaining.len() == snap.entries.len() {
                return Ok(());
            }
            let mut problems = Vec::new();
            for other in &remaining {
                if let Err(errs) = check_references(other, &remaining) {
                    for e in errs.0 {
                        problems.push(EntryError::new(
                            "",
                            format!(
                                "{} {:?} still needs it ({}: {})",
                                other.kind(),
                                other.name(),
                                e.field,
                                e.message
                            ),
                        ));
                    }
                }
            }
            if !problems.is_empty() {
                return Err(ConfigError::Invalid(EntryErrors(problems)));
            }
            let txn = Txn {
                compares: vec![Compare::ModRevision {
                    key: INDEX.to_owned(),
                    revision: snap.index_rev,
                }],
                ops: vec![
                    Op::Delete {
                        key: key(kind, name),
                    },
                    Op::Put {
                        key: INDEX.to_owned(),
                        value: Vec::new(),
                    },
                ],
            };
            if self.store.txn(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(ConfigError::Contended)
    }
}
