//! Endpoints of one upstream: the sidecars in front of its healthy instances.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use plexus_api::client::{Client, ClientError};
use plexus_api::{CheckStatus, ServiceEntry};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::watch::follow;
use crate::state::StateDir;
use plexus_runtime::ErrorChain;

/// The endpoints of one upstream at one moment, as the balancer sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointSet {
    /// `X-Consul-Index` of the answer; `None` until the first answer arrived.
    pub revision: Option<u64>,
    /// Sorted, without duplicates.
    pub addrs: Vec<SocketAddr>,
    /// Tags and meta of each endpoint (a sidecar inherits its app's), for subset filters.
    pub labels: BTreeMap<SocketAddr, Labels>,
}

/// An endpoint's tags and meta.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    /// Service tags.
    pub tags: Vec<String>,
    /// Service meta.
    pub meta: BTreeMap<String, String>,
}

impl EndpointSet {
    /// A set that has been resolved to exactly `addrs` (tests and fixed targets).
    #[cfg(test)]
    pub(crate) fn resolved(addrs: Vec<SocketAddr>) -> Self {
        Self {
            revision: Some(0),
            addrs,
            labels: BTreeMap::new(),
        }
    }

    /// True once the control plane has answered at least once.
    pub(crate) fn is_resolved(&self) -> bool {
        self.revision.is_some()
    }

    /// Builds the set from `/v1/health/connect/:name` rows: address = `Service.Address`, else
    /// `Node.Address`; port = `Service.Port`. Rows that are not passing, or whose address is not
    /// an IP or whose port is 0, are left out and returned separately by instance id.
    pub fn from_entries(revision: u64, entries: &[ServiceEntry]) -> (Self, Vec<String>) {
        let mut addrs = Vec::with_capacity(entries.len());
        let mut skipped = Vec::new();
        let mut labels = BTreeMap::new();
        for entry in entries {
            if entry.aggregated_status() != CheckStatus::Passing {
                continue;
            }
            match entry.dial_address().parse::<IpAddr>() {
                Ok(ip) if entry.service.port != 0 => {
                    let addr = SocketAddr::new(ip, entry.service.port);
                    addrs.push(addr);
                    labels.insert(
                        addr,
                        Labels {
                            tags: entry.service.tags.clone(),
                            meta: entry.service.meta.clone(),
                        },
                    );
                }
                _ => skipped.push(entry.service.id.clone()),
            }
        }
        addrs.sort_unstable();
        addrs.dedup();
        let set = Self {
            revision: Some(revision),
            addrs,
            labels,
        };
        (set, skipped)
    }
}

/// Follows `/v1/health/connect/<destination>?passing` until `stop` fires, publishing the endpoint
/// set on `tx` (only when it changes) and its size on `gauge`. While the control plane cannot be
/// reached the last set stays published.
pub(crate) async fn watch_endpoints(
    client: Client,
    destination: String,
    tx: watch::Sender<Arc<EndpointSet>>,
    gauge: Gauge,
    state: Option<Arc<StateDir>>,
    stop: CancellationToken,
) {
    let file = format!("endpoints/{destination}");
    let fetch = |query| client.health_connect(&destination, true, query);
    let on_update = |update: plexus_api::Indexed<Vec<ServiceEntry>>| {
        let (set, skipped) = EndpointSet::from_entries(update.index, &update.value);
        if !skipped.is_empty() {
            debug!(upstream = %destination, ?skipped, "skipping endpoints without an IP address and port");
        }
        gauge.set(i64::try_from(set.addrs.len()).unwrap_or(i64::MAX));
        tx.send_if_modified(|current| {
            let changed =
                current.addrs != set.addrs || current.labels != set.labels || !current.is_resolved();
            if changed {
                info!(upstream = %destination, endpoints = set.addrs.len(), revision = update.index, "endpoints changed");
                if let Some(state) = &state {
                    state.save(&file, &update);
                }
                *current = Arc::new(set);
            }
            changed
        });
    };
    let on_error = |error: &ClientError| {
        warn!(error = %ErrorChain(error), upstream = %destination, "endpoint watch failed; keeping the last endpoints");
        // Never answered since start: the endpoints saved before a restart, if any.
        if tx.borrow().is_resolved() {
            return;
        }
        let Some((saved, at)) = state
            .as_deref()
            .and_then(|s| s.load::<plexus_api::Indexed<Vec<ServiceEntry>>>(&file))
        else {
            return;
        };
        let (set, _) = EndpointSet::from_entries(saved.index, &saved.value);
        warn!(
            upstream = %destination,
            endpoints = set.addrs.len(),
            saved_at = %crate::staleness::rfc3339(at),
            "no control-plane server answers; using the last good endpoints (stale)"
        );
        gauge.set(i64::try_from(set.addrs.len()).unwrap_or(i64::MAX));
        tx.send_replace(Arc::new(set));
    };
    follow(0, &stop, fetch, on_update, on_error).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_api::{AgentService, HealthCheck, Node};

    fn entry(id: &str, service_addr: &str, node_addr: &str, port: u16) -> ServiceEntry {
        ServiceEntry {
            node: Node {
                address: node_addr.into(),
                ..Node::default()
            },
            service: AgentService {
                id: id.into(),
                address: service_addr.into(),
                port,
                ..AgentService::default()
            },
            checks: Vec::new(),
        }
    }

    #[test]
    fn addresses_fall_back_to_the_node_and_bad_rows_are_skipped() {
        let mut critical = entry("sick", "127.0.0.9", "", 21009);
        critical.checks.push(HealthCheck {
            status: CheckStatus::Critical,
            ..HealthCheck::default()
        });
        let entries = [
            entry("b", "127.0.0.2", "10.0.0.1", 21001),
            entry("a", "", "127.0.0.1", 21000),
            entry("dup", "127.0.0.1", "", 21000),
            entry("host", "echo.local", "", 21002),
            entry("noport", "127.0.0.3", "", 0),
            critical,
        ];
        let (set, skipped) = EndpointSet::from_entries(4, &entries);
        assert_eq!(set.revision, Some(4));
        let expected: Vec<SocketAddr> = vec![
            "127.0.0.1:21000".parse().unwrap(),
            "127.0.0.2:21001".parse().unwrap(),
        ];
        assert_eq!(set.addrs, expected);
        assert_eq!(skipped, ["host", "noport"]);
        assert!(!EndpointSet::default().is_resolved());
    }
}
