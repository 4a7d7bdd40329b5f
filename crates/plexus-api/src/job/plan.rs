//! What running a job changes, group by group (pure; `plexus job plan`).

use super::Job;
use super::api::{GroupPlan, JobPlan};

/// The plan of running `new` over `current` (`None`: a new job, or a stopped one).
pub fn plan(new: &Job, current: Option<(u64, &Job)>) -> JobPlan {
    let old = current.map(|(_, job)| job);
    let mut groups: Vec<GroupPlan> = new
        .group
        .iter()
        .map(|g| {
            let before = old.and_then(|o| o.group.iter().find(|og| og.name == g.name));
            let count = |c: Option<u32>| c.unwrap_or(1);
            GroupPlan {
                name: g.name.clone(),
                before: before.map_or(0, |b| count(b.count)),
                after: count(g.count),
                updated: before.is_some_and(|b| {
                    let mut a = b.clone();
                    a.count = g.count;
                    &a != g
                }),
                removed: false,
            }
        })
        .collect();
    for og in old.iter().flat_map(|o| o.group.iter()) {
        if !new.group.iter().any(|g| g.name == og.name) {
            groups.push(GroupPlan {
                name: og.name.clone(),
                before: og.count.unwrap_or(1),
                after: 0,
                updated: false,
                removed: true,
            });
        }
    }
    JobPlan {
        name: new.name.clone(),
        current_version: current.map(|(v, _)| v),
        unchanged: old == Some(new),
        groups,
    }
}
