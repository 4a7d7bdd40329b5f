//! `/v1/txn`: Consul's transactions over the KV store, all or nothing.
//!
//! A transaction is read, evaluated and committed as one store [`Txn`]:
//!
//! 1. every key an operation names (and every key under a `get-tree`/`delete-tree` prefix) is
//!    read with its modify revision;
//! 2. the operations run in order against that snapshot in memory; the first failing check
//!    (`cas`, `check-index`, `check-not-exists`, `delete-cas`, `get` of a missing key) ends the
//!    transaction with `Errors: [{OpIndex, What}]` and nothing is written;
//! 3. the writes (one per key, the last value wins, as etcd needs) commit in one store
//!    transaction guarded by the modify revision of every key read. When another writer got in
//!    between, the guard fails and the whole transaction is evaluated again from step 1.
//!
//! So a committed transaction is as if it ran alone, at one store revision. Not yet: the `Node`,
//! `Service` and `Check` operations and the KV verbs `lock`, `unlock` and `check-session`
//! (refused with 400 naming the operation). A `get-tree` does not see a key created under its
//! prefix after the read (only the keys it read are guarded).

pub mod api;

use std::collections::BTreeMap;
use std::sync::Arc;

use plexus_api::KvPair;

use crate::kv::{self, KvError};
use crate::store::{Compare, Op, Store, Txn};

/// Consul's limit on operations per transaction.
pub const MAX_OPS: usize = 64;
/// How often a transaction is re-evaluated after losing a race before giving up (503).
const RACE_RETRIES: usize = 32;

/// A KV verb of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Write the value.
    Set,
    /// Write when the key's modify index is `index` (0: absent).
    Cas,
    /// Read the key (fails when absent).
    Get,
    /// Read every key under the prefix.
    GetTree,
    /// Fail unless the key's modify index is `index`.
    CheckIndex,
    /// Fail when the key exists.
    CheckNotExists,
    /// Delete the key.
    Delete,
    /// Delete when the key's modify index is `index`.
    DeleteCas,
    /// Delete every key under the prefix.
    DeleteTree,
}

impl Verb {
    /// Parses Consul's verb name; `Err` names the verbs not supported.
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "set" => Verb::Set,
            "cas" => Verb::Cas,
            "get" => Verb::Get,
            "get-tree" => Verb::GetTree,
            "check-index" => Verb::CheckIndex,
            "check-not-exists" => Verb::CheckNotExists,
            "delete" => Verb::Delete,
            "delete-cas" => Verb::DeleteCas,
            "delete-tree" => Verb::DeleteTree,
            "lock" | "unlock" | "check-session" => {
                return Err(format!(
                    "KV verb {text:?} is not supported in transactions yet"
                ));
            }
            other => return Err(format!("unknown KV verb {other:?}")),
        })
    }

    /// True when the verb writes.
    pub fn writes(self) -> bool {
        matches!(
            self,
            Verb::Set | Verb::Cas | Verb::Delete | Verb::DeleteCas | Verb::DeleteTree
        )
    }

    fn is_tree(self) -> bool {
        matches!(self, Verb::GetTree | Verb::DeleteTree)
    }
}

/// One KV operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvOp {
    /// What to do.
    pub verb: Verb,
    /// The key (a prefix for the tree verbs).
    pub key: String,
    /// The value to write.
    pub value: Vec<u8>,
    /// Flags to write.
    pub flags: u64,
    /// The modify index the `cas`/`check-index`/`delete-cas` verbs compare with.
    pub index: u64,
}

/// Why a transaction did not commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnFailure {
    /// The failing operation.
    pub op_index: usize,
    /// What went wrong, as Consul says it.
    pub what: String,
}

/// Why a transaction could not run.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// The store failed.
    #[error("transaction store unavailable")]
    Kv(#[from] KvError),
    /// Other writers kept changing the keys.
    #[error("transaction lost the race {RACE_RETRIES} times")]
    Contended,
}

/// A key as the evaluation sees it.
#[derive(Debug, Clone)]
struct Slot {
    /// Modify revision when read (0: absent): the commit's guard.
    observed: u64,
    /// Create revision when read (0: absent).
    created: u64,
    /// The current (value, flags), `None` when absent.
    current: Option<(Vec<u8>, u64)>,
    /// Changed by this transaction.
    dirty: bool,
}

/// Runs `ops` all or nothing. `Ok(Ok(results))` when committed (or read-only and consistent),
/// `Ok(Err(failure))` when an operation's check failed (nothing written).
pub async fn execute(
    store: &Arc<dyn Store>,
    ops: &[KvOp],
) -> Result<Result<(Vec<KvPair>, u64), TxnFailure>, TxnError> {
    for _ in 0..RACE_RETRIES {
        let mut slots = read(store, ops).await?;
        let wanted = match evaluate(ops, &mut slots) {
            Ok(wanted) => wanted,
            Err(failure) => return Ok(Err(failure)),
        };
        let mut compares = Vec::new();
        let mut writes = Vec::new();
        for (key, slot) in &slots {
            let store_key = format!("{}{key}", kv::PREFIX);
            compares.push(Compare::ModRevision {
                key: store_key.clone(),
                revision: slot.observed,
            });
            if !slot.dirty {
                continue;
            }
            match &slot.current {
                Some((value, flags)) => writes.push(Op::Put {
                    key: store_key,
                    value: kv::encode(*flags, value),
                }),
                None => {
                    writes.push(Op::Delete { key: store_key });
                    writes.push(Op::Delete {
                        key: kv::lock::lock_key(key),
                    });
                }
            }
        }
        let result = store
            .txn(Txn {
                compares,
                ops: writes,
            })
            .await
            .map_err(KvError::from)?;
        if result.succeeded {
            let results = wanted
                .into_iter()
                .map(|(key, with_value)| render(&key, &slots[&key], with_value, result.revision))
                .collect();
            return Ok(Ok((results, result.revision)));
        }
        tracing::debug!("transaction lost a race; evaluating again");
    }
    Err(TxnError::Contended)
}

