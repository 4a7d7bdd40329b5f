//! Targets: where one HTTP upstream's requests may go, as its discovery chain says.
//!
//! ```text
//! chain target (service, subset filter, failover, load balancer)
//!   ─► that service's endpoints (one discovery watch per service the chain names)
//!   ─► subset filter ─► minus ejected endpoints (outlier detection, per service)
//!   ─► empty? the target's failover targets, in order ─► still empty: no_healthy_endpoints
//!   ─► balancer (round robin, least request, peak EWMA, ring hash, Maglev)
//! ```
//!
//! The listener's own destination uses the listener's endpoint watch; every other service the
//! chain names (split, route, failover, mirror) gets its own watch and its own mTLS client
//! (verifying that service's identity), started when a chain names it and stopped when no chain
//! does any more. Outlier detectors live here too, one per service, so a new chain with the same
//! outlier policy keeps the ejections in force.

use plexus_api::config_entry::chain::{
    ChainTarget, DiscoveryChain, LoadBalancerPolicy, filter_matches,
};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::HttpMetrics;
use super::outlier::{Outlier, Verdict};
use super::retry::Outcome;
use crate::balance::Balancer;
use crate::discovery::{EndpointSet, Resolve};
use crate::tls;
use plexus_runtime::lock::lock;

/// Makes the mTLS client for connections to a service's sidecars (ALPN `plexus-h2`, the peer
/// must prove that service's identity).
pub(crate) type TlsFor =
    Arc<dyn Fn(&str) -> Result<tls::Outbound, tls::TlsConfigError> + Send + Sync>;

/// Makes the mTLS client for a service in another datacenter (through its mesh gateways).
pub(crate) type TlsIn =
    Arc<dyn Fn(&str, &str) -> Result<tls::Outbound, tls::TlsConfigError> + Send + Sync>;

/// How a chain's `Failover.*.Datacenters` are reached.
pub(crate) struct Datacenters {
    /// Starts a watch of a datacenter's mesh gateways until the token fires.
    pub gateways: Resolve,
    /// mTLS to a service in a datacenter.
    pub tls: TlsIn,
}

/// What [`Targets`] needs to reach services other than the listener's destination.
pub(crate) struct Remote {
    /// Starts an endpoint watch for a service until the token fires.
    pub resolve: Resolve,
    /// mTLS per service (`None`: plain h2c, unit tests only).
    pub tls: Option<TlsFor>,
    /// Other datacenters (`None`: unit tests).
    pub datacenters: Option<Datacenters>,
}

/// The key of service `service` in datacenter `datacenter` among a chain's targets.
fn in_datacenter(service: &str, datacenter: &str) -> String {
    format!("{service}@{datacenter}")
}

/// One service's endpoints, connection security, outlier state and balancer state.
pub(crate) struct Service {
    /// The service name.
    pub name: String,
    endpoints: watch::Receiver<Arc<EndpointSet>>,
    /// mTLS towards its sidecars (`None`: plain h2c, unit tests only).
    pub tls: Option<tls::Outbound>,
    /// Stops its endpoint watch (`None` for the listener's destination: the listener owns it).
    stop: Option<CancellationToken>,
    outlier: Mutex<Outlier>,
    /// Balancer state (in-flight counts, latency estimates, hash tables).
    pub balancer: Balancer,
}

/// The candidate endpoints of one request: the service they belong to and the endpoints.
pub(crate) struct Candidates {
    /// The service (the target's, or a failover target's).
    pub service: Arc<Service>,
    /// Healthy, matching the subset filter, not ejected; never empty.
    pub addrs: Vec<SocketAddr>,
    /// The load-balancer policy of the target that supplied them.
    pub load_balancer: LoadBalancerPolicy,
}

