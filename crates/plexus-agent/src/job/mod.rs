//! Running the job instances the servers placed on this node.
//!
//! ```text
//!  GET /v1/job-allocations/<node> (blocking) ─► desired {alloc id → version, group of that version}
//!        │ new id: start an Instance task   │ gone: stop it
//!        │ group changed (other than its count): stop, then start the new one in its place
//!        │ only the version moved (same group): tell the instance (no restart)
//!        ▼
//!  Instance (instance.rs): ports (host-checked) → env → spawn (process group, output to files)
//!        → register services (own ids, checks, sidecar) → report → wait → restart per `restart`
//!        health.rs: every check passing for min_healthy_time → `healthy` in its reports
//!  stop: deregister → drain → SIGTERM to the group → SIGKILL after kill_timeout
//! ```
//!
//! Every state change is reported to the servers (`PUT /v1/job-allocation/<id>/status`), which
//! `plexus job status` shows.

mod health;
mod instance;
mod logs;
mod sidecar;

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use plexus_api::client::{Client, QueryOptions};
use plexus_api::job::Group;
use plexus_api::job::api::{Allocation, NodeAllocations};
use plexus_runtime::{Backoff, ErrorChain, Shutdown};
use tokio_util::sync::CancellationToken;

use crate::Agent;

pub use logs::{MAX_LOG_BYTES, MAX_READ};

/// The default range of dynamic ports for instances (Nomad's).
pub const DYNAMIC_PORTS: RangeInclusive<u16> = 20000..=32000;

/// What the runner needs.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// A client for the servers (with the agent's token).
    pub client: Client,
    /// Where instance output goes (`<dir>/<alloc id>/<task>.stdout|stderr.log`).
    pub data_dir: PathBuf,
    /// Dynamic ports come from here (default [`DYNAMIC_PORTS`]).
    pub ports: RangeInclusive<u16>,
    /// How long an instance's deregistration is given to reach callers before SIGTERM.
    pub drain: Duration,
    /// This agent's API address, reported with every instance (where `plexus job logs` reads
    /// its output).
    pub agent_addr: String,
    /// How to start the built-in sidecar of an instance's Connect service (`None`: the
    /// sidecar is registered but not started).
    pub sidecar: Option<SidecarLaunch>,
}

/// Starting `plexus proxy --sidecar-for <service id>` for an instance.
#[derive(Debug, Clone)]
pub struct SidecarLaunch {
    /// The `plexus` binary.
    pub program: PathBuf,
    /// This agent's API address, which the sidecar reads its configuration from.
    pub agent_addr: String,
    /// The token the sidecar sends (`PLEXUS_HTTP_TOKEN`; redacted in `Debug`).
    pub token: Option<plexus_api::acl::SecretId>,
    /// The Envoy executable, for `sidecar_task { driver = "envoy" }`.
    pub envoy_binary: PathBuf,
    /// This agent's plain xDS (gRPC) listener, which Envoy sidecars fetch their configuration
    /// from (`None`: xDS is off, and an instance with an Envoy sidecar fails, saying so).
    pub xds_addr: Option<std::net::SocketAddr>,
}

/// One running instance: its spec and its stop switch.
struct Running {
    group: Group,
    version: u64,
    /// Tells the instance its version when it moves without a restart.
    moved: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

/// The agent's `GET /v1/agent/job/logs/{alloc}` route over `data_dir` (see [`RunnerConfig`]).
pub fn logs_router(agent: &Agent, data_dir: PathBuf) -> axum::Router {
    logs::router(data_dir, agent.acl_resolver())
}

/// Runs the instances placed on `agent`'s node until `shutdown` fires, then stops them all.
pub async fn run(agent: Agent, config: RunnerConfig, shutdown: Shutdown) {
    let node = agent.node().to_owned();
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut index = 0;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let token = shutdown.token();
    tracing::info!(node, "running the job instances placed on this node");
    loop {
        let query = QueryOptions {
            index: Some(index),
            wait: Some(Duration::from_secs(60)),
        };
        let answer = tokio::select! {
            () = token.cancelled() => break,
            answer = config.client.job_node_allocations(&node, query) => answer,
        };
        let desired = match answer {
            Ok(answer) => {
                backoff.reset();
                index = answer.index;
                answer.value
            }
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %ErrorChain(&error), retry_in = ?delay, "cannot read this node's job instances");
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        apply(&agent, &config, &shutdown, &mut running, desired);
    }
    let stopping: Vec<Running> = std::mem::take(&mut running).into_values().collect();
    for r in &stopping {
        r.stop.cancel();
    }
    for r in stopping {
        let _ = r.done.await;
    }
}

/// Starts, replaces and stops instances so that `running` matches `desired`.
fn apply(
    agent: &Agent,
    config: &RunnerConfig,
    shutdown: &Shutdown,
    running: &mut BTreeMap<String, Running>,
    desired: NodeAllocations,
) {
    let mut wanted: BTreeMap<String, (Allocation, Group)> = BTreeMap::new();
    for alloc in desired.allocations {
        // The version the instance runs: during a rollout old and new run side by side.
        let group = desired
            .jobs
            .iter()
            .find(|j| j.job.name == alloc.job && j.version == alloc.version && !j.stopped)
            .and_then(|j| j.job.group.iter().find(|g| g.name == alloc.group))
            .cloned();
        if let Some(group) = group {
            wanted.insert(alloc.id.clone(), (alloc, group));
        }
    }
    // Gone, or its group changed other than in its count (a version that changes how it
    // runs): stop.
    let stale: Vec<String> = running
        .iter()
        .filter(|(id, r)| match wanted.get(*id) {
            None => true,
            Some((alloc, group)) => {
                !group.same_but_count(&r.group)
                    || (r.done.is_finished() && alloc.version != r.version)
            }
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in stale {
        if let Some(r) = running.remove(&id) {
            tracing::info!(alloc = %id, "stopping instance");
            r.stop.cancel();
            // Its successor (same id) waits until it has stopped and released its ports.
            let (alloc, group) = match wanted.remove(&id) {
                Some(w) => w,
                None => continue,
            };
            start(agent, config, shutdown, running, alloc, group, Some(r.done));
        }
    }
    for (id, (alloc, group)) in wanted {
        match running.get_mut(&id) {
            Some(r) => {
                r.version = alloc.version;
                r.group = group;
                r.moved.send_if_modified(|v| {
                    let changed = *v != alloc.version;
                    *v = alloc.version;
                    changed
                });
            }
            None => start(agent, config, shutdown, running, alloc, group, None),
        }
    }
}

fn start(
    agent: &Agent,
    config: &RunnerConfig,
    shutdown: &Shutdown,
    running: &mut BTreeMap<String, Running>,
    alloc: Allocation,
    group: Group,
    after: Option<tokio::task::JoinHandle<()>>,
) {
    let stop = shutdown.token().child_token();
    let (moved, version) = tokio::sync::watch::channel(alloc.version);
    let instance = instance::Instance {
        version,
        agent: agent.clone(),
        config: config.clone(),
        alloc: alloc.clone(),
        group: group.clone(),
        stop: stop.clone(),
    };
    let done = tokio::spawn(async move {
        if let Some(previous) = after {
            let _ = previous.await;
        }
        instance.run().await;
    });
    running.insert(
        alloc.id.clone(),
        Running {
            group,
            version: alloc.version,
            moved,
            stop,
            done,
        },
    );
}
