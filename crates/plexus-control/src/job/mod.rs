//! Jobs stored by the control plane, with every version kept (`plexus job run|scale|stop|revert
//! |history`).
//!
//! Storage (the same keys on the embedded store and on etcd):
//! - `jobs/spec/<name>`: the current [`JobVersion`];
//! - `jobs/versions/<name>/<version, 20 digits>`: every version ever written (history, revert);
//! - `jobs/deploy/<name>`: the rollout of its newest version ([`rollout`]);
//! - `jobs/index`: bumped by every job write. Writes are compare-and-set on it, so the checks
//!   made against the other jobs (a service another job registers) hold at the moment of the
//!   write, across servers.
//!
//! The HTTP API is in [`api`]; parsing, rules and plans are pure, in [`plexus_api::job`].

pub mod api;
pub mod place;
mod reconcile;
pub mod rollout;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use plexus_api::job::Job;
use plexus_api::job::api::{JobPlan, JobVersion, JobWritten};
use plexus_api::validate::ValidationErrors;

use crate::store::{Compare, KeyValue, Op, Store, StoreError, Txn};

/// Prefix of the current versions.
pub const SPECS: &str = "jobs/spec/";
/// Prefix of every version.
pub const VERSIONS: &str = "jobs/versions/";
/// The key every job write moves.
pub const INDEX: &str = "jobs/index";
/// Prefix of the placed instances (`jobs/alloc/<id>`).
pub const ALLOCS: &str = "jobs/alloc/";
/// Prefix of what agents report about them (`jobs/status/<id>`).
pub const STATUS: &str = "jobs/status/";
/// Prefix of the rollouts (`jobs/deploy/<job>`: the newest version's).
pub const DEPLOYS: &str = "jobs/deploy/";

const MAX_ATTEMPTS: usize = 16;

/// Why a job operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The store failed.
    #[error("the job store is unavailable")]
    Store(#[from] StoreError),
    /// A stored record does not decode.
    #[error("stored job record {key:?} is not valid")]
    Corrupt {
        /// Its key.
        key: String,
    },
    /// The job breaks a rule.
    #[error("invalid job: {0}")]
    Invalid(ValidationErrors),
    /// A field of the request is wrong (a group that does not exist, a version never written).
    #[error("{message}")]
    BadField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Another job registers one of this job's services.
    #[error(
        "service {service:?} is already registered by job {other:?}; jobs may not share a service name"
    )]
    ServiceClash {
        /// The service.
        service: String,
        /// The job that has it.
        other: String,
    },
    /// No such job.
    #[error("job {name:?} not found")]
    NotFound {
        /// The job.
        name: String,
    },
    /// Placement cannot hold the job's instances.
    #[error("placement refused the job: {}", .0.join("; "))]
    Unplaceable(Vec<String>),
    /// A status for an instance that is not placed (any more).
    #[error("instance {id:?} is not placed")]
    NoAllocation {
        /// The allocation id.
        id: String,
    },
    /// The catalog failed.
    #[error("the catalog is unavailable")]
    Catalog(#[from] plexus_api::CatalogError),
    /// Concurrent writers.
    #[error("jobs kept changing during the write; try again")]
    Contended,
}

/// The job store.
pub struct Jobs {
    store: Arc<dyn Store>,
    /// The nodes placement chooses from (`None`: nothing is placed, as in storage tests).
    catalog: Option<Arc<crate::catalog::StoreCatalog>>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").finish_non_exhaustive()
    }
}

fn spec_key(name: &str) -> String {
    format!("{SPECS}{name}")
}

fn version_key(name: &str, version: u64) -> String {
    format!("{VERSIONS}{name}/{version:020}")
}

