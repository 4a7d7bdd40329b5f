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
//! | `catalog/services/event-mesh/<origin>` | the app as a catalog service instance (see [`catalog_service`]) |
//! | `catalog/checks/event-mesh/presence:<origin>` | a passing check: "connected to the presence monitor" |
//!
//! Every write is a compare-and-set transaction on `ModRevision`, so two replicas can never hand
//! one topic to two apps: the second create of `presence/topics/<t>` fails its compare and that
//! replica picks another topic.
//!
//! Liveness is a store lease **per session**: the claim grants a lease of
//! [`PresenceConfig::lease_ttl`] and writes all of the app's records with [`Op::PutLeased`]; the
//! session renews it every third of the TTL while the app answers pings. Keep-alives are not writes
//! (the store revision, every catalog blocking query's index, does not move). A clean leave revokes
//! the lease (one write deleting every record); a `kill -9` of the app closes its socket and does
//! the same at once; a crashed replica stops renewing, so its apps' records vanish one TTL later and
//! their topics are free again. A lease per session rather than per replica: records die with
//! exactly the connection that owns them, a takeover by a reconnect (a put under the new session's
//! lease) unbinds them from the old one, and a replica never has to find and delete other
//! replicas' leftovers. The cost is one keep-alive per app per third of a TTL.
//!
//! Each replica turns store changes into [`GroupEvent`]s with one watcher task (re-read on every
//! revision, diffed against the last view); sessions subscribe to those.

pub mod actuator;
pub mod topics;
pub mod ws;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plexus_api::presence::Peer;
use plexus_api::{AgentService, CheckStatus, HealthCheck};
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, broadcast};

use crate::catalog::keys;
use crate::store::{Compare, KeyValue, LeaseId, Op, Store, StoreError, Txn};

const APPS: &str = "presence/apps/";
const TOPICS: &str = "presence/topics/";
/// The catalog node every event app is listed under.
pub const CATALOG_NODE: &str = "event-mesh";
/// `Meta["plexus-kind"]` of an event app's catalog service.
pub const EVENT_APP_KIND: &str = "event-app";

/// Timings of the presence monitor.
#[derive(Debug, Clone, Copy)]
pub struct PresenceConfig {
    /// How often the server pings each app (default 1 s).
    pub ping_interval: Duration,
    /// An app that sent nothing (not even a pong) for this long is dropped (default 3 s).
    pub timeout: Duration,
    /// TTL of each session's lease: how long an app's records outlive a crashed replica
    /// (default 5 s; renewed every third of it).
    pub lease_ttl: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            lease_ttl: Duration::from_secs(5),
        }
    }
}

impl PresenceConfig {
    /// How often a session renews its lease.
    pub fn keep_alive_interval(&self) -> Duration {
        (self.lease_ttl / 3).max(Duration::from_millis(10))
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
    /// Where the app's actuator listens, as it announced it (host and port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
}

/// An app's actuator address, as announced in its hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Host (an IP address or name).
    pub address: String,
    /// TCP port.
    pub port: u16,
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

/// What a session holds after a successful claim: its lease and the revisions of the records it
/// wrote.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The record as stored.
    pub record: AppRecord,
    /// The session's lease; every record of the app is bound to it.
    pub lease: LeaseId,
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
    since: SystemTime,
    healthy: std::sync::atomic::AtomicBool,
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
                since: SystemTime::now(),
                healthy: std::sync::atomic::AtomicBool::new(true),
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

