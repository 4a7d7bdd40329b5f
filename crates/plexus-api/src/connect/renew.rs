//! When to renew a leaf certificate: a pure function of its lifetime and a random draw. Shared by
//! the built-in sidecar and the xDS server (which renews leaves on behalf of Envoys).

/// The share of the remaining lifetime after which a leaf is renewed, before jitter.
const RENEW_AT: f64 = 0.5;
/// Jitter around [`RENEW_AT`], as a share of the lifetime (±), so sidecars started together do
/// not all renew at once.
const JITTER: f64 = 0.1;

/// The Unix time (seconds, fractional) at which to renew a leaf received at `issued` that expires
/// at `not_after`; `draw` is uniform in `[0, 1)`. About half-way: between 40 % and 60 % of the
/// lifetime left at issue.
pub fn renew_at(issued: f64, not_after: f64, draw: f64) -> f64 {
    let life = (not_after - issued).max(0.0);
    let share = RENEW_AT + JITTER * (2.0 * draw.clamp(0.0, 1.0) - 1.0);
    issued + life * share
}

/// How long to wait before retrying after the `attempt`-th failed renewal (1-based): 1 s
/// doubling to 30 s, and never past a tenth of the time left before `not_after` (so a leaf close
/// to expiry is retried often).
pub fn retry_after(attempt: u32, now: f64, not_after: f64) -> f64 {
    let backoff = f64::from(1u32 << attempt.saturating_sub(1).min(5)).min(30.0);
    let left = (not_after - now).max(0.0);
    backoff.min((left / 10.0).max(0.2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn about_half_the_lifetime() {
        assert_eq!(renew_at(0.0, 120.0, 0.5), 60.0);
        assert_eq!(renew_at(0.0, 120.0, 0.0), 48.0);
        assert!((renew_at(0.0, 120.0, 1.0) - 72.0).abs() < 1e-9);
        assert_eq!(retry_after(1, 0.0, 1000.0), 1.0);
        assert_eq!(retry_after(10, 0.0, 1000.0), 30.0);
        assert_eq!(retry_after(10, 0.0, 20.0), 2.0);
    }

    proptest! {
        /// Renewal always falls strictly inside the lifetime, between 40 % and 60 % of it.
        #[test]
        fn renewal_is_inside_the_lifetime(issued in 0f64..1e9, life in 60f64..1e7, draw in 0f64..1.0) {
            let at = renew_at(issued, issued + life, draw);
            prop_assert!(at > issued && at < issued + life);
            prop_assert!(at >= issued + 0.4 * life - 1e-6 && at <= issued + 0.6 * life + 1e-6);
        }

        /// Retries are bounded and positive, and leave time for several attempts before expiry.
        #[test]
        fn retries_are_bounded(attempt in 1u32..100, now in 0f64..1e6, left in 0f64..1e6) {
            let wait = retry_after(attempt, now, now + left);
            prop_assert!(wait > 0.0 && wait <= 30.0);
            if left >= 2.0 { prop_assert!(wait <= left / 10.0 + 1e-9 || wait <= 0.2); }
        }
    }
}