/// Every service one HTTP upstream's chain may send requests to.
pub(crate) struct Targets {
    destination: String,
    /// The destination's own service (never dropped: the listener owns its watch).
    own: Arc<Service>,
    remote: Remote,
    services: Mutex<HashMap<String, Arc<Service>>>,
    metrics: HttpMetrics,
    tasks: TaskTracker,
    stop: CancellationToken,
    ejected: watch::Sender<Vec<SocketAddr>>,
}

impl Targets {
    /// The listener's own destination with its endpoint watch; other services are added by
    /// [`Targets::sync`]. `stop` ends every watch this starts (the listener's token).
    pub(crate) fn new(
        destination: &str,
        endpoints: watch::Receiver<Arc<EndpointSet>>,
        tls: Option<tls::Outbound>,
        remote: Remote,
        metrics: HttpMetrics,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        let own = Arc::new(Service::new(destination, endpoints, tls, None));
        Self {
            destination: destination.to_owned(),
            own: Arc::clone(&own),
            remote,
            services: Mutex::new(HashMap::from([(destination.to_owned(), own)])),
            metrics,
            tasks,
            stop,
            ejected: watch::channel(Vec::new()).0,
        }
    }

    /// The ejected endpoints (of every service), for the admin `/config`.
    pub(crate) fn ejected(&self) -> watch::Receiver<Vec<SocketAddr>> {
        self.ejected.subscribe()
    }

    /// Starts watches for the services `chain` names (targets and mirror) that have none, stops
    /// those of services it no longer names, and applies its outlier policy to every service.
    pub(crate) fn sync(&self, chain: &DiscoveryChain) {
        let mut wanted: BTreeSet<&str> = chain
            .targets
            .values()
            .map(|target| target.service.as_str())
            .collect();
        let remote: BTreeSet<(String, &str, &str)> = chain
            .targets
            .values()
            .flat_map(|target| {
                target.failover_datacenters.iter().map(|dc| {
                    (
                        in_datacenter(&target.service, dc),
                        target.service.as_str(),
                        dc.as_str(),
                    )
                })
            })
            .collect();
        for (key, _, _) in &remote {
            wanted.insert(key.as_str());
        }
        if let Some(mirror) = &chain.policy.mirror {
            wanted.insert(mirror.service.as_str());
        }
        wanted.insert(&self.destination);
        let mut services = lock(&self.services);
        services.retain(|name, service| {
            let keep = wanted.contains(name.as_str());
            if !keep && let Some(stop) = &service.stop {
                info!(upstream = %self.destination, service = %name, "chain no longer names this service; stopping its endpoint watch");
                stop.cancel();
            }
            keep
        });
        for (key, service, datacenter) in &remote {
            if services.contains_key(key) {
                continue;
            }
            let Some(datacenters) = &self.remote.datacenters else {
                continue;
            };
            let tls = match (datacenters.tls)(service, datacenter) {
                Ok(tls) => tls,
                Err(error) => {
                    warn!(%error, upstream = %self.destination, %service, %datacenter, "cannot build the mTLS client for a failover datacenter");
                    continue;
                }
            };
            let stop = self.stop.child_token();
            let endpoints = (datacenters.gateways)(datacenter, stop.clone());
            info!(upstream = %self.destination, %service, %datacenter, "following the mesh gateways of a failover datacenter");
            services.insert(
                key.clone(),
                Arc::new(Service::new(key, endpoints, Some(tls), Some(stop))),
            );
        }
        for name in wanted {
            if services.contains_key(name) {
                continue;
            }
            let tls = match &self.remote.tls {
                Some(make) => match make(name) {
                    Ok(tls) => Some(tls),
                    Err(error) => {
                        warn!(%error, upstream = %self.destination, service = %name, "cannot build the mTLS client for a chain target; it stays unreachable");
                        continue;
                    }
                },
                None => None,
            };
            let stop = self.stop.child_token();
            let endpoints = (self.remote.resolve)(name, stop.clone());
            info!(upstream = %self.destination, service = %name, "following the endpoints of a chain target");
            services.insert(
                name.to_owned(),
                Arc::new(Service::new(name, endpoints, tls, Some(stop))),
            );
        }
        for service in services.values() {
            lock(&service.outlier).apply(chain.policy.outlier.as_ref());
        }
        drop(services);
        self.refresh_ejected();
    }

