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
}
