//! Placement kept true: allocations (`jobs/alloc/<id>`) follow the running jobs and the live
//! nodes. [`Jobs::reconcile`] runs after every job write and, in [`Jobs::run_reconciler`] on
//! every server, after every store change (a node's lease lapsing, a node joining). Every
//! replica computes the same placement; writes are compare-and-set on the job index, so two
//! replicas never write conflicting placements.

use std::collections::{BTreeMap, BTreeSet};

use plexus_api::CheckStatus;
use plexus_api::job::Job;
use plexus_api::job::api::{Allocation, InstanceStatus, InstanceView, JobStatus, NodeAllocations};
use plexus_api::remote::LEASE_CHECK_ID;

use super::place::{self, NodeInfo};
use super::{ALLOCS, INDEX, JobError, Jobs, STATUS};
use crate::store::{Compare, Op, Txn};

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

    /// Brings the allocations in line with the running jobs and the live nodes.
    pub async fn reconcile(&self) -> Result<(), JobError> {
        if self.catalog.is_none() {
            return Ok(());
        }
        for _ in 0..super::MAX_ATTEMPTS {
            let index_rev = self.store.get(INDEX).await?.map_or(0, |kv| kv.mod_revision);
            let jobs = self.list().await?;
            let current = self.allocations().await?;
            let placement = place::place(&jobs, &self.nodes().await?, &current);
            for failure in &placement.failures {
                tracing::warn!(reason = %failure, "instances not placed");
            }
            let before: BTreeMap<&str, &Allocation> =
                current.iter().map(|a| (a.id.as_str(), a)).collect();
            let after: BTreeSet<&str> = placement
                .allocations
                .iter()
                .map(|a| a.id.as_str())
                .collect();
            let mut ops = Vec::new();
            for a in &placement.allocations {
                if before.get(a.id.as_str()) != Some(&a) {
                    let value = serde_json::to_vec(a).map_err(|_| JobError::Corrupt {
                        key: format!("{ALLOCS}{}", a.id),
                    })?;
                    ops.push(Op::Put {
                        key: format!("{ALLOCS}{}", a.id),
                        value,
                    });
                }
            }
            for gone in before.keys().filter(|id| !after.contains(*id)) {
                ops.push(Op::Delete {
                    key: format!("{ALLOCS}{gone}"),
                });
                ops.push(Op::Delete {
                    key: format!("{STATUS}{gone}"),
                });
            }
            if ops.is_empty() {
                return Ok(());
            }
            let changes = ops.len();
            ops.push(Op::Put {
                key: INDEX.to_owned(),
                value: b"placement".to_vec(),
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
                return Ok(());
            }
        }
        Err(JobError::Contended)
    }

    /// Reconciles after every store change until `stop` fires (every server runs it).
    pub async fn run_reconciler(&self, stop: tokio_util::sync::CancellationToken) {
        let mut revisions = self.store.revision_watch();
        let mut backoff = plexus_runtime::Backoff::default();
        loop {
            match self.reconcile().await {
                Ok(()) => backoff.reset(),
                Err(error) => {
                    tracing::warn!(error = %plexus_runtime::ErrorChain(&error), "placement failed");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                changed = revisions.changed() => if changed.is_err() { return },
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
        let names: BTreeSet<&str> = allocations.iter().map(|a| a.job.as_str()).collect();
        let jobs = self
            .list()
            .await?
            .into_iter()
            .filter(|j| names.contains(j.job.name.as_str()))
            .collect();
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
        Ok(JobStatus { current, instances })
    }
}
