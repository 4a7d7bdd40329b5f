//! Rolling updates (pure): which instances move to a job's new version now, and how its
//! rollout stands. [`super::reconcile`] drives it after every store change and at the next
//! deadline it returns; the clock is a parameter (`now_ms`), so tests pass explicit times.
//!
//! - An instance whose version runs the same group as the new one (only the count differs)
//!   moves to the new version at once, without a restart (a scale, a revert to an equal spec).
//! - The others are replaced `max_parallel` at a time, per group: a batch starts only when every
//!   instance of the new version is healthy (the agent reports `healthy` once all its checks
//!   have passed for `min_healthy_time`), so the group never has more than `max_parallel`
//!   instances out of service. Unhealthy instances of the old version go first.
//! - A batch not healthy within `healthy_deadline` (or an instance of the new version that has
//!   `failed`) fails the rollout: nothing more is replaced. With `auto_revert` the job goes back
//!   by itself to the last version that was fully healthy (`stable`), unless the version is
//!   itself an auto-revert (no revert loop) or there is none.

use std::collections::BTreeMap;
use std::time::Duration;

use plexus_api::job::api::{
    Allocation, Deployment, DeploymentState, GroupDeployment, InstanceStatus, JobVersion,
};

/// The cause prefix of a version written by an auto-revert.
pub const AUTO_REVERT: &str = "auto-revert";

/// What to do for one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The rollout after this step.
    pub deployment: Deployment,
    /// Go back to this version (a new version with its spec).
    pub revert_to: Option<u64>,
    /// When to look again at the latest (a batch's deadline; ms since the Unix epoch).
    pub wake_at_ms: Option<u64>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn why_unhealthy(status: Option<&InstanceStatus>, version: u64) -> String {
    match status {
        Some(s) if s.version == version && s.state == "running" => {
            if s.message.is_empty() {
                "checks not passing".to_owned()
            } else {
                format!("checks not passing ({})", s.message)
            }
        }
        Some(s) if s.version == version => {
            if s.message.is_empty() {
                s.state.clone()
            } else {
                format!("{}: {}", s.state, s.message)
            }
        }
        _ => "not started".to_owned(),
    }
}

