//! The event mesh's presence monitor: which app instances are connected, which routes they serve,
//! which topic-partition each owns; joins, leaves and route changes pushed to every app of the
//! same group over a websocket (`/ws/presence/<origin>`, see [`ws`]).
//!
//! State lives in the store so that several control-plane replicas over one store agree:
//!
//! | key | value |
//! | --- | --- |
//! | `presence/apps/<origin>` | [`AppRecord`] (JSON): the peer and the replica holding its connection |
//! | `presence/topics/<topic>` | the owning origin |
//! | `presence/replicas/<id>` | [`ReplicaRecord`] (JSON): when that replica last said it was alive |
//!
//! Every write is a compare-and-set transaction on `ModRevision`, so two replicas can never hand
//! one topic to two apps: the second create of `presence/topics/<t>` fails its compare and that
//! replica picks another topic.
//!
//! Liveness (until the store has leases): an app is alive while its websocket is open and answers
//! pings (a closed socket, as after `kill -9`, is noticed at once; a silent one after
//! [`PresenceConfig::timeout`]); its records are removed when the session ends. A replica that
//! holds sessions rewrites its own record every [`PresenceConfig::heartbeat`]; every replica
//! removes the app records of replicas that stayed silent longer than
//! [`PresenceConfig::replica_timeout`] (a crashed replica, or the previous run of this one).
//! Once the store has leases, each app record can be bound to a lease instead.
//!
//! Each replica turns store changes into [`GroupEvent`]s with one watcher task (re-read on every
//! revision, diffed against the last view); sessions subscribe to those.

pub mod topics;
pub mod ws;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plexus_api::presence::Peer;
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, broadcast};

use crate::store::{Compare, KeyValue, Op, Store, StoreError, Txn};

const APPS: &str = "presence/apps/";
const TOPICS: &str = "presence/topics/";
const REPLICAS: &str = "presence/replicas/";

/// Timings of the presence monitor.
#[derive(Debug, Clone, Copy)]
pub struct PresenceConfig {
    /// How often the server pings each app (default 1 s).
    pub ping_interval: Duration,
    /// An app that sent nothing (not even a pong) for this long is dropped (default 3 s).
    pub timeout: Duration,
    /// How often a replica holding sessions refreshes its record (default 2 s).
    pub heartbeat: Duration,
    /// A replica silent for this long has its apps removed (default 10 s).
    pub replica_timeout: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            heartbeat: Duration::from_secs(2),
            replica_timeout: Duration::from_secs(10),
        }
    }
}

/// One connected app, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// The app instance.
    #[serde(flatten)]
    pub peer: Peer,
    /// The control-plane replica holding its connection.
    pub replica: String,
}

/// A replica's liveness record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// Milliseconds since the Unix epoch of the last refresh.
    pub alive_at_ms: u64,
}

/// A change in the set of apps, for the sessions of one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// An app appeared.
    Join(Peer),
    /// An app went away.
    Leave(Peer),
    /// An app's routes changed.
    Routes(Peer),
}

/// Why a presence operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The claim was refused (the message is sent to the app).
    #[error("{0}")]
    Refused(String),
    /// The store failed.
    #[error("presence store access failed")]
    Store(#[from] StoreError),
}

/// What a session holds after a successful claim: the revisions of the records it wrote.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The record as stored.
    pub record: AppRecord,
    /// `mod_revision` of `presence/apps/<origin>`.
    pub app_revision: u64,
    /// `mod_revision` of `presence/topics/<topic>`.
    pub topic_revision: u64,
}

struct Inner {
    store: Arc<dyn Store>,
    replica: String,
    config: PresenceConfig,
    events: broadcast::Sender<GroupEvent>,
    sessions: AtomicUsize,
    started: OnceCell<()>,
}

