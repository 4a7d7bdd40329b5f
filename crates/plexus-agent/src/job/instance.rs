//! One instance: its ports, its process (restarted per the group's `restart` policy), its
//! services, and its orderly stop.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use plexus_api::ServiceRegistration;
use plexus_api::job::api::{Allocation, InstanceStatus};
use plexus_api::job::validate::env_name;
use plexus_api::job::{Group, JobService, SidecarDriver};
use plexus_runtime::ErrorChain;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RunnerConfig;
use crate::Agent;

/// Longest wait between restarts, as a multiple of `restart.delay`.
const MAX_DELAY_FACTOR: u32 = 16;

pub(super) struct Instance {
    pub agent: Agent,
    pub config: RunnerConfig,
    pub alloc: Allocation,
    pub group: Group,
    pub stop: CancellationToken,
    /// The job version the servers say it runs (moves without a restart when only the count
    /// differs).
    pub version: tokio::sync::watch::Receiver<u64>,
}

/// The ports of an instance: its network ports by label and its upstreams' local ports by
/// destination name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Ports {
    pub labels: BTreeMap<String, u16>,
    pub upstreams: BTreeMap<String, u16>,
    /// The admin port of each Envoy sidecar, by service name.
    pub envoy_admin: BTreeMap<String, u16>,
}

fn upstreams(service: &JobService) -> impl Iterator<Item = &plexus_api::job::JobUpstream> {
    service
        .connect
        .iter()
        .flat_map(|c| c.sidecar_service.iter())
        .flat_map(|s| s.proxy.iter())
        .flat_map(|p| p.upstreams.iter())
}

/// The environment of the process: ports, addresses, upstreams, identity, then the task's own.
pub(super) fn environment(
    alloc: &Allocation,
    group: &Group,
    ports: &Ports,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (label, port) in &ports.labels {
        let addr = format!("127.0.0.1:{port}");
        for prefix in ["PLEXUS", "NOMAD"] {
            env.insert(format!("{prefix}_PORT_{label}"), port.to_string());
            env.insert(format!("{prefix}_ADDR_{label}"), addr.clone());
        }
        env.insert(format!("NOMAD_HOST_PORT_{label}"), port.to_string());
    }
    for (name, port) in &ports.upstreams {
        env.insert(
            format!("PLEXUS_UPSTREAM_{}", env_name(name)),
            format!("127.0.0.1:{port}"),
        );
    }
    for (key, value) in [
        ("ALLOC_ID", alloc.id.clone()),
        ("ALLOC_INDEX", alloc.index.to_string()),
        ("JOB_NAME", alloc.job.clone()),
        ("GROUP_NAME", alloc.group.clone()),
    ] {
        env.insert(format!("PLEXUS_{key}"), value.clone());
        env.insert(format!("NOMAD_{key}"), value);
    }
    if let Some(task) = group.task.iter().next() {
        env.insert("NOMAD_TASK_NAME".to_owned(), task.name.clone());
        env.extend(task.env.clone());
    }
    env
}

/// Sends `signal` to the process group the instance leads (its children too). Not through
/// `kill(1)`: procps-ng 4.0.2 reads `kill -TERM -12345` as process group 1, i.e. everything.
pub(super) fn signal_group(child: &Child, signal: rustix::process::Signal) {
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    if let Some(pid) = rustix::process::Pid::from_raw(pid)
        && let Err(error) = rustix::process::kill_process_group(pid, signal)
    {
        tracing::debug!(%error, pid = pid.as_raw_nonzero().get(), "signal to the instance's process group failed");
    }
}

impl Instance {
    fn status(&self, state: &str, message: String) -> InstanceStatus {
        InstanceStatus {
            id: self.alloc.id.clone(),
            node: self.alloc.node.clone(),
            version: self.alloc.version,
            state: state.to_owned(),
            pid: None,
            ports: BTreeMap::new(),
            restarts: 0,
            message,
            agent: self.config.agent_addr.clone(),
            healthy: false,
        }
    }

