//! Topics fed by hand instead of by the control plane, for tests of what follows them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use plexus_api::client::IntentionSet;
use plexus_api::config_entry::chain::DiscoveryChain;
use plexus_api::connect::CaRoots;
use plexus_api::{AgentService, Indexed};
use tokio::sync::watch;

use super::{Hub, Latest, Topic, registration};
use crate::model::{Endpoint, Leaf};

/// The values of one topic, by key; a key subscribed to gets its value as soon as it has one.
pub(crate) struct Feed<V> {
    inner: Arc<Mutex<FeedInner<V>>>,
}

struct FeedInner<V> {
    index: u64,
    values: HashMap<String, Latest<V>>,
    senders: HashMap<String, watch::Sender<Latest<V>>>,
}

impl<V: Send + Sync + 'static> Feed<V> {
    fn topic(name: &'static str) -> (Topic<V>, Self) {
        let inner = Arc::new(Mutex::new(FeedInner {
            index: 0,
            values: HashMap::new(),
            senders: HashMap::new(),
        }));
        let topic = Topic::new(name, {
            let inner = Arc::clone(&inner);
            move |key: String, tx: watch::Sender<Latest<V>>, _stop| {
                let mut inner = inner.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(Some(value)) = inner.values.get(&key) {
                    tx.send_replace(Some(Arc::clone(value)));
                }
                inner.senders.insert(key, tx);
            }
        });
        (topic, Self { inner })
    }

    /// Publishes `value` for `key` (at a new index).
    pub(crate) fn publish(&self, key: &str, value: V) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.index += 1;
        let latest = Arc::new(Indexed {
            index: inner.index,
            value,
        });
        inner
            .values
            .insert(key.to_owned(), Some(Arc::clone(&latest)));
        if let Some(tx) = inner.senders.get(key) {
            tx.send_replace(Some(latest));
        }
    }
}

/// Every input of a [`Hub`], fed by hand.
pub(crate) struct Feeds {
    pub node_services: Feed<BTreeMap<String, AgentService>>,
    pub roots: Feed<CaRoots>,
    pub datacenter: Feed<String>,
    pub chains: Feed<DiscoveryChain>,
    pub endpoints: Feed<Vec<Endpoint>>,
    pub intentions: Feed<IntentionSet>,
    pub leaves: Feed<Leaf>,
}

/// A hub whose inputs are fed by hand (registrations are derived from the node's services,
/// as in the real hub).
pub(crate) fn hub() -> (Hub, Feeds) {
    let (node_services, node_services_feed) = Feed::topic("node_services");
    let registrations = {
        let node_services = node_services.clone();
        Topic::new("registrations", move |proxy_id: String, tx, stop| {
            tokio::spawn(registration(
                node_services.subscribe(""),
                proxy_id,
                tx,
                stop,
            ));
        })
    };
    let (roots, roots_feed) = Feed::topic("roots");
    let (datacenter, datacenter_feed) = Feed::topic("datacenter");
    let (chains, chains_feed) = Feed::topic("chains");
    let (endpoints, endpoints_feed) = Feed::topic("endpoints");
    let (intentions, intentions_feed) = Feed::topic("intentions");
    let (leaves, leaves_feed) = Feed::topic("leaves");
    let hub = Hub {
        node_services,
        registrations,
        roots,
        datacenter,
        chains,
        endpoints,
        intentions,
        leaves,
    };
    let feeds = Feeds {
        node_services: node_services_feed,
        roots: roots_feed,
        datacenter: datacenter_feed,
        chains: chains_feed,
        endpoints: endpoints_feed,
        intentions: intentions_feed,
        leaves: leaves_feed,
    };
    (hub, feeds)
}
