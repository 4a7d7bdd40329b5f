//! Where proxies' inputs come from: the control plane's HTTP API, followed with blocking queries,
//! each followed **once** per xDS server however many proxies need it.
//!
//! A [`Topic`] maps a key (a service name, or `""` for the node-wide values) to one follower task
//! publishing into a `watch` channel. [`Topic::subscribe`] starts the task for the first
//! subscriber and the last [`Sub`] to drop stops it. A thousand Envoys in front of one service
//! cost one blocking query for that service's endpoints.
//!
//! The API (not a trait over the control plane's internals) keeps this crate independent of the
//! daemon crates, works the same inside `plexus server`, `plexus dev` and `plexus agent` (which
//! passes everything but `/v1/agent/*` on to a server), and will carry the proxy's ACL token.

#[cfg(test)]
pub(crate) mod fed;
pub(crate) mod follow;
mod leaf;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use plexus_api::client::{Client, IntentionSet};
use plexus_api::config_entry::chain::DiscoveryChain;
use plexus_api::connect::CaRoots;
use plexus_api::{AgentService, Indexed};
use plexus_runtime::ErrorChain;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::model::{Endpoint, Leaf, endpoints_from};
use follow::follow;

/// The latest value of a followed key with the index it was read at; `None` until the first
/// answer.
pub(crate) type Latest<V> = Option<Arc<Indexed<V>>>;

type Starter<V> = dyn Fn(String, watch::Sender<Latest<V>>, CancellationToken) + Send + Sync;

/// Followed values of one kind, by key.
pub(crate) struct Topic<V> {
    inner: Arc<TopicInner<V>>,
}

impl<V> Clone for Topic<V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct TopicInner<V> {
    name: &'static str,
    entries: Mutex<HashMap<String, Entry<V>>>,
    start: Box<Starter<V>>,
}

struct Entry<V> {
    rx: watch::Receiver<Latest<V>>,
    refs: usize,
    stop: CancellationToken,
}

/// One subscriber's handle on a followed key: read `rx`; dropping it unsubscribes.
pub(crate) struct Sub<V> {
    /// The latest value.
    pub rx: watch::Receiver<Latest<V>>,
    key: String,
    topic: Arc<TopicInner<V>>,
}

impl<V> Sub<V> {
    /// The key followed.
    #[cfg(test)]
    pub(crate) fn key(&self) -> &str {
        &self.key
    }
}

impl<V> Drop for Sub<V> {
    fn drop(&mut self) {
        let mut entries = self
            .topic
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.get_mut(&self.key) {
            entry.refs -= 1;
            if entry.refs == 0 {
                entry.stop.cancel();
                entries.remove(&self.key);
                debug!(topic = self.topic.name, key = %self.key, "stopped following");
            }
        }
    }
}