    /// Starts this replica's watcher task once; later calls return at once.
    async fn ensure_started(&self) -> Result<(), StoreError> {
        self.inner
            .started
            .get_or_try_init(|| async {
                let view = self.view().await?;
                tokio::spawn(watch_apps(Arc::downgrade(&self.inner), view));
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

    /// Registers `peer` (its `topic` is the wanted one, or empty to have one assigned): checks the
    /// claimed topic, assigns the lowest free one otherwise, grants the session's lease and writes
    /// every record of the app atomically under it.
    pub async fn claim(&self, peer: Peer) -> Result<Claim, PresenceError> {
        self.claim_at(peer, None).await
    }

    /// Like [`Presence::claim`], recording where the app's actuator listens (the catalog lists
    /// the app at that address and port).
    pub async fn claim_at(
        &self,
        peer: Peer,
        endpoint: Option<Endpoint>,
    ) -> Result<Claim, PresenceError> {
        let lease = self
            .inner
            .store
            .lease_grant(self.inner.config.lease_ttl)
            .await?;
        let claimed = self.claim_with(peer, endpoint, lease).await;
        if claimed.is_err()
            && let Err(error) = self.inner.store.lease_revoke(lease).await
        {
            tracing::warn!(%error, lease, "presence: cannot revoke the lease of a refused claim");
        }
        claimed
    }

    async fn claim_with(
        &self,
        mut peer: Peer,
        endpoint: Option<Endpoint>,
        lease: LeaseId,
    ) -> Result<Claim, PresenceError> {
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
                endpoint: endpoint.clone(),
            };
            let mut ops = vec![Op::PutLeased {
                key: topic_key.clone(),
                value: peer.origin.clone().into_bytes(),
                lease,
            }];
            ops.extend(record_ops(&record, lease));
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
                    lease,
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
                key,
                revision: claim.app_revision,
            }],
            ops: record_ops(&record, claim.lease),
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

    /// Renews a claim's lease (not a write: the store revision does not move); false when the
    /// lease has expired and the app's records are gone.
    pub async fn keep_alive(&self, claim: &Claim) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .store
            .lease_keep_alive(claim.lease)
            .await?
            .is_some())
    }

    /// Removes a claim's records (only those still bound to its lease: a reconnect that took them
    /// over keeps them) and frees the topic, by revoking the lease.
    pub async fn release(&self, claim: &Claim) -> Result<(), StoreError> {
        self.inner.store.lease_revoke(claim.lease).await
    }
}

/// The writes of an app's own records under `lease`: its presence record, its catalog service
/// instance and its presence check.
fn record_ops(record: &AppRecord, lease: LeaseId) -> Vec<Op> {
    let origin = &record.peer.origin;
    let check = HealthCheck {
        node: CATALOG_NODE.to_owned(),
        check_id: format!("presence:{origin}"),
        name: "Event mesh presence".to_owned(),
        status: CheckStatus::Passing,
        output: format!(
            "connected to presence monitor {}, topic {}",
            record.replica, record.peer.topic
        ),
        service_id: origin.clone(),
        service_name: record.peer.app.clone(),
        service_tags: catalog_service(record).tags,
        ..HealthCheck::default()
    };
    vec![
        Op::PutLeased {
            key: format!("{APPS}{origin}"),
            value: encode(record),
            lease,
        },
        Op::PutLeased {
            key: keys::service(CATALOG_NODE, origin),
            value: encode(&catalog_service(record)),
            lease,
        },
        Op::PutLeased {
            key: keys::check(CATALOG_NODE, &check.check_id),
            value: encode(&check),
            lease,
        },
    ]
}

/// An event app as a catalog service instance: the service is named after the app, the instance
/// id is its origin (one instance per running app), address and port are its actuator's (when it
/// announced one), `Meta` marks it as an event app
/// (`plexus-kind = event-app`) and lists its group, topic, routes (comma-separated) and the
/// replica holding its connection; tags are `event-app` and its routes.
pub fn catalog_service(record: &AppRecord) -> AgentService {
    let peer = &record.peer;
    let meta = [
        ("plexus-kind", EVENT_APP_KIND.to_owned()),
        ("group", peer.group.clone()),
        ("topic", peer.topic.clone()),
        ("routes", peer.routes.join(",")),
        ("origin", peer.origin.clone()),
        ("replica", record.replica.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut tags = vec![EVENT_APP_KIND.to_owned()];
    tags.extend(peer.routes.iter().cloned());
    AgentService {
        id: peer.origin.clone(),
        service: peer.app.clone(),
        tags,
        meta,
        address: record
            .endpoint
            .as_ref()
            .map(|e| e.address.clone())
            .unwrap_or_default(),
        port: record.endpoint.as_ref().map_or(0, |e| e.port),
        ..AgentService::default()
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

#[cfg(test)]
mod tests;
