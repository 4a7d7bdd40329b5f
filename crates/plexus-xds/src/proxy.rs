//! One proxy's configuration, kept current: follows the proxy's registration and everything it
//! implies (its service's chain, intentions and leaf; each upstream's chain; the endpoints of
//! every service those chains reach; the roots), and publishes the translated resources when
//! (and only when) they change.
//!
//! A configuration is published only when every input is known, so Envoy never sees a listener
//! whose route or cluster is still missing; until then the last complete one stays published.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::select_all;
use plexus_api::client::IntentionSet;
use plexus_api::config_entry::chain::DiscoveryChain;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::model::{Endpoint, Inputs, Leaf, ProxySpec, services_reached};
use crate::resources::Resources;
use crate::source::{Hub, Latest, Sub};
use crate::translate::translate;

/// What a proxy's streams serve.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Built {
    /// The resources.
    pub resources: Resources,
    /// The registration revision they were built from (reported as the proxy's revision).
    pub revision: u64,
}

/// The subscriptions that follow the proxy's own service.
struct Own {
    service: String,
    chain: Sub<DiscoveryChain>,
    intentions: Sub<IntentionSet>,
    leaf: Sub<Leaf>,
}

/// Keeps `proxy_id`'s configuration published on `tx` until `stop`.
pub(crate) async fn run(
    proxy_id: String,
    hub: Hub,
    tx: watch::Sender<Option<Arc<Built>>>,
    stop: CancellationToken,
) {
    run_counted(proxy_id, hub, tx, stop, &AtomicU64::new(0)).await;
}

/// [`run`], counting its passes in `passes` (what tests observe).
async fn run_counted(
    proxy_id: String,
    hub: Hub,
    tx: watch::Sender<Option<Arc<Built>>>,
    stop: CancellationToken,
    passes: &AtomicU64,
) {
    let mut registration = hub.registrations.subscribe(&proxy_id);
    let mut roots = hub.roots.subscribe("");
    let mut datacenter = hub.datacenter.subscribe("");
    let mut own: Option<Own> = None;
    let mut chains: BTreeMap<String, Sub<DiscoveryChain>> = BTreeMap::new();
    let mut endpoints: BTreeMap<String, Sub<Vec<Endpoint>>> = BTreeMap::new();
    let mut spec: Option<(ProxySpec, u64)> = None;
    let mut missing_logged = false;
    let mut last_inputs: Option<(ProxySpec, Vec<AnyLatest>)> = None;
    loop {
        passes.fetch_add(1, Ordering::Relaxed);
        // 0. Everything read from here on counts as seen: the waits in step 4 are clones of
        //    these receivers and wake for what changed after this point only. (Without this,
        //    every clone would still see the first value as news and the loop would spin.)
        registration.rx.mark_unchanged();
        roots.rx.mark_unchanged();
        datacenter.rx.mark_unchanged();
        if let Some(own) = &mut own {
            own.chain.rx.mark_unchanged();
            own.intentions.rx.mark_unchanged();
            own.leaf.rx.mark_unchanged();
        }
        for sub in chains.values_mut() {
            sub.rx.mark_unchanged();
        }
        for sub in endpoints.values_mut() {
            sub.rx.mark_unchanged();
        }
        // 1. The registration (the last valid one stays in force).
        if let Some(latest) = registration.rx.borrow().clone() {
            match latest.value.as_ref().map(ProxySpec::from_service) {
                Some(Ok(valid)) => {
                    missing_logged = false;
                    if spec.as_ref().is_none_or(|(s, _)| *s != valid) {
                        debug!(
                            proxy_id,
                            revision = latest.index,
                            "proxy registration changed"
                        );
                    }
                    spec = Some((valid, latest.index));
                }
                Some(Err(invalid)) => error!(
                    proxy_id,
                    error = %invalid,
                    "ignoring invalid proxy registration; serving the last good config"
                ),
                None if !missing_logged => {
                    missing_logged = true;
                    warn!(
                        proxy_id,
                        "proxy registration is gone; serving the last good config"
                    );
                }
                None => {}
            }
        }
        // 2. Follow what the registration implies.
        if let Some((spec, _)) = &spec {
            if own.as_ref().is_none_or(|o| o.service != spec.service) {
                own = Some(Own {
                    service: spec.service.clone(),
                    chain: hub.chains.subscribe(&spec.service),
                    intentions: hub.intentions.subscribe(&spec.service),
                    leaf: hub.leaves.subscribe(&spec.service),
                });
            }
            let wanted: BTreeSet<&str> = spec
                .upstreams
                .iter()
                .map(|u| u.destination.as_str())
                .collect();
            chains.retain(|name, _| wanted.contains(name.as_str()));
            for name in wanted {
                if let std::collections::btree_map::Entry::Vacant(slot) =
                    chains.entry(name.to_owned())
                {
                    slot.insert(hub.chains.subscribe(name));
                }
            }
            let known: Vec<Arc<plexus_api::Indexed<DiscoveryChain>>> = chains
                .values()
                .filter_map(|sub| sub.rx.borrow().clone())
                .collect();
            let reached = services_reached(known.iter().map(|c| &c.value));
            endpoints.retain(|name, _| reached.contains(name));
            for name in reached {
                if let std::collections::btree_map::Entry::Vacant(slot) = endpoints.entry(name) {
                    let sub = hub.endpoints.subscribe(slot.key());
                    slot.insert(sub);
                }
            }
        }
        // 3. Translate once everything is known, and only when an input moved (a new leaf or
        //    root republished unchanged costs a comparison).
        let moved = match (&spec, &own) {
            (Some((spec, _)), Some(own)) => {
                let now = (
                    spec.clone(),
                    snapshot(own, &roots, &datacenter, &chains, &endpoints),
                );
                let moved = last_inputs
                    .as_ref()
                    .is_none_or(|last| !same_inputs(last, &now));
                last_inputs = Some(now);
                moved
            }
            _ => true,
        };
        if moved
            && let (Some((spec, revision)), Some(own)) = (&spec, &own)
            && let Some(inputs) = gather(spec, own, &roots, &datacenter, &chains, &endpoints)
        {
            let built = Built {
                resources: translate(&inputs),
                revision: *revision,
            };
            tx.send_if_modified(|current| {
                let changed = current
                    .as_ref()
                    .is_none_or(|c| c.resources != built.resources);
                if changed {
                    if current.is_none() {
                        info!(
                            proxy_id,
                            revision = built.revision,
                            "proxy configuration ready"
                        );
                    } else {
                        debug!(
                            proxy_id,
                            revision = built.revision,
                            "proxy configuration changed"
                        );
                    }
                    *current = Some(Arc::new(built));
                }
                changed
            });
        }
        // 4. Wait for any input to move.
        let mut waits: Vec<Pin<Box<dyn Future<Output = bool> + Send>>> = vec![
            changed(&registration.rx),
            changed(&roots.rx),
            changed(&datacenter.rx),
        ];
        if let Some(own) = &own {
            waits.push(changed(&own.chain.rx));
            waits.push(changed(&own.intentions.rx));
            waits.push(changed(&own.leaf.rx));
        }
        waits.extend(chains.values().map(|sub| changed(&sub.rx)));
        waits.extend(endpoints.values().map(|sub| changed(&sub.rx)));
        tokio::select! {
            _ = stop.cancelled() => return,
            (alive, _, _) = select_all(waits) => {
                if !alive {
                    // A follower ended (only at shutdown): nothing more will change.
                    stop.cancelled().await;
                    return;
                }
            }
        }
    }
}

