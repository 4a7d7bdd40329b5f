//! Power-of-two-choices balancers: draw two distinct endpoints at random, keep the less loaded.
//!
//! - `least_request`: load = requests in flight ([`least_request`]);
//! - `peak_ewma`: load = latency EWMA (which jumps up to any slower sample at once and decays
//!   towards faster ones) × (requests in flight + 1) ([`PeakEwma`], [`peak_ewma_pick`]).
//!
//! Pure: the caller supplies random indices, loads and the time.

use std::time::Duration;

use tokio::time::Instant;

/// Two distinct candidate indices in `0..len` from two random numbers (`r2` picks among the
/// others). `None` when `len == 0`; the same index twice when `len == 1`.
pub fn candidates(len: usize, r1: usize, r2: usize) -> Option<(usize, usize)> {
    match len {
        0 => None,
        1 => Some((0, 0)),
        _ => {
            let a = r1 % len;
            let b = (a + 1 + r2 % (len - 1)) % len;
            Some((a, b))
        }
    }
}

/// `least_request` P2C: of two random candidates, the one with fewer requests in flight (the
/// first on a tie). `in_flight[i]` is endpoint `i`'s count.
pub fn least_request(in_flight: &[u32], r1: usize, r2: usize) -> Option<usize> {
    let (a, b) = candidates(in_flight.len(), r1, r2)?;
    Some(if in_flight[b] < in_flight[a] { b } else { a })
}

/// Per-endpoint latency estimate for `peak_ewma`.
#[derive(Debug, Clone)]
pub struct PeakEwma {
    decay: Duration,
    cost_ns: f64,
    stamp: Instant,
}

impl PeakEwma {
    /// A fresh estimate (`initial` latency, decaying with time constant `decay`).
    pub fn new(initial: Duration, decay: Duration, now: Instant) -> Self {
        Self {
            decay: decay.max(Duration::from_millis(1)),
            cost_ns: initial.as_nanos() as f64,
            stamp: now,
        }
    }

    /// Records a response latency observed at `now`.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        if rtt > self.cost_ns {
            self.cost_ns = rtt;
        } else {
            let dt = now.saturating_duration_since(self.stamp).as_secs_f64();
            let w = (-dt / self.decay.as_secs_f64()).exp();
            self.cost_ns = self.cost_ns * w + rtt * (1.0 - w);
        }
        self.stamp = self.stamp.max(now);
    }

    /// Lets the estimate decay towards zero for the time since its last update (as tower's and
    /// Linkerd's peak EWMA do when the load is read): without it, an endpoint that answered
    /// slowly once would never be picked again, so its estimate would never come down.
    pub fn decay(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.stamp).as_secs_f64();
        self.cost_ns *= (-dt / self.decay.as_secs_f64()).exp();
        self.stamp = self.stamp.max(now);
    }

    /// The current latency estimate in nanoseconds.
    pub fn latency_ns(&self) -> f64 {
        self.cost_ns
    }

    /// Load score: estimate × (in flight + 1).
    pub fn cost(&self, in_flight: u32) -> f64 {
        self.cost_ns * f64::from(in_flight.saturating_add(1))
    }
}

/// `peak_ewma` P2C: of two random candidates, the one with the lower [`PeakEwma::cost`].
/// `endpoints[i]` is `(estimate, in flight)`.
pub fn peak_ewma_pick(endpoints: &[(&PeakEwma, u32)], r1: usize, r2: usize) -> Option<usize> {
    let (a, b) = candidates(endpoints.len(), r1, r2)?;
    let cost = |i: usize| endpoints[i].0.cost(endpoints[i].1);
    Some(if cost(b) < cost(a) { b } else { a })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn candidates_are_distinct_and_in_range(len in 2usize..50, r1 in any::<usize>(), r2 in any::<usize>()) {
            let (a, b) = candidates(len, r1, r2).unwrap();
            prop_assert!(a < len && b < len && a != b);
        }

        #[test]
        fn least_request_never_picks_the_busier_candidate(loads in proptest::collection::vec(0u32..100, 1..20), r1 in any::<usize>(), r2 in any::<usize>()) {
            let pick = least_request(&loads, r1, r2).unwrap();
            let (a, b) = candidates(loads.len(), r1, r2).unwrap();
            prop_assert!(pick == a || pick == b);
            prop_assert_eq!(loads[pick], loads[a].min(loads[b]));
        }

        #[test]
        fn the_most_loaded_endpoint_is_never_picked_when_strictly_worst(loads in proptest::collection::vec(0u32..100, 2..20), r1 in any::<usize>(), r2 in any::<usize>()) {
            let max = *loads.iter().max().unwrap();
            prop_assume!(loads.iter().filter(|l| **l == max).count() == 1);
            let pick = least_request(&loads, r1, r2).unwrap();
            prop_assert!(loads[pick] < max);
        }
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(10), Duration::from_secs(10), t0);
        e.observe(Duration::from_millis(500), t0);
        assert_eq!(e.latency_ns(), 500e6);
        e.observe(Duration::from_millis(10), t0 + Duration::from_secs(10));
        let l = e.latency_ns();
        assert!(l < 500e6 && l > 10e6, "{l}");
        let fast = PeakEwma::new(Duration::from_millis(10), Duration::from_secs(10), t0);
        // A slow endpoint loses to a fast one whichever order they are drawn in.
        for (r1, r2) in [(0, 0), (1, 0)] {
            assert_eq!(peak_ewma_pick(&[(&e, 0), (&fast, 0)], r1, r2), Some(1));
        }
    }

    #[test]
    fn an_endpoint_not_picked_any_more_becomes_cheap_again_with_time() {
        let t0 = Instant::now();
        let mut slow = PeakEwma::new(Duration::from_millis(1), Duration::from_secs(10), t0);
        slow.observe(Duration::from_millis(300), t0);
        slow.decay(t0);
        assert_eq!(slow.latency_ns(), 300e6);
        slow.decay(t0 + Duration::from_secs(10));
        let after = slow.latency_ns();
        assert!((after - 300e6 / std::f64::consts::E).abs() < 1e3, "{after}");
        slow.decay(t0 + Duration::from_secs(60));
        assert!(slow.latency_ns() < 1e6, "{}", slow.latency_ns());
    }
}