    /// How many checks each service of `regs` registers (what counts for `healthy`).
    fn expected_checks(regs: &[ServiceRegistration]) -> BTreeMap<String, usize> {
        regs.iter()
            .filter_map(|r| {
                let id = r.id.clone()?;
                Some((id, r.checks.iter().count() + usize::from(r.check.is_some())))
            })
            .collect()
    }

    /// The services whose sidecar is Envoy.
    fn envoy_services(&self) -> impl Iterator<Item = &JobService> {
        self.group.service.iter().filter(|s| {
            s.connect
                .as_ref()
                .is_some_and(|c| c.sidecar_driver() == SidecarDriver::Envoy)
        })
    }

    /// Why this agent cannot run the instance's Envoy sidecars, if it cannot: they fetch their
    /// configuration from its xDS listener.
    fn envoy_refusal(&self) -> Option<String> {
        let service = self.envoy_services().next()?;
        let xds = self.config.sidecar.as_ref().and_then(|l| l.xds_addr);
        xds.is_none().then(|| {
            format!(
                "service {:?} asks for an Envoy sidecar, but this agent serves no xDS (gRPC) \
                 listener: start it with --grpc-addr IP:PORT (it is off, or the default \
                 127.0.0.1:8502 was taken)",
                service.name
            )
        })
    }

    /// The program that runs the sidecar of `service`.
    fn sidecar_for(&self, ports: &Ports, service: &str) -> super::sidecar::Sidecar {
        let xds = self.config.sidecar.as_ref().and_then(|l| l.xds_addr);
        match (ports.envoy_admin.get(service), xds) {
            (Some(admin), Some(xds)) => super::sidecar::Sidecar::Envoy { xds, admin: *admin },
            _ => super::sidecar::Sidecar::Plexus,
        }
    }

    /// Claims every port the instance needs (host-checked at bind time).
    fn claim_ports(&self) -> Result<Ports, String> {
        let owner = self.alloc.id.as_str();
        let mut next = *self.config.ports.start();
        let mut dynamic = |what: &str| -> Result<u16, String> {
            while next <= *self.config.ports.end() {
                let port = next;
                next = next.saturating_add(1);
                match self.agent.claim_port(port, owner) {
                    Ok(_) => return Ok(port),
                    Err(taken) => tracing::debug!(%taken, "dynamic port skipped"),
                }
                if port == u16::MAX {
                    break;
                }
            }
            Err(format!(
                "no free port left in {}–{} for {what}",
                self.config.ports.start(),
                self.config.ports.end()
            ))
        };
        let mut ports = Ports::default();
        for spec in self.group.network.iter().flat_map(|n| n.port.iter()) {
            let port = match spec.static_port {
                Some(port) => {
                    self.agent
                        .claim_port(port, owner)
                        .map_err(|taken| format!("static port of {:?}: {taken}", spec.name))?;
                    port
                }
                None => dynamic(&format!("port {:?}", spec.name))?,
            };
            ports.labels.insert(spec.name.clone(), port);
        }
        for upstream in self.group.service.iter().flat_map(upstreams) {
            let port = match upstream.local_bind_port {
                0 => dynamic(&format!("upstream {:?}", upstream.destination_name))?,
                port => port,
            };
            ports
                .upstreams
                .insert(upstream.destination_name.clone(), port);
        }
        for service in self.envoy_services() {
            let port = dynamic(&format!("the Envoy admin listener of {:?}", service.name))?;
            ports.envoy_admin.insert(service.name.clone(), port);
        }
        Ok(ports)
    }

