//! Placement kept true: allocations (`jobs/alloc/<id>`) follow the running jobs and the live
//! nodes. [`Jobs::reconcile`] runs after every job write and, in [`Jobs::run_reconciler`] on
//! every server, after every store change (a node's lease lapsing, a node joining). Every
//! replica computes the same placement; writes are compare-and-set on the job index, so two
//! replicas never write conflicting placements.

use std::collections::{BTreeMap, BTreeSet};

use plexus_api::CheckStatus;
use plexus_api::job::Job;
use plexus_api::job::api::{
    Allocation, Deployment, DeploymentState, InstanceStatus, InstanceView, JobStatus, JobVersion,
    NodeAllocations,
};
use plexus_api::remote::LEASE_CHECK_ID;

use std::time::Duration;

use super::place::{self, NodeInfo};
use super::rollout;
use super::{ALLOCS, DEPLOYS, INDEX, JobError, Jobs, STATUS};
use crate::store::{Compare, Op, Txn};

fn encode<T: serde::Serialize>(value: &T, key: &str) -> Result<Vec<u8>, JobError> {
    serde_json::to_vec(value).map_err(|_| JobError::Corrupt {
        key: key.to_owned(),
    })
}

impl Jobs {
    /// The nodes placement chooses from, with whether their lease holds.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, JobError> {
        let Some(catalog) = &self.catalog else {
            return Ok(Vec::new());
        };
        let nodes = catalog.nodes().await?.value;
        let critical = catalog
            .checks_in_state(Some(CheckStatus::Critical))
            .await?
            .value;
        let lapsed: BTreeSet<&str> = critical
            .iter()
            .filter(|c| c.check_id == LEASE_CHECK_ID)
            .map(|c| c.node.as_str())
            .collect();
        Ok(nodes
            .iter()
            .map(|n| NodeInfo::from_node(n, !lapsed.contains(n.node.as_str())))
            .collect())
    }

    /// Every placed instance.
    pub async fn allocations(&self) -> Result<Vec<Allocation>, JobError> {
        let (records, _) = self.store.range(ALLOCS).await?;
        records
            .iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value).map_err(|_| JobError::Corrupt {
                    key: kv.key.clone(),
                })
            })
            .collect()
    }

    async fn statuses(&self) -> Result<BTreeMap<String, InstanceStatus>, JobError> {
        let (records, _) = self.store.range(STATUS).await?;
        let mut out = BTreeMap::new();
        for kv in &records {
            let status: InstanceStatus =
                serde_json::from_slice(&kv.value).map_err(|_| JobError::Corrupt {
                    key: kv.key.clone(),
                })?;
            out.insert(status.id.clone(), status);
        }
        Ok(out)
    }

    /// Refuses `job` when placement cannot hold its instances beside the other running jobs.
    pub(super) async fn check_placement(&self, job: &Job) -> Result<(), JobError> {
        if self.catalog.is_none() {
            return Ok(());
        }
        let mut jobs: Vec<_> = self
            .list()
            .await?
            .into_iter()
            .filter(|j| j.job.name != job.name)
            .collect();
        jobs.push(plexus_api::job::api::JobVersion {
            version: 0,
            submitted: 0,
            stopped: false,
            job: job.clone(),
            cause: String::new(),
        });
        let current = self.allocations().await?;
        let placement = place::place(&jobs, &self.nodes().await?, &current);
        let prefix = format!("job {:?} ", job.name);
        let failures: Vec<String> = placement
            .failures
            .into_iter()
            .filter(|f| f.starts_with(&prefix))
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(JobError::Unplaceable(failures))
        }
    }

    /// The stored rollouts, by job.
    async fn deployments(&self) -> Result<BTreeMap<String, Deployment>, JobError> {
        let (records, _) = self.store.range(DEPLOYS).await?;
        let mut out = BTreeMap::new();
        for kv in &records {
            let d: Deployment =
                serde_json::from_slice(&kv.value).map_err(|_| JobError::Corrupt {
                    key: kv.key.clone(),
                })?;
            out.insert(kv.key[DEPLOYS.len()..].to_owned(), d);
        }
        Ok(out)
    }

    /// One stored version of a job (`None`: never written).
    async fn version(&self, name: &str, version: u64) -> Result<Option<JobVersion>, JobError> {
        match self.store.get(&super::version_key(name, version)).await? {
            Some(kv) => super::decode(&kv).map(Some),
            None => Ok(None),
        }
    }

    /// The writes of an auto-revert of `jv` to version `to`: the next version, with `to`'s spec
    /// and the failed rollout's reason as its cause. None when `to` is not stored (then the
    /// rollout is only failed).
    async fn revert_ops(
        &self,
        jv: &JobVersion,
        to: u64,
        deployment: &mut Deployment,
    ) -> Result<Vec<Op>, JobError> {
        let name = &jv.job.name;
        let Some(stable) = self.version(name, to).await? else {
            deployment.state = DeploymentState::Failed;
            deployment.reverted_to = None;
            deployment
                .reason
                .push_str(&format!(" (version {to} to revert to is not stored)"));
            return Ok(Vec::new());
        };
        let version = jv.version + 1;
        tracing::warn!(job = %name, from = jv.version, to, reason = %deployment.reason, "rollout failed; reverting");
        let record = JobVersion {
            version,
            submitted: super::now(),
            stopped: false,
            job: stable.job,
            cause: format!("{} to {to}: {}", rollout::AUTO_REVERT, deployment.reason),
        };
        let value = encode(&record, &super::spec_key(name))?;
        Ok(vec![
            Op::Put {
                key: super::spec_key(name),
                value: value.clone(),
            },
            Op::Put {
                key: super::version_key(name, version),
                value,
            },
        ])
    }

    /// Brings the allocations in line with the running jobs and the live nodes, rolling each
    /// job's new version out batch by batch (see [`rollout`]). Returns when to run again at the
    /// latest (a batch's deadline, ms since the Unix epoch).
    pub async fn reconcile(&self) -> Result<Option<u64>, JobError> {
        if self.catalog.is_none() {
            return Ok(None);
        }
        for _ in 0..super::MAX_ATTEMPTS {
            let index_rev = self.store.get(INDEX).await?.map_or(0, |kv| kv.mod_revision);
            let jobs = self.list().await?;
            let current = self.allocations().await?;
            let statuses = self.statuses().await?;
            let deployments = self.deployments().await?;
            let mut placement = place::place(&jobs, &self.nodes().await?, &current);
            for failure in &placement.failures {
                tracing::warn!(reason = %failure, "instances not placed");
            }
            let before: BTreeMap<&str, &Allocation> =
                current.iter().map(|a| (a.id.as_str(), a)).collect();
            // An instance that exists keeps its version until its rollout moves it.
            for a in &mut placement.allocations {
                if let Some(was) = before.get(a.id.as_str()) {
                    a.version = was.version;
                }
            }
            let now_ms = super::now_ms();
            let mut wake_at_ms: Option<u64> = None;
            let mut ops = Vec::new();
            let mut next_index = b"placement".to_vec();
            for jv in jobs.iter().filter(|j| !j.stopped) {
                let mut specs: BTreeMap<u64, Option<JobVersion>> = BTreeMap::new();
                for a in placement
                    .allocations
                    .iter()
                    .filter(|a| a.job == jv.job.name && a.version != jv.version)
                {
                    if let std::collections::btree_map::Entry::Vacant(e) = specs.entry(a.version) {
                        e.insert(self.version(&jv.job.name, a.version).await?);
                    }
                }
                let same = |group: &str, version: u64| {
                    let spec = specs.get(&version).and_then(Option::as_ref);
                    let old = spec.and_then(|s| s.job.group.iter().find(|g| g.name == group));
                    let new = jv.job.group.iter().find(|g| g.name == group);
                    matches!((old, new), (Some(o), Some(n)) if o.same_but_count(n))
                };
                let mut mine: Vec<Allocation> = placement
                    .allocations
                    .iter()
                    .filter(|a| a.job == jv.job.name)
                    .cloned()
                    .collect();
                let previous = deployments.get(&jv.job.name);
                let decision = rollout::step(jv, previous, &mut mine, &statuses, same, now_ms);
                for a in &mut placement.allocations {
                    if let Some(m) = mine.iter().find(|m| m.id == a.id) {
                        a.version = m.version;
                    }
                }
                if let Some(at) = decision.wake_at_ms {
                    wake_at_ms = Some(wake_at_ms.map_or(at, |w| w.min(at)));
                }
                let mut deployment = decision.deployment;
                if let Some(to) = decision.revert_to {
                    let revert = self.revert_ops(jv, to, &mut deployment).await?;
                    if !revert.is_empty() {
                        next_index = (jv.version + 1).to_string().into_bytes();
                    }
                    ops.extend(revert);
                } else if previous
                    .is_none_or(|p| (p.version, p.state) != (deployment.version, deployment.state))
                {
                    match deployment.state {
                        DeploymentState::Failed => {
                            tracing::warn!(job = %jv.job.name, version = jv.version, reason = %deployment.reason, "rollout failed");
                        }
                        state => {
                            tracing::info!(job = %jv.job.name, version = jv.version, %state, "rollout");
                        }
                    }
                }
                if previous != Some(&deployment) {
                    let key = format!("{DEPLOYS}{}", jv.job.name);
                    let value = encode(&deployment, &key)?;
                    ops.push(Op::Put { key, value });
                }
            }
            for a in &placement.allocations {
                if before.get(a.id.as_str()) != Some(&a) {
                    let key = format!("{ALLOCS}{}", a.id);
                    let value = encode(a, &key)?;
                    ops.push(Op::Put { key, value });
                }
            }
            let after: BTreeSet<&str> = placement
                .allocations
                .iter()
                .map(|a| a.id.as_str())
                .collect();
            for gone in before.keys().filter(|id| !after.contains(*id)) {
                ops.push(Op::Delete {
                    key: format!("{ALLOCS}{gone}"),
                });
                ops.push(Op::Delete {
                    key: format!("{STATUS}{gone}"),
                });
            }
            if ops.is_empty() {
                return Ok(wake_at_ms);
            }
            let changes = ops.len();
            ops.push(Op::Put {
                key: INDEX.to_owned(),
                value: next_index,
            });
            let txn = Txn {
                compares: vec![Compare::ModRevision {
                    key: INDEX.to_owned(),
                    revision: index_rev,
                }],
                ops,
            };
            if self.store.txn(txn).await?.succeeded {
                tracing::info!(changes, "placement updated");
                return Ok(wake_at_ms);
            }
        }
        Err(JobError::Contended)
    }

    /// Reconciles after every store change, and at the next rollout deadline, until `stop`
    /// fires (every server runs it).
    pub async fn run_reconciler(&self, stop: tokio_util::sync::CancellationToken) {
        let mut revisions = self.store.revision_watch();
        let mut backoff = plexus_runtime::Backoff::default();
        loop {
            let wake = match self.reconcile().await {
                Ok(wake) => {
                    backoff.reset();
                    wake
                }
                Err(error) => {
                    tracing::warn!(error = %plexus_runtime::ErrorChain(&error), "placement failed");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            };
            // A deadline is checked just after it passes (the decision compares `now >=`).
            let until = wake.map(|at| {
                Duration::from_millis(at.saturating_sub(super::now_ms()).saturating_add(5))
            });
            tokio::select! {
                () = stop.cancelled() => return,
                changed = revisions.changed() => if changed.is_err() { return },
                () = async {
                    match until {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    /// What `node` runs: its allocations and the job versions they refer to.
    pub async fn node_allocations(&self, node: &str) -> Result<NodeAllocations, JobError> {
        let allocations: Vec<Allocation> = self
            .allocations()
            .await?
            .into_iter()
            .filter(|a| a.node == node)
            .collect();
        // Every version its instances run (during a rollout, old and new ones side by side).
        let wanted: BTreeSet<(&str, u64)> = allocations
            .iter()
            .map(|a| (a.job.as_str(), a.version))
            .collect();
        let mut jobs: Vec<JobVersion> = self
            .list()
            .await?
            .into_iter()
            .filter(|j| wanted.contains(&(j.job.name.as_str(), j.version)))
            .collect();
        for (name, version) in wanted {
            if !jobs
                .iter()
                .any(|j| j.job.name == name && j.version == version)
                && let Some(jv) = self.version(name, version).await?
            {
                jobs.push(jv);
            }
        }
        Ok(NodeAllocations { allocations, jobs })
    }

    /// Stores what an agent reports about one of its instances.
    pub async fn put_status(&self, status: &InstanceStatus) -> Result<(), JobError> {
        let placed = self.allocations().await?;
        if !placed
            .iter()
            .any(|a| a.id == status.id && a.node == status.node)
        {
            return Err(JobError::NoAllocation {
                id: status.id.clone(),
            });
        }
        let value = serde_json::to_vec(status).map_err(|_| JobError::Corrupt {
            key: format!("{STATUS}{}", status.id),
        })?;
        self.store
            .txn(Txn {
                compares: Vec::new(),
                ops: vec![Op::Put {
                    key: format!("{STATUS}{}", status.id),
                    value,
                }],
            })
            .await?;
        Ok(())
    }

    /// A job's current version with its instances.
    pub async fn status(&self, name: &str) -> Result<JobStatus, JobError> {
        let current = self.get(name).await?;
        let statuses = self.statuses().await?;
        let instances = self
            .allocations()
            .await?
            .into_iter()
            .filter(|a| a.job == name)
            .map(|a| InstanceView {
                status: statuses.get(&a.id).cloned(),
                allocation: a,
            })
            .collect();
        let deployment = self.deployments().await?.remove(name);
        Ok(JobStatus {
            current,
            instances,
            deployment,
        })
    }
}
