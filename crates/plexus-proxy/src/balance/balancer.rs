//! Balancer state of one service and the `service-resolver` `LoadBalancer` policies applied to a
//! request's candidate endpoints. The decisions themselves are the pure `balance/` functions;
//! this keeps what they need: requests in flight, latency estimates, hash tables (rebuilt only
//! when the candidate set changes).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use plexus_api::config_entry::chain::{HashSource, LbAlgorithm, LoadBalancerPolicy};

use crate::balance::hash::{self, Maglev, Ring};
use crate::balance::{RoundRobin, p2c};
use plexus_runtime::http::query_value;
use plexus_runtime::lock::lock;

/// Latency assumed for an endpoint without a sample yet (`peak_ewma`).
const EWMA_INITIAL: Duration = Duration::from_millis(1);
/// Time constant of the `peak_ewma` estimate's decay towards faster samples.
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// One service's balancer state.
#[derive(Default)]
pub(crate) struct Balancer {
    round_robin: RoundRobin,
    in_flight: Mutex<HashMap<SocketAddr, u32>>,
    ewma: Mutex<HashMap<SocketAddr, p2c::PeakEwma>>,
    table: Mutex<Option<Arc<Table>>>,
}

/// A consistent-hash table over one candidate set.
struct Table {
    addrs: Vec<SocketAddr>,
    algorithm: LbAlgorithm,
    ring_size: u32,
    lookup: Lookup,
}

enum Lookup {
    Ring(Ring),
    Maglev(Maglev),
}

impl Balancer {
    /// The order in which to try `addrs` (non-empty) for one request: the policy's pick first,
    /// then the others in round-robin order (a caller moves on when a connection fails).
    /// `hash` is the request's key for `ring_hash`/`maglev`; without one they fall back to
    /// round robin.
    pub(crate) fn order(
        &self,
        policy: &LoadBalancerPolicy,
        hash: Option<u64>,
        mut addrs: Vec<SocketAddr>,
    ) -> Vec<SocketAddr> {
        let first = match policy.policy {
            LbAlgorithm::RoundRobin => None,
            LbAlgorithm::LeastRequest => {
                let in_flight = lock(&self.in_flight);
                let counts: Vec<u32> = addrs
                    .iter()
                    .map(|addr| in_flight.get(addr).copied().unwrap_or(0))
                    .collect();
                p2c::least_request(&counts, draw(), draw())
            }
            LbAlgorithm::PeakEwma => {
                let now = Instant::now();
                let in_flight = lock(&self.in_flight);
                let mut ewma = lock(&self.ewma);
                // Estimates of endpoints long gone are dropped now and then.
                if ewma.len() > addrs.len() * 4 + 16 {
                    ewma.retain(|addr, _| addrs.contains(addr));
                }
                for addr in &addrs {
                    ewma.entry(*addr)
                        .or_insert_with(|| p2c::PeakEwma::new(EWMA_INITIAL, EWMA_DECAY, now))
                        .decay(now);
                }
                let loads: Vec<(&p2c::PeakEwma, u32)> = addrs
                    .iter()
                    .filter_map(|addr| {
                        let estimate = ewma.get(addr)?;
                        Some((estimate, in_flight.get(addr).copied().unwrap_or(0)))
                    })
                    .collect();
                p2c::peak_ewma_pick(&loads, draw(), draw())
            }
            LbAlgorithm::RingHash | LbAlgorithm::Maglev => {
                hash.and_then(|hash| self.table(policy, &addrs).pick(hash))
            }
        };
        let first = first.and_then(|i| addrs.get(i).copied());
        // Reordered in place: the round-robin order is a rotation.
        let start = self.round_robin.start(addrs.len());
        addrs.rotate_left(start);
        if let Some(addr) = first {
            addrs.retain(|other| *other != addr);
            addrs.insert(0, addr);
        }
        addrs
    }