    /// The registrations of the instance's services. With the port of a service's sidecar known
    /// (`sidecars`, by service name), the sidecar keeps that port and the service gets a
    /// `sidecar ready` TCP check on it: the instance passes only once its sidecar listens.
    fn registrations(
        &self,
        ports: &Ports,
        sidecars: &BTreeMap<String, u16>,
    ) -> Result<Vec<ServiceRegistration>, String> {
        let mut out = Vec::new();
        for service in self.group.service.iter() {
            let port = service
                .port
                .as_ref()
                .and_then(|label| ports.labels.get(label))
                .copied();
            let mut checks: Vec<serde_json::Value> = service
                .check
                .iter()
                .filter_map(|c| {
                    let port = port?;
                    let interval = c.interval.unwrap_or_default().to_string();
                    let timeout = c.timeout.unwrap_or_default().to_string();
                    let mut check = serde_json::json!({"Interval": interval, "Timeout": timeout});
                    if let Some(name) = &c.name {
                        check["Name"] = name.clone().into();
                    }
                    match c.kind.as_str() {
                        "http" => {
                            let path = c.path.clone().unwrap_or_default();
                            check["HTTP"] = format!("http://127.0.0.1:{port}{path}").into();
                        }
                        _ => check["TCP"] = format!("127.0.0.1:{port}").into(),
                    }
                    Some(check)
                })
                .collect();
            let sidecar_port = sidecars.get(&service.name).copied();
            if let Some(sidecar_port) = sidecar_port {
                checks.push(serde_json::json!({
                    "Name": "sidecar ready",
                    "TCP": format!("127.0.0.1:{sidecar_port}"),
                    "Interval": "500ms",
                    "Timeout": "400ms",
                }));
            }
            let mut reg = serde_json::json!({
                "ID": format!("{}-{}", self.alloc.id, service.name),
                "Name": service.name,
                "Tags": service.tags,
                "Meta": {"plexus-job": self.alloc.job, "plexus-alloc": self.alloc.id},
                "Checks": checks,
            });
            if let Some(port) = port {
                reg["Port"] = port.into();
            }
            if service.connect.is_some() {
                let ups: Vec<serde_json::Value> = upstreams(service)
                    .map(|u| {
                        serde_json::json!({
                            "DestinationName": u.destination_name,
                            "LocalBindPort": ports.upstreams.get(&u.destination_name).copied().unwrap_or(u.local_bind_port),
                        })
                    })
                    .collect();
                let mut sidecar = serde_json::json!({"Proxy": {"Upstreams": ups}});
                if let Some(sidecar_port) = sidecar_port {
                    sidecar["Port"] = sidecar_port.into();
                }
                reg["Connect"] = serde_json::json!({ "SidecarService": sidecar });
            }
            out.push(
                serde_json::from_value(reg)
                    .map_err(|e| format!("service {:?}: {e}", service.name))?,
            );
        }
        Ok(out)
    }

    /// Registers `regs` again with each sidecar's assigned port pinned and a `sidecar ready`
    /// check on it (see [`Instance::registrations`]); `regs` unchanged when that fails.
    async fn with_sidecar_checks(
        &self,
        ports: &Ports,
        regs: Vec<ServiceRegistration>,
    ) -> Vec<ServiceRegistration> {
        let node = self.agent.node().to_owned();
        let Ok(services) = self.agent.inner.catalog.node_services(&node).await else {
            return regs;
        };
        let sidecar_ports: BTreeMap<String, u16> = regs
            .iter()
            .filter(|r| r.connect.is_some())
            .filter_map(|r| {
                let id = format!("{}-sidecar-proxy", r.id.as_deref()?);
                let port = services.value.iter().find(|s| s.id == id)?.port;
                Some((r.name.clone(), port))
            })
            .collect();
        if sidecar_ports.is_empty() {
            return regs;
        }
        match self.registrations(ports, &sidecar_ports) {
            Ok(pinned) => match self.register(&pinned).await {
                Ok(()) => pinned,
                Err(message) => {
                    tracing::warn!(alloc = %self.alloc.id, %message, "sidecar checks not registered");
                    regs
                }
            },
            Err(_) => regs,
        }
    }

    fn spawn(&self, ports: &Ports) -> Result<Child, String> {
        let task = self
            .group
            .task
            .iter()
            .next()
            .ok_or_else(|| "the group has no task".to_owned())?;
        let dir = self.config.data_dir.join(&self.alloc.id);
        let (out, err) = super::logs::open(&dir, &task.name)
            .map_err(|e| format!("cannot open the log files in {}: {e}", dir.display()))?;
        let mut command = Command::new(&task.config.command);
        command
            .args(&task.config.args)
            .envs(environment(&self.alloc, &self.group, ports))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(true);
        for name in super::sidecar::AGENT_SECRETS {
            command.env_remove(name);
        }
        command
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", task.config.command))
    }

