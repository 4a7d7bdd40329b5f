//! `deregister_critical_service_after`: how long each such check has been critical, and which
//! services are due for removal. Pure bookkeeping over catalog snapshots and `now`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use plexus_api::{CheckStatus, HealthCheck};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Critical {
    service_id: String,
    since: Instant,
    after: Duration,
}

/// Critical checks that carry `deregister_critical_service_after`, by check id.
#[derive(Debug, Default)]
pub(crate) struct CriticalTracker {
    checks: BTreeMap<String, Critical>,
}

impl CriticalTracker {
    /// Takes a snapshot of the node's checks: a check turning critical starts its clock, one
    /// leaving critical (or vanishing) stops it.
    pub(crate) fn observe(&mut self, checks: &[HealthCheck], now: Instant) {
        let mut next = BTreeMap::new();
        for check in checks {
            let Some(after) = check.definition.deregister_critical_service_after else {
                continue;
            };
            if check.service_id.is_empty() || check.status != CheckStatus::Critical {
                continue;
            }
            let since = self
                .checks
                .get(&check.check_id)
                .filter(|c| c.service_id == check.service_id)
                .map_or(now, |c| c.since);
            next.insert(
                check.check_id.clone(),
                Critical {
                    service_id: check.service_id.clone(),
                    since,
                    after: after.get(),
                },
            );
        }
        self.checks = next;
    }

    /// When the next service falls due, if any is being timed.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.checks.values().map(|c| c.since + c.after).min()
    }

    /// The services due at `now`. Their clocks restart, so a failed removal is retried one full
    /// period later.
    pub(crate) fn take_due(&mut self, now: Instant) -> BTreeSet<String> {
        let mut due = BTreeSet::new();
        for critical in self.checks.values_mut() {
            if critical.since + critical.after <= now {
                due.insert(critical.service_id.clone());
                critical.since = now;
            }
        }
        due
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use plexus_api::GoDuration;

    fn check(id: &str, service: &str, status: CheckStatus, after: Option<u64>) -> HealthCheck {
        let mut check = HealthCheck {
            check_id: id.into(),
            service_id: service.into(),
            status,
            ..HealthCheck::default()
        };
        check.definition.deregister_critical_service_after =
            after.map(|s| GoDuration(Duration::from_secs(s)));
        check
    }

    #[test]
    fn due_after_staying_critical_for_the_period() {
        let t0 = Instant::now();
        let mut tracker = CriticalTracker::default();
        let checks = [
            check("a", "web", CheckStatus::Critical, Some(60)),
            check("b", "api", CheckStatus::Critical, None),
            check("c", "db", CheckStatus::Passing, Some(10)),
        ];
        tracker.observe(&checks, t0);
        assert_eq!(tracker.next_deadline(), Some(t0 + Duration::from_secs(60)));
        // A later snapshot keeps the original start.
        tracker.observe(&checks, t0 + Duration::from_secs(30));
        assert!(tracker.take_due(t0 + Duration::from_secs(59)).is_empty());
        let due = tracker.take_due(t0 + Duration::from_secs(60));
        assert_eq!(due.into_iter().collect::<Vec<_>>(), ["web"]);
        // Restarted: retried a full period later.
        assert_eq!(tracker.next_deadline(), Some(t0 + Duration::from_secs(120)));
    }

    #[test]
    fn recovering_or_vanishing_stops_the_clock() {
        let t0 = Instant::now();
        let mut tracker = CriticalTracker::default();
        tracker.observe(&[check("a", "web", CheckStatus::Critical, Some(60))], t0);
        tracker.observe(&[check("a", "web", CheckStatus::Warning, Some(60))], t0);
        assert_eq!(tracker.next_deadline(), None);
        let later = t0 + Duration::from_secs(50);
        tracker.observe(&[check("a", "web", CheckStatus::Critical, Some(60))], later);
        assert_eq!(
            tracker.next_deadline(),
            Some(later + Duration::from_secs(60))
        );
        tracker.observe(&[], later);
        assert_eq!(tracker.next_deadline(), None);
    }
}