    /// Counts a request in flight on `addr` until the returned guard is dropped; the guard
    /// records the latency to the response headers with [`InFlight::responded`].
    pub(crate) fn start(&self, addr: SocketAddr) -> InFlight<'_> {
        *lock(&self.in_flight).entry(addr).or_default() += 1;
        InFlight {
            balancer: self,
            addr,
            started: Instant::now(),
        }
    }

    fn table(&self, policy: &LoadBalancerPolicy, addrs: &[SocketAddr]) -> Arc<Table> {
        let mut cached = lock(&self.table);
        if let Some(table) = cached.as_ref().filter(|table| {
            table.addrs == addrs
                && table.algorithm == policy.policy
                && table.ring_size == policy.ring_size
        }) {
            return Arc::clone(table);
        }
        let hosts: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
        let lookup = if policy.policy == LbAlgorithm::Maglev {
            Lookup::Maglev(Maglev::new(&hosts, Maglev::DEFAULT_SIZE))
        } else {
            // Points per endpoint stay constant as endpoints come and go, so a removal moves
            // only the keys the removed endpoint owned.
            Lookup::Ring(Ring::new(&hosts, (policy.ring_size / 8).max(16)))
        };
        let table = Arc::new(Table {
            addrs: addrs.to_vec(),
            algorithm: policy.policy,
            ring_size: policy.ring_size,
            lookup,
        });
        *cached = Some(Arc::clone(&table));
        table
    }
}

impl Table {
    fn pick(&self, hash: u64) -> Option<usize> {
        match &self.lookup {
            Lookup::Ring(ring) => ring.pick(hash),
            Lookup::Maglev(maglev) => maglev.pick(hash),
        }
    }
}

/// A request in flight on one endpoint (see [`Balancer::start`]).
pub(crate) struct InFlight<'a> {
    balancer: &'a Balancer,
    addr: SocketAddr,
    started: Instant,
}

impl InFlight<'_> {
    /// The response headers arrived: feeds the latency to the `peak_ewma` estimate.
    pub(crate) fn responded(&self) {
        let now = Instant::now();
        let mut ewma = lock(&self.balancer.ewma);
        ewma.entry(self.addr)
            .or_insert_with(|| p2c::PeakEwma::new(EWMA_INITIAL, EWMA_DECAY, now))
            .observe(now.saturating_duration_since(self.started), now);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.balancer.in_flight);
        if let Some(count) = in_flight.get_mut(&self.addr) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                in_flight.remove(&self.addr);
            }
        }
    }
}

/// A request as the hash policies see it.
pub(crate) struct HashInput<'a> {
    /// Request headers.
    pub headers: &'a http::HeaderMap,
    /// The query string, if any.
    pub query: Option<&'a str>,
    /// The app's address (source IP).
    pub source: Option<std::net::IpAddr>,
}

/// The request's hash key from the policy's `HashPolicies`, in order: the values of the
/// sources that yield one are combined, and a `terminal` source that yields one ends the list.
/// `None` when no source yields a value.
pub(crate) fn request_hash(policy: &LoadBalancerPolicy, request: &HashInput<'_>) -> Option<u64> {
    let mut key: Option<Vec<u8>> = None;
    for source in &policy.hash_policies {
        let value = match &source.source {
            HashSource::Header(name) => request
                .headers
                .get(name.as_str())
                .map(|value| value.as_bytes().to_vec()),
            HashSource::Cookie(name) => cookie(request.headers, name).map(String::into_bytes),
            HashSource::QueryParameter(name) => {
                query_value(request.query, name).map(String::into_bytes)
            }
            HashSource::SourceIp => request.source.map(|ip| ip.to_string().into_bytes()),
        };
        if let Some(value) = value {
            let key = key.get_or_insert_with(Vec::new);
            key.extend_from_slice(&value);
            key.push(0);
            if source.terminal {
                break;
            }
        }
    }
    key.map(|key| hash::hash_key(&key))
}