/// Rolls `job` forward one step. `allocs` are its placed instances: those that existed keep the
/// version they run, new ones carry `job.version`; the versions of those that move are changed
/// in place. `same(group, version)`: whether `version` runs `group` as the current version
/// does, apart from its count. `previous`: the job's stored rollout.
pub fn step(
    job: &JobVersion,
    previous: Option<&Deployment>,
    allocs: &mut [Allocation],
    statuses: &BTreeMap<String, InstanceStatus>,
    same: impl Fn(&str, u64) -> bool,
    now_ms: u64,
) -> Decision {
    let v = job.version;
    let mut d = match previous {
        Some(p) if p.version == v => p.clone(),
        _ => Deployment {
            version: v,
            state: DeploymentState::Running,
            stable: previous.and_then(|p| {
                if p.state == DeploymentState::Successful {
                    Some(p.version)
                } else {
                    p.stable
                }
            }),
            groups: Vec::new(),
            reason: String::new(),
            reverted_to: None,
            previous: previous.map(|p| {
                let mut p = p.clone();
                p.previous = None;
                Box::new(p)
            }),
        },
    };
    // Equal specs move at once, whatever the rollout's state.
    for a in allocs.iter_mut() {
        if a.version != v && same(&a.group, a.version) {
            a.version = v;
        }
    }
    // An instance moved without a restart stays healthy: its agent reports the new version
    // on its next report.
    let healthy = |a: &Allocation| {
        statuses.get(&a.id).is_some_and(|s| {
            s.healthy && (s.version == a.version || (a.version == v && same(&a.group, s.version)))
        })
    };
    let mut groups = Vec::new();
    let mut failures = Vec::new();
    let mut auto_revert = false;
    let mut wake_at_ms: Option<u64> = None;
    let running = d.state == DeploymentState::Running;
    for group in job.job.group.iter() {
        let mut g = d
            .groups
            .iter()
            .find(|g| g.name == group.name)
            .cloned()
            .unwrap_or(GroupDeployment {
                name: group.name.clone(),
                batch: 0,
                batch_started_ms: now_ms,
                healthy: 0,
                total: 0,
            });
        let update = group.update.clone().unwrap_or_default();
        let deadline = update
            .healthy_deadline
            .map_or(Duration::from_secs(300), |d| d.0);
        let mine = || allocs.iter().filter(|a| a.group == group.name);
        let fresh: Vec<&Allocation> = mine().filter(|a| a.version == v).collect();
        let in_flight: Vec<&Allocation> = fresh.iter().copied().filter(|a| !healthy(a)).collect();
        if running {
            let failed: Vec<String> = fresh
                .iter()
                .filter_map(|a| {
                    statuses
                        .get(&a.id)
                        .filter(|s| s.version == v && s.state == "failed")
                        .map(|s| format!("{} failed: {}", a.id, s.message))
                })
                .collect();
            let late = !in_flight.is_empty()
                && now_ms >= g.batch_started_ms.saturating_add(millis(deadline));
            if !failed.is_empty() {
                failures.push(format!("group {:?}: {}", group.name, failed.join("; ")));
                auto_revert |= update.auto_revert == Some(true);
            } else if late {
                let which: Vec<String> = in_flight
                    .iter()
                    .map(|a| format!("{}: {}", a.id, why_unhealthy(statuses.get(&a.id), v)))
                    .collect();
                failures.push(format!(
                    "group {:?}: {} instance(s) of version {v} not healthy within healthy_deadline {}: {}",
                    group.name,
                    in_flight.len(),
                    plexus_api::duration::GoDuration(deadline),
                    which.join("; ")
                ));
                auto_revert |= update.auto_revert == Some(true);
            } else if !in_flight.is_empty() {
                let at = g.batch_started_ms.saturating_add(millis(deadline));
                wake_at_ms = Some(wake_at_ms.map_or(at, |w| w.min(at)));
            }
        }
        g.healthy = u32::try_from(fresh.len() - in_flight.len()).unwrap_or(u32::MAX);
        g.total = group.count.unwrap_or(1);
        groups.push((g, in_flight.is_empty()));
    }
    if running && failures.is_empty() {
        // Admit the next batch of each group whose instances of the version are all healthy.
        let mut done = true;
        for (g, settled) in &mut groups {
            let Some(group) = job.job.group.iter().find(|x| x.name == g.name) else {
                continue;
            };
            let mut outdated: Vec<&mut Allocation> = allocs
                .iter_mut()
                .filter(|a| a.group == g.name && a.version != v)
                .collect();
            if outdated.is_empty() {
                done &= *settled;
                continue;
            }
            done = false;
            if !*settled {
                continue;
            }
            let max_parallel = group
                .update
                .as_ref()
                .and_then(|u| u.max_parallel)
                .unwrap_or(1);
            // Unhealthy ones first (replacing them costs nothing), then by id.
            outdated.sort_by_key(|a| {
                let ok = statuses
                    .get(&a.id)
                    .is_some_and(|s| s.version == a.version && s.healthy);
                (ok, a.id.clone())
            });
            for a in outdated.into_iter().take(max_parallel as usize) {
                a.version = v;
            }
            g.batch += 1;
            g.batch_started_ms = now_ms;
            let deadline = group
                .update
                .as_ref()
                .and_then(|u| u.healthy_deadline)
                .map_or(Duration::from_secs(300), |d| d.0);
            let at = now_ms.saturating_add(millis(deadline));
            wake_at_ms = Some(wake_at_ms.map_or(at, |w| w.min(at)));
        }
        if done {
            d.state = DeploymentState::Successful;
            wake_at_ms = None;
        }
    }
    d.groups = groups.into_iter().map(|(g, _)| g).collect();
    let mut revert_to = None;
    if !failures.is_empty() {
        d.reason = failures.join("; ");
        wake_at_ms = None;
        match d.stable {
            Some(stable) if auto_revert && stable != v && !job.cause.starts_with(AUTO_REVERT) => {
                d.state = DeploymentState::Reverted;
                d.reverted_to = Some(stable);
                revert_to = Some(stable);
            }
            _ => {
                d.state = DeploymentState::Failed;
                if auto_revert {
                    d.reason.push_str(match d.stable {
                        None => " (no earlier version was fully healthy: nothing to revert to)",
                        Some(_) => " (not reverted: this version is already a revert)",
                    });
                }
            }
        }
    }
    Decision {
        deployment: d,
        revert_to,
        wake_at_ms,
    }
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
