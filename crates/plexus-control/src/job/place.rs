//! Simple spread placement (pure): which node runs each instance of each running job.
//!
//! Every instance has a stable id, `<job>-<group>-<index>`. An instance stays on its node while
//! that node is eligible and alive; the others go, one by one, to the eligible node with the
//! fewest instances of the same group, then the fewest instances overall, then by name. A node is
//! eligible when it runs jobs (`plexus-job-slots` node meta, more than 0), has a free slot, its
//! agent's lease holds, every constraint of the job and group matches, and (for a group with an
//! Envoy sidecar) its agent serves xDS (`plexus-xds` node meta). An instance with a static port
//! goes to a node holding no other instance of its group.

use std::collections::BTreeMap;

use plexus_api::job::api::{Allocation, JobVersion};
use plexus_api::job::{Constraint, Group, Job, SidecarDriver};

/// The node meta key whose value is how many instances an agent runs at most.
pub const SLOTS_META: &str = "plexus-job-slots";

/// The node meta key an agent sets (`"true"`) when it runs jobs and serves xDS, which the
/// Envoy sidecars of its instances need.
pub const XDS_META: &str = "plexus-xds";

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its name.
    pub name: String,
    /// Its meta.
    pub meta: BTreeMap<String, String>,
    /// Instances it may run (0: it runs none).
    pub slots: u32,
    /// False while its agent's lease has lapsed.
    pub alive: bool,
}

impl NodeInfo {
    /// From a catalog node and whether its lease holds.
    pub fn from_node(node: &plexus_api::Node, alive: bool) -> Self {
        Self {
            name: node.node.clone(),
            slots: node
                .meta
                .get(SLOTS_META)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            meta: node.meta.clone(),
            alive,
        }
    }
}

/// The instances of every running job, or why some could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    /// Every placed instance, by id.
    pub allocations: Vec<Allocation>,
    /// One line per group that could not be placed fully.
    pub failures: Vec<String>,
}

fn matches(c: &Constraint, node: &NodeInfo) -> bool {
    let attribute = plexus_api::job::validate::constraint_attribute(&c.attribute);
    let actual = if attribute == "node.name" {
        Some(node.name.as_str())
    } else {
        attribute
            .strip_prefix("meta.")
            .and_then(|key| node.meta.get(key).map(String::as_str))
    };
    let equal = actual == Some(c.value.as_str());
    if c.operator.as_deref() == Some("!=") {
        !equal
    } else {
        equal
    }
}

/// Whether a service of `group` has an Envoy sidecar.
fn needs_xds(group: &Group) -> bool {
    group.service.iter().any(|s| {
        s.connect
            .as_ref()
            .is_some_and(|c| c.sidecar_driver() == SidecarDriver::Envoy)
    })
}

fn serves_xds(node: &NodeInfo) -> bool {
    node.meta.get(XDS_META).map(String::as_str) == Some("true")
}

fn eligible(job: &Job, group: &Group, node: &NodeInfo) -> bool {
    node.alive
        && node.slots > 0
        && (!needs_xds(group) || serves_xds(node))
        && job
            .constraint
            .iter()
            .chain(group.constraint.iter())
            .all(|c| matches(c, node))
}

fn has_static_port(group: &Group) -> bool {
    group
        .network
        .iter()
        .flat_map(|n| n.port.iter())
        .any(|p| p.static_port.is_some())
}

