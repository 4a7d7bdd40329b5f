//! Rate limiting of signing requests: a token bucket per caller, pure over an explicit clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Callers tracked at most; past that, the least recently seen are forgotten.
const MAX_CALLERS: usize = 10_000;

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Per-caller token buckets.
#[derive(Debug)]
pub struct Limiter {
    burst: f64,
    per_second: f64,
    buckets: HashMap<String, Bucket>,
}

impl Limiter {
    /// A limiter allowing `burst` requests at once and `per_second` sustained, per caller.
    pub fn new(burst: u32, per_second: f64) -> Self {
        Self {
            burst: f64::from(burst),
            per_second,
            buckets: HashMap::new(),
        }
    }

    /// Takes a token for `caller` at `now`; `Err(wait)` says how long until one is available.
    pub fn take(&mut self, caller: &str, now: Instant) -> Result<(), Duration> {
        if self.buckets.len() >= MAX_CALLERS && !self.buckets.contains_key(caller) {
            self.forget_oldest();
        }
        let burst = self.burst;
        let bucket = self.buckets.entry(caller.to_owned()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - bucket.tokens;
            Err(Duration::from_secs_f64(missing / self.per_second))
        }
    }

    fn forget_oldest(&mut self) {
        let mut by_age: Vec<(Instant, String)> = self
            .buckets
            .iter()
            .map(|(caller, bucket)| (bucket.last, caller.clone()))
            .collect();
        by_age.sort();
        for (_, caller) in by_age.into_iter().take(MAX_CALLERS / 10) {
            self.buckets.remove(&caller);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_then_the_sustained_rate_per_caller() {
        let mut limiter = Limiter::new(3, 1.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take("a", t0).is_ok());
        }
        let wait = limiter.take("a", t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1));
        assert!(limiter.take("b", t0).is_ok(), "callers are independent");
        assert!(limiter.take("a", t0 + Duration::from_secs(1)).is_ok());
        assert!(limiter.take("a", t0 + Duration::from_secs(1)).is_err());
    }

    proptest! {
        /// Over any schedule, granted requests never exceed burst + rate × elapsed.
        #[test]
        fn never_more_than_burst_plus_rate(gaps in proptest::collection::vec(0u64..2000, 1..200)) {
            let mut limiter = Limiter::new(5, 2.0);
            let start = Instant::now();
            let mut now = start;
            let mut granted = 0u32;
            for gap in gaps {
                now += Duration::from_millis(gap);
                if limiter.take("x", now).is_ok() {
                    granted += 1;
                }
            }
            let elapsed = now.duration_since(start).as_secs_f64();
            prop_assert!(f64::from(granted) <= 5.0 + 2.0 * elapsed + 1e-9);
        }
    }
}
