//! Token bucket rate limiting: `burst` tokens at most, refilled at `requests_per_second`; a
//! request takes one token or is refused (429).

use std::time::Instant;

use plexus_api::config_entry::chain::TokenBucketPolicy;

/// A token bucket. Starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket per `policy`, as of `now`.
    pub fn new(policy: &TokenBucketPolicy, now: Instant) -> Self {
        let burst = f64::from(policy.burst.max(1));
        Self {
            rate: policy.requests_per_second.max(0.0),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token at `now` if one is available.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    fn refill(&mut self, now: Instant) {
        if now > self.last {
            let dt = now.duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
            self.last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn bucket(rps: f64, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket::new(
            &TokenBucketPolicy {
                requests_per_second: rps,
                burst,
            },
            now,
        )
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = bucket(10.0, 5, t0);
        assert_eq!((0..20).filter(|_| b.try_acquire(t0)).count(), 5);
        // 1 s later: 10 tokens accrued, capped at 5.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| b.try_acquire(t1)).count(), 5);
        // 100 ms later: one token.
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!((0..20).filter(|_| b.try_acquire(t2)).count(), 1);
    }

    proptest! {
        #[test]
        fn never_exceeds_burst_or_rate(
            rps in 0.1f64..1000.0, burst in 1u32..100,
            steps in proptest::collection::vec((0u64..200, 0u32..50), 1..100),
        ) {
            let t0 = Instant::now();
            let mut b = bucket(rps, burst, t0);
            let mut elapsed_ms = 0u64;
            let mut granted = 0u64;
            for (dt, tries) in steps {
                elapsed_ms += dt;
                let now = t0 + Duration::from_millis(elapsed_ms);
                prop_assert!(b.available(now) <= f64::from(burst) + 1e-9);
                granted += (0..tries).filter(|_| b.try_acquire(now)).count() as u64;
                let max = f64::from(burst) + rps * elapsed_ms as f64 / 1000.0;
                prop_assert!(granted as f64 <= max + 1e-6, "granted {} > {}", granted, max);
            }
        }
    }
}
