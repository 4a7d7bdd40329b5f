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
//! So a committed transaction is as if it ran alone, at one store revision. The lock verbs
//! (`lock`, `unlock`, `check-session`) read the key's lock record (`kv/<key>\0lock`) and the
//! session's record too, guard both, and follow `?acquire=`/`?release=`: a lock is taken when it
//! is free (and out of its lock-delay) or already the session's. The `Node`, `Service` and
//! `Check` operations ([`catalog`]) read, guard and write catalog records in the same store
//! transaction. A `get-tree` does not see a key created under its prefix after the read (only
//! the keys it read are guarded).

pub mod api;
pub mod catalog;

use std::collections::BTreeMap;
use std::sync::Arc;

use plexus_api::KvPair;

use crate::kv::lock::LockState;
use crate::kv::{self, KvError};
use crate::session::{self, Session};
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
    /// Take the key's lock for `session` and write the value.
    Lock,
    /// Free the key's lock held by `session` and write the value.
    Unlock,
    /// Fail unless `session` holds the key's lock.
    CheckSession,
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
            "lock" => Verb::Lock,
            "unlock" => Verb::Unlock,
            "check-session" => Verb::CheckSession,
            other => return Err(format!("unknown KV verb {other:?}")),
        })
    }

    /// True when the verb writes.
    pub fn writes(self) -> bool {
        matches!(
            self,
            Verb::Set
                | Verb::Cas
                | Verb::Delete
                | Verb::DeleteCas
                | Verb::DeleteTree
                | Verb::Lock
                | Verb::Unlock
        )
    }

    /// True for the verbs that take a session.
    pub fn needs_session(self) -> bool {
        matches!(self, Verb::Lock | Verb::Unlock | Verb::CheckSession)
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
    /// The session of the lock verbs.
    pub session: String,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum TxnOp {
    /// A KV operation.
    Kv(KvOp),
    /// A `Node`, `Service` or `Check` operation.
    Catalog(Box<catalog::CatalogOp>),
}

/// One result of a committed transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum TxnResult {
    /// A key.
    Kv(KvPair),
    /// `{"Node"|"Service"|"Check": record}`.
    Catalog(serde_json::Value),
}

