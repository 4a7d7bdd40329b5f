//! `plexus job run|plan|status|stop|scale|history|revert`: jobs, the services Plexus runs as
//! supervised processes (see `plexus_api::job` for the file format).
//!
//! A job file that does not parse or breaks a rule is reported with every error
//! (`calc.hcl:7: job.group[0].count: ...`) and exit code 64, before anything is sent.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use plexus_api::client::QueryOptions;
use plexus_api::job::Job;
use plexus_api::job::api::{Deployment, DeploymentState, JobStatus};

use super::{ControlArgs, EXIT_CONFIG};
use crate::output;

/// The flags of an agent that runs job instances.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentJobArgs {
    /// How many job instances this agent runs at most; 0 (the default) runs none. A job runs
    /// programs on this node: only agents given slots are placed on.
    #[arg(long = "job-slots", default_value_t = 0)]
    pub slots: u32,
    /// The dynamic ports instances get, `LOW-HIGH` (checked free on the host at bind time).
    #[arg(long = "job-ports", default_value = "20000-32000", value_parser = parse_range)]
    pub ports: std::ops::RangeInclusive<u16>,
    /// Where instance output goes (default: `$TMPDIR/plexus-jobs/<node>`).
    #[arg(long = "job-dir")]
    pub dir: Option<PathBuf>,
    /// The Envoy executable for instances whose sidecar is Envoy (`sidecar_task { driver =
    /// "envoy" }`); they fetch their configuration from this process's `--grpc-addr`.
    #[arg(long = "envoy-binary", default_value = "envoy")]
    pub envoy_binary: PathBuf,
    /// This process's plain xDS listener once bound (set by the command, not a flag).
    #[arg(skip)]
    pub xds_addr: Option<std::net::SocketAddr>,
}

fn parse_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (low, high) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?}: expected LOW-HIGH, e.g. 20000-32000"))?;
    let parse = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("{text:?}: {p:?} is not a port (1-65535)"))
    };
    let (low, high) = (parse(low)?, parse(high)?);
    if low == 0 || low > high {
        return Err(format!("{text:?}: expected 1 <= LOW <= HIGH"));
    }
    Ok(low..=high)
}

impl AgentJobArgs {
    /// The node meta that makes placement consider this node.
    pub fn node_meta(&self) -> std::collections::BTreeMap<String, String> {
        let mut meta = std::collections::BTreeMap::new();
        if self.slots > 0 {
            meta.insert("plexus-job-slots".to_owned(), self.slots.to_string());
            // Envoy sidecars of instances fetch their configuration from this process.
            if self.xds_addr.is_some() {
                meta.insert("plexus-xds".to_owned(), "true".to_owned());
            }
        }
        meta
    }

    /// The runner's configuration (`None` without slots).
    pub fn runner(
        &self,
        client: plexus_api::client::Client,
        node: &str,
        agent_addr: std::net::SocketAddr,
        token: Option<plexus_api::acl::SecretId>,
    ) -> anyhow::Result<Option<plexus_agent::job::RunnerConfig>> {
        if self.slots == 0 {
            return Ok(None);
        }
        let data_dir = self
            .dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("plexus-jobs").join(node));
        std::fs::create_dir_all(&data_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the job directory {}: {e}",
                data_dir.display()
            )
        })?;
        Ok(Some(plexus_agent::job::RunnerConfig {
            client,
            data_dir,
            ports: self.ports.clone(),
            drain: std::time::Duration::from_millis(500),
            agent_addr: agent_addr.to_string(),
            sidecar: std::env::current_exe()
                .ok()
                .map(|program| plexus_agent::job::SidecarLaunch {
                    program,
                    agent_addr: agent_addr.to_string(),
                    token,
                    envoy_binary: self.envoy_binary.clone(),
                    xds_addr: self.xds_addr,
                }),
        }))
    }
}

