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
                        |update| {
                            tx.send_replace(Some(Arc::new(update)));
                        },
                        |error| warn!(error = %ErrorChain(error), "node services watch failed; retrying"),
                    )
                    .await;
                });
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
                        |update| {
                            tx.send_replace(Some(Arc::new(update)));
                        },
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
                        |update| {
                            tx.send_replace(Some(Arc::new(update)));
                        },
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
                            tx.send_if_modified(|current| {
                                let changed = current
                                    .as_ref()
                                    .is_none_or(|c| c.value != endpoints);
                                if changed {
                                    *current = Some(Arc::new(Indexed {
                                        index: update.index,
                                        value: endpoints,
                                    }));
                                }
                                changed
                            });
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
                        |update| {
                            tx.send_replace(Some(Arc::new(update)));
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
            roots,
            datacenter,
            chains,
            endpoints,
            intentions,
            leaves,
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
}
