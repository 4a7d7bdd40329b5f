//! A real etcd cluster on loopback ports, for the etcd backend's tests.
//!
//! [`EtcdCluster::start`] runs `n` members of Debian's `etcd` (installed by
//! `scripts/setup-test-env.sh`) on ephemeral 127.0.0.1 ports in a temporary directory and waits until
//! every member answers `/health`. [`EtcdCluster::start_on`] runs one member on each of several
//! test hosts ([`crate::hosts`]), on the host's address and etcd's usual ports. Members can be
//! killed (`SIGKILL`) and restarted on the same data directory and ports. Everything is killed
//! on drop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::hosts::Host;
use crate::process::Process;
use crate::{DEADLINE, free_port};

/// The etcd binary.
pub fn etcd_bin() -> Result<PathBuf> {
    for candidate in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(candidate).exists() {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!("etcd is not installed: run scripts/setup-test-env.sh (installs Debian's etcd-server)")
}

struct Member {
    name: String,
    ip: String,
    client_port: u16,
    peer_port: u16,
    host: Option<Host>,
    process: Option<Process>,
}

/// A running etcd cluster.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    token: String,
    bin: PathBuf,
}

impl EtcdCluster {
    /// Starts `n` members and waits until all are healthy.
    pub async fn start(n: usize) -> Result<Self> {
        let mut cluster = Self::prepare(n)?;
        cluster.start_all().await?;
        Ok(cluster)
    }

    /// Picks ports and a directory for `n` members without starting any (to test a client that
    /// starts before etcd does).
    pub fn prepare(n: usize) -> Result<Self> {
        let bin = etcd_bin()?;
        let dir = tempfile::Builder::new().prefix("plexus-etcd-").tempdir()?;
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                ip: "127.0.0.1".to_owned(),
                client_port: free_port(),
                peer_port: free_port(),
                host: None,
                process: None,
            })
            .collect();
        let token = format!(
            "plexus-test-{}-{}",
            std::process::id(),
            dir.path().display().to_string().len() + n
        );
        Ok(Self {
            members,
            dir,
            token,
            bin,
        })
    }

    /// Starts one member on each host (client port 2379, peer port 2380 on the host's address)
    /// and waits until all are healthy.
    pub async fn start_on(hosts: &[Host]) -> Result<Self> {
        let mut cluster = Self::prepare(hosts.len())?;
        for (member, host) in cluster.members.iter_mut().zip(hosts) {
            member.ip = host.ip().to_string();
            member.client_port = 2379;
            member.peer_port = 2380;
            member.host = Some(host.clone());
        }
        cluster.start_all().await?;
        Ok(cluster)
    }

    /// Starts every member that is not running and waits until all are healthy.
    pub async fn start_all(&mut self) -> Result<()> {
        for i in 0..self.members.len() {
            if self.members[i].process.is_none() {
                self.spawn(i)?;
            }
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i).await?;
        }
        Ok(())
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}:{}", m.name, m.ip, m.peer_port))
            .collect();
        let member = &self.members[i];
        let client = format!("http://{}:{}", member.ip, member.client_port);
        let peer = format!("http://{}:{}", member.ip, member.peer_port);
        let data = self.dir.path().join(&member.name);
        let args: Vec<String> = [
            "--name",
            &member.name,
            "--data-dir",
            &data.display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &initial.join(","),
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            &self.token,
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let name = format!("etcd:{}", member.name);
        let process = match &member.host {
            Some(host) => host.spawn(&name, &self.bin, &args, &[])?,
            None => Process::spawn(&name, &self.bin, &args, &[])?,
        };
        self.members[i].process = Some(process);
        Ok(())
    }

    /// Waits until member `i` answers `/health` with `"health":"true"`.
    pub async fn wait_healthy(&self, i: usize) -> Result<()> {
        let url = format!(
            "http://{}:{}/health",
            self.members[i].ip, self.members[i].client_port
        );
        let started = Instant::now();
        loop {
            if let Ok(response) = reqwest::get(&url).await
                && let Ok(text) = response.text().await
                && text.contains("\"health\":\"true\"")
            {
                return Ok(());
            }
            if started.elapsed() > DEADLINE {
                let output = self.members[i]
                    .process
                    .as_ref()
                    .map(Process::output)
                    .unwrap_or_default();
                bail!("etcd member {i} not healthy within {DEADLINE:?}; output:\n{output}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client endpoints, `127.0.0.1:PORT` (or the host's address), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}:{}", m.ip, m.client_port))
            .collect()
    }

    /// The client endpoints joined with commas (for `--etcd-endpoints`).
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(process) = self.members[i].process.take() {
            process.signal("KILL")?;
            drop(process);
        }
        Ok(())
    }

    /// Restarts member `i` on its data directory and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.spawn(i)?;
        self.wait_healthy(i).await
    }

    /// Compacts the key history up to `revision` (through member 0 or the first that answers).
    pub async fn compact(&self, revision: u64) -> Result<()> {
        let body = serde_json::json!({"revision": revision.to_string(), "physical": true});
        let client = reqwest::Client::new();
        for endpoint in self.endpoints() {
            let sent = client
                .post(format!("http://{endpoint}/v3/kv/compaction"))
                .json(&body)
                .send()
                .await;
            if let Ok(response) = sent {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                if status.is_success() {
                    return Ok(());
                }
                bail!("compaction to {revision} refused: {status} {text}");
            }
        }
        bail!("no etcd member answered the compaction")
    }

    /// The current etcd revision.
    pub async fn revision(&self) -> Result<u64> {
        let client = reqwest::Client::new();
        for endpoint in self.endpoints() {
            let sent = client
                .post(format!("http://{endpoint}/v3/kv/range"))
                .json(&serde_json::json!({"key": "AA==", "range_end": "AA==", "count_only": true}))
                .send()
                .await;
            if let Ok(response) = sent {
                let answer: serde_json::Value = response.json().await.context("range answer")?;
                let text = answer["header"]["revision"].as_str().unwrap_or("0");
                return text.parse().context("revision");
            }
        }
        bail!("no etcd member answered")
    }
}
