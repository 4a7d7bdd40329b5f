//! Outlier detection (`service-defaults` `PassiveHealthCheck`): an endpoint that fails
//! `consecutive_5xx` (or `consecutive_gateway_errors`) times in a row is ejected for
//! `base_ejection_time × times ejected`, unless that would take the share of ejected endpoints
//! above `max_ejection_percent` — except that one endpoint may always be ejected when none is,
//! as Consul documents and Envoy does (with two endpoints and the 10 % default, a failing one is
//! ejected). It is readmitted once the time is up (checked on [`OutlierDetector::is_ejected`]
//! and [`OutlierDetector::ejected`] with the caller's `now`).
//!
//! [`OutlierDetector`] is the pure decision (time passed in); [`Outlier`] is one service's
//! state: its policy and detector, kept across chain changes while the policy is the same.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plexus_api::config_entry::chain::OutlierPolicy;
use tokio::time::Instant;

use super::retry::Outcome;
use crate::discovery::EndpointSet;

#[derive(Debug, Clone, Default)]
struct HostState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    times_ejected: u32,
    ejected_until: Option<Instant>,
}

/// Per-upstream outlier detector, keyed by endpoint (e.g. its `addr:port`).
#[derive(Debug, Clone)]
pub struct OutlierDetector<K: Ord + Clone> {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    enforcing_percent: f64,
    max_ejection_percent: f64,
    base_ejection_time: Duration,
    hosts: BTreeMap<K, HostState>,
}

/// What [`OutlierDetector::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changed.
    Kept,
    /// The endpoint was ejected until the given instant.
    Ejected(Instant),
    /// The endpoint crossed the threshold but was not ejected: the max ejection percent (or the
    /// enforcing draw) forbade it.
    Spared,
}

impl<K: Ord + Clone> OutlierDetector<K> {
    /// A detector with `policy`.
    pub fn new(policy: &OutlierPolicy) -> Self {
        Self {
            consecutive_5xx: policy.consecutive_5xx,
            consecutive_gateway: policy.consecutive_gateway_errors,
            enforcing_percent: policy.enforcing_percent,
            max_ejection_percent: policy.max_ejection_percent,
            base_ejection_time: policy.base_ejection_time.0,
            hosts: BTreeMap::new(),
        }
    }

    /// Replaces the endpoint set: new ones start clean, gone ones are forgotten, the rest keep
    /// their state.
    pub fn set_hosts(&mut self, hosts: impl IntoIterator<Item = K>) {
        let mut next = BTreeMap::new();
        for h in hosts {
            let state = self.hosts.remove(&h).unwrap_or_default();
            next.insert(h, state);
        }
        self.hosts = next;
    }

    /// Records an attempt's outcome for `host` at `now`. `enforce_draw` in `[0, 100)` is compared
    /// with the enforcing percent. Unknown hosts are ignored.
    pub fn record(
        &mut self,
        host: &K,
        outcome: Outcome,
        now: Instant,
        enforce_draw: f64,
    ) -> Verdict {
        let ejected_now = self.ejected_count(now);
        let total = self.hosts.len();
        let Some(state) = self.hosts.get_mut(host) else {
            return Verdict::Kept;
        };
        if state.ejected_until.is_some_and(|t| t > now) {
            return Verdict::Kept;
        }
        if outcome.is_5xx() {
            state.consecutive_5xx += 1;
        } else {
            state.consecutive_5xx = 0;
        }
        if outcome.is_gateway_error() {
            state.consecutive_gateway += 1;
        } else {
            state.consecutive_gateway = 0;
        }
        let tripped = (self.consecutive_5xx > 0 && state.consecutive_5xx >= self.consecutive_5xx)
            || (self.consecutive_gateway > 0
                && state.consecutive_gateway >= self.consecutive_gateway);
        if !tripped {
            return Verdict::Kept;
        }
        state.consecutive_5xx = 0;
        state.consecutive_gateway = 0;
        let within_max = ejected_now == 0
            || (ejected_now + 1) as f64 * 100.0 <= self.max_ejection_percent * total as f64;
        if !within_max || enforce_draw >= self.enforcing_percent {
            return Verdict::Spared;
        }
        state.times_ejected += 1;
        let until = now + self.base_ejection_time.saturating_mul(state.times_ejected);
        state.ejected_until = Some(until);
        Verdict::Ejected(until)
    }

    /// Whether `host` is ejected at `now`.
    pub fn is_ejected(&self, host: &K, now: Instant) -> bool {
        self.hosts
            .get(host)
            .and_then(|s| s.ejected_until)
            .is_some_and(|t| t > now)
    }

    /// Endpoints ejected at `now`.
    pub fn ejected(&self, now: Instant) -> Vec<K> {
        self.hosts
            .iter()
            .filter(|(_, s)| s.ejected_until.is_some_and(|t| t > now))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn ejected_count(&self, now: Instant) -> usize {
        self.hosts
            .values()
            .filter(|s| s.ejected_until.is_some_and(|t| t > now))
            .count()
    }
}

/// One service's outlier state.
#[derive(Debug, Default)]
pub(crate) struct Outlier {
    policy: Option<OutlierPolicy>,
    detector: Option<OutlierDetector<SocketAddr>>,
    /// The endpoint set the detector's hosts were last set from.
    synced: Option<Arc<EndpointSet>>,
}

impl Outlier {
    /// Applies a chain's policy: a different one starts a fresh detector (or none: off), the
    /// same one keeps the ejections in force.
    pub(crate) fn apply(&mut self, policy: Option<&OutlierPolicy>) {
        if self.policy.as_ref() != policy {
            self.policy = policy.copied();
            self.detector = policy.map(OutlierDetector::new);
            self.synced = None;
        }
    }

