//! Retrying with bounded, jittered exponential backoff: the one schedule every reconnect loop
//! (control-plane watches, leases, store connections, broker sessions) uses.
//!
//! Attempt `n` (0 for the first retry) waits between half and all of `min(first · 2ⁿ, max)`
//! ("equal jitter"): never less than half the ceiling, so a fleet that failed together spreads
//! out without any retry coming back immediately. [`Backoff::delay`] is the pure rule (a random
//! draw in, a duration out); [`Backoff::next_delay`] draws and counts.

use std::time::Duration;

use rand::Rng;

/// A retry schedule: the state of one reconnect loop. Call [`Backoff::next_delay`] after each
/// failure and [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    /// 100 ms doubling to 5 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    /// A schedule whose first ceiling is `first`, doubling up to `max` (`max` below `first` is
    /// taken as `first`).
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next retry (random within its attempt's bounds); counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let unit: f64 = rand::rng().random_range(0.0..=1.0);
        let delay = self.delay(self.attempt, unit);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// The ceiling the next retry's delay is drawn under (what to show in a log line).
    pub fn next_ceiling(&self) -> Duration {
        self.ceiling(self.attempt)
    }

    /// Forgets past failures: the next delay is drawn from the first ceiling again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The upper bound of attempt `attempt`'s delay: `min(first · 2^attempt, max)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        exponential(self.first, self.max.max(self.first), attempt)
    }

    /// Attempt `attempt`'s delay for a draw `unit` in `[0, 1]`: `ceiling/2 + unit · ceiling/2`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let half = self.ceiling(attempt) / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// `min(base · 2^attempt, max)`, without overflow for any `attempt`.
pub fn exponential(base: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// `period` plus a random extra of up to `share` of it (`share` clamped to `[0, 1]`), so timers
/// started together (lease renewals, blocking-query deadlines) do not fire together.
pub fn spread(period: Duration, share: f64) -> Duration {
    let unit: f64 = rand::rng().random_range(0.0..1.0);
    period + period.mul_f64(share.clamp(0.0, 1.0) * unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_to_its_cap_and_stays_within_bounds() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), 100 * MS);
        assert_eq!(b.ceiling(1), 200 * MS);
        assert_eq!(b.ceiling(5), 3200 * MS);
        assert_eq!(b.ceiling(6), Duration::from_secs(5));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(5));
        assert_eq!(b.delay(0, 0.0), 50 * MS);
        assert_eq!(b.delay(0, 1.0), 100 * MS);
        let mut backoff = Backoff::default();
        for attempt in 0..40 {
            assert_eq!(backoff.next_ceiling(), b.ceiling(attempt));
            let delay = backoff.next_delay();
            assert!(delay >= b.ceiling(attempt) / 2 && delay <= b.ceiling(attempt));
        }
        backoff.reset();
        assert!(backoff.next_delay() <= 100 * MS);
    }

    #[test]
    fn a_cap_below_the_first_delay_is_the_first_delay() {
        let b = Backoff::new(200 * MS, 10 * MS);
        assert_eq!(b.ceiling(0), 200 * MS);
        assert_eq!(b.ceiling(9), 200 * MS);
    }

    #[test]
    fn spread_adds_at_most_its_share() {
        for _ in 0..100 {
            let d = spread(100 * MS, 0.25);
            assert!(d >= 100 * MS && d < 125 * MS, "{d:?}");
        }
        assert_eq!(spread(Duration::ZERO, 1.0), Duration::ZERO);
        assert_eq!(spread(100 * MS, 0.0), 100 * MS);
    }

    proptest! {
        /// Every delay lies in [ceiling/2, ceiling], the ceiling never passes the cap and never
        /// shrinks from one attempt to the next.
        #[test]
        fn delays_are_bounded_and_monotone(first_ms in 1u64..10_000, max_ms in 1u64..100_000, attempt in 0u32..200, unit in 0.0f64..=1.0) {
            let ms = Duration::from_millis;
            let b = Backoff::new(ms(first_ms), ms(max_ms));
            let cap = ms(max_ms.max(first_ms));
            let ceiling = b.ceiling(attempt);
            prop_assert!(ceiling <= cap);
            prop_assert!(ceiling >= ms(first_ms));
            prop_assert!(b.ceiling(attempt + 1) >= ceiling);
            let d = b.delay(attempt, unit);
            prop_assert!(d >= ceiling / 2 && d <= ceiling);
        }
    }
}