/// One followed value as last read (each update is a new `Arc`, so identity tells change).
type AnyLatest = Option<Arc<dyn std::any::Any + Send + Sync>>;

fn any<V: Send + Sync + 'static>(sub: &Sub<V>) -> AnyLatest {
    sub.rx
        .borrow()
        .clone()
        .map(|latest| latest as Arc<dyn std::any::Any + Send + Sync>)
}

/// The current value of every input, by identity. Holding them keeps their addresses from being
/// reused, so an equal snapshot means nothing moved.
fn snapshot(
    own: &Own,
    roots: &Sub<plexus_api::connect::CaRoots>,
    datacenter: &Sub<String>,
    chains: &BTreeMap<String, Sub<DiscoveryChain>>,
    endpoints: &BTreeMap<String, Sub<Vec<Endpoint>>>,
) -> Vec<AnyLatest> {
    let mut all = vec![
        any(roots),
        any(datacenter),
        any(&own.leaf),
        any(&own.chain),
        any(&own.intentions),
    ];
    all.extend(chains.values().map(any));
    all.extend(endpoints.values().map(any));
    all
}

fn same_inputs(a: &(ProxySpec, Vec<AnyLatest>), b: &(ProxySpec, Vec<AnyLatest>)) -> bool {
    a.0 == b.0
        && a.1.len() == b.1.len()
        && a.1.iter().zip(&b.1).all(|pair| match pair {
            (Some(x), Some(y)) => std::ptr::addr_eq(Arc::as_ptr(x), Arc::as_ptr(y)),
            (None, None) => true,
            _ => false,
        })
}

fn changed<V: Send + Sync + 'static>(
    rx: &watch::Receiver<Latest<V>>,
) -> Pin<Box<dyn Future<Output = bool> + Send>> {
    let mut rx = rx.clone();
    Box::pin(async move { rx.changed().await.is_ok() })
}

