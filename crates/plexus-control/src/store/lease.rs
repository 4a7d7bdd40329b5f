//! Lease deadlines, as pure bookkeeping over a clock the caller passes in (the embedded store's
//! expiry task drives it; tests drive it with paused time).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::LeaseId;

/// Live leases and when each expires.
#[derive(Debug, Default, Clone)]
pub struct LeaseTable {
    leases: HashMap<LeaseId, (Duration, Instant)>,
}

impl LeaseTable {
    /// Adds (or resets) a lease expiring `ttl` after `now`.
    pub fn grant(&mut self, id: LeaseId, ttl: Duration, now: Instant) {
        self.leases.insert(id, (ttl, now + ttl));
    }

    /// Renews a live lease to `ttl` after `now`; `None` when unknown or already past its deadline.
    pub fn keep_alive(&mut self, id: LeaseId, now: Instant) -> Option<Duration> {
        let (ttl, deadline) = self.leases.get_mut(&id)?;
        if *deadline <= now {
            return None;
        }
        *deadline = now + *ttl;
        Some(*ttl)
    }

    /// Forgets a lease; true when it was known.
    pub fn remove(&mut self, id: LeaseId) -> bool {
        self.leases.remove(&id).is_some()
    }

    /// True when the lease is known (expired or not).
    pub fn contains(&self, id: LeaseId) -> bool {
        self.leases.contains_key(&id)
    }

    /// The leases whose deadline is at or before `now` (still in the table until removed).
    pub fn due(&self, now: Instant) -> Vec<LeaseId> {
        let mut due: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        due.sort_unstable();
        due
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().map(|(_, deadline)| *deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn leases_expire_unless_kept_alive() {
        let mut table = LeaseTable::default();
        let t0 = Instant::now();
        table.grant(1, Duration::from_secs(10), t0);
        table.grant(2, Duration::from_secs(5), t0);
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(5)));
        assert!(table.due(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(
            table.keep_alive(2, t0 + Duration::from_secs(4)),
            Some(Duration::from_secs(5))
        );
        assert!(table.due(t0 + Duration::from_secs(8)).is_empty());
        assert_eq!(table.due(t0 + Duration::from_secs(9)), vec![2]);
        assert_eq!(table.due(t0 + Duration::from_secs(10)), vec![1, 2]);
        // A lease past its deadline cannot be revived.
        assert_eq!(table.keep_alive(1, t0 + Duration::from_secs(10)), None);
        assert!(table.remove(1));
        assert!(!table.remove(1));
        assert_eq!(table.keep_alive(7, t0), None);
    }

    #[test]
    fn deadlines_are_ordered_for_any_grants() {
        // Property: for any set of TTLs, `due` at each deadline returns exactly the leases whose
        // TTL is at most that deadline.
        let t0 = Instant::now();
        for seed in 0u64..200 {
            let ttls: Vec<u64> = (0..8).map(|i| (seed * 31 + i * 17) % 13 + 1).collect();
            let mut table = LeaseTable::default();
            for (id, ttl) in ttls.iter().enumerate() {
                table.grant(id as LeaseId, Duration::from_secs(*ttl), t0);
            }
            for probe in 0..15 {
                let now = t0 + Duration::from_secs(probe);
                let mut expected: Vec<LeaseId> = ttls
                    .iter()
                    .enumerate()
                    .filter(|(_, ttl)| **ttl <= probe)
                    .map(|(id, _)| id as LeaseId)
                    .collect();
                expected.sort_unstable();
                assert_eq!(table.due(now), expected, "ttls {ttls:?} at {probe}");
            }
        }
    }
}