/// A random index draw for the P2C balancers.
fn draw() -> usize {
    usize::try_from(rand::random::<u32>()).unwrap_or(0)
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

#[cfg(test)]
mod tests {
    use plexus_api::config_entry::chain::HashKey;
    use proptest::prelude::*;

    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 20000 + i)))
            .collect()
    }

    fn policy(algorithm: LbAlgorithm) -> LoadBalancerPolicy {
        LoadBalancerPolicy {
            policy: algorithm,
            choice_count: 2,
            ring_size: 1024,
            hash_policies: vec![HashKey {
                source: HashSource::Header("x-user".into()),
                terminal: false,
            }],
        }
    }

    #[test]
    fn every_order_visits_each_endpoint_once_with_the_pick_first() {
        let balancer = Balancer::default();
        let all = addrs(5);
        for algorithm in [
            LbAlgorithm::RoundRobin,
            LbAlgorithm::LeastRequest,
            LbAlgorithm::PeakEwma,
            LbAlgorithm::RingHash,
            LbAlgorithm::Maglev,
        ] {
            let mut order = balancer.order(&policy(algorithm), Some(42), all.clone());
            order.sort_unstable();
            assert_eq!(order, all, "{algorithm:?}");
        }
    }

    #[test]
    fn least_request_never_picks_the_busiest_of_two() {
        let balancer = Balancer::default();
        let all = addrs(2);
        let _busy = balancer.start(all[0]);
        for _ in 0..50 {
            assert_eq!(
                balancer.order(&policy(LbAlgorithm::LeastRequest), None, all.clone())[0],
                all[1]
            );
        }
    }

    #[test]
    fn hash_policies_pick_the_same_endpoint_for_the_same_key() {
        let balancer = Balancer::default();
        let all = addrs(4);
        for algorithm in [LbAlgorithm::RingHash, LbAlgorithm::Maglev] {
            let policy = policy(algorithm);
            let mut seen = std::collections::BTreeSet::new();
            for user in 0..40 {
                let mut headers = http::HeaderMap::new();
                headers.insert("x-user", format!("user-{user}").parse().unwrap());
                let input = HashInput {
                    headers: &headers,
                    query: None,
                    source: None,
                };
                let hash = request_hash(&policy, &input);
                let first = balancer.order(&policy, hash, all.clone())[0];
                for _ in 0..5 {
                    assert_eq!(balancer.order(&policy, hash, all.clone())[0], first);
                }
                seen.insert(first);
            }
            assert!(
                seen.len() > 1,
                "{algorithm:?}: 40 users all on one endpoint"
            );
        }
    }

    #[test]
    fn hash_keys_come_from_header_cookie_query_and_source_ip_in_order() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::COOKIE, "a=1; session=abc".parse().unwrap());
        let input = HashInput {
            headers: &headers,
            query: Some("u=7"),
            source: Some([10, 0, 0, 1].into()),
        };
        let key = |sources: Vec<(HashSource, bool)>| {
            let policy = LoadBalancerPolicy {
                hash_policies: sources
                    .into_iter()
                    .map(|(source, terminal)| HashKey { source, terminal })
                    .collect(),
                ..LoadBalancerPolicy::default()
            };
            request_hash(&policy, &input)
        };
        assert_eq!(
            key(vec![(HashSource::Header("x-none".into()), false)]),
            None
        );
        let cookie = key(vec![(HashSource::Cookie("session".into()), false)]);
        assert_eq!(cookie, Some(hash::hash_key(b"abc\0")));
        assert_eq!(
            key(vec![(HashSource::QueryParameter("u".into()), false)]),
            Some(hash::hash_key(b"7\0"))
        );
        assert_eq!(
            key(vec![(HashSource::SourceIp, false)]),
            Some(hash::hash_key(b"10.0.0.1\0"))
        );
        // A terminal source that yields a value ends the list.
        assert_eq!(
            key(vec![
                (HashSource::Cookie("session".into()), true),
                (HashSource::SourceIp, false)
            ]),
            cookie
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Through the balancer's cached tables: the same key keeps its endpoint while the set
        /// is unchanged, and removing an endpoint moves (ring hash) only the keys it had.
        #[test]
        fn hash_picks_are_consistent_and_removal_moves_only_the_removed_keys(
            n in 2u16..8, removed in 0usize..8, keys in proptest::collection::vec(any::<u64>(), 1..100),
        ) {
            let balancer = Balancer::default();
            let all = addrs(n);
            let removed = all[removed % all.len()];
            let rest: Vec<SocketAddr> = all.iter().copied().filter(|a| *a != removed).collect();
            let ring = policy(LbAlgorithm::RingHash);
            for key in keys {
                let before = balancer.order(&ring, Some(key), all.clone())[0];
                prop_assert_eq!(balancer.order(&ring, Some(key), all.clone())[0], before);
                let after = balancer.order(&ring, Some(key), rest.clone())[0];
                if before != removed {
                    prop_assert_eq!(after, before);
                }
            }
        }
    }
}
