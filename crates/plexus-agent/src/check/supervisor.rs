//! The check supervisor: on every catalog index change it lists this node's checks and diffs them
//! (by check id and definition) against the running ones, starting, restarting and stopping
//! runners; it also removes services critical for longer than `deregister_critical_service_after`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use plexus_api::{Catalog, CheckType, HealthCheck, HealthCheckDefinition};
use plexus_runtime::Backoff;
use plexus_runtime::Shutdown;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::critical::CriticalTracker;
use super::ttl::TtlTimers;
use super::{RunnerContext, run};
use crate::service::deregister_with_sidecars;

/// First delay ceiling before re-listing after a failed catalog read; doubles (jittered) up to
/// [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What a runner runs: when this changes, the runner restarts (status and output do not count).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunSpec {
    check_type: Option<CheckType>,
    service_id: String,
    definition: HealthCheckDefinition,
}

impl RunSpec {
    pub(crate) fn of(check: &HealthCheck) -> Self {
        Self {
            check_type: check.check_type,
            service_id: check.service_id.clone(),
            definition: check.definition.clone(),
        }
    }
}

/// Runners to stop and checks to start, so that `running` matches `desired`.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan<'a> {
    /// Ids whose runner stops (removed or changed).
    pub stop: Vec<String>,
    /// Checks whose runner starts (new or changed).
    pub start: Vec<&'a HealthCheck>,
}

/// Diffs running specs against the catalog's checks.
pub(crate) fn plan<'a>(
    running: &BTreeMap<String, RunSpec>,
    desired: &'a [HealthCheck],
) -> Plan<'a> {
    let mut plan = Plan::default();
    let wanted: BTreeMap<&str, &HealthCheck> =
        desired.iter().map(|c| (c.check_id.as_str(), c)).collect();
    for (id, spec) in running {
        match wanted.get(id.as_str()) {
            Some(check) if RunSpec::of(check) == *spec => {}
            _ => plan.stop.push(id.clone()),
        }
    }
    for (id, check) in wanted {
        let unchanged = running.get(id).is_some_and(|s| *s == RunSpec::of(check));
        if !unchanged {
            plan.start.push(check);
        }
    }
    plan
}

struct Running {
    spec: RunSpec,
    token: CancellationToken,
}

/// Runs every check of one node; see the module docs.
pub(crate) struct Supervisor {
    ctx: RunnerContext,
    shutdown: Shutdown,
    runners: BTreeMap<String, Running>,
    critical: CriticalTracker,
}

impl Supervisor {
    pub(crate) fn new(
        catalog: Arc<dyn Catalog>,
        node: String,
        ttl: Arc<TtlTimers>,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            ctx: RunnerContext { catalog, node, ttl },
            shutdown,
            runners: BTreeMap::new(),
            critical: CriticalTracker::default(),
        }
    }

    /// Until shutdown: re-list on every index change, reconcile, and remove services whose
    /// checks stayed critical too long.
    pub(crate) async fn run(mut self) {
        let token = self.shutdown.token();
        let mut index = self.ctx.catalog.index_watch();
        let mut retry = Backoff::new(FIRST_RETRY, MAX_RETRY);
        loop {
            index.borrow_and_update();
            let mut retry_at = None;
            match self.ctx.catalog.node_checks(&self.ctx.node).await {
                Ok(checks) => {
                    self.reconcile(&checks.value, &token);
                    self.critical.observe(&checks.value, Instant::now());
                    retry.reset();
                }
                Err(error) => {
                    let delay = retry.next_delay();
                    tracing::warn!(%error, node = %self.ctx.node, retry_in = ?delay, "listing checks failed");
                    retry_at = Some(Instant::now() + delay);
                }
            }
            let deregister_at = self.critical.next_deadline();
            let far = Instant::now() + MAX_RETRY;
            tokio::select! {
                _ = token.cancelled() => break,
                changed = index.changed() => {
                    if changed.is_err() {
                        tracing::error!(node = %self.ctx.node, "catalog index watch closed; checks stop");
                        break;
                    }
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or(far)), if retry_at.is_some() => {}
                _ = tokio::time::sleep_until(deregister_at.unwrap_or(far)), if deregister_at.is_some() => {
                    self.deregister_due().await;
                }
            }
        }
        for (_, running) in std::mem::take(&mut self.runners) {
            running.token.cancel();
        }
    }

    fn reconcile(&mut self, checks: &[HealthCheck], token: &CancellationToken) {
        let specs: BTreeMap<String, RunSpec> = self
            .runners
            .iter()
            .map(|(id, r)| (id.clone(), r.spec.clone()))
            .collect();
        let plan = plan(&specs, checks);
        for id in plan.stop {
            if let Some(running) = self.runners.remove(&id) {
                running.token.cancel();
                tracing::debug!(check_id = %id, "check runner stopped");
            }
            self.ctx.ttl.forget(&id);
        }
        for check in plan.start {
            let child = token.child_token();
            self.shutdown
                .spawn(run(check.clone(), self.ctx.clone(), child.clone()));
            tracing::debug!(check_id = %check.check_id, kind = ?check.check_type, "check runner started");
            self.runners.insert(
                check.check_id.clone(),
                Running {
                    spec: RunSpec::of(check),
                    token: child,
                },
            );
        }
    }

    async fn deregister_due(&mut self) {
        let catalog = self.ctx.catalog.as_ref();
        let node = self.ctx.node.as_str();
        for service_id in self.critical.take_due(Instant::now()) {
            match deregister_with_sidecars(catalog, node, &service_id).await {
                Ok(removed) => tracing::warn!(
                    node,
                    %service_id,
                    removed = removed.len(),
                    "service deregistered after staying critical"
                ),
                Err(error) => {
                    tracing::warn!(%error, node, %service_id, "deregistering critical service failed");
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(id: &str, tcp: &str) -> HealthCheck {
        HealthCheck {
            check_id: id.into(),
            check_type: Some(CheckType::Tcp),
            definition: HealthCheckDefinition {
                tcp: tcp.into(),
                ..HealthCheckDefinition::default()
            },
            ..HealthCheck::default()
        }
    }

    #[test]
    fn plan_starts_new_restarts_changed_stops_removed() {
        let running: BTreeMap<String, RunSpec> =
            [("same", "a:1"), ("changed", "b:1"), ("removed", "c:1")]
                .into_iter()
                .map(|(id, tcp)| (id.to_owned(), RunSpec::of(&check(id, tcp))))
                .collect();
        let mut same = check("same", "a:1");
        same.status = plexus_api::CheckStatus::Passing; // status changes do not restart
        let desired = vec![same, check("changed", "b:2"), check("new", "d:1")];
        let plan = plan(&running, &desired);
        assert_eq!(plan.stop, ["changed", "removed"]);
        let started: Vec<&str> = plan.start.iter().map(|c| c.check_id.as_str()).collect();
        assert_eq!(started, ["changed", "new"]);
    }
}