/// Places every running job's instances over `nodes`, keeping `current` where it may stay.
pub fn place(jobs: &[JobVersion], nodes: &[NodeInfo], current: &[Allocation]) -> Placement {
    let mut out = Placement::default();
    let mut load: BTreeMap<&str, u32> = nodes.iter().map(|n| (n.name.as_str(), 0)).collect();
    let previous: BTreeMap<&str, &Allocation> =
        current.iter().map(|a| (a.id.as_str(), a)).collect();
    let mut running: Vec<&JobVersion> = jobs.iter().filter(|j| !j.stopped).collect();
    running.sort_by(|a, b| a.job.name.cmp(&b.job.name));

    // Instances that stay count first, so the free slots are known before new ones go.
    let mut pending = Vec::new();
    for jv in &running {
        for group in jv.job.group.iter() {
            for index in 0..group.count.unwrap_or(1) {
                let id = format!("{}-{}-{index}", jv.job.name, group.name);
                let stay = previous.get(id.as_str()).and_then(|a| {
                    nodes
                        .iter()
                        .find(|n| n.name == a.node && eligible(&jv.job, group, n))
                });
                match stay {
                    Some(node)
                        if load.get(node.name.as_str()).copied().unwrap_or(0) < node.slots =>
                    {
                        *load.entry(node.name.as_str()).or_insert(0) += 1;
                        out.allocations.push(Allocation {
                            id,
                            job: jv.job.name.clone(),
                            group: group.name.clone(),
                            index,
                            version: jv.version,
                            node: node.name.clone(),
                        });
                    }
                    _ => pending.push((*jv, group, index, id)),
                }
            }
        }
    }
    let mut unplaced: BTreeMap<(String, String), (u32, u32)> = BTreeMap::new();
    for (jv, group, index, id) in pending {
        let of_group = |node: &str, allocs: &[Allocation]| {
            allocs
                .iter()
                .filter(|a| a.node == node && a.job == jv.job.name && a.group == group.name)
                .count()
        };
        let choice = nodes
            .iter()
            .filter(|n| eligible(&jv.job, group, n))
            .filter(|n| load.get(n.name.as_str()).copied().unwrap_or(0) < n.slots)
            .filter(|n| !has_static_port(group) || of_group(&n.name, &out.allocations) == 0)
            .min_by_key(|n| {
                (
                    of_group(&n.name, &out.allocations),
                    load.get(n.name.as_str()).copied().unwrap_or(0),
                    n.name.clone(),
                )
            });
        match choice {
            Some(node) => {
                *load.entry(node.name.as_str()).or_insert(0) += 1;
                out.allocations.push(Allocation {
                    id,
                    job: jv.job.name.clone(),
                    group: group.name.clone(),
                    index,
                    version: jv.version,
                    node: node.name.clone(),
                });
            }
            None => {
                let entry = unplaced
                    .entry((jv.job.name.clone(), group.name.clone()))
                    .or_insert((0, group.count.unwrap_or(1)));
                entry.0 += 1;
            }
        }
    }
    for ((job, group_name), (missing, count)) in unplaced {
        let Some(group) = running.iter().find(|j| j.job.name == job).and_then(|j| {
            j.job
                .group
                .iter()
                .find(|g| g.name == group_name)
                .map(|g| (&j.job, g))
        }) else {
            continue;
        };
        let (job_spec, group) = group;
        let runners = nodes.iter().filter(|n| n.slots > 0).count();
        let alive = nodes.iter().filter(|n| n.slots > 0 && n.alive).count();
        let fit = nodes
            .iter()
            .filter(|n| eligible(job_spec, group, n))
            .collect::<Vec<_>>();
        let slots: u32 = fit.iter().map(|n| n.slots).sum();
        let mut why = format!(
            "job {job:?} group {group_name:?}: {missing} of {count} instance(s) cannot be placed: "
        );
        if runners == 0 {
            why.push_str("no agent runs jobs (agents need --job-slots more than 0)");
        } else if alive == 0 {
            why.push_str(&format!(
                "none of the {runners} agent(s) running jobs is alive"
            ));
        } else if needs_xds(group)
            && !nodes
                .iter()
                .any(|n| n.slots > 0 && n.alive && serves_xds(n))
        {
            why.push_str(&format!(
                "its Envoy sidecars need an agent serving xDS, and none of the {alive} alive \
                 agent(s) running jobs does (start them with --grpc-addr IP:PORT)"
            ));
        } else if fit.is_empty() {
            why.push_str(&format!(
                "no alive agent matches the constraints ({alive} alive agent(s) run jobs)"
            ));
        } else if has_static_port(group) && (fit.len() as u32) < count {
            why.push_str(&format!(
                "a static port allows one instance per node and only {} node(s) are eligible",
                fit.len()
            ));
        } else {
            why.push_str(&format!(
                "the {} eligible agent(s) have {slots} slot(s) in all, and other instances use some",
                fit.len()
            ));
        }
        out.failures.push(why);
    }
    out.allocations.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

#[cfg(test)]
#[path = "place_tests.rs"]
mod tests;