    async fn register(&self, regs: &[ServiceRegistration]) -> Result<(), String> {
        for reg in regs {
            self.agent.register(reg).await.map_err(|e| {
                format!("cannot register service {:?}: {}", reg.name, ErrorChain(&e))
            })?;
        }
        Ok(())
    }

    async fn deregister(&self, regs: &[ServiceRegistration]) {
        for reg in regs {
            if let Some(id) = &reg.id
                && let Err(error) = self.agent.deregister(id).await
            {
                tracing::debug!(error = %ErrorChain(&error), service_id = %id, "deregister failed");
            }
        }
    }

    /// Stops a running process: deregister, drain, SIGTERM to its group, SIGKILL after the
    /// task's kill_timeout.
    async fn stop_process(&self, child: &mut Child, regs: &[ServiceRegistration]) {
        self.deregister(regs).await;
        tokio::time::sleep(self.config.drain).await;
        let grace = self
            .group
            .task
            .iter()
            .next()
            .and_then(|t| t.kill_timeout)
            .map_or(Duration::from_secs(5), |d| d.0);
        signal_group(child, rustix::process::Signal::TERM);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            tracing::warn!(alloc = %self.alloc.id, ?grace, "instance ignored SIGTERM; killing it");
            signal_group(child, rustix::process::Signal::KILL);
            let _ = child.kill().await;
        }
    }

    /// Runs the instance until stopped, restarting its process per the group's policy.
    pub(super) async fn run(self) {
        let restart = self.group.restart.clone().unwrap_or_default();
        let attempts = restart.attempts.unwrap_or(2);
        let interval = restart.interval.map_or(Duration::from_secs(1800), |d| d.0);
        let delay = restart.delay.map_or(Duration::from_secs(15), |d| d.0);
        let fail_mode = restart.mode.as_deref() != Some("delay");
        let mut status = self.status("starting", String::new());
        let (published, reports) = tokio::sync::watch::channel(status.clone());
        let reporter = tokio::spawn(super::health::report(
            self.config.client.clone(),
            reports,
            self.version.clone(),
        ));
        // What the run loop says, keeping the health the checks' watcher measures.
        let report = |status: &InstanceStatus| {
            published.send_modify(|s| {
                let healthy = s.healthy;
                *s = status.clone();
                s.healthy = healthy;
            });
        };
        let min_healthy = self
            .group
            .update
            .as_ref()
            .and_then(|u| u.min_healthy_time)
            .map_or(Duration::from_secs(10), |d| d.0);
        report(&status);

        if let Some(message) = self.envoy_refusal() {
            tracing::warn!(alloc = %self.alloc.id, %message, "instance cannot start");
            report(&self.status("failed", message));
            return;
        }
        let ports = match self.claim_ports() {
            Ok(ports) => ports,
            Err(message) => {
                tracing::warn!(alloc = %self.alloc.id, %message, "instance cannot start");
                status = self.status("failed", message);
                report(&status);
                self.agent.release_ports(&self.alloc.id);
                return;
            }
        };
        status.ports = ports.labels.clone();
        for (name, port) in &ports.upstreams {
            status.ports.insert(format!("upstream:{name}"), *port);
        }
        for (name, port) in &ports.envoy_admin {
            status.ports.insert(format!("envoy-admin:{name}"), *port);
        }
        let mut regs = match self.registrations(&ports, &BTreeMap::new()) {
            Ok(regs) => regs,
            Err(message) => {
                status.state = "failed".into();
                status.message = message;
                report(&status);
                self.agent.release_ports(&self.alloc.id);
                return;
            }
        };
        let sidecars_stop = CancellationToken::new();
        let mut sidecars = Vec::new();
        let mut window = Instant::now();
        let mut in_window = 0u32;
        loop {
            let message = match self.spawn(&ports) {
                Ok(mut child) => {
                    status.pid = child.id();
                    if let Err(message) = self.register(&regs).await {
                        tracing::warn!(alloc = %self.alloc.id, %message, "instance services not registered");
                        status.message = message;
                    }
                    if sidecars.is_empty()
                        && let Some(launch) = &self.config.sidecar
                    {
                        regs = self.with_sidecar_checks(&ports, regs).await;
                        for reg in regs.iter().filter(|r| r.connect.is_some()) {
                            let id = reg.id.clone().unwrap_or_default();
                            sidecars.push(tokio::spawn(super::sidecar::supervise(
                                launch.clone(),
                                self.sidecar_for(&ports, &reg.name),
                                id,
                                self.config.data_dir.join(&self.alloc.id),
                                sidecars_stop.clone(),
                            )));
                        }
                    }
                    status.state = "running".into();
                    report(&status);
                    tracing::info!(alloc = %self.alloc.id, pid = ?status.pid, ports = ?status.ports, "instance started");
                    let health = self.stop.child_token();
                    tokio::spawn(super::health::watch_checks(
                        self.agent.clone(),
                        Self::expected_checks(&regs),
                        min_healthy,
                        published.clone(),
                        health.clone(),
                    ));
                    let unhealthy = || {
                        health.cancel();
                        published.send_modify(|s| s.healthy = false);
                    };
                    tokio::select! {
                        exit = child.wait() => {
                            unhealthy();
                            self.deregister(&regs).await;
                            match exit {
                                Ok(code) => format!("the process exited: {code}"),
                                Err(e) => format!("waiting for the process failed: {e}"),
                            }
                        }
                        () = self.stop.cancelled() => {
                            unhealthy();
                            status.state = "stopping".into();
                            report(&status);
                            self.stop_process(&mut child, &regs).await;
                            break;
                        }
                    }
                }
                Err(message) => message,
            };
            tracing::warn!(alloc = %self.alloc.id, %message, "instance stopped");
            status.pid = None;
            status.message = message;
            if window.elapsed() > interval {
                window = Instant::now();
                in_window = 0;
            }
            let wait = if in_window >= attempts {
                if fail_mode {
                    status.state = "failed".into();
                    report(&status);
                    self.stop.cancelled().await;
                    break;
                }
                in_window = 0;
                window = Instant::now() + interval;
                interval
            } else {
                let factor = 2u32.saturating_pow(in_window).min(MAX_DELAY_FACTOR);
                in_window += 1;
                delay.saturating_mul(factor)
            };
            status.restarts += 1;
            status.state = "restarting".into();
            report(&status);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.stop.cancelled() => break,
            }
        }
        sidecars_stop.cancel();
        for sidecar in sidecars {
            let _ = sidecar.await;
        }
        self.agent.release_ports(&self.alloc.id);
        // The last report goes out before a successor with the same id reports.
        drop(published);
        let _ = tokio::time::timeout(Duration::from_secs(2), reporter).await;
        tracing::info!(alloc = %self.alloc.id, "instance stopped for good");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn environment_names_ports_addresses_and_upstreams() {
        let job = plexus_api::job::file::parse_job(
            std::path::Path::new("j.hcl"),
            r#"job "calc" {
  group "web" {
    network {
      port "http" {}
    }
    task "app" {
      driver = "exec"
      config {
        command = "node"
      }
      env {
        MODE = "x"
      }
    }
  }
}
"#,
        )
        .unwrap();
        let alloc = Allocation {
            id: "calc-web-1".into(),
            job: "calc".into(),
            group: "web".into(),
            index: 1,
            version: 3,
            node: "n".into(),
        };
        let ports = Ports {
            labels: [("http".to_owned(), 20005)].into(),
            upstreams: [("add-svc".to_owned(), 20006)].into(),
            envoy_admin: BTreeMap::new(),
        };
        let env = environment(&alloc, &job.group.0[0], &ports);
        assert_eq!(env["PLEXUS_PORT_http"], "20005");
        assert_eq!(env["NOMAD_PORT_http"], "20005");
        assert_eq!(env["PLEXUS_ADDR_http"], "127.0.0.1:20005");
        assert_eq!(env["PLEXUS_UPSTREAM_ADD_SVC"], "127.0.0.1:20006");
        assert_eq!(env["NOMAD_ALLOC_INDEX"], "1");
        assert_eq!(env["MODE"], "x");
    }
}