/// `plexus job ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run a job file (HCL or JSON): a new version unless nothing changed.
    Run {
        /// The job file.
        file: PathBuf,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
        /// Return once the version is stored, without following its instances.
        #[arg(long)]
        detach: bool,
        /// How long to follow the instances until all are healthy.
        #[arg(long, default_value = "60s", value_parser = super::parse_duration)]
        wait: std::time::Duration,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Show what running a job file would change, without running it.
    Plan {
        /// The job file.
        file: PathBuf,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Every job, or one job's current version.
    Status {
        /// The job (all jobs when left out).
        job: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Stop a job (its history stays; `revert` runs a version again).
    Stop {
        /// The job.
        job: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Set the count of one group.
    Scale {
        /// The job.
        job: String,
        /// The group.
        group: String,
        /// Its new count.
        count: u32,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// The output of one instance of a group (read from the agent running it).
    Logs {
        /// The job.
        job: String,
        /// The group.
        group: String,
        /// The instance: its index in the group or its id (default: the first).
        #[arg(long)]
        instance: Option<String>,
        /// Standard error instead of standard output.
        #[arg(long)]
        stderr: bool,
        /// Keep printing new output.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Print the instance and its output as JSON (not with -f).
        #[arg(long, conflicts_with = "follow")]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Every version of a job, newest first.
    History {
        /// The job.
        job: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Run an earlier version of a job again (as a new version).
    Revert {
        /// The job.
        job: String,
        /// The version to run again.
        #[arg(value_name = "VERSION")]
        to: u64,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// Reads a job file; every problem is printed and the command exits 64.
fn load(file: &Path) -> Result<Job, ExitCode> {
    plexus_api::job::file::load_job(file).map_err(|errors| {
        for error in &errors {
            eprintln!("error: {error}");
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

fn written(w: &plexus_api::job::api::JobWritten, json: bool, what: &str) -> anyhow::Result<()> {
    if json {
        return output::json(w);
    }
    if w.changed {
        println!("Job {:?} {what}: version {}", w.name, w.version);
    } else {
        println!("Job {:?} unchanged: version {}", w.name, w.version);
    }
    Ok(())
}

/// Progress of one version: instances placed, started (running) and healthy (every check of
/// the instance passing for the group's `min_healthy_time`, as its agent reports).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Progress {
    placed: usize,
    started: usize,
    healthy: usize,
    failed: usize,
    rollout: String,
}

/// The rollout of `version` in `status` (the current one, or the one before it after an
/// auto-revert).
fn rollout_of(status: &JobStatus, version: u64) -> Option<&Deployment> {
    let d = status.deployment.as_ref()?;
    if d.version == version {
        return Some(d);
    }
    d.previous.as_deref().filter(|p| p.version == version)
}

/// One line about a rollout: `rollout of version 2: running, group "web" batch 1 healthy 1/2`.
fn rollout_line(d: &Deployment) -> String {
    let groups: Vec<String> = d
        .groups
        .iter()
        .map(|g| {
            format!(
                "group {:?} batch {} healthy {}/{}",
                g.name, g.batch, g.healthy, g.total
            )
        })
        .collect();
    let mut line = format!("rollout of version {}: {}", d.version, d.state);
    if !groups.is_empty() {
        line.push_str(&format!(", {}", groups.join(", ")));
    }
    if let Some(to) = d.reverted_to {
        line.push_str(&format!(", reverted to version {to}"));
    }
    if !d.reason.is_empty() {
        line.push_str(&format!(": {}", d.reason));
    }
    line
}

/// Follows the rollout of `version` until it succeeds (exit 0), fails or reverts (exit 1, with
/// the reason) or `wait` passes (exit 1), printing each change.
async fn follow(
    client: &plexus_api::client::Client,
    job: &Job,
    version: u64,
    wait: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let want: usize = job
        .group
        .iter()
        .map(|g| g.count.unwrap_or(1) as usize)
        .sum();
    let deadline = tokio::time::Instant::now() + wait;
    let mut last = None;
    loop {
        let status = client
            .job_status(&job.name, QueryOptions::default())
            .await?
            .value;
        let mut p = Progress::default();
        let mut failures = Vec::new();
        for i in status
            .instances
            .iter()
            .filter(|i| i.allocation.version == version)
        {
            p.placed += 1;
            let Some(s) = i.status.as_ref().filter(|s| s.version == version) else {
                continue;
            };
            match s.state.as_str() {
                "running" => {
                    p.started += 1;
                    if s.healthy {
                        p.healthy += 1;
                    }
                }
                "failed" => {
                    p.failed += 1;
                    failures.push(format!("{}: {}", i.allocation.id, s.message));
                }
                _ => {}
            }
        }
        let rollout = rollout_of(&status, version);
        p.rollout = rollout.map(rollout_line).unwrap_or_default();
        if last.as_ref() != Some(&p) {
            println!(
                "placed {}/{want}, started {}/{want}, healthy {}/{want}{}",
                p.placed,
                p.started,
                p.healthy,
                if p.failed > 0 {
                    format!(", failed {}", p.failed)
                } else {
                    String::new()
                }
            );
            if !p.rollout.is_empty() && last.as_ref().is_none_or(|l| l.rollout != p.rollout) {
                println!("{}", p.rollout);
            }
            last = Some(p);
        }
        match rollout.map(|d| d.state) {
            Some(DeploymentState::Successful) => {
                println!(
                    "Job {:?} version {version}: all {want} instance(s) healthy",
                    job.name
                );
                return Ok(ExitCode::SUCCESS);
            }
            Some(DeploymentState::Failed | DeploymentState::Reverted) => {
                for f in &failures {
                    eprintln!("error: instance {f}");
                }
                let d = rollout.map(|d| (d.reason.clone(), d.reverted_to));
                match d {
                    Some((reason, Some(to))) => eprintln!(
                        "error: version {version} failed and job {:?} reverted by itself to version {to} (now version {}): {reason}",
                        job.name, status.current.version
                    ),
                    Some((reason, None)) => {
                        eprintln!("error: the rollout of version {version} failed: {reason}")
                    }
                    None => {}
                }
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
        if rollout.is_none() && status.current.version > version {
            eprintln!(
                "error: version {version} was replaced by version {} ({}) before its rollout finished",
                status.current.version, status.current.cause
            );
            return Ok(ExitCode::FAILURE);
        }
        if tokio::time::Instant::now() > deadline {
            if rollout.is_some_and(|d| d.state == DeploymentState::Running) {
                eprintln!(
                    "error: the rollout of version {version} is still running after {wait:?}; it goes on (plexus job status {} follows it, --wait waits longer)",
                    job.name
                );
            } else {
                eprintln!(
                    "error: not all instances were healthy within {wait:?} (plexus job status {} shows why)",
                    job.name
                );
            }
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// `plexus job logs`.
async fn logs(
    job: &str,
    group: &str,
    instance: Option<&str>,
    stderr: bool,
    follow: bool,
    json: bool,
    control: &ControlArgs,
) -> anyhow::Result<ExitCode> {
    let status = control
        .client()?
        .job_status(job, QueryOptions::default())
        .await?
        .value;
    let in_group: Vec<_> = status
        .instances
        .iter()
        .filter(|i| i.allocation.group == group)
        .collect();
    let chosen = in_group.iter().find(|i| match instance {
        None => true,
        Some(want) => i.allocation.id == want || i.allocation.index.to_string() == want,
    });
    let Some(chosen) = chosen else {
        let ids: Vec<&str> = in_group.iter().map(|i| i.allocation.id.as_str()).collect();
        anyhow::bail!(
            "job {job:?} group {group:?} has no instance {} (instances: {})",
            instance.unwrap_or("at all"),
            if ids.is_empty() {
                "none".to_owned()
            } else {
                ids.join(", ")
            }
        );
    };
    let Some(agent) = chosen
        .status
        .as_ref()
        .map(|s| s.agent.clone())
        .filter(|a| !a.is_empty())
    else {
        anyhow::bail!("instance {} has not started yet", chosen.allocation.id);
    };
    let task = status
        .current
        .job
        .group
        .iter()
        .find(|g| g.name == group)
        .and_then(|g| g.task.iter().next())
        .map(|t| t.name.clone())
        .unwrap_or_default();
    let stream = if stderr { "stderr" } else { "stdout" };
    let client = control.client_for(&[agent])?;
    let mut offset = 0;
    let mut all = Vec::new();
    loop {
        let (bytes, next) = client
            .job_logs(&chosen.allocation.id, &task, stream, offset)
            .await?;
        let more = !bytes.is_empty();
        if json {
            all.extend_from_slice(&bytes);
        } else {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            out.flush()?;
        }
        offset = next;
        if !more {
            if !follow {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    if json {
        output::json(&serde_json::json!({
            "instance": chosen.allocation.id,
            "node": chosen.allocation.node,
            "stream": stream,
            "output": String::from_utf8_lossy(&all),
        }))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the subcommand.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            file,
            json,
            detach,
            wait,
            control,
        } => {
            let job = match load(&file) {
                Ok(job) => job,
                Err(code) => return Ok(code),
            };
            let client = control.client()?;
            let w = client.job_run(&job).await?;
            written(&w, json, "submitted")?;
            if !detach && !json {
                return follow(&client, &job, w.version, wait).await;
            }
        }
        Command::Plan {
            file,
            json,
            control,
        } => {
            let job = match load(&file) {
                Ok(job) => job,
                Err(code) => return Ok(code),
            };
            let plan = control.client()?.job_plan(&job).await?;
            if json {
                output::json(&plan)?;
            } else {
                match plan.current_version {
                    Some(v) => println!("Job {:?} (now version {v}):", plan.name),
                    None => println!("Job {:?} (new):", plan.name),
                }
                if plan.unchanged {
                    println!("  no changes");
                }
                for g in &plan.groups {
                    let what = if g.removed {
                        format!("remove ({} instance(s) stop)", g.before)
                    } else if g.before == 0 {
                        format!("create {} instance(s)", g.after)
                    } else if g.updated {
                        format!("rolling update, {} -> {} instance(s)", g.before, g.after)
                    } else if g.before != g.after {
                        format!("scale {} -> {}", g.before, g.after)
                    } else {
                        "unchanged".to_owned()
                    };
                    println!("  group {:?}: {what}", g.name);
                }
            }
        }
        Command::Status { job, json, control } => {
            let client = control.client()?;
            match job {
                None => {
                    let jobs = client.jobs(QueryOptions::default()).await?.value;
                    if json {
                        output::json(&jobs)?;
                    } else {
                        let rows: Vec<Vec<String>> = jobs
                            .iter()
                            .map(|j| {
                                let groups: Vec<String> = j
                                    .groups
                                    .iter()
                                    .map(|g| format!("{}={}", g.name, g.count))
                                    .collect();
                                vec![
                                    j.name.clone(),
                                    j.version.to_string(),
                                    if j.stopped { "stopped" } else { "running" }.to_owned(),
                                    groups.join(" "),
                                ]
                            })
                            .collect();
                        output::table(&["JOB", "VERSION", "STATUS", "GROUPS"], &rows);
                    }
                }
                Some(name) => {
                    let status = client
                        .job_status(&name, QueryOptions::default())
                        .await?
                        .value;
                    if json {
                        output::json(&status)?;
                    } else {
                        let c = &status.current;
                        let state = if c.stopped { "stopped" } else { "running" };
                        println!("Job {:?}: version {} ({state})", c.job.name, c.version);
                        for g in c.job.group.iter() {
                            println!("  group {:?}: count {}", g.name, g.count.unwrap_or(1));
                        }
                        if let Some(d) = &status.deployment {
                            println!("  {}", rollout_line(d));
                            if let Some(p) = &d.previous
                                && p.state != DeploymentState::Successful
                            {
                                println!("  before it: {}", rollout_line(p));
                            }
                        }
                        let rows: Vec<Vec<String>> = status
                            .instances
                            .iter()
                            .map(|i| {
                                let s = i.status.as_ref();
                                let ports: Vec<String> = s
                                    .map(|s| {
                                        s.ports.iter().map(|(l, p)| format!("{l}={p}")).collect()
                                    })
                                    .unwrap_or_default();
                                vec![
                                    i.allocation.id.clone(),
                                    i.allocation.node.clone(),
                                    i.allocation.version.to_string(),
                                    s.map_or("placed".to_owned(), |s| {
                                        if s.healthy {
                                            format!("{} (healthy)", s.state)
                                        } else {
                                            s.state.clone()
                                        }
                                    }),
                                    ports.join(" "),
                                    s.map_or(0, |s| s.restarts).to_string(),
                                    s.map(|s| s.message.clone()).unwrap_or_default(),
                                ]
                            })
                            .collect();
                        output::table(
                            &[
                                "INSTANCE", "NODE", "VERSION", "STATE", "PORTS", "RESTARTS",
                                "MESSAGE",
                            ],
                            &rows,
                        );
                    }
                }
            }
        }
        Command::Stop { job, json, control } => {
            let w = control.client()?.job_stop(&job).await?;
            written(&w, json, "stopped")?;
        }
        Command::Scale {
            job,
            group,
            count,
            json,
            control,
        } => {
            let w = control.client()?.job_scale(&job, &group, count).await?;
            written(&w, json, &format!("group {group:?} scaled to {count}"))?;
        }
        Command::Logs {
            job,
            group,
            instance,
            stderr,
            follow,
            json,
            control,
        } => {
            return logs(
                &job,
                &group,
                instance.as_deref(),
                stderr,
                follow,
                json,
                &control,
            )
            .await;
        }
        Command::History { job, json, control } => {
            let versions = control.client()?.job_versions(&job).await?;
            if json {
                output::json(&versions)?;
            } else {
                let rows: Vec<Vec<String>> = versions
                    .iter()
                    .map(|v| {
                        let groups: Vec<String> = v
                            .job
                            .group
                            .iter()
                            .map(|g| format!("{}={}", g.name, g.count.unwrap_or(1)))
                            .collect();
                        vec![
                            v.version.to_string(),
                            v.submitted.to_string(),
                            if v.stopped { "stopped" } else { "running" }.to_owned(),
                            v.cause.clone(),
                            groups.join(" "),
                        ]
                    })
                    .collect();
                output::table(
                    &["VERSION", "SUBMITTED", "STATUS", "CAUSE", "GROUPS"],
                    &rows,
                );
            }
        }
        Command::Revert {
            job,
            to: version,
            json,
            control,
        } => {
            let w = control.client()?.job_revert(&job, version).await?;
            written(&w, json, &format!("reverted to version {version}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