    /// The detector, its hosts brought up to `set` (`None` when outlier detection is off).
    pub(crate) fn detector(
        &mut self,
        set: &Arc<EndpointSet>,
    ) -> Option<&mut OutlierDetector<SocketAddr>> {
        let detector = self.detector.as_mut()?;
        if !self.synced.as_ref().is_some_and(|s| Arc::ptr_eq(s, set)) {
            detector.set_hosts(set.addrs.iter().copied());
            self.synced = Some(Arc::clone(set));
        }
        Some(detector)
    }
}

#[cfg(test)]
mod tests {
    use plexus_api::GoDuration;
    use proptest::prelude::*;

    use super::*;

    fn policy(n: u32, max_pct: f64) -> OutlierPolicy {
        OutlierPolicy {
            interval: GoDuration(Duration::from_secs(1)),
            consecutive_5xx: n,
            consecutive_gateway_errors: 0,
            enforcing_percent: 100.0,
            max_ejection_percent: max_pct,
            base_ejection_time: GoDuration(Duration::from_secs(10)),
        }
    }

    const FAIL: Outcome = Outcome::Response {
        status: 503,
        grpc_status: None,
    };
    const OK: Outcome = Outcome::Response {
        status: 200,
        grpc_status: None,
    };

    #[test]
    fn consecutive_failures_eject_and_time_readmits_with_growing_ejections() {
        let mut d = OutlierDetector::new(&policy(3, 50.0));
        d.set_hosts(["a", "b"]);
        let t0 = Instant::now();
        assert_eq!(d.record(&"a", FAIL, t0, 0.0), Verdict::Kept);
        assert_eq!(d.record(&"a", OK, t0, 0.0), Verdict::Kept);
        d.record(&"a", FAIL, t0, 0.0);
        d.record(&"a", FAIL, t0, 0.0);
        assert_eq!(
            d.record(&"a", FAIL, t0, 0.0),
            Verdict::Ejected(t0 + Duration::from_secs(10))
        );
        assert!(d.is_ejected(&"a", t0 + Duration::from_secs(9)));
        assert!(!d.is_ejected(&"a", t0 + Duration::from_secs(10)));
        // Second ejection lasts twice as long.
        let t1 = t0 + Duration::from_secs(11);
        for _ in 0..2 {
            d.record(&"a", FAIL, t1, 0.0);
        }
        assert_eq!(
            d.record(&"a", FAIL, t1, 0.0),
            Verdict::Ejected(t1 + Duration::from_secs(20))
        );
        // b cannot also be ejected: 2/2 would exceed 50 %.
        for _ in 0..2 {
            d.record(&"b", FAIL, t1, 0.0);
        }
        assert_eq!(d.record(&"b", FAIL, t1, 0.0), Verdict::Spared);
        assert_eq!(d.ejected(t1), vec!["a"]);
    }

    #[test]
    fn one_endpoint_may_always_be_ejected_whatever_the_max_percent() {
        // Two endpoints, the 10 % default: the failing one is ejected, a second one is not.
        let mut d = OutlierDetector::new(&policy(2, 10.0));
        d.set_hosts(["a", "b"]);
        let t0 = Instant::now();
        d.record(&"a", FAIL, t0, 0.0);
        assert_eq!(
            d.record(&"a", FAIL, t0, 0.0),
            Verdict::Ejected(t0 + Duration::from_secs(10))
        );
        d.record(&"b", FAIL, t0, 0.0);
        assert_eq!(d.record(&"b", FAIL, t0, 0.0), Verdict::Spared);
        assert_eq!(d.ejected(t0), vec!["a"]);
        // Even 0 % allows one; the enforcing draw still applies.
        let mut d = OutlierDetector::new(&policy(1, 0.0));
        d.set_hosts(["a"]);
        assert!(matches!(d.record(&"a", FAIL, t0, 0.0), Verdict::Ejected(_)));
        let mut d = OutlierDetector::new(&OutlierPolicy {
            enforcing_percent: 50.0,
            ..policy(1, 100.0)
        });
        d.set_hosts(["a"]);
        assert_eq!(d.record(&"a", FAIL, t0, 50.0), Verdict::Spared);
    }

    proptest! {
        #[test]
        fn never_ejects_above_max_percent_but_always_one(
            hosts in 1usize..12, max_pct in 0.0f64..=100.0,
            events in proptest::collection::vec((0usize..12, any::<bool>(), 0u64..40), 0..400),
        ) {
            let mut d = OutlierDetector::new(&policy(2, max_pct));
            d.set_hosts(0..hosts);
            let t0 = Instant::now();
            let mut elapsed = 0u64;
            for (h, fail, step) in events {
                elapsed += step;
                let now = t0 + Duration::from_secs(elapsed / 10);
                d.record(&(h % hosts), if fail { FAIL } else { OK }, now, 0.0);
                let ejected = d.ejected(now).len() as f64;
                prop_assert!(ejected <= 1.0 || ejected * 100.0 <= max_pct * hosts as f64 + 1e-9);
            }
        }
    }
}