    /// The service called `name`, if a chain names it (or it is the destination).
    pub(crate) fn service(&self, name: &str) -> Option<Arc<Service>> {
        if name == self.destination {
            return Some(Arc::clone(&self.own));
        }
        lock(&self.services).get(name).cloned()
    }

    /// Whether `addr` is an endpoint of any followed service (the connection pool keeps only
    /// those).
    pub(crate) fn is_live(&self, addr: &SocketAddr) -> bool {
        lock(&self.services)
            .values()
            .any(|service| service.endpoints.borrow().addrs.contains(addr))
    }

    /// The endpoints a request for `target` may use: the target's own, else each failover
    /// target's in order. `None` (no target) means the destination, unfiltered. Waits up to
    /// `wait` for a service's first answer from the control plane. `None` when none is left.
    pub(crate) async fn candidates(
        &self,
        target: Option<(&ChainTarget, &DiscoveryChain)>,
        wait: std::time::Duration,
    ) -> Option<Candidates> {
        let Some((target, chain)) = target else {
            let service = self.service(&self.destination)?;
            let addrs = service.healthy(&[], wait).await;
            return (!addrs.is_empty()).then(|| Candidates {
                service,
                addrs,
                load_balancer: LoadBalancerPolicy::default(),
            });
        };
        let failover = target
            .failover
            .iter()
            .filter_map(|id| chain.targets.get(id));
        for candidate in std::iter::once(target).chain(failover) {
            let Some(service) = self.service(&candidate.service) else {
                continue;
            };
            let addrs = service.healthy(&candidate.filter, wait).await;
            if !addrs.is_empty() {
                if !std::ptr::eq(candidate, target) {
                    tracing::debug!(upstream = %self.destination, service = %candidate.service, subset = ?candidate.subset, "failing over");
                }
                return Some(Candidates {
                    service,
                    addrs,
                    load_balancer: candidate.load_balancer.clone(),
                });
            }
        }
        // Nothing passes here: the resolver's other datacenters, through their gateways.
        for datacenter in &target.failover_datacenters {
            let Some(service) = self.service(&in_datacenter(&target.service, datacenter)) else {
                continue;
            };
            let addrs = service.healthy(&[], wait).await;
            if !addrs.is_empty() {
                tracing::debug!(upstream = %self.destination, service = %target.service, %datacenter, "failing over to another datacenter");
                return Some(Candidates {
                    service,
                    addrs,
                    load_balancer: target.load_balancer.clone(),
                });
            }
        }
        None
    }

    /// Feeds one attempt's outcome on `addr` of `service` to its outlier detector; an
    /// ejection is counted, logged and published, and its end is published when it comes.
    pub(crate) fn record(self: &Arc<Self>, service: &Service, addr: SocketAddr, outcome: Outcome) {
        let set = Arc::clone(&service.endpoints.borrow());
        let verdict = {
            let mut outlier = lock(&service.outlier);
            let Some(detector) = outlier.detector(&set) else {
                return;
            };
            detector.record(
                &addr,
                outcome,
                Instant::now(),
                rand::random::<f64>() * 100.0,
            )
        };
        if let Verdict::Ejected(until) = verdict {
            warn!(upstream = %self.destination, service = %service.name, endpoint = %addr, seconds = until.saturating_duration_since(Instant::now()).as_secs_f64(), "endpoint ejected by outlier detection");
            self.metrics.outlier_ejection(&self.destination);
            self.refresh_ejected();
            // Readmission is a matter of time: publish it when the time comes.
            let (stop, this) = (self.stop.clone(), Arc::downgrade(self));
            self.tasks.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {
                        if let Some(this) = this.upgrade() {
                            this.refresh_ejected();
                        }
                    }
                    () = stop.cancelled() => {}
                }
            });
        }
    }

    /// Publishes the endpoints ejected now (gauge and admin view).
    fn refresh_ejected(&self) {
        let now = Instant::now();
        let services: Vec<Arc<Service>> = lock(&self.services).values().cloned().collect();
        let mut ejected: Vec<SocketAddr> = services
            .iter()
            .flat_map(|service| service.ejected(now))
            .collect();
        ejected.sort_unstable();
        self.metrics
            .set_outlier_ejected(&self.destination, ejected.len());
        self.ejected.send_if_modified(|current| {
            let changed = *current != ejected;
            if changed {
                if ejected.len() < current.len() {
                    info!(upstream = %self.destination, ejected = ejected.len(), "ejection over; endpoint readmitted");
                }
                *current = ejected;
            }
            changed
        });
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("name", &self.name).finish()
    }
}