/// What a result row is made of.
enum Wanted {
    Kv(String, bool),
    Record(String, &'static str),
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
    /// The lock record, when a lock verb names the key: its state now and its modify revision
    /// when read (0: absent).
    lock: Option<(LockState, u64)>,
    /// The lock state changed.
    lock_dirty: bool,
}

/// A session a lock verb names, as read: the record (if any) and its modify revision.
type SessionSlots = BTreeMap<String, (Option<Session>, u64)>;

/// Runs `ops` all or nothing. `Ok(Ok(results))` when committed (or read-only and consistent),
/// `Ok(Err(failure))` when an operation's check failed (nothing written).
pub async fn execute(
    store: &Arc<dyn Store>,
    ops: &[KvOp],
) -> Result<Result<(Vec<KvPair>, u64), TxnFailure>, TxnError> {
    let ops: Vec<TxnOp> = ops.iter().cloned().map(TxnOp::Kv).collect();
    Ok(execute_ops(store, &ops).await?.map(|(results, revision)| {
        let pairs = results
            .into_iter()
            .filter_map(|r| match r {
                TxnResult::Kv(pair) => Some(pair),
                TxnResult::Catalog(_) => None,
            })
            .collect();
        (pairs, revision)
    }))
}

/// Runs KV and catalog operations all or nothing, as [`execute`] does for KV alone.
pub async fn execute_ops(
    store: &Arc<dyn Store>,
    ops: &[TxnOp],
) -> Result<Result<(Vec<TxnResult>, u64), TxnFailure>, TxnError> {
    for _ in 0..RACE_RETRIES {
        let (mut slots, sessions, mut recs) = read(store, ops).await?;
        let wanted = match evaluate(ops, &mut slots, &sessions, &mut recs, now_ms()) {
            Ok(wanted) => wanted,
            Err(failure) => return Ok(Err(failure)),
        };
        let mut compares = Vec::new();
        let mut writes = Vec::new();
        for (key, rec) in &recs {
            compares.push(Compare::ModRevision {
                key: key.clone(),
                revision: rec.observed,
            });
            if rec.dirty {
                writes.push(match &rec.current {
                    Some(value) => Op::Put {
                        key: key.clone(),
                        value: serde_json::to_vec(value).unwrap_or_default(),
                    },
                    None => Op::Delete { key: key.clone() },
                });
            }
        }
        for (id, (_, revision)) in &sessions {
            compares.push(Compare::ModRevision {
                key: format!("{}{id}", session::PREFIX),
                revision: *revision,
            });
        }
        for (key, slot) in &slots {
            let store_key = format!("{}{key}", kv::PREFIX);
            compares.push(Compare::ModRevision {
                key: store_key.clone(),
                revision: slot.observed,
            });
            if let Some((state, revision)) = &slot.lock {
                compares.push(Compare::ModRevision {
                    key: kv::lock::lock_key(key),
                    revision: *revision,
                });
                if slot.lock_dirty && slot.current.is_some() {
                    writes.push(Op::Put {
                        key: kv::lock::lock_key(key),
                        value: serde_json::to_vec(state).unwrap_or_default(),
                    });
                }
            }
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
                .filter_map(|wanted| match wanted {
                    Wanted::Kv(key, with_value) => Some(TxnResult::Kv(render(
                        &key,
                        &slots[&key],
                        with_value,
                        result.revision,
                    ))),
                    Wanted::Record(key, kind) => recs
                        .get(&key)
                        .map(|rec| TxnResult::Catalog(catalog::render(kind, rec, result.revision))),
                })
                .collect();
            return Ok(Ok((results, result.revision)));
        }
        tracing::debug!("transaction lost a race; evaluating again");
    }
    Err(TxnError::Contended)
}

/// Reads every key the operations name, with the lock records and sessions of the lock verbs.
#[allow(clippy::type_complexity)]
async fn read(
    store: &Arc<dyn Store>,
    ops: &[TxnOp],
) -> Result<
    (
        BTreeMap<String, Slot>,
        SessionSlots,
        BTreeMap<String, catalog::Rec>,
    ),
    KvError,
> {
    let mut slots: BTreeMap<String, Slot> = BTreeMap::new();
    let mut sessions = SessionSlots::new();
    let mut recs = BTreeMap::new();
    for op in ops {
        let op = match op {
            TxnOp::Kv(op) => op,
            TxnOp::Catalog(op) => {
                catalog::read(store.as_ref(), op, &mut recs).await?;
                continue;
            }
        };
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
        if op.verb.needs_session() {
            if let Some(slot) = slots.get_mut(&op.key)
                && slot.lock.is_none()
            {
                slot.lock = Some(match store.get(&kv::lock::lock_key(&op.key)).await? {
                    Some(record) => (
                        serde_json::from_slice(&record.value).unwrap_or_default(),
                        record.mod_revision,
                    ),
                    None => (LockState::default(), 0),
                });
            }
            if !sessions.contains_key(&op.session) {
                let record = store
                    .get(&format!("{}{}", session::PREFIX, op.session))
                    .await?;
                let read = match record {
                    Some(record) => (
                        serde_json::from_slice::<Session>(&record.value).ok(),
                        record.mod_revision,
                    ),
                    None => (None, 0),
                };
                sessions.insert(op.session.clone(), read);
            }
        }
    }
    Ok((slots, sessions, recs))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn slot_of(entry: Option<kv::Entry>) -> Slot {
    match entry {
        Some(entry) => Slot {
            observed: entry.modify_index,
            created: entry.create_index,
            current: Some((entry.value, entry.flags)),
            dirty: false,
            lock: None,
            lock_dirty: false,
        },
        None => Slot {
            observed: 0,
            created: 0,
            current: None,
            dirty: false,
            lock: None,
            lock_dirty: false,
        },
    }
}

/// Runs the operations against the snapshot. Returns the keys to answer with (and whether
/// with their value), in order.
fn evaluate(
    ops: &[TxnOp],
    slots: &mut BTreeMap<String, Slot>,
    sessions: &SessionSlots,
    recs: &mut BTreeMap<String, catalog::Rec>,
    now_ms: u64,
) -> Result<Vec<Wanted>, TxnFailure> {
    let mut wanted = Vec::new();
    for (op_index, op) in ops.iter().enumerate() {
        let op = match op {
            TxnOp::Kv(op) => op,
            TxnOp::Catalog(op) => {
                if let Some(key) = catalog::evaluate(op_index, op, recs)? {
                    wanted.push(Wanted::Record(key, op.kind()));
                }
                continue;
            }
        };
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
                    wanted.push(Wanted::Kv(key, true));
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
                wanted.push(Wanted::Kv(op.key.clone(), false));
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
                wanted.push(Wanted::Kv(op.key.clone(), false));
            }
            Verb::Get => {
                if slot.current.is_none() {
                    return Err(fail(format!("key {:?} doesn't exist", op.key)));
                }
                wanted.push(Wanted::Kv(op.key.clone(), true));
            }
            Verb::CheckIndex => {
                if index != op.index {
                    return Err(fail(format!(
                        "current modify index {index} != {}",
                        op.index
                    )));
                }
                wanted.push(Wanted::Kv(op.key.clone(), false));
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
            Verb::Lock => {
                let Some((Some(holder), _)) = sessions.get(&op.session) else {
                    return Err(fail(format!("invalid session {:?}", op.session)));
                };
                let Some((state, _)) = slot.lock.as_mut() else {
                    return Err(fail(format!("lock of {:?} was not read", op.key)));
                };
                if state.session != op.session {
                    if !state.session.is_empty() || state.delay_until_ms > now_ms {
                        return Err(fail(format!(
                            "failed to lock key {:?}, lock is already held",
                            op.key
                        )));
                    }
                    *state = LockState {
                        session: op.session.clone(),
                        lock_index: state.lock_index + 1,
                        behavior: holder.behavior,
                        lock_delay_ms: std::time::Duration::from_nanos(holder.lock_delay)
                            .as_millis() as u64,
                        delay_until_ms: 0,
                    };
                    slot.lock_dirty = true;
                }
                slot.current = Some((op.value.clone(), op.flags));
                slot.dirty = true;
                wanted.push(Wanted::Kv(op.key.clone(), false));
            }
            Verb::Unlock => {
                let held = slot
                    .lock
                    .as_ref()
                    .is_some_and(|(state, _)| state.session == op.session);
                if !held || slot.current.is_none() {
                    return Err(fail(format!(
                        "failed to unlock key {:?}, lock isn't held, or is held by another session",
                        op.key
                    )));
                }
                if let Some((state, _)) = slot.lock.as_mut() {
                    state.session.clear();
                }
                slot.lock_dirty = true;
                slot.current = Some((op.value.clone(), op.flags));
                slot.dirty = true;
                wanted.push(Wanted::Kv(op.key.clone(), false));
            }
            Verb::CheckSession => {
                let holder = slot
                    .lock
                    .as_ref()
                    .map(|(state, _)| state.session.clone())
                    .unwrap_or_default();
                if slot.current.is_none() || holder != op.session {
                    return Err(fail(format!(
                        "failed session check for key {:?}, current session {holder:?} != {:?}",
                        op.key, op.session
                    )));
                }
                wanted.push(Wanted::Kv(op.key.clone(), false));
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
    let (lock_index, session) = match &slot.lock {
        Some((state, _)) => (
            state.lock_index,
            (!state.session.is_empty()).then(|| state.session.clone()),
        ),
        None => (0, None),
    };
    KvPair {
        lock_index,
        key: key.to_owned(),
        flags,
        value: (with_value && !value.is_empty())
            .then(|| base64::engine::general_purpose::STANDARD.encode(&value)),
        create_index,
        modify_index,
        session,
    }
}

#[cfg(test)]
mod tests;
