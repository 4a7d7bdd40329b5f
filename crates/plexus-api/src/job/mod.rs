//! Jobs: a Nomad-shaped description of services to run as supervised processes.
//!
//! A job file (`.hcl` or `.json`) holds one `job "NAME" { }` with `group "NAME" { }` blocks; each
//! group runs `count` instances of its one `task` (`driver = "exec"`: a command and its args),
//! with dynamic ports (`network { port "http" {} }`), the `service`s the instances register (a
//! check, a Connect sidecar with upstreams), and its `update` and `restart` policies:
//!
//! ```hcl
//! job "calc" {
//!   group "add" {
//!     count = 2
//!     network { port "http" {} }
//!     service {
//!       name = "add"
//!       port = "http"
//!       check { type = "http"  path = "/health"  interval = "1s"  timeout = "500ms" }
//!       connect { sidecar_service { proxy { upstreams { destination_name = "sub"  local_bind_port = 9002 } } } }
//!     }
//!     task "app" {
//!       driver = "exec"
//!       config { command = "python3"  args = ["add.py"] }
//!       env { MODE = "fast" }
//!     }
//!     update { max_parallel = 1  min_healthy_time = "5s"  healthy_deadline = "1m"  auto_revert = true }
//!     restart { attempts = 3  delay = "1s"  mode = "delay" }
//!   }
//! }
//! ```
//!
//! - [`file`]: parsing with the definition files' strict HCL/JSON machinery (unknown fields are
//!   rejected; errors name `file:line: field`);
//! - [`validate`]: the rules and the defaults ([`Job::normalized`]), pure;
//! - [`api`]: the HTTP API's request and answer types (`/v1/jobs`, `/v1/job/:name`).
//!
//! It does not place or run anything: placement is in `plexus-control`, supervision in
//! `plexus-agent`.

pub mod api;
pub mod file;
pub mod plan;
pub mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::GoDuration;
use crate::one_or_many::OneOrMany;

/// A job: groups of instances run by the agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// The job's name (the label of `job "NAME"`), unique in the cluster.
    pub name: String,
    /// Datacenters it may run in (empty: the servers' own).
    #[serde(default)]
    pub datacenters: Vec<String>,
    /// `"service"` (the only type; long-running processes). Default `"service"`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Constraints on the nodes every group may run on.
    #[serde(default)]
    pub constraint: OneOrMany<Constraint>,
    /// The update policy of every group that has none of its own.
    #[serde(default)]
    pub update: Option<Update>,
    /// The groups.
    #[serde(default)]
    pub group: OneOrMany<Group>,
}

/// A group: `count` instances of its task, placed on nodes together with their ports and
/// services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// The group's name (the label of `group "NAME"`), unique in the job.
    pub name: String,
    /// How many instances. Default 1.
    #[serde(default)]
    pub count: Option<u32>,
    /// Constraints on the nodes (besides the job's).
    #[serde(default)]
    pub constraint: OneOrMany<Constraint>,
    /// Update policy (default: the job's, else [`Update::default`] values).
    #[serde(default)]
    pub update: Option<Update>,
    /// Restart policy (default: [`Restart`] defaults).
    #[serde(default)]
    pub restart: Option<Restart>,
    /// The ports every instance gets.
    #[serde(default)]
    pub network: Option<Network>,
    /// The services every instance registers.
    #[serde(default)]
    pub service: OneOrMany<JobService>,
    /// The task (exactly one).
    #[serde(default)]
    pub task: OneOrMany<Task>,
}

/// `network { port "http" {} }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The ports, by label.
    #[serde(default)]
    pub port: OneOrMany<PortSpec>,
}

/// One port of an instance: dynamic (from the agent's range) unless `static`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// The label (`port "http"`): the env names use it (`PLEXUS_PORT_http`).
    pub name: String,
    /// A fixed port (then at most one instance per node).
    #[serde(default, rename = "static")]
    pub static_port: Option<u16>,
}

/// A service each instance registers (with its own service id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobService {
    /// The service name.
    pub name: String,
    /// The label of the port it is reached on.
    #[serde(default)]
    pub port: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Meta.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Checks (an instance counts as healthy when all pass).
    #[serde(default)]
    pub check: OneOrMany<JobCheck>,
    /// A Connect sidecar.
    #[serde(default)]
    pub connect: Option<JobConnect>,
}

/// A service check on the instance's port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobCheck {
    /// `"http"` or `"tcp"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The check's name (default: `service: <type> check`).
    #[serde(default)]
    pub name: Option<String>,
    /// HTTP path (`"http"` checks; required).
    #[serde(default)]
    pub path: Option<String>,
    /// Interval. Default 10s.
    #[serde(default)]
    pub interval: Option<GoDuration>,
    /// Timeout. Default 2s.
    #[serde(default)]
    pub timeout: Option<GoDuration>,
}

