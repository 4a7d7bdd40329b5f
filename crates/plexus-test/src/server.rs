//! `plexus server` replicas: start one on an ephemeral port with a store (or on a test host, see
//! [`crate::hosts`]), kill it (`SIGKILL`) and start it again with the same arguments.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use plexus_api::client::Client;

use crate::hosts::Host;
use crate::process::Process;

/// A running `plexus server`.
pub struct Server {
    /// The child process (`None` while killed).
    pub process: Option<Process>,
    /// The HTTP API address of the current run.
    pub http: SocketAddr,
    /// The DNS address (UDP and TCP) of the current run.
    pub dns: SocketAddr,
    /// A client for it.
    pub client: Client,
    name: String,
    bin: PathBuf,
    args: Vec<String>,
    host: Option<Host>,
}

impl Server {
    /// Starts `plexus server --http-addr 127.0.0.1:<port> --node NAME` plus `store_args`
    /// (e.g. `--store etcd --etcd-endpoints ...`) and waits for its `listening` line.
    ///
    /// The port is chosen once, so a restarted replica comes back on the same address.
    pub async fn start(bin: &Path, name: &str, store_args: &[&str]) -> Result<Self> {
        let port = crate::free_port();
        let mut args: Vec<String> = vec![
            "server".into(),
            "--http-addr".into(),
            format!("127.0.0.1:{port}"),
            "--node".into(),
            name.into(),
        ];
        args.extend(store_args.iter().map(|s| (*s).to_owned()));
        Self::launch(bin, name, args, None).await
    }

    /// Starts `plexus server --node NAME` plus `args` inside `host` (which chooses its own
    /// addresses: pass `--http-addr` in `args` or let the server's defaults apply). A server
    /// listening on `0.0.0.0` is reached at the host's address.
    pub async fn start_on(host: &Host, bin: &Path, name: &str, args: &[&str]) -> Result<Self> {
        let mut all: Vec<String> = vec!["server".into(), "--node".into(), name.into()];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        Self::launch(bin, name, all, Some(host.clone())).await
    }

    async fn launch(
        bin: &Path,
        name: &str,
        mut args: Vec<String>,
        host: Option<Host>,
    ) -> Result<Self> {
        if !args.iter().any(|a| a == "--dns-addr") {
            args.extend(["--dns-addr".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        let process = spawn(&host, bin, name, &args)?;
        let http = reach(&host, process.listening("http").await?);
        let dns = reach(&host, process.listening("dns-udp").await?);
        let client = Client::new(&http.to_string())?;
        Ok(Self {
            process: Some(process),
            http,
            dns,
            client,
            name: name.to_owned(),
            bin: bin.to_path_buf(),
            args,
            host,
        })
    }

    /// `127.0.0.1:PORT` (or the host's address).
    pub fn addr(&self) -> String {
        self.http.to_string()
    }

    /// Kills the replica with SIGKILL (no shutdown steps run).
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(process) = self.process.take() {
            process.signal("KILL")?;
            let _ = process.pid();
            drop(process);
        }
        Ok(())
    }

    /// Starts the replica again with the same arguments and waits until it listens.
    pub async fn restart(&mut self) -> Result<()> {
        let process = spawn(&self.host, &self.bin, &self.name, &self.args)?;
        self.http = reach(&self.host, process.listening("http").await?);
        self.dns = reach(&self.host, process.listening("dns-udp").await?);
        self.client = Client::new(&self.http.to_string())?;
        self.process = Some(process);
        Ok(())
    }

    /// The host it runs on (`None`: this machine's loopback).
    pub fn host(&self) -> Option<&Host> {
        self.host.as_ref()
    }
}

fn spawn(host: &Option<Host>, bin: &Path, name: &str, args: &[String]) -> Result<Process> {
    let label = format!("server:{name}");
    match host {
        Some(host) => host.spawn(&label, bin, args, &[]),
        None => Process::spawn(&label, bin, args, &[]),
    }
}

/// Where clients reach a listener that reported `addr`: an unspecified address is the host's.
pub(crate) fn reach(host: &Option<Host>, addr: SocketAddr) -> SocketAddr {
    if !addr.ip().is_unspecified() {
        return addr;
    }
    match host {
        Some(host) => host.addr(addr.port()),
        None => SocketAddr::from(([127, 0, 0, 1], addr.port())),
    }
}
