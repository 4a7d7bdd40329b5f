//! Balance: which endpoint a new connection tries first, and which ones after that.
//!
//! [`RoundRobin`] is pure decision logic (no I/O, no clock): each call to [`RoundRobin::order`]
//! starts one endpoint further along and then visits every other endpoint once, so a caller that
//! moves on after a failed connect skips dead endpoints without starving the live ones.
//!
//! [`recent`] moves endpoints whose connect just failed to the back of the L4 order for a while.
//!
//! L7 policies (`service-resolver` `LoadBalancer`), equally pure:
//! - [`p2c`]: `least_request` and `peak_ewma` (power of two choices);
//! - [`hash`]: `ring_hash` ([`hash::Ring`]) and `maglev` ([`hash::Maglev`]) keyed by
//!   [`hash::hash_key`] of a header, cookie, query parameter or source IP.
//!
//! Their stateful counterpart, one per service of an HTTP upstream: `Balancer` (requests in
//! flight, latency estimates, hash tables), used by the HTTP stack's balance layer.

use std::sync::atomic::{AtomicUsize, Ordering};

mod balancer;
pub mod hash;
pub mod p2c;
pub(crate) mod recent;

pub(crate) use balancer::{Balancer, HashInput, request_hash};

/// A round-robin picker shared by all connections of one outbound listener.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The order in which to try `endpoints` for one new connection: the next one in turn first,
    /// then the rest, each exactly once. Empty when `endpoints` is.
    pub fn order<'a, T>(&self, endpoints: &'a [T]) -> impl Iterator<Item = &'a T> + 'a {
        let len = endpoints.len();
        attempt_order(self.start(len), len).map(move |i| &endpoints[i])
    }

    /// Where the next order over `len` endpoints starts (0 when there are none).
    pub fn start(&self, len: usize) -> usize {
        if len == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % len
        }
    }
}

/// Indices `start, start+1, …` modulo `len`, `len` of them.
fn attempt_order(start: usize, len: usize) -> impl Iterator<Item = usize> {
    (0..len).map(move |i| (start + i) % len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_picked_n_over_k_plus_or_minus_one_times() {
        for k in 1..=9usize {
            for n in 0..=60usize {
                let picker = RoundRobin::default();
                let endpoints: Vec<usize> = (0..k).collect();
                let mut counts = vec![0usize; k];
                for _ in 0..n {
                    let first = picker.order(&endpoints).next().copied();
                    counts[first.unwrap()] += 1;
                }
                for (endpoint, count) in counts.iter().enumerate() {
                    assert!(
                        count.abs_diff(n / k) <= 1,
                        "k={k} n={n}: endpoint {endpoint} picked {count} times"
                    );
                }
            }
        }
    }

    #[test]
    fn each_pick_visits_every_endpoint_once_starting_with_the_next() {
        let picker = RoundRobin::default();
        let endpoints = ["a", "b", "c"];
        let orders: Vec<Vec<&str>> = (0..4)
            .map(|_| picker.order(&endpoints).copied().collect())
            .collect();
        assert_eq!(
            orders,
            [
                vec!["a", "b", "c"],
                vec!["b", "c", "a"],
                vec!["c", "a", "b"],
                vec!["a", "b", "c"],
            ]
        );
        assert_eq!(picker.order::<&str>(&[]).count(), 0);
    }

    #[test]
    fn skipping_failures_reaches_a_live_endpoint_and_spreads_over_survivors() {
        let picker = RoundRobin::default();
        let endpoints = ["a", "dead", "c", "d"];
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..400 {
            let chosen = picker.order(&endpoints).find(|e| **e != "dead").copied();
            *counts.entry(chosen.unwrap()).or_insert(0) += 1;
        }
        assert!(!counts.contains_key("dead"));
        assert_eq!(counts.values().sum::<i32>(), 400);
        assert!(counts.values().all(|c| *c >= 100), "{counts:?}");
        // When every endpoint fails, each is tried exactly once and then the caller gives up.
        let all_dead = ["x", "y"];
        assert_eq!(picker.order(&all_dead).count(), 2);
    }
}
