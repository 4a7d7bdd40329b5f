//! Concurrency limits (bulkheads): a counter with RAII permits, failing fast when full.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Admits at most `max` holders at once (`None`: unlimited, still counted).
#[derive(Debug)]
pub struct ConcurrencyLimiter {
    max: Option<u32>,
    in_flight: AtomicU32,
}

/// One admitted holder; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<ConcurrencyLimiter>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConcurrencyLimiter {
    /// A limiter of `max`.
    pub fn new(max: Option<u32>) -> Arc<Self> {
        Arc::new(Self {
            max,
            in_flight: AtomicU32::new(0),
        })
    }

    /// A permit, or `None` when `max` holders already exist (the caller answers 503).
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let max = self.max.unwrap_or(u32::MAX);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                limiter: Arc::clone(self),
            })
    }

    /// Holders right now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn never_more_than_max_and_drops_free_slots(max in 0u32..10, ops in proptest::collection::vec(any::<bool>(), 0..200)) {
            let l = ConcurrencyLimiter::new(Some(max));
            let mut held = Vec::new();
            for acquire in ops {
                if acquire {
                    match l.try_acquire() {
                        Some(p) => held.push(p),
                        None => prop_assert_eq!(held.len() as u32, max),
                    }
                } else {
                    held.pop();
                }
                prop_assert!(l.in_flight() <= max);
                prop_assert_eq!(l.in_flight() as usize, held.len());
            }
        }
    }
}