impl<V: Send + Sync + 'static> Topic<V> {
    fn new(
        name: &'static str,
        start: impl Fn(String, watch::Sender<Latest<V>>, CancellationToken) + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Arc::new(TopicInner {
                name,
                entries: Mutex::new(HashMap::new()),
                start: Box::new(start),
            }),
        }
    }

    /// Follows `key` (starting its task if nobody does yet).
    pub(crate) fn subscribe(&self, key: &str) -> Sub<V> {
        let mut entries = self
            .inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = entries.entry(key.to_owned()).or_insert_with(|| {
            let (tx, rx) = watch::channel(None);
            let stop = CancellationToken::new();
            debug!(topic = self.inner.name, key, "following");
            (self.inner.start)(key.to_owned(), tx, stop.clone());
            Entry { rx, refs: 0, stop }
        });
        entry.refs += 1;
        Sub {
            rx: entry.rx.clone(),
            key: key.to_owned(),
            topic: Arc::clone(&self.inner),
        }
    }

    /// How many keys are followed now.
    #[cfg(test)]
    pub(crate) fn followed(&self) -> usize {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Every followed input of this xDS server.
#[derive(Clone)]
pub(crate) struct Hub {
    /// This node's services (key `""`): where proxies' registrations come from.
    pub node_services: Topic<BTreeMap<String, AgentService>>,
    /// One proxy's own registration (key: its service id), `None` while it is not registered:
    /// derived from `node_services`, published only when that one registration moved, so a
    /// change to another service on the node wakes no other proxy.
    pub registrations: Topic<Option<AgentService>>,
    /// The CA's roots (key `""`).
    pub roots: Topic<CaRoots>,
    /// The datacenter (key `""`), read once from `/v1/agent/self`.
    pub datacenter: Topic<String>,
    /// Compiled discovery chains, by service.
    pub chains: Topic<DiscoveryChain>,
    /// Passing endpoints, by service.
    pub endpoints: Topic<Vec<Endpoint>>,
    /// Intentions by destination service, with the default policy.
    pub intentions: Topic<IntentionSet>,
    /// Leaves, by service, signed for one of the node's proxies of that service.
    pub leaves: Topic<Leaf>,
}

impl Hub {
    /// A hub over the control plane at `client`; follower tasks run on `tasks`.
    pub(crate) fn new(client: Client, tasks: TaskTracker) -> Self {
        let node_services = {
            let (client, tasks) = (client.clone(), tasks.clone());
            Topic::new("node_services", move |_key: String, tx, stop| {
                let client = client.clone();
                tasks.spawn(async move {
                    follow(
                        &stop,
                        |query| client.agent_services_indexed(query),
                        |update| publish_changed(&tx, update, |a, b| a == b),
                        |error| warn!(error = %ErrorChain(error), "node services watch failed; retrying"),
                    )
                    .await;
                });
            })
        };
        let registrations = {
            let (node_services, tasks) = (node_services.clone(), tasks.clone());
            Topic::new("registrations", move |proxy_id: String, tx, stop| {
                tasks.spawn(registration(
                    node_services.subscribe(""),
                    proxy_id,
                    tx,
                    stop,
                ));
            })
        };
        let roots = {
            let (client, tasks) = (client.clone(), tasks.clone());
            Topic::new("roots", move |_key: String, tx, stop| {
                let client = client.clone();
                tasks.spawn(async move {
                    follow(
                        &stop,
                        |query| client.connect_ca_roots(query),
                        |update| publish_changed(&tx, update, |a, b| a == b),
                        |error| warn!(error = %ErrorChain(error), "CA roots watch failed; retrying"),
                    )
                    .await;
                });
            })
        };
        let datacenter = {
            let (client, tasks) = (client.clone(), tasks.clone());
            Topic::new("datacenter", move |_key: String, tx, stop| {
                let client = client.clone();
                tasks.spawn(async move {
                    let mut backoff = plexus_runtime::Backoff::default();
                    loop {
                        let answer = tokio::select! {
                            _ = stop.cancelled() => return,
                            answer = client.agent_self() => answer,
                        };
                        match answer {
                            Ok(me) => {
                                tx.send_replace(Some(Arc::new(Indexed {
                                    index: 0,
                                    value: me.config.datacenter,
                                })));
                                // Keep the sender: subscribers treat a closed channel as the end.
                                stop.cancelled().await;
                                return;
                            }
                            Err(error) => {
                                warn!(error = %ErrorChain(&error), "cannot read the datacenter; retrying");
                                if !follow::pause(backoff.next_delay(), &stop).await {
                                    return;
                                }
                            }
                        }
                    }
                });
            })
        };
        let chains = {
            let (client, tasks) = (client.clone(), tasks.clone());
            Topic::new("chains", move |service: String, tx, stop| {
                let client = client.clone();
                tasks.spawn(async move {
                    follow(
                        &stop,
                        |query| client.discovery_chain(&service, query),
                        |update| publish_changed(&tx, update, |a, b| a == b),
                        |error| warn!(error = %ErrorChain(error), %service, "discovery chain watch failed; retrying"),
                    )
                    .await;
                });
            })
        };
        let endpoints = {
            let (client, tasks) = (client.clone(), tasks.clone());
            Topic::new("endpoints", move |service: String, tx, stop| {
                let client = client.clone();
                tasks.spawn(async move {
                    follow(
                        &stop,
                        |query| client.health_connect(&service, true, query),
                        |update| {
                            let endpoints = endpoints_from(&update.value);
                            debug!(%service, index = update.index, endpoints = endpoints.len(), "endpoints answer");
                            publish_changed(
                                &tx,
                                Indexed {
                                    index: update.index,
                                    value: endpoints,
                                },
                                |a, b| a == b,
                            );
                        },
                        |error| warn!(error = %ErrorChain(error), %service, "endpoints watch failed; retrying"),
                    )
                    .await;
                });
            })
        };
        let intentions = {
            let (client, tasks) = (client.clone(), tasks.clone());
            Topic::new("intentions", move |service: String, tx, stop| {
                let client = client.clone();
                tasks.spawn(async move {
                    follow(
                        &stop,
                        |query| {
                            let client = client.clone();
                            let service = service.clone();
                            async move {
                                let set = client.intentions_for_destination(&service, query).await?;
                                Ok(Indexed {
                                    index: set.index,
                                    value: set,
                                })
                            }
                        },
                        // The set carries the index it was read at: compare what it says.
                        |update| {
                            publish_changed(&tx, update, |a, b| {
                                a.intentions == b.intentions && a.default_policy == b.default_policy
                            })
                        },
                        |error| warn!(error = %ErrorChain(error), %service, "intentions watch failed; retrying"),
                    )
                    .await;
                });
            })
        };
        let leaves = {
            let (node_services, roots, datacenter) =
                (node_services.clone(), roots.clone(), datacenter.clone());
            Topic::new("leaves", move |service: String, tx, stop| {
                tasks.spawn(leaf::maintain(
                    client.clone(),
                    service,
                    leaf::Inputs {
                        node_services: node_services.subscribe(""),
                        roots: roots.subscribe(""),
                        datacenter: datacenter.subscribe(""),
                    },
                    tx,
                    stop,
                ));
            })
        };
        Self {
            node_services,
            registrations,
            roots,
            datacenter,
            chains,
            endpoints,
            intentions,
            leaves,
        }
    }
}

/// Publishes `update` unless it says the same as what is published (`same`). Blocking indexes
/// move with every write to the control plane (a check, a status report), so an answer is often
/// unchanged; waking every proxy that follows the key for it would cost a thousand proxies a
/// thousand wake-ups per write.
fn publish_changed<V>(
    tx: &watch::Sender<Latest<V>>,
    update: Indexed<V>,
    same: impl Fn(&V, &V) -> bool,
) {
    tx.send_if_modified(|current| {
        let changed = current
            .as_ref()
            .is_none_or(|c| !same(&c.value, &update.value));
        if changed {
            *current = Some(Arc::new(update));
        }
        changed
    });
}

/// Publishes `proxy_id`'s registration from the node's services whenever it (and only it)
/// changes, with the index it changed at.
async fn registration(
    mut services: Sub<BTreeMap<String, AgentService>>,
    proxy_id: String,
    tx: watch::Sender<Latest<Option<AgentService>>>,
    stop: CancellationToken,
) {
    loop {
        if let Some(latest) = services.rx.borrow_and_update().clone() {
            let own = latest.value.get(&proxy_id);
            tx.send_if_modified(|current| {
                let changed = current.as_ref().is_none_or(|c| c.value.as_ref() != own);
                if changed {
                    *current = Some(Arc::new(Indexed {
                        index: latest.index,
                        value: own.cloned(),
                    }));
                }
                changed
            });
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = services.rx.changed() => if changed.is_err() {
                // The node's services are no longer followed (shutdown): keep the sender, as
                // subscribers treat a closed channel as the end.
                stop.cancelled().await;
                return;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_follower_per_key_while_anyone_subscribes() {
        let started = Arc::new(AtomicUsize::new(0));
        let stopped = Arc::new(AtomicUsize::new(0));
        let topic: Topic<u32> = Topic::new("test", {
            let (started, stopped) = (started.clone(), stopped.clone());
            move |_key, tx, stop: CancellationToken| {
                started.fetch_add(1, Ordering::SeqCst);
                tx.send_replace(Some(Arc::new(Indexed { index: 1, value: 7 })));
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    stop.cancelled().await;
                    stopped.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        let a = topic.subscribe("web");
        let b = topic.subscribe("web");
        let c = topic.subscribe("api");
        assert_eq!(started.load(Ordering::SeqCst), 2);
        assert_eq!(a.rx.borrow().as_ref().map(|v| v.value), Some(7));
        assert_eq!(b.key(), "web");
        drop(a);
        assert_eq!(topic.followed(), 2);
        drop(b);
        drop(c);
        assert_eq!(topic.followed(), 0);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while stopped.load(Ordering::SeqCst) < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "followers were not stopped"
            );
            tokio::task::yield_now().await;
        }
        let _again = topic.subscribe("web");
        assert_eq!(started.load(Ordering::SeqCst), 3);
    }

    fn service(id: &str, port: u16) -> AgentService {
        serde_json::from_value(serde_json::json!({"ID": id, "Service": id, "Port": port}))
            .expect("a valid service")
    }

    #[tokio::test]
    async fn a_proxy_is_woken_only_by_its_own_registration() {
        type NodeTx = watch::Sender<Latest<BTreeMap<String, AgentService>>>;
        let node_tx: Arc<Mutex<Option<NodeTx>>> = Arc::default();
        let node_services = Topic::new("node_services", {
            let node_tx = Arc::clone(&node_tx);
            move |_key, tx, _stop| {
                *node_tx.lock().expect("test lock") = Some(tx);
            }
        });
        let registrations: Topic<Option<AgentService>> = Topic::new("registrations", {
            let node_services = node_services.clone();
            move |proxy_id: String, tx, stop| {
                tokio::spawn(registration(
                    node_services.subscribe(""),
                    proxy_id,
                    tx,
                    stop,
                ));
            }
        });
        let publish = |index: u64, services: &[AgentService]| {
            let value = services.iter().map(|s| (s.id.clone(), s.clone())).collect();
            node_tx
                .lock()
                .expect("test lock")
                .as_ref()
                .expect("node services followed")
                .send_replace(Some(Arc::new(Indexed { index, value })));
        };
        let mut mine = registrations.subscribe("p1");
        let within = std::time::Duration::from_secs(5);
        publish(1, &[service("p1", 1), service("p2", 2)]);
        tokio::time::timeout(within, mine.rx.changed())
            .await
            .expect("the first registration is published")
            .expect("open");
        let first = mine.rx.borrow_and_update().clone().expect("published");
        assert_eq!(
            (first.index, first.value.as_ref().map(|s| s.port)),
            (1, Some(1))
        );

        // Other proxies' changes do not wake this one (p2's own subscriber, woken by the same
        // publication, is the barrier: once it has seen a change, so has p1's task). Then our
        // own change is seen, with the index it happened at.
        let mut other = registrations.subscribe("p2");
        other.rx.borrow_and_update();
        for (index, port) in [(2, 3), (3, 4)] {
            publish(index, &[service("p1", 1), service("p2", port)]);
            tokio::time::timeout(within, other.rx.changed())
                .await
                .expect("p2's change is published")
                .expect("open");
            other.rx.borrow_and_update();
            assert!(
                !mine.rx.has_changed().expect("open"),
                "p1 woken by p2's change at index {index}"
            );
        }
        publish(4, &[service("p1", 9), service("p2", 4)]);
        tokio::time::timeout(within, mine.rx.changed())
            .await
            .expect("our own change is published")
            .expect("open");
        let moved = mine.rx.borrow_and_update().clone().expect("published");
        assert_eq!(
            (moved.index, moved.value.as_ref().map(|s| s.port)),
            (4, Some(9))
        );

        publish(5, &[service("p2", 3)]);
        tokio::time::timeout(within, mine.rx.changed())
            .await
            .expect("the deregistration is published")
            .expect("open");
        assert_eq!(
            mine.rx
                .borrow_and_update()
                .as_ref()
                .map(|l| l.value.is_none()),
            Some(true)
        );
    }

    #[test]
    fn an_unchanged_answer_at_a_new_index_wakes_nobody() {
        let (tx, mut rx) = watch::channel::<Latest<u32>>(None);
        publish_changed(&tx, Indexed { index: 1, value: 7 }, |a, b| a == b);
        assert!(rx.has_changed().expect("open"));
        rx.borrow_and_update();
        publish_changed(&tx, Indexed { index: 2, value: 7 }, |a, b| a == b);
        assert!(!rx.has_changed().expect("open"), "woken for the same value");
        assert_eq!(rx.borrow().as_ref().map(|l| l.index), Some(1));
        publish_changed(&tx, Indexed { index: 3, value: 8 }, |a, b| a == b);
        assert!(rx.has_changed().expect("open"));
        assert_eq!(
            rx.borrow().as_ref().map(|l| (l.index, l.value)),
            Some((3, 8))
        );
    }
}