/// `connect { sidecar_service { proxy { upstreams { } } }  sidecar_task { driver = "envoy" } }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConnect {
    /// The instance's sidecar.
    #[serde(default)]
    pub sidecar_service: Option<JobSidecar>,
    /// Which data plane runs the sidecar (Nomad's `sidecar_task`). Absent: the built-in proxy.
    #[serde(default)]
    pub sidecar_task: Option<JobSidecarTask>,
}

/// `sidecar_task { driver = "envoy" }`: the program that runs an instance's sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSidecarTask {
    /// `"plexus"` (the built-in proxy, `plexus proxy`) or `"envoy"` (Envoy fed over xDS by
    /// the instance's agent, through `plexus connect envoy`).
    pub driver: String,
}

/// The data plane of an instance's sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarDriver {
    /// `plexus proxy --sidecar-for <id>`.
    Plexus,
    /// `plexus connect envoy -sidecar-for <id>`.
    Envoy,
}

impl JobConnect {
    /// The sidecar's data plane (validated jobs only hold known drivers; anything else reads as
    /// the built-in proxy).
    pub fn sidecar_driver(&self) -> SidecarDriver {
        match self.sidecar_task.as_ref().map(|t| t.driver.as_str()) {
            Some("envoy") => SidecarDriver::Envoy,
            _ => SidecarDriver::Plexus,
        }
    }
}

/// The sidecar of each instance (the built-in proxy; its port from the agent's sidecar range).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSidecar {
    /// Its proxy settings.
    #[serde(default)]
    pub proxy: Option<JobProxy>,
}

/// The sidecar's upstreams.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobProxy {
    /// Upstreams the instance calls through `127.0.0.1:<local_bind_port>` (0: a dynamic port,
    /// passed as `PLEXUS_UPSTREAM_<NAME>`).
    #[serde(default)]
    pub upstreams: OneOrMany<JobUpstream>,
}

/// One upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobUpstream {
    /// The service called.
    pub destination_name: String,
    /// The local port (0 or absent: dynamic).
    #[serde(default)]
    pub local_bind_port: u16,
}

/// The process of each instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// The label (`task "app"`).
    pub name: String,
    /// `"exec"` (a process on the node; `"raw_exec"` is read as `"exec"`).
    pub driver: String,
    /// What to run.
    pub config: TaskConfig,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// SIGTERM → SIGKILL grace. Default 5s.
    #[serde(default)]
    pub kill_timeout: Option<GoDuration>,
}

/// `config { command = "python3"  args = ["add.py"] }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// The program (a path, or a name looked up in `PATH`).
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
}

/// Rolling update policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// Instances replaced at a time. Default 1.
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// How long a new instance must pass its checks to count as healthy. Default 10s.
    #[serde(default)]
    pub min_healthy_time: Option<GoDuration>,
    /// How long a new instance may take to become healthy. Default 5m.
    #[serde(default)]
    pub healthy_deadline: Option<GoDuration>,
    /// Go back to the previous version when an instance misses its deadline. Default false.
    #[serde(default)]
    pub auto_revert: Option<bool>,
}

/// Restart policy of failed processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    /// Restarts allowed within `interval`. Default 2.
    #[serde(default)]
    pub attempts: Option<u32>,
    /// The window `attempts` counts in. Default 30m.
    #[serde(default)]
    pub interval: Option<GoDuration>,
    /// The first wait before a restart (doubling, up to 16×). Default 15s.
    #[serde(default)]
    pub delay: Option<GoDuration>,
    /// After `attempts`: `"fail"` (the instance stays failed) or `"delay"` (wait `interval`
    /// and start counting again). Default `"fail"`.
    #[serde(default)]
    pub mode: Option<String>,
}

/// A constraint on node meta (`attribute = "${meta.zone}"`) or the node name (`${node.name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    /// `${meta.KEY}` or `${node.name}`.
    pub attribute: String,
    /// `"="` (default) or `"!="`.
    #[serde(default)]
    pub operator: Option<String>,
    /// The value compared with.
    pub value: String,
}

impl Group {
    /// Whether `other` runs the same way as this group, apart from its count: an instance moves
    /// between two such versions without a restart.
    pub fn same_but_count(&self, other: &Group) -> bool {
        let mut a = self.clone();
        a.count = other.count;
        a == *other
    }
}

impl Job {
    /// The service names the job registers (each group's services).
    pub fn service_names(&self) -> Vec<&str> {
        self.group
            .iter()
            .flat_map(|g| g.service.iter().map(|s| s.name.as_str()))
            .collect()
    }
}
