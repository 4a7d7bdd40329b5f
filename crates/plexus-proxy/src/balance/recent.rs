//! Passive failure memory of the L4 path: an endpoint whose connect just failed (refused, timed
//! out: a host gone or cut off) is tried *after* the others for a while, so new connections stop
//! paying its connect timeout before the control plane has marked it critical (and, on a host
//! cut off from the network, while its last configuration still lists unreachable endpoints).
//! It is never skipped: when every other endpoint fails it is still tried, and one success
//! clears it. Pure: callers pass `now`.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a failed endpoint goes to the back of the order.
pub(crate) const FAILED_HOLD: Duration = Duration::from_secs(5);

/// Endpoints whose last connect failed, and when.
#[derive(Debug)]
pub(crate) struct RecentFailures<T> {
    failed: Mutex<HashMap<T, Instant>>,
    hold: Duration,
}

impl<T> Default for RecentFailures<T> {
    fn default() -> Self {
        Self {
            failed: Mutex::new(HashMap::new()),
            hold: FAILED_HOLD,
        }
    }
}

impl<T: Eq + Hash + Clone> RecentFailures<T> {
    fn failed(&self) -> std::sync::MutexGuard<'_, HashMap<T, Instant>> {
        // A poisoned map is still a valid map of times.
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `order` with the endpoints that failed within the hold moved to the back (both parts keep
    /// their order).
    pub(crate) fn reorder<'a>(&self, order: impl Iterator<Item = &'a T>, now: Instant) -> Vec<&'a T>
    where
        T: 'a,
    {
        let mut failed = self.failed();
        failed.retain(|_, at| now.saturating_duration_since(*at) < self.hold);
        let (mut fresh, held): (Vec<&T>, Vec<&T>) = order.partition(|t| !failed.contains_key(*t));
        fresh.extend(held);
        fresh
    }

    /// A connect to `endpoint` failed at `now`.
    pub(crate) fn record_failure(&self, endpoint: &T, now: Instant) {
        self.failed().insert(endpoint.clone(), now);
    }

    /// A connect to `endpoint` succeeded.
    pub(crate) fn record_success(&self, endpoint: &T) {
        let mut failed = self.failed();
        if !failed.is_empty() {
            failed.remove(endpoint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_failed_endpoint_goes_last_until_the_hold_is_over_or_it_succeeds() {
        let recent = RecentFailures::default();
        let t0 = Instant::now();
        let endpoints = ["a", "b", "c"];
        recent.record_failure(&"a", t0);
        let order = |now| {
            recent
                .reorder(endpoints.iter(), now)
                .into_iter()
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(order(t0), ["b", "c", "a"]);
        assert_eq!(
            order(t0 + FAILED_HOLD - Duration::from_millis(1)),
            ["b", "c", "a"]
        );
        assert_eq!(order(t0 + FAILED_HOLD), ["a", "b", "c"]);
        recent.record_failure(&"b", t0);
        recent.record_success(&"b");
        assert_eq!(order(t0), ["a", "b", "c"]);
    }

    proptest! {
        /// Nothing is ever dropped or duplicated: the result is a permutation of the input, the
        /// fresh endpoints first in their order.
        #[test]
        fn reorder_is_a_stable_partition(
            order in proptest::collection::vec(0u8..20, 0..20),
            failed in proptest::collection::vec(0u8..20, 0..10),
        ) {
            let recent = RecentFailures::default();
            let now = Instant::now();
            for f in &failed {
                recent.record_failure(f, now);
            }
            let out: Vec<u8> = recent.reorder(order.iter(), now).into_iter().copied().collect();
            let mut sorted_in = order.clone();
            let mut sorted_out = out.clone();
            sorted_in.sort_unstable();
            sorted_out.sort_unstable();
            prop_assert_eq!(sorted_in, sorted_out);
            let fresh: Vec<u8> = order.iter().copied().filter(|o| !failed.contains(o)).collect();
            prop_assert_eq!(&out[..fresh.len()], &fresh[..]);
        }
    }
}
