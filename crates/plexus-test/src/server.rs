//! `plexus server` replicas: start one on an ephemeral port with a store, kill it (`SIGKILL`) and
//! start it again with the same arguments.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use plexus_api::client::Client;

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
        if !store_args.contains(&"--dns-addr") {
            args.extend(["--dns-addr".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        let process = Process::spawn(&format!("server:{name}"), bin, &args, &[])?;
        let http = process.listening("http").await?;
        let dns = process.listening("dns-udp").await?;
        let client = Client::new(&http.to_string())?;
        Ok(Self {
            process: Some(process),
            http,
            dns,
            client,
            name: name.to_owned(),
            bin: bin.to_path_buf(),
            args,
        })
    }

    /// `127.0.0.1:PORT`.
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
        let process = Process::spawn(&format!("server:{}", self.name), &self.bin, &self.args, &[])?;
        self.http = process.listening("http").await?;
        self.dns = process.listening("dns-udp").await?;
        self.client = Client::new(&self.http.to_string())?;
        self.process = Some(process);
        Ok(())
    }
}
