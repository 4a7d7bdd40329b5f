//! Consul's sessions: a named claim of a node that KV locks (`?acquire=`) hang on.
//!
//! A session is one store record `sessions/<id>` (JSON [`Session`]). With a `TTL` the record is
//! bound to a store lease of that TTL: `renew` keeps the lease alive, and when the holder stops
//! renewing the store deletes the record (etcd through its own leases). A session also ends when
//! it is destroyed or when its node's liveness lease (`liveness/nodes/<node>`, remote agents)
//! is lost. Whatever ends it, the [`reaper`] (a watch on `sessions/`) applies the session's
//! behavior to the locks it held: `release` clears their holder, `delete` deletes the keys; both
//! start the session's lock-delay, during which nobody may acquire those keys.
//!
//! The lock state of a key lives beside it (see [`crate::kv`]), carrying the holder's behavior
//! and lock-delay, so a lock whose session vanished while no reaper ran is still handled when one
//! starts (it sweeps orphaned locks first).

pub mod api;
pub mod reaper;

use std::sync::Arc;
use std::time::Duration;

use plexus_api::GoDuration;
use serde::{Deserialize, Serialize};

use crate::kv::Kv;
use crate::store::{LeaseId, Op, Store, StoreError, Txn};

/// Store prefix of session records.
pub const PREFIX: &str = "sessions/";
/// Default lock-delay (Consul's).
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
/// Longest lock-delay (Consul's).
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// Shortest and longest TTL (Consul's defaults).
pub const MIN_TTL: Duration = Duration::from_secs(10);
/// Longest TTL.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);
/// The node check name Consul sessions default to; here it stands for the node's liveness.
pub const SERF_HEALTH: &str = "serfHealth";

/// What happens to a session's locks when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Behavior {
    /// The locks are released (holder cleared, value kept).
    #[default]
    Release,
    /// The locked keys are deleted.
    Delete,
}

/// A service check a session depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceCheck {
    /// The check's id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Namespace (always empty: no namespaces).
    pub namespace: String,
}

/// A session as stored and as the API shows it (`CreateIndex`/`ModifyIndex` come from the
/// store record's revisions; `lease` is ours and never shown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Session {
    /// UUID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Free-form name.
    pub name: String,
    /// The node it belongs to.
    pub node: String,
    /// Lock-delay in nanoseconds (as Consul shows it).
    pub lock_delay: u64,
    /// What happens to its locks when it ends.
    pub behavior: Behavior,
    /// `""` or a Go duration such as `"15s"`.
    #[serde(rename = "TTL")]
    pub ttl: String,
    /// Node checks it depends on.
    pub node_checks: Vec<String>,
    /// Service checks it depends on.
    pub service_checks: Vec<ServiceCheck>,
    /// The index that created it.
    #[serde(default)]
    pub create_index: u64,
    /// The index that last changed it.
    #[serde(default)]
    pub modify_index: u64,
    /// The store lease its record is bound to (TTL sessions; stored beside the session, never
    /// shown).
    #[serde(skip)]
    pub lease: Option<LeaseId>,
}

/// The stored record: the session and its lease.
#[derive(Serialize)]
struct StoredRef<'a> {
    #[serde(flatten)]
    session: &'a Session,
    #[serde(rename = "Lease")]
    lease: Option<LeaseId>,
}

