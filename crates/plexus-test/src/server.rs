//! `plexus server` replicas: start one on an ephemeral port with a store (or on a test host, see
//! [`crate::hosts`]), kill it (`SIGKILL`) and start it again with the same arguments.
//!
//! Servers enforce ACLs (default deny). Every server a test binary starts gets the same initial
//! management token ([`management_token`], random per test run, through
//! `PLEXUS_ACL_INITIAL_MANAGEMENT_TOKEN`), and [`Server::client`] sends it; processes a test
//! starts against a server are handed a token explicitly ([`Server::token_env`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use plexus_api::client::Client;

use crate::hosts::Host;
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
    TOKEN.get_or_init(|| {
        let token = random_uuid();
        crate::secrets::register(&token);
        token
    })
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
            "--grpc-addr".into(),
            "127.0.0.1:0".into(),
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
        let client = management_client(&http.to_string())?;
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

    /// `PLEXUS_HTTP_TOKEN` set to the management token, for a CLI, agent or proxy a test runs
    /// against this server (tests about ACLs give narrower tokens instead).
    pub fn token_env() -> [(&'static str, &'static str); 1] {
        [("PLEXUS_HTTP_TOKEN", management_token())]
    }

    /// Creates (with the management token) a token holding the node identity of `node` in
    /// datacenter `dc1`, if given, and the service identities of `services`, and writes its
    /// secret to a new file in `dir`: what an agent (its node and the services it registers) or
    /// a sidecar (its service) runs with, as `--token-file`. Returns the file.
    pub async fn identity_token_file(
        &self,
        dir: &Path,
        node: Option<&str>,
        services: &[&str],
    ) -> Result<PathBuf> {
        use plexus_api::acl::model::{NodeIdentity, ServiceIdentity, TokenWrite};
        let request = TokenWrite {
            description: format!("test: node {node:?}, services {services:?}"),
            node_identities: node
                .map(|node| NodeIdentity {
                    node_name: node.to_owned(),
                    datacenter: "dc1".to_owned(),
                })
                .into_iter()
                .collect(),
            service_identities: services
                .iter()
                .map(|service| ServiceIdentity {
                    service_name: (*service).to_owned(),
                    datacenters: Vec::new(),
                })
                .collect(),
            ..TokenWrite::default()
        };
        let token = self.client.acl_token_create(&request).await?;
        crate::secrets::register(token.secret_id.expose());
        let name = format!("token-{}-{}", node.unwrap_or("service"), services.join("-"));
        let path = dir.join(name);
        std::fs::write(&path, token.secret_id.expose())?;
        Ok(path)
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
        self.client = management_client(&self.http.to_string())?;
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
        Some(host) => host.spawn(&label, bin, args, &server_env()),
        None => Process::spawn(&label, bin, args, &server_env()),
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

/// A client for `addr` sending the management token.
pub fn management_client(addr: &str) -> Result<Client> {
    Ok(Client::new(addr)?.with_token(Some(plexus_api::acl::SecretId::new(management_token()))))
}