impl Service {
    fn new(
        name: &str,
        endpoints: watch::Receiver<Arc<EndpointSet>>,
        tls: Option<tls::Outbound>,
        stop: Option<CancellationToken>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            endpoints,
            tls,
            stop,
            outlier: Mutex::new(Outlier::default()),
            balancer: Balancer::default(),
        }
    }

    /// Passing endpoints matching `filter` and not ejected now (waits up to `wait` for the
    /// first answer from the control plane).
    async fn healthy(
        &self,
        filter: &[plexus_api::config_entry::chain::FilterClause],
        wait: std::time::Duration,
    ) -> Vec<SocketAddr> {
        if !self.endpoints.borrow().is_resolved() {
            let mut endpoints = self.endpoints.clone();
            let _ = tokio::time::timeout(wait, endpoints.wait_for(|set| set.is_resolved())).await;
        }
        let set = Arc::clone(&self.endpoints.borrow());
        let now = Instant::now();
        let mut outlier = lock(&self.outlier);
        let detector = outlier.detector(&set);
        set.addrs
            .iter()
            .filter(|addr| {
                filter.is_empty()
                    || set
                        .labels
                        .get(addr)
                        .is_some_and(|labels| filter_matches(filter, &labels.tags, &labels.meta))
            })
            .filter(|addr| !detector.as_ref().is_some_and(|d| d.is_ejected(addr, now)))
            .copied()
            .collect()
    }

    fn ejected(&self, now: Instant) -> Vec<SocketAddr> {
        let set = Arc::clone(&self.endpoints.borrow());
        let mut outlier = lock(&self.outlier);
        outlier
            .detector(&set)
            .map(|detector| detector.ejected(now))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use plexus_api::GoDuration;
    use plexus_api::config_entry::chain::{FilterClause, OutlierPolicy};

    use super::*;
    use crate::discovery::Labels;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A set of endpoints with a `version` meta each.
    fn set(endpoints: &[(u16, &str)]) -> Arc<EndpointSet> {
        let mut set = EndpointSet::resolved(endpoints.iter().map(|(p, _)| addr(*p)).collect());
        for (port, version) in endpoints {
            set.labels.insert(
                addr(*port),
                Labels {
                    tags: Vec::new(),
                    meta: BTreeMap::from([("version".to_owned(), (*version).to_owned())]),
                },
            );
        }
        Arc::new(set)
    }

    fn target(service: &str, version: Option<&str>, failover: &[&str]) -> ChainTarget {
        ChainTarget {
            service: service.into(),
            subset: version.map(str::to_owned),
            filter: version
                .map(|v| {
                    vec![FilterClause::MetaEquals {
                        key: "version".into(),
                        value: v.into(),
                    }]
                })
                .unwrap_or_default(),
            failover: failover.iter().map(|f| (*f).to_owned()).collect(),
            ..ChainTarget::default()
        }
    }

    /// `web` (v1 on 1001, v2 on 1002) and `other` (2001), resolved from fixed channels.
    fn targets(
        web: &watch::Sender<Arc<EndpointSet>>,
        other: Arc<EndpointSet>,
    ) -> (Arc<Targets>, DiscoveryChain) {
        let other = watch::channel(other).1;
        let resolve: Resolve = Arc::new(move |_: &str, _| other.clone());
        let targets = Arc::new(Targets::new(
            "web",
            web.subscribe(),
            None,
            Remote {
                resolve,
                tls: None,
                datacenters: None,
            },
            HttpMetrics::default(),
            TaskTracker::new(),
            CancellationToken::new(),
        ));
        let mut chain = DiscoveryChain {
            targets: BTreeMap::from([
                (
                    "v1.web".to_owned(),
                    target("web", Some("v1"), &["v2.web", "other"]),
                ),
                ("v2.web".to_owned(), target("web", Some("v2"), &[])),
                ("other".to_owned(), target("other", None, &[])),
            ]),
            ..DiscoveryChain::default()
        };
        chain.policy.outlier = Some(OutlierPolicy {
            interval: GoDuration(Duration::from_secs(1)),
            consecutive_5xx: 2,
            consecutive_gateway_errors: 0,
            enforcing_percent: 100.0,
            max_ejection_percent: 100.0,
            base_ejection_time: GoDuration(Duration::from_secs(60)),
        });
        targets.sync(&chain);
        (targets, chain)
    }

    async fn pick(
        targets: &Targets,
        chain: &DiscoveryChain,
        id: &str,
    ) -> Option<(String, Vec<SocketAddr>)> {
        let target = chain.targets.get(id)?;
        targets
            .candidates(Some((target, chain)), Duration::from_millis(10))
            .await
            .map(|c| (c.service.name.clone(), c.addrs))
    }

    const FAIL: Outcome = Outcome::Response {
        status: 500,
        grpc_status: None,
    };

    #[tokio::test]
    async fn subsets_filter_failover_goes_in_order_and_ejected_endpoints_are_skipped() {
        let web = watch::channel(set(&[(1001, "v1"), (1002, "v2")])).0;
        let (targets, chain) = targets(&web, set(&[(2001, "x")]));
        assert_eq!(
            pick(&targets, &chain, "v1.web").await,
            Some(("web".into(), vec![addr(1001)]))
        );
        assert_eq!(
            pick(&targets, &chain, "other").await,
            Some(("other".into(), vec![addr(2001)]))
        );

        // v1's instance ejected (2 consecutive 5xx): v1 fails over to v2 first.
        let service = targets.service("web").unwrap();
        targets.record(&service, addr(1001), FAIL);
        targets.record(&service, addr(1001), FAIL);
        assert_eq!(*targets.ejected().borrow(), vec![addr(1001)]);
        assert_eq!(
            pick(&targets, &chain, "v1.web").await,
            Some(("web".into(), vec![addr(1002)]))
        );

        // v2 gone too: the next failover target, another service.
        web.send_replace(set(&[(1001, "v1")]));
        assert_eq!(
            pick(&targets, &chain, "v1.web").await,
            Some(("other".into(), vec![addr(2001)]))
        );
        // v2 has no failover of its own.
        assert_eq!(pick(&targets, &chain, "v2.web").await, None);
        assert!(targets.is_live(&addr(2001)) && !targets.is_live(&addr(1002)));
    }

    #[tokio::test]
    async fn services_no_chain_names_are_dropped() {
        let web = watch::channel(set(&[(1001, "v1")])).0;
        let (targets, _) = targets(&web, set(&[(2001, "x")]));
        assert!(targets.service("other").is_some());
        targets.sync(&DiscoveryChain::default());
        assert!(targets.service("other").is_none());
        assert!(targets.service("web").is_some());
    }
}
