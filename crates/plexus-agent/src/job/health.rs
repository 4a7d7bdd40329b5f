//! An instance's health as rollouts see it, and its reports to the servers.
//!
//! An instance is `healthy` once every check of its services has passed without a break for
//! the group's `min_healthy_time` (a group without checks: once its process has run that long).
//! The agent measures it (it runs the checks, on its own monotonic clock) and reports it with
//! the instance's status; the servers' rollout only compares deadlines.

use std::collections::BTreeMap;
use std::time::Duration;

use plexus_api::job::api::InstanceStatus;
use plexus_api::{CheckStatus, HealthCheck};
use plexus_runtime::{Backoff, ErrorChain};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Agent;

/// How long the checks have passed (pure; time is a parameter).
#[derive(Debug)]
pub(super) struct HealthClock {
    min: Duration,
    passing_since: Option<Instant>,
}

impl HealthClock {
    pub(super) fn new(min: Duration) -> Self {
        Self {
            min,
            passing_since: None,
        }
    }

    /// Whether the instance is healthy at `now` given whether its checks pass, and when to look
    /// again if it is about to become so.
    pub(super) fn observe(&mut self, passing: bool, now: Instant) -> (bool, Option<Instant>) {
        if !passing {
            self.passing_since = None;
            return (false, None);
        }
        let since = *self.passing_since.get_or_insert(now);
        let at = since + self.min;
        if now >= at {
            (true, None)
        } else {
            (false, Some(at))
        }
    }
}

/// Whether every expected check of the instance's services (`expected`: service id → how many
/// checks it registers) is in `checks` and passing.
pub(super) fn all_passing(checks: &[HealthCheck], expected: &BTreeMap<String, usize>) -> bool {
    expected.iter().all(|(id, want)| {
        let mine: Vec<&HealthCheck> = checks.iter().filter(|c| &c.service_id == id).collect();
        mine.len() >= *want && mine.iter().all(|c| c.status == CheckStatus::Passing)
    })
}

/// Keeps `status.healthy` true while the instance's checks pass (after `min`), until `stop`.
pub(super) async fn watch_checks(
    agent: Agent,
    expected: BTreeMap<String, usize>,
    min: Duration,
    status: watch::Sender<InstanceStatus>,
    stop: CancellationToken,
) {
    let node = agent.node().to_owned();
    let mut index = agent.inner.catalog.index_watch();
    let mut clock = HealthClock::new(min);
    loop {
        index.borrow_and_update();
        let passing = match agent.inner.catalog.node_checks(&node).await {
            Ok(checks) => all_passing(&checks.value, &expected),
            Err(error) => {
                tracing::debug!(error = %ErrorChain(&error), "cannot read this node's checks");
                false
            }
        };
        let (healthy, recheck) = clock.observe(passing, Instant::now());
        status.send_if_modified(|s| {
            // Stopped meanwhile (the process exited): the instance has set itself unhealthy.
            if stop.is_cancelled() {
                return false;
            }
            let changed = s.healthy != healthy;
            s.healthy = healthy;
            changed
        });
        tokio::select! {
            () = stop.cancelled() => return,
            changed = index.changed() => if changed.is_err() { return },
            () = async {
                match recheck {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// Reports the latest status (with the latest version) to the servers at every change, retried
/// with backoff, until the status sender is dropped.
pub(super) async fn report(
    client: plexus_api::client::Client,
    mut status: watch::Receiver<InstanceStatus>,
    mut version: watch::Receiver<u64>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let mut latest = status.borrow_and_update().clone();
        latest.version = *version.borrow_and_update();
        let retry = match client.job_report(&latest).await {
            Ok(()) => {
                backoff.reset();
                None
            }
            Err(error) => {
                tracing::debug!(error = %ErrorChain(&error), alloc = %latest.id, "cannot report instance status");
                Some(backoff.next_delay())
            }
        };
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            changed = version.changed() => if changed.is_err() { return },
            () = async {
                match retry {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn healthy_only_after_passing_for_min_healthy_time_without_a_break() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut clock = HealthClock::new(s(2));
        assert_eq!(clock.observe(false, t0), (false, None));
        assert_eq!(clock.observe(true, t0 + s(1)), (false, Some(t0 + s(3))));
        assert_eq!(clock.observe(true, t0 + s(2)), (false, Some(t0 + s(3))));
        assert_eq!(clock.observe(false, t0 + s(2)), (false, None), "a break");
        assert_eq!(clock.observe(true, t0 + s(4)), (false, Some(t0 + s(6))));
        assert_eq!(clock.observe(true, t0 + s(6)), (true, None));
        assert_eq!(clock.observe(true, t0 + s(60)), (true, None));
    }

    fn check(service: &str, status: CheckStatus) -> HealthCheck {
        serde_json::from_value(serde_json::json!({
            "Node": "n", "CheckID": format!("{service}:1"), "Name": "c",
            "Status": status, "ServiceID": service, "ServiceName": "s",
        }))
        .unwrap()
    }

    #[test]
    fn every_expected_check_must_be_there_and_pass() {
        let expected: BTreeMap<String, usize> = [("a".to_owned(), 1), ("b".to_owned(), 0)].into();
        assert!(!all_passing(&[], &expected), "not registered yet");
        assert!(all_passing(
            &[
                check("a", CheckStatus::Passing),
                check("x", CheckStatus::Critical)
            ],
            &expected
        ));
        assert!(!all_passing(
            &[
                check("a", CheckStatus::Passing),
                check("b", CheckStatus::Warning)
            ],
            &expected
        ));
    }
}
