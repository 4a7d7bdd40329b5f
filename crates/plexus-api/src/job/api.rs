//! Request and answer bodies of the job API (`/v1/jobs`, `/v1/job/:name/...`).

use serde::{Deserialize, Serialize};

use super::Job;

/// One stored version of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobVersion {
    /// 1 for the first run, +1 for every change (run, scale, stop, revert).
    pub version: u64,
    /// When it was submitted (seconds since the Unix epoch).
    pub submitted: u64,
    /// True when this version stops the job (`plexus job stop`).
    pub stopped: bool,
    /// What the version says (normalized).
    pub job: Job,
    /// What made it: `run`, `scale`, `stop`, `revert to N`.
    pub cause: String,
}

/// A job in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    /// The job.
    pub name: String,
    /// Its current version.
    pub version: u64,
    /// Stopped.
    pub stopped: bool,
    /// Each group with its count.
    pub groups: Vec<GroupCount>,
}

/// A group and its count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCount {
    /// The group.
    pub name: String,
    /// Instances wanted.
    pub count: u32,
}

/// The answer to `PUT /v1/jobs` (run), scale, stop and revert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobWritten {
    /// The job.
    pub name: String,
    /// The version now current.
    pub version: u64,
    /// False when the submitted job equals the current version (nothing stored).
    pub changed: bool,
}

/// `POST /v1/job/:name/scale`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// The group.
    pub group: String,
    /// Its new count.
    pub count: u32,
}

/// `POST /v1/job/:name/revert`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevertRequest {
    /// The version to run again (as a new version).
    pub version: u64,
}

/// What `PUT /v1/jobs?plan=true` would do, group by group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPlan {
    /// The job.
    pub name: String,
    /// The current version (`None`: a new job).
    pub current_version: Option<u64>,
    /// True when running the file changes nothing.
    pub unchanged: bool,
    /// Per group.
    pub groups: Vec<GroupPlan>,
}

/// One group's change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPlan {
    /// The group.
    pub name: String,
    /// Instances now (0: a new group).
    pub before: u32,
    /// Instances after.
    pub after: u32,
    /// True when the group's definition (besides its count) changes: a rolling update.
    pub updated: bool,
    /// True when the group goes away.
    pub removed: bool,
}

/// `GET /v1/job/:name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The current version.
    pub current: JobVersion,
    /// Its placed instances, with what their agents report.
    #[serde(default)]
    pub instances: Vec<InstanceView>,
    /// The rollout of the newest version (`None`: not placed yet).
    #[serde(default)]
    pub deployment: Option<Deployment>,
}

/// Where the rollout of a version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentState {
    /// Instances are being replaced, batch by batch.
    Running,
    /// Every instance runs the version and is healthy.
    Successful,
    /// A batch missed its `healthy_deadline` (or an instance failed); the rollout stopped there.
    Failed,
    /// As `Failed`, and the job went back by itself to its last fully healthy version
    /// (`auto_revert`).
    Reverted,
}

impl std::fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Successful => "successful",
            Self::Failed => "failed",
            Self::Reverted => "reverted",
        })
    }
}

/// The rollout of one job version (`jobs/deploy/<job>`): old instances replaced `max_parallel`
/// at a time, each batch waiting until its instances are healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The version rolled out.
    pub version: u64,
    /// Its state.
    pub state: DeploymentState,
    /// The last version that was fully healthy before this one (what `auto_revert` goes back
    /// to).
    #[serde(default)]
    pub stable: Option<u64>,
    /// Per group.
    #[serde(default)]
    pub groups: Vec<GroupDeployment>,
    /// Why it failed (empty otherwise).
    #[serde(default)]
    pub reason: String,
    /// The version the job reverted to by itself (`Reverted`).
    #[serde(default)]
    pub reverted_to: Option<u64>,
    /// The rollout before this one (one level kept: what `job run` reports after an
    /// auto-revert replaced its version).
    #[serde(default)]
    pub previous: Option<Box<Deployment>>,
}

/// One group's rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDeployment {
    /// The group.
    pub name: String,
    /// Batches started so far (0: only new instances, nothing replaced yet).
    pub batch: u32,
    /// When the current batch started (milliseconds since the Unix epoch, server clock).
    pub batch_started_ms: u64,
    /// Instances of the version that are healthy.
    pub healthy: u32,
    /// Instances wanted.
    pub total: u32,
}

/// An instance: where it is placed and how it is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    /// Where it is placed.
    pub allocation: Allocation,
    /// What its agent last reported (`None`: nothing yet).
    pub status: Option<InstanceStatus>,
}

/// One instance placed on a node (`GET /v1/job-allocations/:node`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// `<job>-<group>-<index>`: stable across versions and moves.
    pub id: String,
    /// The job.
    pub job: String,
    /// The group.
    pub group: String,
    /// The instance's index in the group (0-based).
    pub index: u32,
    /// The job version it runs.
    pub version: u64,
    /// The node.
    pub node: String,
}

/// What an agent runs for one node: its allocations with the job versions they run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAllocations {
    /// The allocations.
    pub allocations: Vec<Allocation>,
    /// The job versions they refer to, by job name.
    pub jobs: Vec<JobVersion>,
}

/// The state of an instance as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The allocation id.
    pub id: String,
    /// The node.
    pub node: String,
    /// The job version it runs.
    pub version: u64,
    /// `starting`, `running`, `restarting`, `failed`, `stopped`.
    pub state: String,
    /// Its process id while running.
    pub pid: Option<u32>,
    /// Its ports by label.
    pub ports: std::collections::BTreeMap<String, u16>,
    /// How often it was restarted.
    pub restarts: u32,
    /// The last problem (an OS error, an exit status).
    pub message: String,
    /// The API address of the agent running it (where its output is read).
    #[serde(default)]
    pub agent: String,
    /// True once every check of the instance's services has passed for the group's
    /// `min_healthy_time` (measured by the agent); false again when one stops passing.
    #[serde(default)]
    pub healthy: bool,
}