#[derive(Deserialize)]
struct Stored {
    #[serde(flatten)]
    session: Session,
    #[serde(rename = "Lease", default)]
    lease: Option<LeaseId>,
}

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The store failed.
    #[error("session store unavailable")]
    Store(#[from] StoreError),
    /// The KV store failed while handling the session's locks.
    #[error("cannot update the session's locks")]
    Kv(#[from] crate::kv::KvError),
    /// A stored session record did not decode.
    #[error("session record {id:?} is malformed")]
    Corrupt {
        /// The session id.
        id: String,
    },
}

fn decode(record: &crate::store::KeyValue) -> Result<Session, SessionError> {
    let id = record.key.strip_prefix(PREFIX).unwrap_or(&record.key);
    let stored: Stored = serde_json::from_slice(&record.value)
        .map_err(|_| SessionError::Corrupt { id: id.to_owned() })?;
    let mut session = stored.session;
    session.lease = stored.lease;
    session.create_index = record.create_revision;
    session.modify_index = record.mod_revision;
    Ok(session)
}

/// Parses a lock-delay as Consul does: a Go duration string, or a number (below 1000 it counts
/// seconds, otherwise nanoseconds).
pub fn parse_lock_delay(value: &serde_json::Value) -> Result<Duration, String> {
    let delay = match value {
        serde_json::Value::String(text) => GoDuration::parse(text)
            .map_err(|e| format!("invalid LockDelay {text:?}: {e}"))?
            .get(),
        serde_json::Value::Number(n) => match n.as_u64() {
            Some(n) if n < 1000 => Duration::from_secs(n),
            Some(n) => Duration::from_nanos(n),
            None => return Err(format!("invalid LockDelay {n}: expected a duration")),
        },
        serde_json::Value::Null => DEFAULT_LOCK_DELAY,
        other => return Err(format!("invalid LockDelay {other}: expected a duration")),
    };
    if delay > MAX_LOCK_DELAY {
        return Err(format!(
            "LockDelay {delay:?} is longer than the limit of {MAX_LOCK_DELAY:?}"
        ));
    }
    Ok(delay)
}

/// Parses a session TTL (`""`: none), within [`MIN_TTL`]..=[`MAX_TTL`].
pub fn parse_ttl(text: &str) -> Result<Option<Duration>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let ttl = GoDuration::parse(text)
        .map_err(|e| format!("invalid TTL {text:?}: {e}"))?
        .get();
    if ttl.is_zero() {
        return Ok(None);
    }
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(format!(
            "invalid TTL {text:?}: must be between {}s and {}s",
            MIN_TTL.as_secs(),
            MAX_TTL.as_secs()
        ));
    }
    Ok(Some(ttl))
}

/// Sessions over a [`Store`].
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn Store>,
    kv: Kv,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            kv: Kv::new(Arc::clone(&store)),
            store,
        }
    }

    /// The KV store the sessions' locks live in.
    pub fn kv(&self) -> &Kv {
        &self.kv
    }

    /// Stores a new session (its `id` chosen by the caller), bound to a lease of `ttl` when given.
    /// Returns the revision.
    pub async fn create(
        &self,
        mut session: Session,
        ttl: Option<Duration>,
    ) -> Result<u64, SessionError> {
        let key = format!("{PREFIX}{}", session.id);
        let op = match ttl {
            Some(ttl) => {
                let lease = self.store.lease_grant(ttl).await?;
                session.lease = Some(lease);
                Op::PutLeased {
                    key,
                    value: encode(&session),
                    lease,
                }
            }
            None => Op::Put {
                key,
                value: encode(&session),
            },
        };
        let result = self
            .store
            .txn(Txn {
                compares: Vec::new(),
                ops: vec![op],
            })
            .await?;
        Ok(result.revision)
    }

    /// One session, with the revision the read reflects.
    pub async fn get(&self, id: &str) -> Result<(Option<Session>, u64), SessionError> {
        let (record, revision) = self.store.get_at(&format!("{PREFIX}{id}")).await?;
        Ok((record.as_ref().map(decode).transpose()?, revision))
    }

    /// Every session, sorted by id, with the revision the read reflects.
    pub async fn list(&self) -> Result<(Vec<Session>, u64), SessionError> {
        let (records, revision) = self.store.range(PREFIX).await?;
        let sessions = records.iter().map(decode).collect::<Result<_, _>>()?;
        Ok((sessions, revision))
    }

    /// Renews a TTL session's lease. `None` when the session is gone (or its lease expired).
    pub async fn renew(&self, id: &str) -> Result<Option<Session>, SessionError> {
        let (session, _) = self.get(id).await?;
        let Some(session) = session else {
            return Ok(None);
        };
        if let Some(lease) = session.lease
            && self.store.lease_keep_alive(lease).await?.is_none()
        {
            return Ok(None);
        }
        Ok(Some(session))
    }

    /// Ends a session: deletes its record (revoking its lease) and applies its behavior to the
    /// locks it holds. True when it existed.
    pub async fn destroy(&self, id: &str) -> Result<(bool, u64), SessionError> {
        let (session, _) = self.get(id).await?;
        let Some(session) = session else {
            let revision = self.store.current_revision().await?;
            return Ok((false, revision));
        };
        let result = self
            .store
            .txn(Txn {
                compares: Vec::new(),
                ops: vec![Op::Delete {
                    key: format!("{PREFIX}{id}"),
                }],
            })
            .await?;
        if let Some(lease) = session.lease {
            self.store.lease_revoke(lease).await?;
        }
        let revision = self
            .kv
            .invalidate_locks(|holder| holder == id)
            .await?
            .max(result.revision);
        Ok((true, revision))
    }
}

fn encode(session: &Session) -> Vec<u8> {
    // A struct of strings and numbers always serialises.
    serde_json::to_vec(&StoredRef {
        session,
        lease: session.lease,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests;