fn gather(
    spec: &ProxySpec,
    own: &Own,
    roots: &Sub<plexus_api::connect::CaRoots>,
    datacenter: &Sub<String>,
    chains: &BTreeMap<String, Sub<DiscoveryChain>>,
    endpoints: &BTreeMap<String, Sub<Vec<Endpoint>>>,
) -> Option<Inputs> {
    let roots = roots.rx.borrow().clone()?;
    let datacenter = datacenter.rx.borrow().clone()?;
    let leaf = own.leaf.rx.borrow().clone()?;
    let own_chain = own.chain.rx.borrow().clone()?;
    let intentions = own.intentions.rx.borrow().clone()?;
    let mut chain_values = BTreeMap::new();
    for (name, sub) in chains {
        let chain = sub.rx.borrow().clone()?;
        chain_values.insert(name.clone(), Arc::new(chain.value.clone()));
    }
    let mut endpoint_values = BTreeMap::new();
    for chain in chain_values.values() {
        for service in services_reached([chain.as_ref()]) {
            let sub = endpoints.get(&service)?;
            let list = sub.rx.borrow().clone()?;
            endpoint_values.insert(service, Arc::new(list.value.clone()));
        }
    }
    Some(Inputs {
        datacenter: datacenter.value.clone(),
        proxy: spec.clone(),
        roots: Arc::new(roots.value.clone()),
        leaf: Arc::new(leaf.value.clone()),
        own_chain: Arc::new(own_chain.value.clone()),
        intentions: Arc::new(intentions.value.clone()),
        chains: chain_values,
        endpoints: endpoint_values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::proxy_service;
    use crate::resources::TypeUrl;
    use crate::source::fed;
    use crate::translate::tests::{endpoint, inputs};
    use plexus_api::connect::DefaultPolicy;
    use std::time::Duration;

    /// Lets every other task of this (single-threaded) runtime run many times over.
    async fn let_others_run() {
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn an_idle_proxy_does_not_loop_and_a_change_costs_a_pass_or_two() {
        let (hub, feeds) = fed::hub();
        let inputs = inputs(Vec::new(), DefaultPolicy::Allow);
        let service = proxy_service(&[("echo", 9191), ("web", 9292)]);
        feeds
            .node_services
            .publish("", BTreeMap::from([(service.id.clone(), service.clone())]));
        feeds.roots.publish("", (*inputs.roots).clone());
        feeds.datacenter.publish("", inputs.datacenter.clone());
        feeds.leaves.publish("web", (*inputs.leaf).clone());
        feeds
            .intentions
            .publish("web", (*inputs.intentions).clone());
        for (name, chain) in &inputs.chains {
            feeds.chains.publish(name, (**chain).clone());
        }
        for (name, list) in &inputs.endpoints {
            feeds.endpoints.publish(name, (**list).clone());
        }

        let (tx, mut rx) = watch::channel(None);
        let passes = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (passes, stop) = (Arc::clone(&passes), stop.clone());
            async move { run_counted(service.id.clone(), hub, tx, stop, &passes).await }
        });
        let first = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_some))
            .await
            .expect("configured in time")
            .expect("open")
            .clone()
            .expect("configured");
        let_others_run().await;
        let ready = passes.load(Ordering::Relaxed);
        let_others_run().await;
        assert_eq!(
            passes.load(Ordering::Relaxed),
            ready,
            "the proxy kept looping with nothing changed"
        );

        // An answer that repeats what is known (new index, same value): a pass, no new config.
        feeds
            .endpoints
            .publish("echo", (*inputs.endpoints["echo"]).clone());
        let_others_run().await;
        assert!(passes.load(Ordering::Relaxed) <= ready + 2);
        assert!(!rx.has_changed().expect("open"), "republished unchanged");

        // A real endpoint change: published, with a bounded number of passes.
        let before = passes.load(Ordering::Relaxed);
        feeds.endpoints.publish(
            "echo",
            vec![
                endpoint("127.0.0.1:21001", "v1"),
                endpoint("127.0.0.1:21002", "v1"),
            ],
        );
        let changed = tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|b| b.as_ref().is_some_and(|b| b.resources != first.resources)),
        )
        .await
        .expect("the change arrives")
        .expect("open")
        .clone()
        .expect("configured");
        assert_eq!(
            changed.resources.changed_types(&first.resources),
            [TypeUrl::Endpoint]
        );
        let_others_run().await;
        assert!(
            passes.load(Ordering::Relaxed) <= before + 2,
            "{} passes for one change",
            passes.load(Ordering::Relaxed) - before
        );
        stop.cancel();
        task.await.expect("the proxy task ends");
    }
}
