//! `plexus agent` on a test host ([`crate::hosts`]): the node agent of that host, its API on the
//! host's own `127.0.0.1` (as Consul's `client_addr` default), talking to servers elsewhere.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::hosts::Host;
use crate::mesh::Sidecar;
use crate::process::Process;

/// A running `plexus agent` on a test host.
pub struct Agent {
    /// The child process.
    pub process: Process,
    /// Its API address, inside the host.
    pub http: SocketAddr,
    /// The host.
    pub host: Host,
    bin: PathBuf,
}

impl Agent {
    /// Starts `plexus agent --node NODE --server SERVERS` plus `extra` inside `host` (its API on
    /// the host's `127.0.0.1:8500` unless `extra` says `--http-addr`) and waits until its API
    /// listens.
    pub async fn start_on(
        host: &Host,
        bin: &Path,
        node: &str,
        servers: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let mut args: Vec<String> = ["agent", "--node", node, "--server", servers]
            .map(str::to_owned)
            .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let process = host.spawn(&format!("agent:{node}"), bin, &args, &[])?;
        let http = process.listening("http").await?;
        Ok(Self {
            process,
            http,
            host: host.clone(),
            bin: bin.to_path_buf(),
        })
    }

    /// The agent's API address as local processes use it (`127.0.0.1:PORT`).
    pub fn addr(&self) -> String {
        self.http.to_string()
    }

    /// Starts the sidecar for `service_id` on the same host, pointed at this agent.
    pub async fn sidecar(&self, service_id: &str, extra: &[&str]) -> Result<Sidecar> {
        Sidecar::start_on(&self.host, &self.bin, &self.addr(), service_id, extra).await
    }

    /// Runs a CLI command on the host against this agent: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> Result<(i32, String, String)> {
        let addr = self.addr();
        let mut all = args.to_vec();
        all.extend(["--http-addr", addr.as_str()]);
        self.host.run(&self.bin, &all)
    }
}