/// Reads every key the operations name.
async fn read(store: &Arc<dyn Store>, ops: &[KvOp]) -> Result<BTreeMap<String, Slot>, KvError> {
    let mut slots = BTreeMap::new();
    for op in ops {
        if op.verb.is_tree() {
            let (records, _) = store.range(&format!("{}{}", kv::PREFIX, op.key)).await?;
            for record in records {
                if record.key.ends_with(kv::lock::LOCK_SUFFIX) {
                    continue;
                }
                let entry = kv::decode(record)?;
                slots.insert(entry.key.clone(), slot_of(Some(entry)));
            }
        } else if !slots.contains_key(&op.key) {
            let record = store.get(&format!("{}{}", kv::PREFIX, op.key)).await?;
            let entry = record.map(kv::decode).transpose()?;
            slots.insert(op.key.clone(), slot_of(entry));
        }
    }
    Ok(slots)
}

fn slot_of(entry: Option<kv::Entry>) -> Slot {
    match entry {
        Some(entry) => Slot {
            observed: entry.modify_index,
            created: entry.create_index,
            current: Some((entry.value, entry.flags)),
            dirty: false,
        },
        None => Slot {
            observed: 0,
            created: 0,
            current: None,
            dirty: false,
        },
    }
}

/// Runs the operations against the snapshot. Returns the keys to answer with (and whether
/// with their value), in order.
fn evaluate(
    ops: &[KvOp],
    slots: &mut BTreeMap<String, Slot>,
) -> Result<Vec<(String, bool)>, TxnFailure> {
    let mut wanted = Vec::new();
    for (op_index, op) in ops.iter().enumerate() {
        let fail = |what: String| TxnFailure { op_index, what };
        if op.verb.is_tree() {
            let keys: Vec<String> = slots
                .iter()
                .filter(|(k, s)| k.starts_with(&op.key) && s.current.is_some())
                .map(|(k, _)| k.clone())
                .collect();
            for key in keys {
                if op.verb == Verb::DeleteTree {
                    if let Some(slot) = slots.get_mut(&key) {
                        slot.current = None;
                        slot.dirty = true;
                    }
                } else {
                    wanted.push((key, true));
                }
            }
            continue;
        }
        let Some(slot) = slots.get_mut(&op.key) else {
            return Err(fail(format!("key {:?} was not read", op.key)));
        };
        // The modify index the key has now within this transaction (a key written earlier in
        // it has no index yet: it never matches a non-zero one).
        let index = match (&slot.current, slot.dirty) {
            (None, _) => 0,
            (Some(_), true) => u64::MAX,
            (Some(_), false) => slot.observed,
        };
        match op.verb {
            Verb::Set => {
                slot.current = Some((op.value.clone(), op.flags));
                slot.dirty = true;
                wanted.push((op.key.clone(), false));
            }
            Verb::Cas => {
                if index != op.index {
                    return Err(fail(format!(
                        "failed to set key {:?}, index is stale",
                        op.key
                    )));
                }
                slot.current = Some((op.value.clone(), op.flags));
                slot.dirty = true;
                wanted.push((op.key.clone(), false));
            }
            Verb::Get => {
                if slot.current.is_none() {
                    return Err(fail(format!("key {:?} doesn't exist", op.key)));
                }
                wanted.push((op.key.clone(), true));
            }
            Verb::CheckIndex => {
                if index != op.index {
                    return Err(fail(format!(
                        "current modify index {index} != {}",
                        op.index
                    )));
                }
                wanted.push((op.key.clone(), false));
            }
            Verb::CheckNotExists => {
                if slot.current.is_some() {
                    return Err(fail(format!("key {:?} exists", op.key)));
                }
            }
            Verb::Delete => {
                slot.current = None;
                slot.dirty = true;
            }
            Verb::DeleteCas => {
                if index != op.index {
                    return Err(fail(format!(
                        "failed to delete key {:?}, index is stale",
                        op.key
                    )));
                }
                slot.current = None;
                slot.dirty = true;
            }
            Verb::GetTree | Verb::DeleteTree => {}
        }
    }
    Ok(wanted)
}

/// A result entry: the key as it is after the commit at `revision`.
fn render(key: &str, slot: &Slot, with_value: bool, revision: u64) -> KvPair {
    use base64::Engine;
    let (value, flags) = slot.current.clone().unwrap_or_default();
    let (create_index, modify_index) = if slot.dirty {
        let created = if slot.created == 0 {
            revision
        } else {
            slot.created
        };
        (created, revision)
    } else {
        (slot.created, slot.observed)
    };
    KvPair {
        lock_index: 0,
        key: key.to_owned(),
        flags,
        value: (with_value && !value.is_empty())
            .then(|| base64::engine::general_purpose::STANDARD.encode(&value)),
        create_index,
        modify_index,
        session: None,
    }
}

#[cfg(test)]
mod tests;