fn decode(kv: &KeyValue) -> Result<JobVersion, JobError> {
    serde_json::from_slice(&kv.value).map_err(|_| JobError::Corrupt {
        key: kv.key.clone(),
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a write makes of the current version (`None`: no such job).
enum Change {
    /// Store this job (stopped or not) as the next version.
    Write {
        job: Job,
        stopped: bool,
        cause: String,
    },
    /// Nothing to store.
    Same,
}

impl Jobs {
    /// Jobs over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            catalog: None,
        }
    }

    /// Jobs that are placed on the nodes of `catalog`.
    pub fn with_catalog(mut self, catalog: Arc<crate::catalog::StoreCatalog>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// The job index: the revision of the last job write (at least 1).
    pub async fn index(&self) -> Result<u64, JobError> {
        Ok(self
            .store
            .get(INDEX)
            .await?
            .map_or(0, |kv| kv.mod_revision)
            .max(1))
    }

    /// Store revisions (wakes blocking queries).
    pub fn revision_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.revision_watch()
    }

    /// Every job's current version, by name.
    pub async fn list(&self) -> Result<Vec<JobVersion>, JobError> {
        let (records, _) = self.store.range(SPECS).await?;
        records.iter().map(decode).collect()
    }

    /// One job's current version.
    pub async fn get(&self, name: &str) -> Result<JobVersion, JobError> {
        match self.store.get(&spec_key(name)).await? {
            Some(kv) => decode(&kv),
            None => Err(JobError::NotFound {
                name: name.to_owned(),
            }),
        }
    }

    /// Every version of a job, newest first.
    pub async fn history(&self, name: &str) -> Result<Vec<JobVersion>, JobError> {
        let (records, _) = self.store.range(&format!("{VERSIONS}{name}/")).await?;
        if records.is_empty() {
            return Err(JobError::NotFound {
                name: name.to_owned(),
            });
        }
        let mut versions = records.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        versions.sort_by_key(|v| std::cmp::Reverse(v.version));
        Ok(versions)
    }

    /// What running `job` would change.
    pub async fn plan(&self, job: Job) -> Result<JobPlan, JobError> {
        let job = job.normalized().map_err(JobError::Invalid)?;
        let current = match self.get(&job.name).await {
            Ok(current) => Some(current),
            Err(JobError::NotFound { .. }) => None,
            Err(other) => return Err(other),
        };
        self.check_clash(&job).await?;
        self.check_placement(&job).await?;
        let running = current.as_ref().filter(|c| !c.stopped);
        Ok(plexus_api::job::plan::plan(
            &job,
            running.map(|c| (c.version, &c.job)),
        ))
    }

    /// Runs `job`: a new version unless it equals the current (running) one.
    pub async fn run(&self, job: Job) -> Result<JobWritten, JobError> {
        let job = job.normalized().map_err(JobError::Invalid)?;
        let name = job.name.clone();
        self.write(&name, true, move |current| match current {
            Some(c) if !c.stopped && c.job == job => Ok(Change::Same),
            _ => Ok(Change::Write {
                job: job.clone(),
                stopped: false,
                cause: "run".to_owned(),
            }),
        })
        .await
    }

    /// Sets one group's count.
    pub async fn scale(&self, name: &str, group: &str, count: u32) -> Result<JobWritten, JobError> {
        if count > plexus_api::job::validate::MAX_COUNT {
            return Err(JobError::BadField {
                field: "count",
                message: format!(
                    "count {count} is more than {}",
                    plexus_api::job::validate::MAX_COUNT
                ),
            });
        }
        self.write(name, false, |current| {
            let current = current.ok_or_else(|| JobError::NotFound {
                name: name.to_owned(),
            })?;
            let mut job = current.job.clone();
            let Some(g) = job.group.0.iter_mut().find(|g| g.name == group) else {
                let groups: Vec<&str> = job.group.iter().map(|g| g.name.as_str()).collect();
                return Err(JobError::BadField {
                    field: "group",
                    message: format!(
                        "job {name:?} has no group {group:?} (groups: {})",
                        groups.join(", ")
                    ),
                });
            };
            if g.count == Some(count) && !current.stopped {
                return Ok(Change::Same);
            }
            g.count = Some(count);
            Ok(Change::Write {
                job,
                stopped: false,
                cause: format!("scale {group} to {count}"),
            })
        })
        .await
    }

    /// Stops a job (a new, stopped version; its history stays).
    pub async fn stop(&self, name: &str) -> Result<JobWritten, JobError> {
        self.write(name, false, |current| {
            let current = current.ok_or_else(|| JobError::NotFound {
                name: name.to_owned(),
            })?;
            if current.stopped {
                return Ok(Change::Same);
            }
            Ok(Change::Write {
                job: current.job.clone(),
                stopped: true,
                cause: "stop".to_owned(),
            })
        })
        .await
    }

    /// Runs an earlier version again, as a new version.
    pub async fn revert(&self, name: &str, version: u64) -> Result<JobWritten, JobError> {
        let old = match self.store.get(&version_key(name, version)).await? {
            Some(kv) => decode(&kv)?,
            None => {
                // Tell a missing job from a missing version.
                self.get(name).await?;
                return Err(JobError::BadField {
                    field: "version",
                    message: format!("job {name:?} has no version {version}"),
                });
            }
        };
        self.write(name, true, move |current| {
            current.ok_or_else(|| JobError::NotFound {
                name: name.to_owned(),
            })?;
            Ok(Change::Write {
                job: old.job.clone(),
                stopped: false,
                cause: format!("revert to {version}"),
            })
        })
        .await
    }

    /// Services of `job` another running job registers.
    async fn check_clash(&self, job: &Job) -> Result<(), JobError> {
        let others = self.list().await?;
        for other in others
            .iter()
            .filter(|o| !o.stopped && o.job.name != job.name)
        {
            let theirs = other.job.service_names();
            if let Some(service) = job.service_names().into_iter().find(|s| theirs.contains(s)) {
                return Err(JobError::ServiceClash {
                    service: service.to_owned(),
                    other: other.job.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Reads the current version, lets `change` decide, and writes the next version if the job
    /// index has not moved meanwhile (retrying otherwise). `clash`: check the new job's services
    /// against the other jobs.
    async fn write(
        &self,
        name: &str,
        clash: bool,
        change: impl Fn(Option<&JobVersion>) -> Result<Change, JobError>,
    ) -> Result<JobWritten, JobError> {
        for _ in 0..MAX_ATTEMPTS {
            let index_rev = self.store.get(INDEX).await?.map_or(0, |kv| kv.mod_revision);
            let current = match self.store.get(&spec_key(name)).await? {
                Some(kv) => Some(decode(&kv)?),
                None => None,
            };
            let (job, stopped, cause) = match change(current.as_ref())? {
                Change::Same => {
                    return Ok(JobWritten {
                        name: name.to_owned(),
                        version: current.map_or(0, |c| c.version),
                        changed: false,
                    });
                }
                Change::Write {
                    job,
                    stopped,
                    cause,
                } => (job, stopped, cause),
            };
            if clash && !stopped {
                self.check_clash(&job).await?;
            }
            if !stopped {
                self.check_placement(&job).await?;
            }
            let version = current.map_or(0, |c| c.version) + 1;
            let record = JobVersion {
                version,
                submitted: now(),
                stopped,
                job,
                cause,
            };
            let value = serde_json::to_vec(&record).map_err(|_| JobError::Corrupt {
                key: spec_key(name),
            })?;
            let txn = Txn {
                compares: vec![Compare::ModRevision {
                    key: INDEX.to_owned(),
                    revision: index_rev,
                }],
                ops: vec![
                    Op::Put {
                        key: spec_key(name),
                        value: value.clone(),
                    },
                    Op::Put {
                        key: version_key(name, version),
                        value,
                    },
                    Op::Put {
                        key: INDEX.to_owned(),
                        value: version.to_string().into_bytes(),
                    },
                ],
            };
            if self.store.txn(txn).await?.succeeded {
                tracing::info!(job = name, version, "job version written");
                if let Err(error) = self.reconcile().await.map(|_| ()) {
                    // The reconciler loop places it on the next change.
                    tracing::warn!(error = %plexus_runtime::ErrorChain(&error), "placing after a job write failed");
                }
                return Ok(JobWritten {
                    name: name.to_owned(),
                    version,
                    changed: true,
                });
            }
        }
        Err(JobError::Contended)
    }
}
