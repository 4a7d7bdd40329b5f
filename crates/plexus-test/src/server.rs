//! `plexus server` replicas: start one on an ephemeral port with a store, kill it (`SIGKILL`) and
//! start it again with the same arguments.
//!
//! Servers enforce ACLs (default deny). Every server a test binary starts gets the same initial
//! management token ([`management_token`], random per test run, through
//! `PLEXUS_ACL_INITIAL_MANAGEMENT_TOKEN`), and [`Server::client`] sends it; processes a test
//! starts against a server are handed a token explicitly ([`Server::token_env`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use plexus_api::client::Client;

use crate::process::Process;

/// A random UUID from the kernel (tests only).
pub fn random_uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| format!("00000000-0000-4000-8000-{:012x}", std::process::id()))
}

/// The management token every server of this test run starts with.
pub fn management_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(random_uuid)
}

/// The environment that gives a server its initial management token.
pub fn server_env() -> [(&'static str, &'static str); 1] {
    [("PLEXUS_ACL_INITIAL_MANAGEMENT_TOKEN", management_token())]
}

/// A running `plexus server`.
pub struct Server {
    /// The child process (`None` while killed).
    pub process: Option<Process>,
    /// The HTTP API address of the current run.
    pub http: SocketAddr,
    /// The DNS address (UDP and TCP) of the current run.
    pub dns: SocketAddr,
    /// A client for it, sending the management token.
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
        let process = Process::spawn(&format!("server:{name}"), bin, &args, &server_env())?;
        let http = process.listening("http").await?;
        let dns = process.listening("dns-udp").await?;
        let client = management_client(&http.to_string())?;
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

    /// `PLEXUS_HTTP_TOKEN` set to the management token, for a CLI, agent or proxy a test runs
    /// against this server (tests about ACLs give narrower tokens instead).
    pub fn token_env() -> [(&'static str, &'static str); 1] {
        [("PLEXUS_HTTP_TOKEN", management_token())]
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
        let process = Process::spawn(
            &format!("server:{}", self.name),
            &self.bin,
            &self.args,
            &server_env(),
        )?;
        self.http = process.listening("http").await?;
        self.dns = process.listening("dns-udp").await?;
        self.client = management_client(&self.http.to_string())?;
        self.process = Some(process);
        Ok(())
    }
}

/// A client for `addr` sending the management token.
pub fn management_client(addr: &str) -> Result<Client> {
    Ok(Client::new(addr)?.with_token(Some(plexus_api::acl::SecretId::new(management_token()))))
}