/// The presence monitor of one control-plane replica. Cheap to clone.
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("replica", &self.inner.replica)
            .field("sessions", &self.inner.sessions.load(Ordering::Relaxed))
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn decode<T: for<'de> Deserialize<'de>>(kv: &KeyValue) -> Result<T, StoreError> {
    serde_json::from_slice(&kv.value).map_err(|_| StoreError::Corrupt {
        key: kv.key.clone(),
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

impl Presence {
    /// A presence monitor over `store` with a fresh replica id.
    pub fn new(store: Arc<dyn Store>, config: PresenceConfig) -> Self {
        let replica = format!("replica-{}", std::process::id()) + &format!("-{:x}", now_ms());
        Self {
            inner: Arc::new(Inner {
                store,
                replica,
                config,
                events: broadcast::channel(1024).0,
                sessions: AtomicUsize::new(0),
                started: OnceCell::new(),
            }),
        }
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// The timings.
    pub fn config(&self) -> PresenceConfig {
        self.inner.config
    }

    /// Every connected app, sorted by origin.
    pub async fn apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        let (kvs, _) = self.inner.store.range(APPS).await?;
        kvs.iter().map(decode).collect()
    }

    /// Every owned topic and its owner.
    pub async fn topics(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let (kvs, _) = self.inner.store.range(TOPICS).await?;
        Ok(kvs
            .into_iter()
            .map(|kv| {
                let topic = kv.key.trim_start_matches(TOPICS).to_owned();
                (topic, String::from_utf8_lossy(&kv.value).into_owned())
            })
            .collect())
    }

    /// Starts this replica's watcher and heartbeat tasks once; later calls return at once.
    async fn ensure_started(&self) -> Result<(), StoreError> {
        self.inner
            .started
            .get_or_try_init(|| async {
                let view = self.view().await?;
                let weak = Arc::downgrade(&self.inner);
                tokio::spawn(watch_apps(weak.clone(), view));
                tokio::spawn(heartbeat(weak));
                Ok::<(), StoreError>(())
            })
            .await
            .map(|_| ())
    }

    async fn view(&self) -> Result<BTreeMap<String, Peer>, StoreError> {
        Ok(self
            .apps()
            .await?
            .into_iter()
            .map(|r| (r.peer.origin.clone(), r.peer))
            .collect())
    }

    async fn refresh_replica(&self) -> Result<(), StoreError> {
        let record = ReplicaRecord {
            alive_at_ms: now_ms(),
        };
        let txn = Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: format!("{REPLICAS}{}", self.inner.replica),
                value: encode(&record),
            }],
        };
        self.inner.store.txn(txn).await.map(|_| ())
    }

    /// Registers `peer` (its `topic` is the wanted one, or empty to have one assigned): checks the
    /// claimed topic, assigns the lowest free one otherwise, and writes both records atomically.
    pub async fn claim(&self, mut peer: Peer) -> Result<Claim, PresenceError> {
        let app_key = format!("{APPS}{}", peer.origin);
        let claimed = std::mem::take(&mut peer.topic);
        for _ in 0..32 {
            let existing = self.inner.store.get(&app_key).await?;
            let previous: Option<AppRecord> = existing.as_ref().map(decode).transpose()?;
            let (topic_kvs, _) = self.inner.store.range(TOPICS).await?;
            let owners: BTreeMap<String, &KeyValue> = topic_kvs
                .iter()
                .map(|kv| (kv.key.trim_start_matches(TOPICS).to_owned(), kv))
                .collect();
            let wanted = if claimed.is_empty() {
                previous.as_ref().map(|r| r.peer.topic.clone())
            } else {
                Some(claimed.clone())
            };
            let topic = match wanted {
                Some(topic) => {
                    if topics::topic_index(&topic).is_none() {
                        return Err(PresenceError::Refused(format!(
                            "invalid topic {topic:?}: expected multiplex.NNNN-PPP"
                        )));
                    }
                    if let Some(kv) = owners.get(&topic) {
                        let owner = String::from_utf8_lossy(&kv.value);
                        if owner != peer.origin {
                            return Err(PresenceError::Refused(format!(
                                "topic {topic} is owned by another app ({owner})"
                            )));
                        }
                    }
                    topic
                }
                None => {
                    let taken = owners.keys().cloned().collect();
                    topics::next_free(&taken)
                        .ok_or_else(|| PresenceError::Refused("no free topic left".into()))?
                }
            };
            let topic_key = format!("{TOPICS}{topic}");
            peer.topic = topic.clone();
            let record = AppRecord {
                peer: peer.clone(),
                replica: self.inner.replica.clone(),
            };
            let mut ops = vec![
                Op::Put {
                    key: topic_key.clone(),
                    value: peer.origin.clone().into_bytes(),
                },
                Op::Put {
                    key: app_key.clone(),
                    value: encode(&record),
                },
            ];
            if let Some(old) = previous.filter(|r| r.peer.topic != topic) {
                let old_key = format!("{TOPICS}{}", old.peer.topic);
                if owners
                    .get(&old.peer.topic)
                    .is_some_and(|kv| kv.value == peer.origin.as_bytes())
                {
                    ops.push(Op::Delete { key: old_key });
                }
            }
            let txn = Txn {
                compares: vec![
                    Compare::ModRevision {
                        key: topic_key,
                        revision: owners.get(&topic).map_or(0, |kv| kv.mod_revision),
                    },
                    Compare::ModRevision {
                        key: app_key.clone(),
                        revision: existing.as_ref().map_or(0, |kv| kv.mod_revision),
                    },
                ],
                ops,
            };
            let result = self.inner.store.txn(txn).await?;
            if result.succeeded {
                return Ok(Claim {
                    record,
                    app_revision: result.revision,
                    topic_revision: result.revision,
                });
            }
        }
        Err(PresenceError::Refused(
            "could not claim a topic: too much contention, try again".into(),
        ))
    }

    /// Replaces a claimed app's routes; fails with `Refused` when another session took the
    /// record over.
    pub async fn update_routes(
        &self,
        claim: &mut Claim,
        routes: Vec<String>,
    ) -> Result<(), PresenceError> {
        let mut record = claim.record.clone();
        record.peer.routes = routes;
        let key = format!("{APPS}{}", record.peer.origin);
        let txn = Txn {
            compares: vec![Compare::ModRevision {
                key: key.clone(),
                revision: claim.app_revision,
            }],
            ops: vec![Op::Put {
                key,
                value: encode(&record),
            }],
        };
        let result = self.inner.store.txn(txn).await?;
        if !result.succeeded {
            return Err(PresenceError::Refused(
                "this app's presence record was taken over by another connection".into(),
            ));
        }
        claim.record = record;
        claim.app_revision = result.revision;
        Ok(())
    }

    /// Removes a claim's records (only those still as the claim wrote them) and frees the topic.
    pub async fn release(&self, claim: &Claim) -> Result<(), StoreError> {
        let app_key = format!("{APPS}{}", claim.record.peer.origin);
        let topic_key = format!("{TOPICS}{}", claim.record.peer.topic);
        let both = Txn {
            compares: vec![
                Compare::ModRevision {
                    key: app_key.clone(),
                    revision: claim.app_revision,
                },
                Compare::ModRevision {
                    key: topic_key.clone(),
                    revision: claim.topic_revision,
                },
            ],
            ops: vec![Op::Delete { key: app_key }, Op::Delete { key: topic_key }],
        };
        self.inner.store.txn(both).await?;
        Ok(())
    }

    /// Removes the apps of replicas silent for longer than the replica timeout.
    async fn reap(&self) -> Result<(), StoreError> {
        let (replica_kvs, _) = self.inner.store.range(REPLICAS).await?;
        let limit =
            u64::try_from(self.inner.config.replica_timeout.as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        let mut live = BTreeMap::new();
        let mut stale = BTreeMap::new();
        for kv in &replica_kvs {
            let id = kv.key.trim_start_matches(REPLICAS).to_owned();
            let alive = decode::<ReplicaRecord>(kv).map_or(0, |r| r.alive_at_ms);
            if now.saturating_sub(alive) > limit && id != self.inner.replica {
                stale.insert(id, kv.mod_revision);
            } else {
                live.insert(id, kv.mod_revision);
            }
        }
        let (app_kvs, _) = self.inner.store.range(APPS).await?;
        for kv in &app_kvs {
            let Ok(record) = decode::<AppRecord>(kv) else {
                continue;
            };
            if live.contains_key(&record.replica) {
                continue;
            }
            let replica_key = format!("{REPLICAS}{}", record.replica);
            let topic_key = format!("{TOPICS}{}", record.peer.topic);
            let mut compares = vec![
                Compare::ModRevision {
                    key: kv.key.clone(),
                    revision: kv.mod_revision,
                },
                Compare::ModRevision {
                    key: replica_key,
                    revision: stale.get(&record.replica).copied().unwrap_or(0),
                },
            ];
            let mut ops = vec![Op::Delete {
                key: kv.key.clone(),
            }];
            if let Some(topic) = self.inner.store.get(&topic_key).await?
                && topic.value == record.peer.origin.as_bytes()
            {
                compares.push(Compare::ModRevision {
                    key: topic_key.clone(),
                    revision: topic.mod_revision,
                });
                ops.push(Op::Delete { key: topic_key });
            }
            let result = self.inner.store.txn(Txn { compares, ops }).await?;
            if result.succeeded {
                tracing::info!(origin = %record.peer.origin, replica = %record.replica, "removed app of a silent control-plane replica");
            }
        }
        for (id, revision) in stale {
            let key = format!("{REPLICAS}{id}");
            let txn = Txn {
                compares: vec![Compare::ModRevision {
                    key: key.clone(),
                    revision,
                }],
                ops: vec![Op::Delete { key }],
            };
            self.inner.store.txn(txn).await?;
        }
        Ok(())
    }
}

/// Turns store revisions into group events until the presence monitor is dropped.
async fn watch_apps(inner: std::sync::Weak<Inner>, mut view: BTreeMap<String, Peer>) {
    let Some(mut revisions) = inner.upgrade().map(|i| i.store.revision_watch()) else {
        return;
    };
    while revisions.changed().await.is_ok() {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let presence = Presence { inner: strong };
        let next = match presence.view().await {
            Ok(next) => next,
            Err(error) => {
                tracing::warn!(%error, "presence: cannot read apps");
                continue;
            }
        };
        for (origin, peer) in &next {
            match view.get(origin) {
                None => {
                    let _ = presence.inner.events.send(GroupEvent::Join(peer.clone()));
                }
                Some(old) if old.routes != peer.routes || old.topic != peer.topic => {
                    let _ = presence.inner.events.send(GroupEvent::Routes(peer.clone()));
                }
                Some(_) => {}
            }
        }
        for (origin, peer) in &view {
            if !next.contains_key(origin) {
                let _ = presence.inner.events.send(GroupEvent::Leave(peer.clone()));
            }
        }
        view = next;
    }
}

/// Refreshes this replica's record while it holds sessions and reaps silent replicas' apps.
async fn heartbeat(inner: std::sync::Weak<Inner>) {
    let Some(period) = inner.upgrade().map(|i| i.config.heartbeat) else {
        return;
    };
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let presence = Presence { inner: strong };
        if presence.inner.sessions.load(Ordering::SeqCst) > 0
            && let Err(error) = presence.refresh_replica().await
        {
            tracing::warn!(%error, "presence: cannot refresh this replica's record");
        }
        if let Err(error) = presence.reap().await {
            tracing::warn!(%error, "presence: cannot reap silent replicas");
        }
    }
}

#[cfg(test)]
mod tests;
